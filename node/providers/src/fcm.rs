//! fcm: to be written.
