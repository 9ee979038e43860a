//! # timezones: which IANA time zone(s) a recipient is probably in
//!
//! Owns the shipped phone-prefix → time zone table (libphonenumber's
//! `resources/timezones/map_data.txt`, Apache-2.0, licence header kept in
//! `node/data/phone-prefix-timezones.txt`) and the precedence rule of [`resolve`]: a valid
//! explicit IANA zone of the recipient, else every candidate zone of the phone number's longest
//! known prefix, else the tenant's default zone.
//!
//! The table is compiled into the binary (`include_str!`) and parsed once, on first use, into a
//! map keyed by prefix; a lookup tries the number's prefixes from the longest known length down,
//! so it costs at most one hash probe per digit of the longest prefix (9).
//!
//! Must never log, store or return phone numbers: only the matched prefix (country and area
//! code, never the subscriber part) leaves this module, in [`ZoneSource::PhonePrefix`].

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono_tz::Tz;

/// The libphonenumber data file, shipped with the binary.
const DATA: &str = include_str!("../../data/phone-prefix-timezones.txt");

/// E.164 numbers have at most 15 digits.
const MAX_E164_DIGITS: usize = 15;

/// The parsed table: prefix (digits, no '+') → candidate zones.
struct PrefixTable {
    zones: HashMap<&'static str, Box<[Tz]>>,
    /// Length of the longest prefix, so lookups start there rather than at 15.
    max_len: usize,
    /// `(prefix, zone name)` of every zone name that chrono-tz does not know; those zones are
    /// skipped (a prefix left with no known zone is dropped, so a shorter prefix answers).
    unknown: Vec<(&'static str, &'static str)>,
}

static TABLE: LazyLock<PrefixTable> = LazyLock::new(|| parse(DATA));

/// Parses `prefix|Zone&Zone` lines; `#` comments and blank lines are skipped, and so are lines
/// that are not of that shape (the file is ours and tested, see `shipped_file_parses_fully`).
fn parse(data: &'static str) -> PrefixTable {
    let mut zones = HashMap::new();
    let mut max_len = 0;
    let mut unknown = Vec::new();
    for line in data.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((prefix, names)) = line.split_once('|') else {
            continue;
        };
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut list = Vec::new();
        for name in names.split('&').map(str::trim).filter(|n| !n.is_empty()) {
            match name.parse::<Tz>() {
                Ok(tz) => list.push(tz),
                Err(_) => unknown.push((prefix, name)),
            }
        }
        if list.is_empty() {
            continue;
        }
        max_len = max_len.max(prefix.len());
        zones.insert(prefix, list.into_boxed_slice());
    }
    PrefixTable {
        zones,
        max_len,
        unknown,
    }
}

/// The digits of an E.164 number (`+` optional), or `None` if it is not one.
fn e164_digits(e164: &str) -> Option<&str> {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    let valid = !digits.is_empty()
        && digits.len() <= MAX_E164_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(digits)
}

/// The longest known prefix of `e164` (`+12125550100` or `12125550100`) and its candidate
/// zones. `None` if the number is not E.164 digits or no prefix is known.
pub fn lookup(e164: &str) -> Option<(&'static str, &'static [Tz])> {
    let digits = e164_digits(e164)?;
    let table = &*TABLE;
    (1..=digits.len().min(table.max_len))
        .rev()
        .find_map(|len| table.zones.get_key_value(&digits[..len]))
        .map(|(prefix, zones)| (*prefix, &zones[..]))
}

/// `(prefix, zone name)` of the zone names in the shipped table that this build's chrono-tz does
/// not know, and so skips (empty today, see the tests; for a startup check after upgrades).
pub fn skipped_zone_names() -> &'static [(&'static str, &'static str)] {
    &TABLE.unknown
}

/// The candidate zones of the longest known prefix of `e164` (e.g. `+1212…` → New York,
/// `+12082…` → Boise and Los Angeles, `+1…` without a known area code → 40+ zones).
pub fn zones_for_phone(e164: &str) -> Option<&'static [Tz]> {
    lookup(e164).map(|(_, zones)| zones)
}

/// Where the zones of [`resolve`] came from, for the verdicts and events that cite them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneSource {
    /// The recipient's own (valid IANA) time zone.
    Explicit,
    /// Inferred from the phone number; `prefix` is the matched prefix (country and area code,
    /// never the whole number).
    PhonePrefix { prefix: String },
    /// Neither of the above: the tenant's default zone.
    TenantDefault,
}

/// The recipient's candidate zones: `explicit_tz` if it is a valid IANA name, else every zone of
/// the phone number's longest known prefix, else `tenant_default`. Never empty. An invalid
/// explicit zone is ignored rather than an error: the recipient's attributes are validated where
/// they are written, and quiet hours must still apply.
pub fn resolve(explicit_tz: &str, phone: &str, tenant_default: Tz) -> (Vec<Tz>, ZoneSource) {
    if let Ok(tz) = explicit_tz.trim().parse::<Tz>() {
        return (vec![tz], ZoneSource::Explicit);
    }
    if let Some((prefix, zones)) = lookup(phone) {
        return (
            zones.to_vec(),
            ZoneSource::PhonePrefix {
                prefix: prefix.to_owned(),
            },
        );
    }
    (vec![tenant_default], ZoneSource::TenantDefault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::{Boise, Denver, Los_Angeles, New_York};
    use chrono_tz::Europe::Moscow;

    #[test]
    fn shipped_file_parses_fully() {
        let table = &*TABLE;
        assert!(
            skipped_zone_names().is_empty(),
            "zone names chrono-tz does not know (prefix, name): {:?}",
            skipped_zone_names()
        );
        let data_lines = DATA
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(table.zones.len(), data_lines, "every data line is a prefix");
        assert_eq!(table.max_len, 9);
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(zones_for_phone("+12125550100"), Some(&[New_York][..]));
        assert_eq!(zones_for_phone("12125550100"), Some(&[New_York][..]));
        assert_eq!(
            lookup("+12082001234"),
            Some(("12082", &[Boise, Los_Angeles][..]))
        );
        assert_eq!(lookup("+12082011234"), Some(("1208201", &[Denver][..])));
        // An unknown area code falls back to the country's whole list.
        let (prefix, zones) = lookup("+19995550100").expect("country prefix");
        assert_eq!(prefix, "1");
        assert!(zones.len() >= 40 && zones.contains(&New_York));
        let (_, russia) = lookup("+74951234567").expect("Moscow number");
        assert!(russia.contains(&Moscow));
    }

    #[test]
    fn not_a_number_gives_none() {
        for bad in [
            "",
            "+",
            "+1 212 555",
            "abc",
            "+1234567890123456",
            "tel:+1212",
        ] {
            assert_eq!(zones_for_phone(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn resolve_precedence() {
        let default = chrono_tz::Europe::Berlin;
        assert_eq!(
            resolve("Europe/Moscow", "+12125550100", default),
            (vec![Moscow], ZoneSource::Explicit)
        );
        assert_eq!(
            resolve("Not/AZone", "+12125550100", default),
            (
                vec![New_York],
                ZoneSource::PhonePrefix {
                    prefix: "1212".into()
                }
            )
        );
        assert_eq!(
            resolve("", "+12082001234", default),
            (
                vec![Boise, Los_Angeles],
                ZoneSource::PhonePrefix {
                    prefix: "12082".into()
                }
            )
        );
        assert_eq!(
            resolve("", "", default),
            (vec![default], ZoneSource::TenantDefault)
        );
    }
}
