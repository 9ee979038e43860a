//! smsc peer: to be written.
