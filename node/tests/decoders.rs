//! The node's decoders of outside input, under random input: message templates (minijinja, with
//! fuel), phone numbers and email addresses (validation, time zones from a number), STOP/START
//! keywords of inbound SMS, config files with `HERALD_*` overrides. The property: no panic —
//! bad input is an error naming what is wrong, never a crash.
//!
//! Cases per property: `PROPTEST_CASES` (CI runs the default, 256; a long run sets it high).

use std::collections::BTreeMap;
use std::io::Write as _;

use herald_node::config::{NodeConfig, load};
use herald_node::content::template;
use herald_node::policy::{keywords, timezones};
use herald_node::validate;
use herald_proto::v1::{Content, EmailContent, PushContent, Recipient, SmsContent};
use proptest::prelude::*;

/// Template text: fragments of minijinja syntax, well-formed or not, with random text between.
fn template_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("{{ name }}".to_owned()),
            Just("{{ name | upper }}".to_owned()),
            Just("{{ name | default('x') | truncate(3) }}".to_owned()),
            Just("{{".to_owned()),
            Just("}}".to_owned()),
            Just("{% if name %}".to_owned()),
            Just("{% endif %}".to_owned()),
            Just("{% for c in name %}{{ c }}{% endfor %}".to_owned()),
            Just("{% for i in range(100000) %}{{ i }}{% endfor %}".to_owned()),
            Just("{% raw %}".to_owned()),
            Just("{# x".to_owned()),
            Just("{{ name ~ name ~ name ~ name }}".to_owned()),
            Just("{{ undefined.deep.attr }}".to_owned()),
            Just("{{ 1 / 0 }}".to_owned()),
            Just("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}".to_owned()),
            ".{0,12}",
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn phone() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\+[0-9]{0,17}",
        "[0-9+() -]{0,20}",
        ".{0,20}",
        Just("+12125551234".to_owned()),
        Just("+4930123456".to_owned()),
    ]
}

fn email() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z.+-]{0,10}@[a-z.-]{0,10}",
        ".{0,30}",
        Just("a@b.c".to_owned()),
        Just("\"quoted\"@example.com".to_owned()),
        Just("x@[127.0.0.1]".to_owned()),
    ]
}

/// A config file: known keys and tables with random values, and random lines.
fn config_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"x\"".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("1.5e300".to_owned()),
        Just("nan".to_owned()),
        "\"[ -~]{0,10}\"",
    ];
    let key = prop_oneof![
        Just("listen_addr"),
        Just("node_id"),
        Just("weight"),
        Just("lease_ttl_ms"),
        Just("lease_renew_interval_ms"),
        Just("batch_max"),
        Just("api_key_recheck_ms"),
        Just("contact_index_secret"),
        Just("rate_limit_margin"),
        Just("[tls]\nmode"),
        Just("[api_tls]\ncert"),
        Just("[store]\nredis_url"),
        Just("[[tenants]]\nid"),
        Just("[[tenants]]\nretention_days"),
        Just("[sandbox]\nlatency_ms"),
        Just("unknown_key"),
    ];
    prop::collection::vec(
        prop_oneof![
            (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            ".{0,20}",
        ],
        0..10,
    )
    .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn templates_never_panic(title in template_text(), body in template_text(), text in template_text(), var in ".{0,40}") {
        let content = Content {
            push: Some(PushContent { title, body: body.clone(), data: Default::default() }),
            email: Some(EmailContent { subject: body.clone(), text_body: body.clone(), html_body: body }),
            sms: Some(SmsContent { text }),
        };
        let vars = BTreeMap::from([("name".to_owned(), var)]);
        let _ = template::render(&content, &vars);
    }

    #[test]
    fn contact_points_never_panic(phone in phone(), email in email(), zone in ".{0,20}") {
        let recipient = Recipient {
            id: "r1".into(),
            phone: phone.clone(),
            email: email.clone(),
            time_zone: zone.clone(),
            ..Default::default()
        };
        let _ = validate::recipient("recipient", &recipient);
        let _ = validate::is_email(&email);
        let _ = timezones::resolve(&zone, &phone, chrono_tz::UTC);
    }

    #[test]
    fn keywords_never_panic(text in prop_oneof![".{0,40}", "(STOP|START|HELP|stop all|UNSUBSCRIBE)[ -~]{0,10}"]) {
        let _ = keywords::parse(&text);
    }

    #[test]
    fn config_files_never_panic(text in config_text(), env_value in ".{0,20}") {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        let env = vec![
            ("HERALD_WEIGHT".to_owned(), env_value.clone()),
            ("HERALD_STORE__KEY_PREFIX".to_owned(), env_value),
        ];
        if let Ok(config) = load::<NodeConfig>(Some(file.path()), env) {
            let _ = config.validate();
            for tenant in &config.tenants {
                let _ = tenant.validate();
            }
        }
    }
}
