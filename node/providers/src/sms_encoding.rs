//! sms_encoding: to be written.
