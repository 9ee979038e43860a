//! email_webhook: to be written.
