//! smtp: to be written.
