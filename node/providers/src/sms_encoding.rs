//! # sms_encoding: how an SMS text is encoded and cut into segments
//!
//! Owns the GSM 03.38 default alphabet (and its extension table), the choice between GSM-7 and
//! UCS-2, the unit/segment arithmetic shown to users and billed by operators, and the byte
//! payloads an SMPP `submit_sm` carries (`data_coding` 0: one unpacked septet per octet;
//! `data_coding` 8: UCS-2 big-endian).
//!
//! Pure functions only: no I/O, no logging (a text is a message body and is never logged).
//!
//! Rules:
//! - A text is GSM-7 when every character is in the default alphabet or its extension table;
//!   otherwise the whole text is UCS-2 (there is no per-segment mixing).
//! - Extension characters (`^ { } \ [ ~ ] | €` and form feed) cost two septets: an escape
//!   (0x1B) and the character. An escape pair is never split across segments.
//! - UCS-2 counts UTF-16 code units; characters outside the Basic Multilingual Plane (most
//!   emoji) take a surrogate pair (2 units), which is never split across segments. (Strictly,
//!   UCS-2 has no surrogates; every handset and SMSC in practice treats `data_coding` 8 as
//!   UTF-16BE, which is what we send.)
//! - One segment holds 160 septets / 70 units; once a text needs more, every segment carries a
//!   6-octet concatenation header and holds 153 septets / 67 units. A segment may end up shorter
//!   than the limit when the next escape pair or surrogate pair would not fit.
//! - The empty text is one (empty) segment: sending it is one `submit_sm`, billed as one SMS.

use std::fmt;

/// The character set a text is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GSM 03.38 default alphabet (+ extension table), SMPP `data_coding` 0.
    Gsm7,
    /// UCS-2 / UTF-16BE, SMPP `data_coding` 8.
    Ucs2,
}

impl Encoding {
    /// The SMPP `data_coding` value for this encoding.
    pub fn data_coding(self) -> u8 {
        match self {
            Encoding::Gsm7 => 0x00,
            Encoding::Ucs2 => 0x08,
        }
    }

    /// Units (septets or UTF-16 units) that fit in a lone segment.
    pub fn single_limit(self) -> usize {
        match self {
            Encoding::Gsm7 => GSM7_SINGLE,
            Encoding::Ucs2 => UCS2_SINGLE,
        }
    }

    /// Units that fit in each segment of a concatenated message.
    pub fn multi_limit(self) -> usize {
        match self {
            Encoding::Gsm7 => GSM7_MULTI,
            Encoding::Ucs2 => UCS2_MULTI,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        })
    }
}

/// Septets in one unconcatenated GSM-7 SMS (140 octets packed).
pub const GSM7_SINGLE: usize = 160;
/// Septets per segment of a concatenated GSM-7 SMS (the 6-octet UDH takes 7 septets).
pub const GSM7_MULTI: usize = 153;
/// UTF-16 units in one unconcatenated UCS-2 SMS (140 octets).
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 units per segment of a concatenated UCS-2 SMS (134 octets after the UDH).
pub const UCS2_MULTI: usize = 67;

/// What [`analyze`] says about a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmsEncoding {
    pub encoding: Encoding,
    /// Septets (GSM-7, escape pairs count 2) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Number of SMS the text is sent (and billed) as; at least 1.
    pub segments: usize,
}

/// The escape septet that introduces an extension-table character.
pub const GSM7_ESCAPE: u8 = 0x1B;

/// The GSM 03.38 default alphabet, indexed by septet value. 0x1B (escape) is a placeholder
/// that never matches a text character.
const GSM7_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (character, septet sent after the escape).
const GSM7_EXTENSION: [(char, u8); 10] = [
    ('\u{0C}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

/// The septets for one character: `[septet]`, `[ESC, septet]`, or `None` if the character is
/// not in the GSM-7 alphabet.
fn gsm7_septets(c: char) -> Option<([u8; 2], usize)> {
    if c != '\u{1B}'
        && let Some(pos) = GSM7_BASIC.iter().position(|&b| b == c)
    {
        return Some(([pos as u8, 0], 1));
    }
    GSM7_EXTENSION
        .iter()
        .find(|(e, _)| *e == c)
        .map(|&(_, s)| ([GSM7_ESCAPE, s], 2))
}

/// True when every character of `text` can be sent in GSM-7.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm7_septets(c).is_some())
}

/// Cost of each character in units for `encoding` (1 or 2).
fn char_units(c: char, encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 => gsm7_septets(c).map_or(1, |(_, n)| n),
        Encoding::Ucs2 => c.len_utf16(),
    }
}

/// Splits `text` into char-index ranges, one per segment, never splitting a character (and so
/// never an escape pair or a surrogate pair).
fn segment_ranges(text: &str, encoding: Encoding) -> (usize, Vec<std::ops::Range<usize>>) {
    let total: usize = text.chars().map(|c| char_units(c, encoding)).sum();
    if total <= encoding.single_limit() {
        return (total, std::iter::once(0..text.len()).collect());
    }
    let limit = encoding.multi_limit();
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let cost = char_units(c, encoding);
        if used + cost > limit {
            ranges.push(start..i);
            start = i;
            used = 0;
        }
        used += cost;
    }
    ranges.push(start..text.len());
    (total, ranges)
}

/// Encoding, unit count and segment count of `text`.
pub fn analyze(text: &str) -> SmsEncoding {
    let encoding = if is_gsm7(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    };
    let (units, ranges) = segment_ranges(text, encoding);
    SmsEncoding {
        encoding,
        units,
        segments: ranges.len(),
    }
}

/// GSM-7, one septet per octet (SMPP `data_coding` 0, unpacked), extension characters as
/// `0x1B` + septet. A character outside the alphabet becomes `?` — call [`analyze`] (or
/// [`split`]) first, which picks UCS-2 for such texts.
pub fn encode_gsm7_unpacked(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match gsm7_septets(c) {
            Some((s, n)) => out.extend_from_slice(&s[..n]),
            None => out.push(b'?'),
        }
    }
    out
}

/// Decodes unpacked GSM-7 (one septet per octet). An escape followed by a septet not in the
/// extension table decodes as the basic character (what GSM 03.38 tells receivers to do); a
/// trailing escape is dropped; the high bit of each octet is ignored.
pub fn decode_gsm7_unpacked(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut escaped = false;
    for &b in bytes {
        let s = b & 0x7F;
        if escaped {
            escaped = false;
            match GSM7_EXTENSION.iter().find(|(_, e)| *e == s) {
                Some(&(c, _)) => out.push(c),
                None => out.push(GSM7_BASIC[s as usize]),
            }
        } else if s == GSM7_ESCAPE {
            escaped = true;
        } else {
            out.push(GSM7_BASIC[s as usize]);
        }
    }
    out
}

/// UCS-2 (UTF-16) big-endian, as SMPP `data_coding` 8 carries it.
pub fn encode_ucs2_be(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Decodes UCS-2 / UTF-16 big-endian; an odd trailing octet is ignored and unpaired surrogates
/// become U+FFFD.
pub fn decode_ucs2_be(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A text cut into segment payloads (user data without any UDH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsPayload {
    pub encoding: Encoding,
    /// Total septets / UTF-16 units, as [`analyze`] counts them.
    pub units: usize,
    /// One entry per SMS, already encoded ([`encode_gsm7_unpacked`] or [`encode_ucs2_be`]).
    /// Never empty; the empty text gives one empty payload.
    pub segments: Vec<Vec<u8>>,
}

/// Chooses the encoding and cuts `text` into encoded segment payloads. When there is more than
/// one segment, each must be sent with a concatenation UDH ([`concat_udh`]).
pub fn split(text: &str) -> SmsPayload {
    let encoding = analyze(text).encoding;
    let (units, ranges) = segment_ranges(text, encoding);
    let segments = ranges
        .into_iter()
        .map(|r| match encoding {
            Encoding::Gsm7 => encode_gsm7_unpacked(&text[r]),
            Encoding::Ucs2 => encode_ucs2_be(&text[r]),
        })
        .collect();
    SmsPayload {
        encoding,
        units,
        segments,
    }
}

/// The 6-octet concatenation user data header (IEI 0x00, 8-bit reference): `05 00 03 ref
/// total seq`, `seq` counting from 1.
pub fn concat_udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// Reads a concatenation header (8-bit IEI 0x00 or 16-bit IEI 0x08) from the start of a user
/// data with UDHI set: `(reference, total, seq, header_len)`. `None` when the UDH is malformed
/// or carries no concatenation element.
pub fn parse_concat_udh(user_data: &[u8]) -> Option<(u16, u8, u8, usize)> {
    let udhl = *user_data.first()? as usize;
    let header = user_data.get(1..1 + udhl)?;
    let mut i = 0;
    while i + 2 <= header.len() {
        let iei = header[i];
        let len = header[i + 1] as usize;
        let data = header.get(i + 2..i + 2 + len)?;
        match (iei, len) {
            (0x00, 3) => return Some((u16::from(data[0]), data[1], data[2], udhl + 1)),
            (0x08, 4) => {
                return Some((
                    u16::from_be_bytes([data[0], data[1]]),
                    data[2],
                    data[3],
                    udhl + 1,
                ));
            }
            _ => i += 2 + len,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gsm(n: usize) -> String {
        "a".repeat(n)
    }

    #[test]
    fn gsm7_boundaries_160_161_306_307() {
        for (n, segs) in [(160, 1), (161, 2), (306, 2), (307, 3)] {
            let a = analyze(&gsm(n));
            assert_eq!(a.encoding, Encoding::Gsm7, "{n}");
            assert_eq!(a.units, n);
            assert_eq!(a.segments, segs, "{n} chars");
            assert_eq!(split(&gsm(n)).segments.len(), segs);
        }
        let p = split(&gsm(307));
        assert_eq!(
            p.segments.iter().map(Vec::len).collect::<Vec<_>>(),
            [153, 153, 1]
        );
    }

    #[test]
    fn ucs2_boundaries_70_71_134_135() {
        for (n, segs) in [(70, 1), (71, 2), (134, 2), (135, 3)] {
            let text = "ж".repeat(n);
            let a = analyze(&text);
            assert_eq!(a.encoding, Encoding::Ucs2);
            assert_eq!(a.units, n);
            assert_eq!(a.segments, segs, "{n} chars");
            let p = split(&text);
            assert_eq!(p.segments.len(), segs);
            assert!(p.segments.iter().all(|s| s.len() <= 140));
        }
    }

    #[test]
    fn extension_chars_cost_two_septets() {
        let text = format!("{}€", gsm(159));
        let a = analyze(&text);
        assert_eq!(a.encoding, Encoding::Gsm7);
        assert_eq!(a.units, 161);
        assert_eq!(a.segments, 2);
        for c in ['^', '{', '}', '\\', '[', '~', ']', '|', '€', '\u{0C}'] {
            let a = analyze(&c.to_string());
            assert_eq!((a.encoding, a.units), (Encoding::Gsm7, 2), "{c:?}");
        }
        assert_eq!(encode_gsm7_unpacked("€"), vec![0x1B, 0x65]);
        // 80 extension chars = 160 septets: still one SMS.
        assert_eq!(analyze(&"{".repeat(80)).segments, 1);
        assert_eq!(analyze(&"{".repeat(81)).segments, 2);
    }

    #[test]
    fn escape_pair_never_split() {
        // 152 plain septets then '€': the pair would straddle 153, so it moves to segment 2.
        let text = format!("{}€{}", gsm(152), gsm(10));
        let p = split(&text);
        assert_eq!(p.encoding, Encoding::Gsm7);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].len(), 152);
        assert_eq!(p.segments[1][..2], [0x1B, 0x65]);
        assert!(p.segments.iter().all(|s| s.last() != Some(&GSM7_ESCAPE)));
        assert_eq!(analyze(&text).segments, 2);
    }

    #[test]
    fn emoji_are_ucs2_with_surrogates_never_split() {
        let a = analyze("hi 😀");
        assert_eq!(a.encoding, Encoding::Ucs2);
        assert_eq!(a.units, 5); // h, i, space, 2 surrogates
        assert_eq!(a.segments, 1);
        assert_eq!(analyze(&"😀".repeat(35)).segments, 1); // 70 units
        // 36 emoji = 72 units → 2 segments; 33 emoji fit in 67 units (66), the 34th moves on.
        let p = split(&"😀".repeat(36));
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].len(), 66 * 2);
        assert_eq!(p.segments[1].len(), 6 * 2);
        // One plain char then emoji: a surrogate pair at units 67/68 moves to segment 2.
        let text = format!("a{}", "😀".repeat(40));
        let p = split(&text);
        assert_eq!(p.segments[0].len(), 67 * 2);
        for seg in &p.segments {
            let last = u16::from_be_bytes([seg[seg.len() - 2], seg[seg.len() - 1]]);
            assert!(
                !(0xD800..0xDC00).contains(&last),
                "high surrogate at segment end"
            );
        }
        let joined: String = p.segments.iter().map(|s| decode_ucs2_be(s)).collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn round_trips() {
        let text = "Hello @£$¥ ÄÖÑÜ§ äöñüà {[~]} \\ | ^ € Δ_ΦΓ\n";
        assert!(is_gsm7(text));
        assert_eq!(decode_gsm7_unpacked(&encode_gsm7_unpacked(text)), text);
        let u = "Привет 😀 مرحبا";
        assert!(!is_gsm7(u));
        assert_eq!(decode_ucs2_be(&encode_ucs2_be(u)), u);
        assert_eq!(encode_ucs2_be("A€"), vec![0x00, 0x41, 0x20, 0xAC]);
        assert_eq!(encode_gsm7_unpacked("@A"), vec![0x00, 0x41]);
        // Non-GSM char in the GSM-7 encoder becomes '?'.
        assert_eq!(encode_gsm7_unpacked("a✓"), vec![0x61, 0x3F]);
        // Lowercase ç is not in the default alphabet (only Ç is).
        assert_eq!(analyze("ç").encoding, Encoding::Ucs2);
    }

    #[test]
    fn empty_text_is_one_segment() {
        let a = analyze("");
        assert_eq!((a.encoding, a.units, a.segments), (Encoding::Gsm7, 0, 1));
        assert_eq!(split("").segments, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn concat_udh_round_trip() {
        let udh = concat_udh(7, 3, 2);
        let mut ud = udh.to_vec();
        ud.extend_from_slice(b"xyz");
        assert_eq!(parse_concat_udh(&ud), Some((7, 3, 2, 6)));
        let ud16 = [0x06, 0x08, 0x04, 0x01, 0x02, 0x02, 0x01, b'a'];
        assert_eq!(parse_concat_udh(&ud16), Some((0x0102, 2, 1, 7)));
        assert_eq!(parse_concat_udh(&[0x05, 0x00]), None);
    }
}
