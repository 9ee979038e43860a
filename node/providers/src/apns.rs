//! apns: to be written.
