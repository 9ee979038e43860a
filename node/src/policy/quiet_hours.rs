//! quiet_hours: to be written.
