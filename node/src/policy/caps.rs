//! caps: to be written.
