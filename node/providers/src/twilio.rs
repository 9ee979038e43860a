//! twilio: to be written.
