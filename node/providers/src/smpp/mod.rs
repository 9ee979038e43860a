//! smpp: to be written.
