//! timezones: to be written.
