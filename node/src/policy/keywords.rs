//! # keywords: STOP / START / HELP in inbound texts
//!
//! Owns one decision: is this inbound text a carrier keyword, and which one. Pure (no I/O, no
//! store); the consent ledger applies the result (suppress, re-subscribe, answer HELP). Must never
//! log the text it is given: an inbound text is a message body. [`Match::word`] is the canonical
//! word from the lists below, never the sender's own text, so it is safe to put in an event.
//!
//! ## Rule: the keyword alone
//!
//! A text is a keyword only when, after normalization, it *is* the keyword: "please stop sending"
//! or "don't stop" are not STOP. That is the carriers' and CTIA's rule (exact match), and it keeps
//! ordinary conversation ("can't stop laughing") from revoking consent. Replies that merely mention
//! an opt-out word are the ledger's business (e.g. a human-review queue), not this module's.
//!
//! ## Normalization
//!
//! - Case-insensitive, Unicode-aware (`to_uppercase`): `стоп` = `СТОП`, `arrêt` = `ARRÊT`.
//! - Leading/trailing whitespace (spaces, tabs, newlines, any Unicode whitespace) is ignored, and
//!   inner runs of whitespace count as one space, so "STOP \t ALL" = "STOP ALL".
//! - Letter-spaced text ("S T O P") is **not** a keyword: spaces separate words, and joining them
//!   would also turn two-word replies like "YE S" into opt-ins; a false opt-in is a consent
//!   violation, so the matcher does not guess.
//! - Trailing punctuation is ignored: any run of `. ! ? , ; : …` (with or without spaces before
//!   it, as in French typography "ARRÊT !"), e.g. "STOP.", "stop!!", "Stop?!". Leading inverted
//!   marks `¡ ¿` (Spanish "¡ALTO!") are ignored too. Punctuation inside a word is not ("ST.OP").
//! - Combining diacritical marks (U+0300–U+036F) are dropped, so a decomposed "ARRE\u{302}T"
//!   matches like "ARRET" (both spellings are listed anyway).
//!
//! ## The lists
//!
//! Opt-out ([`Keyword::Stop`]):
//! - `STOPALL`, `STOP ALL` → `all: true` (leave every program on this sender);
//! - CTIA / carrier defaults: `STOP`, `UNSUBSCRIBE`, `CANCEL`, `END`, `QUIT`, `REVOKE`,
//!   `OPTOUT`, `OPT OUT`, `OPT-OUT` (REVOKE and OPT OUT are in the FCC's 2024 list of words that
//!   revoke consent);
//! - localized: `СТОП`, `ОТПИСАТЬСЯ` (Russian "stop", "unsubscribe"), `ALTO`, `PARAR`, `BAJA`
//!   (Spanish "stop", "stop", "unsubscribe" as in "darse de baja"), `SAIR` (Portuguese "leave",
//!   the usual Brazilian opt-out), `ARRET`, `ARRÊT` (French), `HALT`, `ABMELDEN` (German "stop",
//!   "unsubscribe").
//!
//! Opt-in ([`Keyword::Start`]): `START`, `UNSTOP`, `YES` (the carriers' default re-subscribe
//! words; YES is accepted because double opt-in prompts ask "reply YES"), `СТАРТ` (Russian).
//! The opt-in list is deliberately narrower than the opt-out one: missing a localized opt-in only
//! costs a re-subscription, a wrong opt-in costs consent.
//!
//! Help ([`Keyword::Help`]): `HELP`, `INFO` (carrier defaults), `ПОМОЩЬ` (Russian), `AYUDA`
//! (Spanish), `AIDE` (French), `HILFE` (German).
//!
//! `all: false` means "the program this sender last messaged about"; a ledger that keeps one
//! program per sender may treat both alike (as most carriers' own handling does).

/// What an inbound keyword asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keyword {
    /// Opt out. `all`: of every program on this sender, not only the current one.
    Stop {
        /// `STOPALL` / `STOP ALL`.
        all: bool,
    },
    /// Opt back in.
    Start,
    /// Ask for help (the reply names the program and how to opt out).
    Help,
}

/// A recognized keyword and the canonical word that matched (from this module's lists, never the
/// sender's text: safe to put in events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// What the text asks for.
    pub keyword: Keyword,
    /// The canonical (upper-case) keyword that matched, e.g. `"ARRÊT"`.
    pub word: &'static str,
}

const STOP_ALL: &[&str] = &["STOPALL", "STOP ALL"];
const STOP: &[&str] = &[
    "STOP",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
    "OPT-OUT",
    "СТОП",
    "ОТПИСАТЬСЯ",
    "ALTO",
    "PARAR",
    "BAJA",
    "SAIR",
    "ARRET",
    "ARRÊT",
    "HALT",
    "ABMELDEN",
];
const START: &[&str] = &["START", "UNSTOP", "YES", "СТАРТ"];
const HELP: &[&str] = &["HELP", "INFO", "ПОМОЩЬ", "AYUDA", "AIDE", "HILFE"];

/// Every keyword with what it means, for callers that document or test the lists.
pub fn all_keywords() -> impl Iterator<Item = (&'static str, Keyword)> {
    let tag =
        |words: &'static [&'static str], keyword: Keyword| words.iter().map(move |w| (*w, keyword));
    tag(STOP_ALL, Keyword::Stop { all: true })
        .chain(tag(STOP, Keyword::Stop { all: false }))
        .chain(tag(START, Keyword::Start))
        .chain(tag(HELP, Keyword::Help))
}

/// The keyword `text` consists of, if any (see the module docs for the rules).
pub fn parse(text: &str) -> Option<Keyword> {
    matched(text).map(|m| m.keyword)
}

/// Like [`parse`], also naming the canonical word that matched.
pub fn matched(text: &str) -> Option<Match> {
    // Keywords are short; a long text cannot be one, and this bounds the work on hostile input.
    const LONGEST_INPUT: usize = 256;
    if text.len() > LONGEST_INPUT {
        return None;
    }
    let normal = normalize(text);
    all_keywords()
        .find(|(word, _)| *word == normal)
        .map(|(word, keyword)| Match { keyword, word })
}

/// Whether `text` contains an opt-out keyword as a whole word (or, for "OPT OUT" / "STOP ALL",
/// as whole words), anywhere: "Please STOP texting me" → true, "nonstop" → false. Not a
/// [`Keyword`]: this is a flag for review, since "can't stop laughing" mentions one too.
pub fn mentions_opt_out(text: &str) -> bool {
    // Bounds the work on hostile input; opt-out requests are short.
    const LONGEST_INPUT: usize = 4096;
    if text.len() > LONGEST_INPUT {
        return false;
    }
    // Words: runs of letters/digits (and '-', for OPT-OUT); everything else separates them.
    let normal = normalize(text);
    let words: Vec<&str> = normal
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let opt_out = |phrase: &str| {
        let parts: Vec<&str> = phrase.split(' ').collect();
        words.windows(parts.len()).any(|w| w == parts.as_slice())
    };
    STOP_ALL.iter().chain(STOP).any(|phrase| opt_out(phrase))
}

/// Trailing marks that do not change what a keyword says.
fn is_trailing_mark(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ',' | ';' | ':' | '…')
}

/// Upper-cases, drops combining marks, trims whitespace and punctuation as documented, and
/// collapses inner whitespace runs to one space.
fn normalize(text: &str) -> String {
    let trimmed = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '¡' || c == '¿')
        .trim_end_matches(|c: char| c.is_whitespace() || is_trailing_mark(c));
    let mut out = String::with_capacity(trimmed.len());
    let mut in_space = false;
    for c in trimmed.chars() {
        if c.is_whitespace() {
            in_space = true;
            continue;
        }
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        if in_space {
            out.push(' ');
            in_space = false;
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_keywords_parse() {
        assert_eq!(parse("STOP"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("stopall"), Some(Keyword::Stop { all: true }));
        assert_eq!(parse("Stop  All"), Some(Keyword::Stop { all: true }));
        assert_eq!(parse("unsubscribe"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("opt out"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("start"), Some(Keyword::Start));
        assert_eq!(parse("Yes"), Some(Keyword::Start));
        assert_eq!(parse("unstop"), Some(Keyword::Start));
        assert_eq!(parse("help"), Some(Keyword::Help));
        assert_eq!(parse("Info"), Some(Keyword::Help));
    }

    #[test]
    fn localized_keywords_parse_in_any_case() {
        assert_eq!(parse("стоп"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("СтОп"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("¡Alto!"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("arrêt"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("ARRET"), Some(Keyword::Stop { all: false }));
        // Decomposed Ê (E + combining circumflex).
        assert_eq!(parse("arre\u{302}t"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("Arrêt !"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("старт"), Some(Keyword::Start));
        assert_eq!(parse("ayuda"), Some(Keyword::Help));
        assert_eq!(
            matched("  arrêt. ").map(|m| m.word),
            Some("ARRÊT"),
            "the canonical word is reported, not the text"
        );
    }

    #[test]
    fn whitespace_and_trailing_punctuation_are_ignored() {
        assert_eq!(parse(" \t\nSTOP\r\n "), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("stop."), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("stop!!!"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("Stop?!"), Some(Keyword::Stop { all: false }));
        assert_eq!(parse("STOP\u{a0}ALL"), Some(Keyword::Stop { all: true }));
        assert_eq!(parse("help…"), Some(Keyword::Help));
    }

    #[test]
    fn sentences_and_lookalikes_are_not_keywords() {
        for text in [
            "",
            "   ",
            "!",
            "please stop sending",
            "stop sending me these",
            "don't stop",
            "S T O P",
            "ST OP",
            "ST.OP",
            ".stop",
            "stopped",
            "nonstop",
            "stop stop",
            "YE S",
            "yess",
            "helpful",
            "information",
            "endless",
            "STOP ALL NOW",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert_eq!(parse(&"stop ".repeat(100)), None);
    }

    #[test]
    fn mentions_flag_sentences_but_not_inner_words() {
        for text in [
            "Please STOP texting me",
            "stop",
            "unsubscribe me now!",
            "I want to opt out.",
            "opt-out please",
            "хватит, стоп",
            "Stop, all of you",
        ] {
            assert!(mentions_opt_out(text), "{text:?}");
        }
        for text in ["nonstop fun", "stopped", "the ending", "optout2", "", "yes"] {
            assert!(!mentions_opt_out(text), "{text:?}");
        }
        assert!(!mentions_opt_out(&"a".repeat(5000)));
    }

    /// Any casing of `word`, chosen by `flips` (one bit per char).
    fn recase(word: &str, flips: &[bool]) -> String {
        word.chars()
            .zip(flips.iter().cycle())
            .flat_map(|(c, flip)| {
                let s: String = if *flip {
                    c.to_lowercase().collect()
                } else {
                    c.to_uppercase().collect()
                };
                s.chars().collect::<Vec<_>>()
            })
            .collect()
    }

    fn whitespace() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just(' '),
                Just('\t'),
                Just('\n'),
                Just('\r'),
                Just('\u{a0}')
            ],
            0..4,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn any_casing_and_padding_parses(
            index in 0..all_keywords().count(),
            flips in proptest::collection::vec(any::<bool>(), 1..16),
            before in whitespace(),
            after in whitespace(),
            inner in whitespace(),
            marks in proptest::collection::vec(
                prop_oneof![Just('.'), Just('!'), Just('?'), Just('…')], 0..3),
        ) {
            let (word, keyword) = all_keywords().nth(index).expect("index in range");
            let mut word = recase(word, &flips);
            if !inner.is_empty() {
                // Inner runs of whitespace count as one space in multi-word keywords.
                word = word.replace(' ', &format!(" {inner}"));
            }
            let marks: String = marks.into_iter().collect();
            let text = format!("{before}{word}{marks}{after}");
            prop_assert_eq!(parse(&text), Some(keyword), "{:?}", text);
        }

        #[test]
        fn words_containing_stop_are_not_stop(
            prefix in "[a-zA-Z]{0,6}",
            suffix in "[a-zA-Z]{0,6}",
            flips in proptest::collection::vec(any::<bool>(), 1..8),
        ) {
            prop_assume!(!(prefix.is_empty() && suffix.is_empty()));
            let text = format!("{prefix}{}{suffix}", recase("stop", &flips));
            let parsed = parse(&text);
            // "stopall" is the one genuine keyword of this shape.
            if text.to_uppercase() == "STOPALL" {
                prop_assert_eq!(parsed, Some(Keyword::Stop { all: true }));
            } else {
                prop_assert_eq!(parsed, None, "{:?}", text);
            }
        }

        #[test]
        fn sentences_mentioning_stop_are_not_stop(
            before in "[a-z]{1,8}( [a-z]{1,8}){0,3}",
            after in "[a-z]{1,8}( [a-z]{1,8}){0,3}",
            lead in any::<bool>(),
        ) {
            let text = if lead { format!("stop {after}") } else { format!("{before} stop") };
            // Only the two-word keyword "stop all" may parse; nothing else with words around STOP.
            let parsed = parse(&text);
            if text.to_uppercase() == "STOP ALL" {
                prop_assert_eq!(parsed, Some(Keyword::Stop { all: true }));
            } else {
                prop_assert!(!matches!(parsed, Some(Keyword::Stop { .. })), "{:?}", text);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
            let _ = mentions_opt_out(&text);
        }

        #[test]
        fn every_stop_keyword_is_mentioned(
            index in 0..all_keywords().count(),
            before in "[a-z]{1,8}",
            after in "[a-z]{1,8}",
        ) {
            let (word, keyword) = all_keywords().nth(index).expect("index in range");
            let text = format!("{before} {} {after}", word.to_lowercase());
            if matches!(keyword, Keyword::Stop { .. }) {
                prop_assert!(mentions_opt_out(&text), "{:?}", text);
            }
        }
    }
}
