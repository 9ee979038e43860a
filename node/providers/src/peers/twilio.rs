//! twilio peer: to be written.
