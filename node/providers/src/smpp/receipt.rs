//! Delivery receipt text (SMPP 3.4 Appendix B) parsing and the `stat` → [`ReceiptKind`] map.
//!
//! Pure: no I/O, no logging. The receipt's `text:` field holds the start of the message body,
//! so callers must never log a [`ParsedReceipt`] as a whole.

use crate::ReceiptKind;

/// The fields of `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm
/// stat:DDDDDDD err:E text:...`. Only `id` and `stat` are required; SMSCs differ in the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedReceipt {
    /// The message id as the receipt states it.
    pub id: String,
    pub sub: Option<String>,
    pub dlvrd: Option<String>,
    pub submit_date: Option<String>,
    pub done_date: Option<String>,
    /// Upper-cased, e.g. `DELIVRD`.
    pub stat: String,
    pub err: Option<String>,
    /// The first characters of the message (a body excerpt; never log it).
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptParseError {
    #[error("receipt text has no id field")]
    MissingId,
    #[error("receipt text has no stat field")]
    MissingStat,
}

/// Parses a delivery receipt's text. Tolerates any case in the keys, extra or missing spaces
/// around values (`id: 123`, `submit  date:...`), missing optional fields, and fields in any
/// order before `text:` (which, when present, runs to the end).
pub fn parse_receipt_text(input: &str) -> Result<ParsedReceipt, ReceiptParseError> {
    // `text:` runs to the end of the string and may contain anything (even "stat:"), so cut
    // it off first. ASCII lowercasing keeps byte offsets identical.
    let lower = input.to_ascii_lowercase();
    let (head, text) = match find_key(&lower, "text:") {
        Some(pos) => (
            &input[..pos],
            Some(input[pos + "text:".len()..].trim().to_string()),
        ),
        None => (input, None),
    };

    let mut receipt = ParsedReceipt {
        id: String::new(),
        sub: None,
        dlvrd: None,
        submit_date: None,
        done_date: None,
        stat: String::new(),
        err: None,
        text,
    };

    let tokens: Vec<&str> = head.split_whitespace().collect();
    let mut i = 0;
    while i < tokens.len() {
        let mut token = tokens[i].to_string();
        i += 1;
        // "submit date:..." / "done date:..." are two tokens; glue the prefix back on.
        let prefix = token.to_ascii_lowercase();
        if (prefix == "submit" || prefix == "done") && i < tokens.len() {
            token = format!("{prefix}_{}", tokens[i]);
            i += 1;
        }
        let Some((key, value)) = token.split_once(':') else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let mut value = value.to_string();
        // Odd spacing: "id: 123" leaves the value in the next token.
        if value.is_empty() && i < tokens.len() && !tokens[i].contains(':') {
            value = tokens[i].to_string();
            i += 1;
        }
        let slot = match key.as_str() {
            "id" => {
                receipt.id = value;
                continue;
            }
            "stat" => {
                receipt.stat = value.to_ascii_uppercase();
                continue;
            }
            "sub" => &mut receipt.sub,
            "dlvrd" => &mut receipt.dlvrd,
            "submit_date" | "submitdate" => &mut receipt.submit_date,
            "done_date" | "donedate" => &mut receipt.done_date,
            "err" => &mut receipt.err,
            _ => continue,
        };
        *slot = Some(value);
    }

    if receipt.id.is_empty() {
        return Err(ReceiptParseError::MissingId);
    }
    if receipt.stat.is_empty() {
        return Err(ReceiptParseError::MissingStat);
    }
    Ok(receipt)
}

/// Finds `key` (lowercase) at the start of `lower` or after whitespace.
fn find_key(lower: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(rel) = lower[from..].find(key) {
        let pos = from + rel;
        if pos == 0 || lower[..pos].ends_with(|c: char| c.is_whitespace()) {
            return Some(pos);
        }
        from = pos + key.len();
    }
    None
}

/// What a receipt `stat` means for the attempt. `None`: not a final state (`ACCEPTD`,
/// `ENROUTE`, `SCHEDULED`, ...) or unrecognised — such receipts are not forwarded, the final
/// one follows.
///
/// `UNKNOWN` maps to [`ReceiptKind::Failed`]: the SMSC has given up tracking the message, so
/// nothing better will come and the waterfall should be free to fall back.
pub fn receipt_kind(stat: &str) -> Option<ReceiptKind> {
    match stat.trim().to_ascii_uppercase().as_str() {
        "DELIVRD" | "DELIVERED" => Some(ReceiptKind::Delivered),
        "EXPIRED" => Some(ReceiptKind::Expired),
        "UNDELIV" | "UNDELIVERABLE" | "REJECTD" | "REJECTED" | "DELETED" | "UNKNOWN" => {
            Some(ReceiptKind::Failed)
        }
        _ => None,
    }
}

/// The SMPP `message_state` TLV value (SMPP 3.4 §5.2.28) as a receipt `stat` word.
pub fn message_state_stat(state: u8) -> Option<&'static str> {
    Some(match state {
        0 => "SCHEDULED",
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        9 => "SKIPPED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_receipt() {
        let r = parse_receipt_text(
            "id:0123456789 sub:001 dlvrd:001 submit date:2311231415 done date:2311231416 \
             stat:DELIVRD err:000 text:Hello world",
        )
        .expect("parses");
        assert_eq!(r.id, "0123456789");
        assert_eq!(r.sub.as_deref(), Some("001"));
        assert_eq!(r.dlvrd.as_deref(), Some("001"));
        assert_eq!(r.submit_date.as_deref(), Some("2311231415"));
        assert_eq!(r.done_date.as_deref(), Some("2311231416"));
        assert_eq!(r.stat, "DELIVRD");
        assert_eq!(r.err.as_deref(), Some("000"));
        assert_eq!(r.text.as_deref(), Some("Hello world"));
        assert_eq!(receipt_kind(&r.stat), Some(ReceiptKind::Delivered));
    }

    #[test]
    fn odd_spacing_and_lowercase() {
        let r = parse_receipt_text(
            "  ID: ab12   SUB:1 dlvrd:0  Submit  Date:2311231415 DONE date:2311231416\tstat:undeliv   err:34 Text:  stat:DELIVRD id:zzz ",
        )
        .expect("parses");
        assert_eq!(r.id, "ab12");
        assert_eq!(r.submit_date.as_deref(), Some("2311231415"));
        assert_eq!(r.done_date.as_deref(), Some("2311231416"));
        assert_eq!(r.stat, "UNDELIV");
        assert_eq!(r.err.as_deref(), Some("34"));
        // The body excerpt is not parsed as fields.
        assert_eq!(r.text.as_deref(), Some("stat:DELIVRD id:zzz"));
        assert_eq!(receipt_kind(&r.stat), Some(ReceiptKind::Failed));
    }

    #[test]
    fn missing_text_and_optional_fields() {
        let r = parse_receipt_text("id:42 stat:EXPIRED").expect("parses");
        assert_eq!(r.id, "42");
        assert_eq!(r.text, None);
        assert_eq!(r.err, None);
        assert_eq!(receipt_kind(&r.stat), Some(ReceiptKind::Expired));
    }

    #[test]
    fn required_fields() {
        assert_eq!(
            parse_receipt_text("sub:001 stat:DELIVRD"),
            Err(ReceiptParseError::MissingId)
        );
        assert_eq!(
            parse_receipt_text("id:1 err:0 text:stat:DELIVRD"),
            Err(ReceiptParseError::MissingStat)
        );
        assert_eq!(parse_receipt_text(""), Err(ReceiptParseError::MissingId));
    }

    #[test]
    fn stat_words() {
        assert_eq!(receipt_kind("REJECTD"), Some(ReceiptKind::Failed));
        assert_eq!(receipt_kind("DELETED"), Some(ReceiptKind::Failed));
        assert_eq!(receipt_kind("UNKNOWN"), Some(ReceiptKind::Failed));
        assert_eq!(receipt_kind("ACCEPTD"), None);
        assert_eq!(receipt_kind("ENROUTE"), None);
        assert_eq!(message_state_stat(2), Some("DELIVRD"));
        assert_eq!(message_state_stat(5), Some("UNDELIV"));
        assert_eq!(message_state_stat(42), None);
    }
}
