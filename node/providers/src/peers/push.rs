//! push peer: to be written.
