//! The size limits of content, shared by submit-time validation and template rendering (a
//! rendered template must fit the same limits as literal content).

/// SMS bodies longer than this are refused (10 concatenated UCS-2 segments is 670; providers cap
/// near 1,600).
pub const SMS_TEXT_MAX_CHARS: usize = 1600;
/// FCM and APNs both cap a push payload at 4 KiB.
pub const PUSH_PAYLOAD_MAX_BYTES: usize = 4096;
/// RFC 5322 line limit for the subject.
pub const EMAIL_SUBJECT_MAX_BYTES: usize = 998;
/// Largest variable a template may use (a recipient attribute or a message variable).
pub const VAR_MAX_BYTES: usize = 4096;
