//! Price table: what one attempt costs, by channel, destination country and SMS segments.
//!
//! Owns the cost units the node records per attempt and the waterfall's `cost order`. Prices are
//! kept as integer **micro-units** (`u64`, 1 cost unit = [`MICROS_PER_UNIT`] micro-units):
//! `0.0075` is `7_500`. Sums of attempts are then exact; floats would drift. What a unit is
//! (a dollar, a credit) is the operator's choice; the node never converts currencies.
//!
//! Must never log a phone number ([`country_of_phone`] takes one) and never decide *whether*
//! to send: it only prices. It does not count SMS segments either (that is
//! `herald_providers::sms_encoding`); the caller passes `segments`.
//!
//! # TOML
//! ```toml
//! [push]
//! default = 0
//!
//! [email]
//! default = 0.0001
//!
//! [sms]
//! default = 0.0075          # per segment
//! [sms.countries]           # ISO 3166-1 alpha-2, upper case
//! GB = 0.04
//! DE = 0.085
//! ```
//! A price is a non-negative number with at most 6 decimals (a float, an integer, or a string
//! such as `"0.0075"`), at most [`MAX_PRICE_UNITS`]. A channel section left out keeps the
//! built-in price of that channel ([`PriceTable::builtin`]); inside a section `default` is
//! required and `countries` is optional. Every channel may have country overrides; only SMS is
//! priced per segment (push and email are flat per message).

use std::collections::BTreeMap;
use std::fmt;

use herald_proto::v1::Channel;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Micro-units in one cost unit.
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// Highest price accepted, in cost units. Far above any real message price; it keeps every
/// price exact as an `f64` (below 2^53 micro-units) so a table serializes back unchanged.
pub const MAX_PRICE_UNITS: u64 = 1_000_000;

/// A price in micro-units (`Price(7_500)` is 0.0075 units). In TOML it is written in units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(pub u64);

impl Price {
    /// Parses a decimal price in units (`"0.0075"`) exactly, into micro-units.
    pub fn parse(text: &str) -> Result<Self, PriceError> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
            return Err(PriceError::NotANumber(text.to_owned()));
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 6 {
            return Err(PriceError::TooPrecise(text.to_owned()));
        }
        let whole_units = if whole.is_empty() {
            0
        } else {
            whole
                .parse::<u64>()
                .map_err(|_| PriceError::TooLarge(text.to_owned()))?
        };
        if whole_units > MAX_PRICE_UNITS {
            return Err(PriceError::TooLarge(text.to_owned()));
        }
        // "0075" → 7_500: pad to 6 digits. Parsing cannot fail (≤ 6 ASCII digits).
        let fraction_micros = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<6}")
                .parse::<u64>()
                .map_err(|_| PriceError::NotANumber(text.to_owned()))?
        };
        let micros = whole_units * MICROS_PER_UNIT + fraction_micros;
        if micros > MAX_PRICE_UNITS * MICROS_PER_UNIT {
            return Err(PriceError::TooLarge(text.to_owned()));
        }
        Ok(Price(micros))
    }

    /// A price from a float in units, exactly as written: `0.0075` was read from TOML as the
    /// nearest `f64`, whose shortest decimal form is `0.0075` again, so it is parsed from that
    /// form and never multiplied (`0.0075 * 1e6` is `7499.999…`).
    pub fn from_f64(units: f64) -> Result<Self, PriceError> {
        if !units.is_finite() || units < 0.0 {
            return Err(PriceError::NotANumber(units.to_string()));
        }
        // `Display` for f64 is the shortest round-trip form and never uses an exponent.
        Self::parse(&units.to_string())
    }

    /// The price in units, for display and serialization (exact: see [`MAX_PRICE_UNITS`]).
    pub fn units(self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }
}

impl fmt::Display for Price {
    /// `0.0075`: units, without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_UNIT;
        let fraction = self.0 % MICROS_PER_UNIT;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let fraction = format!("{fraction:06}");
        write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// A price that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price {0:?} is not a non-negative decimal number")]
    NotANumber(String),
    #[error("price {0:?} has more than 6 decimals (prices are kept in micro-units)")]
    TooPrecise(String),
    #[error("price {0:?} is above the limit of {MAX_PRICE_UNITS} units")]
    TooLarge(String),
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.units())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PriceVisitor;
        impl Visitor<'_> for PriceVisitor {
            type Value = Price;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative price in units, e.g. 0.0075")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Price, E> {
                Price::from_f64(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Price, E> {
                if v > MAX_PRICE_UNITS {
                    return Err(E::custom(PriceError::TooLarge(v.to_string())));
                }
                Ok(Price(v * MICROS_PER_UNIT))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Price, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(PriceError::NotANumber(v.to_string())))?;
                self.visit_u64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Price, E> {
                Price::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(PriceVisitor)
    }
}

/// Prices of one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPrices {
    /// Price of one message (SMS: of one segment) to a country without an override, or when
    /// the country is unknown. In cost units, e.g. `0.0075`.
    pub default: Price,
    /// Per-country prices, keyed by ISO 3166-1 alpha-2 code in upper case (`GB = 0.04`).
    #[serde(default, deserialize_with = "countries")]
    pub countries: BTreeMap<String, Price>,
}

impl ChannelPrices {
    /// A flat price, no overrides.
    pub fn flat(price: Price) -> Self {
        Self {
            default: price,
            countries: BTreeMap::new(),
        }
    }

    /// The price for `country` (any case), else the default. Allocation-free.
    pub fn price(&self, country: Option<&str>) -> Price {
        let Some(code) = country.map(str::as_bytes) else {
            return self.default;
        };
        let [a, b] = code else {
            return self.default;
        };
        let upper = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
        std::str::from_utf8(&upper)
            .ok()
            .and_then(|code| self.countries.get(code))
            .copied()
            .unwrap_or(self.default)
    }
}

/// Reads the `countries` map, refusing anything but two upper-case ASCII letters as a key (a
/// typo such as `UK` stays possible: it is a well-formed code, just not ISO's).
fn countries<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Price>, D::Error> {
    let map = BTreeMap::<String, Price>::deserialize(deserializer)?;
    for code in map.keys() {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(de::Error::custom(format!(
                "country code {code:?} must be two upper-case letters (ISO 3166-1 alpha-2), e.g. GB"
            )));
        }
    }
    Ok(map)
}

/// Cost units per attempt, by channel and destination country (see the module docs for the
/// TOML form). `Default` is [`PriceTable::builtin`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Push: flat per message (segments are ignored). Built-in: 0.
    #[serde(default = "builtin_push")]
    pub push: ChannelPrices,
    /// Email: flat per message (segments are ignored). Built-in: 0.0001.
    #[serde(default = "builtin_email")]
    pub email: ChannelPrices,
    /// SMS: per segment. Built-in: 0.0079 with a few country overrides.
    #[serde(default = "builtin_sms")]
    pub sms: ChannelPrices,
}

fn builtin_push() -> ChannelPrices {
    ChannelPrices::flat(Price(0))
}

fn builtin_email() -> ChannelPrices {
    ChannelPrices::flat(Price(100))
}

fn builtin_sms() -> ChannelPrices {
    // Illustrative list prices (per segment, in units), roughly the shape of public A2P SMS
    // price lists in 2025; not any provider's actual prices. Operators load their own table.
    let countries = [
        ("US", 7_900),
        ("CA", 7_900),
        ("GB", 40_000),
        ("DE", 85_000),
        ("FR", 80_000),
        ("IN", 5_000),
        ("BR", 50_000),
        ("AU", 55_000),
    ];
    ChannelPrices {
        default: Price(7_900),
        countries: countries
            .into_iter()
            .map(|(code, micros)| (code.to_owned(), Price(micros)))
            .collect(),
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

/// A price table that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The TOML is malformed, or a price or country code is invalid; the message names the
    /// key and the line.
    #[error("price table: {0}")]
    Toml(#[from] toml::de::Error),
}

impl PriceTable {
    /// The built-in table: push 0, email 0.0001, SMS 0.0079 per segment with overrides for a
    /// few countries. **Illustrative only**: real prices depend on the operator's contracts.
    pub fn builtin() -> Self {
        Self {
            push: builtin_push(),
            email: builtin_email(),
            sms: builtin_sms(),
        }
    }

    /// Reads a table from TOML (module docs show the form).
    pub fn from_toml(text: &str) -> Result<Self, PricingError> {
        Ok(toml::from_str(text)?)
    }

    /// The prices of `channel`; `None` for `Unspecified`.
    pub fn channel(&self, channel: Channel) -> Option<&ChannelPrices> {
        match channel {
            Channel::Push => Some(&self.push),
            Channel::Email => Some(&self.email),
            Channel::Sms => Some(&self.sms),
            Channel::Unspecified => None,
        }
    }

    /// The highest price the table has for `channel` (per message; per segment for SMS), any
    /// country: what a reservation assumes before it knows the person.
    pub fn max_price(&self, channel: Channel) -> u64 {
        self.channel(channel).map_or(0, |prices| {
            prices
                .countries
                .values()
                .map(|p| p.0)
                .chain(std::iter::once(prices.default.0))
                .max()
                .unwrap_or(0)
        })
    }

    /// Cost of one SMS attempt of `segments` to `e164`. The number is parsed (slow: the
    /// numbering plan's patterns) only when its calling code is shared by countries of
    /// different prices; a code whose countries all cost the same (all of NANP with the
    /// built-in table) is priced from its digits alone.
    pub fn sms_cost(&self, e164: &str, segments: u32) -> u64 {
        let prices = &self.sms;
        let uniform = calling_code_regions(e164).and_then(|regions| {
            let mut each = regions.iter().map(|region| prices.price(Some(region)));
            let first = each.next()?;
            each.all(|price| price == first).then_some(first)
        });
        let price = match uniform {
            Some(price) => price,
            None => prices.price(country_of_phone(e164).as_deref()),
        };
        price.0.saturating_mul(u64::from(segments.max(1)))
    }

    /// Cost of one attempt, in micro-units: SMS is the country's price × `segments` (at least
    /// one: an SMS attempt is charged a segment even if the count came back 0); push and email
    /// ignore `segments`. `country` is an ISO alpha-2 code (any case); unknown or `None` takes
    /// the channel's default. `Unspecified` costs 0 (validation never lets it through).
    pub fn cost(&self, channel: Channel, country: Option<&str>, segments: u32) -> u64 {
        let Some(prices) = self.channel(channel) else {
            return 0;
        };
        let price = prices.price(country).0;
        match channel {
            Channel::Sms => price.saturating_mul(u64::from(segments.max(1))),
            _ => price,
        }
    }

    /// `channels` sorted by the price of a one-segment attempt to `country`, cheapest first;
    /// equal prices keep their given order (a stable sort), so the waterfall's own order breaks
    /// ties.
    pub fn cost_order(&self, channels: &[Channel], country: Option<&str>) -> Vec<Channel> {
        let mut ordered = channels.to_vec();
        ordered.sort_by_key(|&channel| self.cost(channel, country, 1));
        ordered
    }
}

/// The regions sharing the calling code of `e164` (`+` then 1–3 digits of code), from the
/// numbering plan's metadata; `None` when the text has no known calling code.
fn calling_code_regions(e164: &str) -> Option<Vec<&'static str>> {
    let digits = e164.strip_prefix('+')?.as_bytes();
    (1..=3).find_map(|len| {
        let code = digits.get(..len)?;
        if !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
        phonenumber::metadata::DATABASE.region(&code)
    })
}

/// The region (ISO 3166-1 alpha-2, e.g. `US`) of an E.164 number (`+12125551234`), or `None`
/// if it does not parse or its calling code serves no single region (`+800`). A code shared by
/// several regions (+1, +7) resolves by the number's own ranges (`+1 416…` is `CA`).
/// The number is personal data: never log it. Parsing is not free; callers price many
/// attempts to one recipient and should compute this once per recipient.
pub fn country_of_phone(e164: &str) -> Option<String> {
    let number = phonenumber::parse(None, e164).ok()?;
    number
        .country()
        .id()
        .map(|id| AsRef::<str>::as_ref(&id).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
[push]
default = 0

[email]
default = 0.0001

[sms]
default = 0.0075
[sms.countries]
GB = 0.04
DE = "0.085"
US = 1
"#;

    fn table() -> PriceTable {
        PriceTable::from_toml(TABLE).expect("valid table")
    }

    fn load_error(text: &str) -> String {
        match PriceTable::from_toml(text) {
            Err(err) => err.to_string(),
            Ok(table) => panic!("expected an error, loaded {table:?}"),
        }
    }

    #[test]
    fn parses_toml_into_micro_units() {
        let t = table();
        assert_eq!(t.push.default, Price(0));
        assert_eq!(t.email.default, Price(100));
        assert_eq!(t.sms.default, Price(7_500));
        assert_eq!(t.sms.countries["GB"], Price(40_000));
        assert_eq!(t.sms.countries["DE"], Price(85_000));
        assert_eq!(t.sms.countries["US"], Price(1_000_000));
        // A left-out section keeps the built-in prices.
        let t = PriceTable::from_toml("[sms]\ndefault = 0.01\n").expect("valid");
        assert_eq!(t.email, PriceTable::builtin().email);
        assert_eq!(t.sms.default, Price(10_000));
        // Round trip through TOML is exact.
        let text = toml::to_string(&table()).expect("serializes");
        assert_eq!(PriceTable::from_toml(&text).expect("reloads"), table());
    }

    #[test]
    fn floats_do_not_drift() {
        for (text, micros) in [
            ("0.0075", 7_500),
            ("0.0079", 7_900),
            ("0.1", 100_000),
            ("0.3", 300_000),
            ("1.000001", 1_000_001),
            ("12", 12_000_000),
            (".5", 500_000),
            ("0.500000000", 500_000),
        ] {
            assert_eq!(Price::parse(text), Ok(Price(micros)), "{text}");
            if let Ok(float) = text.parse::<f64>() {
                assert_eq!(Price::from_f64(float), Ok(Price(micros)), "{text} as f64");
            }
        }
        assert_eq!(Price(7_500).to_string(), "0.0075");
        assert_eq!(Price(2_000_000).to_string(), "2");
        assert!(matches!(
            Price::from_f64(0.1 + 0.2),
            Err(PriceError::TooPrecise(_))
        ));
        assert!(matches!(Price::parse("-1"), Err(PriceError::NotANumber(_))));
        assert!(matches!(Price::parse("."), Err(PriceError::NotANumber(_))));
        assert!(matches!(
            Price::parse("1e3"),
            Err(PriceError::NotANumber(_))
        ));
        assert!(Price::from_f64(f64::NAN).is_err());
    }

    #[test]
    fn invalid_tables_say_what_is_wrong() {
        let err = load_error("[sms]\ndefault = -0.5\n");
        assert!(err.contains("not a non-negative"), "{err}");
        let err = load_error("[sms]\ndefault = 0.00000001\n");
        assert!(err.contains("more than 6 decimals"), "{err}");
        let err = load_error("[sms]\ndefault = 0.01\n[sms.countries]\ngb = 0.04\n");
        assert!(err.contains("\"gb\""), "{err}");
        assert!(err.contains("ISO 3166-1"), "{err}");
        let err = load_error("[sms]\ndefault = 0.01\n[sms.countries]\nGBR = 0.04\n");
        assert!(err.contains("\"GBR\""), "{err}");
        let err = load_error("[fax]\ndefault = 1\n");
        assert!(err.contains("fax"), "{err}");
        let err = load_error("[sms.countries]\nGB = 0.04\n");
        assert!(err.contains("default"), "{err}");
        let err = load_error("[sms]\ndefault = \"cheap\"\n");
        assert!(err.contains("cheap"), "{err}");
        let err = load_error("[sms]\ndefault = 2000000\n");
        assert!(err.contains("above the limit"), "{err}");
        let err = load_error("[sms\ndefault = 1\n");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn cost_by_channel_country_and_segments() {
        let t = table();
        assert_eq!(t.cost(Channel::Sms, None, 1), 7_500);
        assert_eq!(t.cost(Channel::Sms, None, 3), 22_500);
        assert_eq!(t.cost(Channel::Sms, Some("GB"), 1), 40_000);
        assert_eq!(t.cost(Channel::Sms, Some("GB"), 3), 120_000);
        assert_eq!(t.cost(Channel::Sms, Some("de"), 1), 85_000, "any case");
        assert_eq!(t.cost(Channel::Sms, Some("FR"), 1), 7_500, "no override");
        assert_eq!(t.cost(Channel::Sms, Some("GBR"), 1), 7_500);
        assert_eq!(t.cost(Channel::Sms, Some("GB"), 0), 40_000, "at least one");
        assert_eq!(t.cost(Channel::Email, Some("GB"), 3), 100, "flat");
        assert_eq!(t.cost(Channel::Push, None, 5), 0);
        assert_eq!(t.cost(Channel::Unspecified, None, 1), 0);
        let max = PriceTable {
            sms: ChannelPrices::flat(Price(MAX_PRICE_UNITS * MICROS_PER_UNIT)),
            ..PriceTable::builtin()
        };
        assert_eq!(
            max.cost(Channel::Sms, None, u32::MAX),
            u64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn builtin_table_is_sane() {
        let t = PriceTable::default();
        assert_eq!(t.cost(Channel::Push, None, 1), 0);
        assert_eq!(t.cost(Channel::Email, None, 1), 100);
        assert_eq!(t.cost(Channel::Sms, None, 1), 7_900);
        assert!(t.cost(Channel::Sms, Some("DE"), 1) > t.cost(Channel::Sms, None, 1));
        assert_eq!(
            t.cost_order(&[Channel::Sms, Channel::Email, Channel::Push], Some("GB")),
            vec![Channel::Push, Channel::Email, Channel::Sms]
        );
    }

    #[test]
    fn sms_cost_agrees_with_the_parsed_country() {
        let builtin = PriceTable::default();
        for (phone, segments) in [
            ("+12125551234", 1),
            ("+14165550123", 2),
            ("+442071234567", 1),
            ("+447700900123", 3),
            ("+4915123456789", 1),
            ("+74951234567", 1),
            ("+5511912345678", 2),
            ("garbage", 1),
            ("", 1),
        ] {
            let country = country_of_phone(phone);
            assert_eq!(
                builtin.sms_cost(phone, segments),
                builtin.cost(Channel::Sms, country.as_deref(), segments),
                "{phone}"
            );
        }
        // +1 is priced from its code alone (every NANP country costs the same built in); +44
        // is shared by GB (overridden) and GG/JE/IM (default), so it is parsed.
        assert_eq!(builtin.sms_cost("+12125551234", 1), 7_900);
        assert_eq!(builtin.sms_cost("+442071234567", 1), 40_000);
    }

    #[test]
    fn country_of_phone_numbers() {
        assert_eq!(country_of_phone("+12125551234").as_deref(), Some("US"));
        assert_eq!(country_of_phone("+14165550123").as_deref(), Some("CA"));
        assert_eq!(country_of_phone("+442071234567").as_deref(), Some("GB"));
        assert_eq!(country_of_phone("+74951234567").as_deref(), Some("RU"));
        assert_eq!(country_of_phone("garbage"), None);
        assert_eq!(country_of_phone(""), None);
        assert_eq!(country_of_phone("2125551234"), None, "no + and no region");
    }

    #[test]
    fn cost_order_sorts_stably() {
        let t = table();
        assert_eq!(
            t.cost_order(&[Channel::Sms, Channel::Email, Channel::Push], None),
            vec![Channel::Push, Channel::Email, Channel::Sms]
        );
        // Email and SMS at the same price keep their given order, both ways round.
        let tie = PriceTable::from_toml(
            "[email]\ndefault = 0.01\n[sms]\ndefault = 0.02\n[sms.countries]\nXX = 0.01\n",
        )
        .expect("valid");
        assert_eq!(
            tie.cost_order(&[Channel::Sms, Channel::Email], Some("XX")),
            vec![Channel::Sms, Channel::Email]
        );
        assert_eq!(
            tie.cost_order(&[Channel::Email, Channel::Sms], Some("XX")),
            vec![Channel::Email, Channel::Sms]
        );
        assert_eq!(
            tie.cost_order(&[Channel::Sms, Channel::Email], None),
            vec![Channel::Email, Channel::Sms]
        );
        assert!(t.cost_order(&[], None).is_empty());
    }
}
