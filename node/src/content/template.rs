//! Personalization: message content fields as [minijinja] templates.
//!
//! Owns the template language of message content: which fields are templates, which variables
//! they see, how text is escaped, and the bounds on a render (time and size). Must never log,
//! trace or put into metrics a content field, a rendered field or a variable: all of them carry
//! personal data. Errors name the field (`content.email.subject`) and, for an undefined variable,
//! the variable's *name*; the caller may return them to the client who sent the message, and
//! should log only [`TemplateError::field`] and the kind.
//!
//! # Which fields, which escaping
//! Every text field of [`Content`] is a template: push `title`, `body` and every `data` *value*
//! (keys are not templates), email `subject`, `text_body`, `html_body`, SMS `text`.
//! Only `email.html_body` HTML-escapes what its expressions print (`<`, `>`, `&`, `"`, `'`,
//! `/`), so a variable cannot inject markup; a variable that must print raw HTML needs the
//! explicit `|safe` filter. The other fields are plain text and print variables as they are:
//! escaping them would put `&amp;` in an SMS.
//!
//! A field is a template only if it contains `{{`, `{%` or `{#`. Most messages contain none:
//! [`render`] then returns the content borrowed ([`Cow::Borrowed`]) without touching the engine
//! or allocating.
//!
//! # Variables
//! Templates see one flat map of string variables: the recipient's attributes overlaid by the
//! message's own variables — on a name clash **the message variable wins** ([`merge_vars`]
//! builds that map). All values are strings: compare numbers with `{{ n|int > 3 }}`.
//!
//! Undefined variables are errors, never empty strings ([`UndefinedBehavior::Strict`]):
//! `{{ first_name }}` with no `first_name` fails with `undefined variable "first_name"`, and
//! so does `{% if first_name %}`. Two ways make a variable optional, both legal under Strict:
//! `{{ first_name|default("there") }}` and `{% if first_name is defined %}`. (`default` replaces
//! an *undefined* variable only; `default("there", true)` also replaces an empty one.)
//!
//! # The allowed subset
//! Templates come from API clients, so only a subset of the language is accepted, checked on
//! the template's tokens before it is compiled ([`TemplateErrorKind::NotAllowed`] names the
//! construct): statements `if`/`elif`/`else`/`endif` and `for`/`endfor` only (no `set`,
//! `macro`, `include`, `filter`, `with`: they are how a short template builds huge strings);
//! the filters in [`ALLOWED_FILTERS`] only (no `replace`, `join`, `indent`, `format`: their
//! output can be the square of their input); no `*` or `**` (a string times a number is a
//! string of up to 100 MB); at most [`MAX_CONCATENATIONS`] `~` or `+` per field. Every test
//! (`is defined`, `is number`, …) is allowed, and the one function is `range`.
//!
//! Fuel counts steps, not bytes, so the allowed filters and `range` also draw on a work budget
//! of [`WORK_MAX`] units per field: a filter call costs the bytes of its string arguments, a
//! `range(n)` costs `n`. A personalized greeting spends a few dozen.
//!
//! # Bounds
//! Each field renders with at most [`TEMPLATE_FUEL`] engine steps (a loop cannot run forever)
//! and to at most [`RENDERED_FIELD_MAX_BYTES`], and may use variables of at most
//! [`VAR_MAX_BYTES`] each (a larger one is an error when a template uses it; unused ones do
//! not matter). The filters' and ranges' work is bounded by [`WORK_MAX`]; what the engine does
//! itself (concatenations, comparisons) by `TEMPLATE_FUEL × MAX_CONCATENATIONS ×
//! VAR_MAX_BYTES` bytes. After rendering, the channel limits of
//! the submit-time validation are checked again (a one-line subject, SMS length, push payload), since a
//! variable can make a valid template render to an invalid message (a line break in a subject
//! would be a header injection).
//!
//! # When
//! [`check`] runs at submit time with the same variables [`render`] will get at delivery: it is
//! a full render whose output is dropped, so anything that would fail at delivery fails at
//! submit instead. If the recipient's attributes change in between, [`render`] can still fail.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use herald_proto::error::Error;
use herald_proto::v1::{Content, EmailContent, PushContent, SmsContent};
use minijinja::value::{Enumerator, Object, ObjectRepr, Rest, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use parking_lot::Mutex;

use super::limits::{
    EMAIL_SUBJECT_MAX_BYTES, PUSH_PAYLOAD_MAX_BYTES, SMS_TEXT_MAX_CHARS, VAR_MAX_BYTES,
};

/// Engine steps one field may take (most instructions cost 1). A personalized message takes a
/// few hundred; a loop over a thousand items a few thousand. Beyond this the template is
/// refused: it is almost certainly a mistake, and it would hold an actor's thread.
pub const TEMPLATE_FUEL: u64 = 20_000;

/// Work units one field may spend in filters and `range` (see the module docs): 1 MiB of
/// filter input, or a million range items. A template that needs more is refused.
pub const WORK_MAX: usize = 1 << 20;

/// The filters a template may use: each one's output is at most linear in its input.
pub const ALLOWED_FILTERS: &[&str] = &[
    "abs",
    "capitalize",
    "count",
    "d",
    "default",
    "e",
    "escape",
    "first",
    "float",
    "int",
    "last",
    "length",
    "lower",
    "reverse",
    "round",
    "safe",
    "string",
    "title",
    "trim",
    "upper",
];

/// The statements a template may use.
const ALLOWED_STATEMENTS: &[&str] = &["if", "elif", "else", "endif", "for", "endfor"];

/// Most `~` and `+` operators in one field. A chain of `n` concatenations copies its
/// accumulator `n` times, so the cost grows with the square of `n`; eight covers any greeting.
pub const MAX_CONCATENATIONS: usize = 8;

/// Largest rendered field, in bytes: the API's default `max_message_bytes` (64 KiB), so a
/// render cannot produce more than a client could have sent.
pub const RENDERED_FIELD_MAX_BYTES: usize = 64 * 1024;

/// Nesting limit for the engine (macros, nested blocks). Message templates need a handful;
/// a low limit keeps a hostile template far from the stack of the actor's thread.
const RECURSION_LIMIT: usize = 64;

/// Field names, as they appear in errors (`content.email.subject`) and as the engine's template
/// names (which is how the HTML field gets its escaping).
const PUSH_TITLE: &str = "content.push.title";
const PUSH_BODY: &str = "content.push.body";
const EMAIL_SUBJECT: &str = "content.email.subject";
const EMAIL_TEXT: &str = "content.email.text_body";
const EMAIL_HTML: &str = "content.email.html_body";
const SMS_TEXT: &str = "content.sms.text";

/// A template that cannot be rendered. `field` is the path of the field inside the message
/// (`content.email.subject`, `content.push.data["order"]`); [`TemplateError::into_invalid`]
/// prefixes it with the message's own path for the API.
///
/// The text may quote the template (the client's own input) but never a variable's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {kind}")]
pub struct TemplateError {
    /// The field, relative to the message: `content.sms.text`.
    pub field: String,
    /// What went wrong.
    pub kind: TemplateErrorKind,
}

/// Why a field cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateErrorKind {
    /// The template does not parse; says what and where (line, column).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A variable the template prints or tests is not defined. Holds its name.
    #[error("undefined variable \"{0}\"")]
    UndefinedVariable(String),
    /// An undefined value that is not a plain variable (e.g. `{{ name.first }}`); says where.
    #[error("undefined value{0}")]
    Undefined(String),
    /// The template uses a construct outside the allowed subset (module docs); says which
    /// and where.
    #[error("{0}")]
    NotAllowed(String),
    /// The template uses a variable larger than [`VAR_MAX_BYTES`]: its name and size.
    #[error("variable \"{0}\" is {1} bytes, templates use variables of at most {VAR_MAX_BYTES}")]
    VariableTooLarge(String, usize),
    /// The template's filters and ranges did more than [`WORK_MAX`] units of work.
    #[error("template's filters and ranges do more than {0} units of work (a loop too long?)")]
    TooMuchWork(usize),
    /// The template took more than [`TEMPLATE_FUEL`] steps.
    #[error("template takes more than {0} steps (a loop too long?)")]
    OutOfFuel(u64),
    /// The rendered field is larger than [`RENDERED_FIELD_MAX_BYTES`].
    #[error("renders to more than {0} bytes")]
    TooLarge(usize),
    /// The rendered field breaks a channel rule (multi-line subject, SMS too long, push payload
    /// too big).
    #[error("{0}")]
    Invalid(String),
    /// Any other render failure (a bad filter argument, an unknown filter, …).
    #[error("{0}")]
    Render(String),
}

impl TemplateError {
    fn new(field: impl Into<String>, kind: TemplateErrorKind) -> Self {
        Self {
            field: field.into(),
            kind,
        }
    }

    /// The field, relative to the message (`content.email.subject`): safe to log.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The API error, with the field under the message's path `prefix` (`message`,
    /// `messages[3]`): `message.content.email.subject: undefined variable "first_name"`.
    pub fn into_invalid(self, prefix: &str) -> Error {
        Error::invalid(format!("{prefix}.{}", self.field), self.kind.to_string())
    }
}

/// The variables for a message: the recipient's `attributes` overlaid by the message's own
/// `message_vars` (the message wins on a clash: it is the more specific).
pub fn merge_vars(
    attributes: &BTreeMap<String, String>,
    message_vars: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars = attributes.clone();
    vars.extend(
        message_vars
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    vars
}

/// True if the text is a template (contains `{{`, `{%` or `{#`). Plain text is never handed to
/// the engine. `{#` counts too, so a comment behaves the same in every field.
pub fn is_template(text: &str) -> bool {
    // Runs on every field of every message: a fast search for `{`, then one byte after it.
    let bytes = text.as_bytes();
    text.match_indices('{')
        .any(|(at, _)| matches!(bytes.get(at + 1), Some(b'{' | b'%' | b'#')))
}

/// True if any field of the content is a template.
pub fn has_templates(content: &Content) -> bool {
    let push = content.push.as_ref().is_some_and(|p| {
        is_template(&p.title) || is_template(&p.body) || p.data.values().any(|v| is_template(v))
    });
    let email = content.email.as_ref().is_some_and(|e| {
        is_template(&e.subject) || is_template(&e.text_body) || is_template(&e.html_body)
    });
    let sms = content.sms.as_ref().is_some_and(|s| is_template(&s.text));
    push || email || sms
}

/// Submit-time check: every template in `content` parses and renders with `vars` (every
/// variable used is defined, within the bounds), and the result still fits its channel.
/// `vars` must be what [`render`] will get (see [`merge_vars`]).
pub fn check(content: &Content, vars: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    render(content, vars).map(|_| ())
}

/// Renders every template field of `content` with `vars`. Content without templates comes
/// back borrowed, untouched; otherwise the non-template fields are copied as they are.
pub fn render<'c>(
    content: &'c Content,
    vars: &BTreeMap<String, String>,
) -> Result<Cow<'c, Content>, TemplateError> {
    if !has_templates(content) {
        return Ok(Cow::Borrowed(content));
    }
    let renderer = Renderer::new(vars);
    let push = content
        .push
        .as_ref()
        .map(|push| render_push(&renderer, push))
        .transpose()?;
    let email = content
        .email
        .as_ref()
        .map(|email| render_email(&renderer, email))
        .transpose()?;
    let sms = content
        .sms
        .as_ref()
        .map(|sms| render_sms(&renderer, sms))
        .transpose()?;
    Ok(Cow::Owned(Content { push, email, sms }))
}

fn render_push(renderer: &Renderer, push: &PushContent) -> Result<PushContent, TemplateError> {
    let templated = is_template(&push.title)
        || is_template(&push.body)
        || push.data.values().any(|v| is_template(v));
    if !templated {
        return Ok(push.clone());
    }
    let mut data = BTreeMap::new();
    for (key, value) in &push.data {
        let value = if is_template(value) {
            renderer.field(&format!("content.push.data[{key:?}]"), value)?
        } else {
            value.clone()
        };
        data.insert(key.clone(), value);
    }
    let rendered = PushContent {
        title: renderer.field(PUSH_TITLE, &push.title)?,
        body: renderer.field(PUSH_BODY, &push.body)?,
        data,
    };
    // Same arithmetic as validate::check_content: title + body + data keys and values.
    let size = rendered.title.len()
        + rendered.body.len()
        + rendered
            .data
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > PUSH_PAYLOAD_MAX_BYTES {
        return Err(TemplateError::new(
            "content.push",
            TemplateErrorKind::Invalid(format!(
                "renders to a {size}-byte payload, the limit is {PUSH_PAYLOAD_MAX_BYTES}"
            )),
        ));
    }
    Ok(rendered)
}

fn render_email(renderer: &Renderer, email: &EmailContent) -> Result<EmailContent, TemplateError> {
    let subject = renderer.field(EMAIL_SUBJECT, &email.subject)?;
    if is_template(&email.subject)
        && (subject.len() > EMAIL_SUBJECT_MAX_BYTES || subject.contains(['\r', '\n']))
    {
        // A line break from a variable would start a new header: refuse, never fold.
        return Err(TemplateError::new(
            EMAIL_SUBJECT,
            TemplateErrorKind::Invalid(format!(
                "must render to one line of at most {EMAIL_SUBJECT_MAX_BYTES} bytes"
            )),
        ));
    }
    Ok(EmailContent {
        subject,
        text_body: renderer.field(EMAIL_TEXT, &email.text_body)?,
        html_body: renderer.field(EMAIL_HTML, &email.html_body)?,
    })
}

fn render_sms(renderer: &Renderer, sms: &SmsContent) -> Result<SmsContent, TemplateError> {
    let text = renderer.field(SMS_TEXT, &sms.text)?;
    if is_template(&sms.text) {
        let chars = text.chars().count();
        if chars > SMS_TEXT_MAX_CHARS {
            return Err(TemplateError::new(
                SMS_TEXT,
                TemplateErrorKind::Invalid(format!(
                    "renders to {chars} characters, the limit is {SMS_TEXT_MAX_CHARS}"
                )),
            ));
        }
    }
    Ok(SmsContent { text })
}

/// The one engine configuration, built on first use and never changed (no mutable global
/// state). Templates are compiled per render and dropped: there is no template cache.
fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        // Debug info copies the template and the variables into errors: personal data.
        env.set_debug(false);
        // A body ending in a newline keeps it: rendering must not change plain text.
        env.set_keep_trailing_newline(true);
        // `debug()` would print the whole context (every attribute of the recipient) into a
        // message; a template names the variables it sends. `dict` and `namespace` only
        // serve statements the subset refuses. `range` stays (lazy, at most 100,000 items).
        for global in ["debug", "dict", "namespace"] {
            env.remove_global(global);
        }
        // The allowed filters and `range`, wrapped to draw on the work budget. The others stay
        // registered, but `allowed` refuses a template that names them.
        for &name in ALLOWED_FILTERS {
            if let Some(filter) = builtin_filter(name) {
                env.add_filter(name, move |state: &State, args: Rest<Value>| {
                    spend(args.iter().map(work_of).sum())?;
                    filter.call(state, &args)
                });
            }
        }
        let range = Value::from_function(minijinja::functions::range);
        env.add_function("range", move |state: &State, args: Rest<Value>| {
            spend(range_len(&args))?;
            range.call(state, &args)
        });
        // Template names are field names; only the HTML body escapes.
        env.set_auto_escape_callback(|name| {
            if name == EMAIL_HTML {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env
    })
}

/// The builtin behind each allowed filter name; `None` for a name not in the table (the
/// `every_allowed_filter_works` test keeps the two lists in step).
fn builtin_filter(name: &str) -> Option<Value> {
    use minijinja::filters as f;
    Some(match name {
        "abs" => Value::from_function(f::abs),
        "capitalize" => Value::from_function(f::capitalize),
        "count" | "length" => Value::from_function(f::length),
        "d" | "default" => Value::from_function(f::default),
        "e" | "escape" => Value::from_function(f::escape),
        "first" => Value::from_function(f::first),
        "float" => Value::from_function(f::float),
        "int" => Value::from_function(f::int),
        "last" => Value::from_function(f::last),
        "lower" => Value::from_function(f::lower),
        "reverse" => Value::from_function(f::reverse),
        "round" => Value::from_function(f::round),
        "safe" => Value::from_function(f::safe),
        "string" => Value::from_function(f::string),
        "title" => Value::from_function(f::title),
        "trim" => Value::from_function(f::trim),
        "upper" => Value::from_function(f::upper),
        _ => return None,
    })
}

/// Work of one filter argument: its bytes if a string, its length if a sequence, else 1.
fn work_of(value: &Value) -> usize {
    value
        .as_str()
        .map(str::len)
        .or_else(|| value.len())
        .unwrap_or(1)
}

/// Items of `range(stop)` / `range(start, stop[, step])`, from its arguments; `range` itself
/// refuses what this cannot count, so an unreadable argument costs 1.
fn range_len(args: &[Value]) -> usize {
    let int = |i: usize| args.get(i).and_then(|v| i64::try_from(v.clone()).ok());
    let (start, stop) = match (int(0), int(1)) {
        (Some(stop), None) => (0, stop),
        (Some(start), Some(stop)) => (start, stop),
        _ => return 1,
    };
    let step = int(2).unwrap_or(1).unsigned_abs().max(1);
    usize::try_from(stop.abs_diff(start) / step).unwrap_or(usize::MAX)
}

thread_local! {
    /// Work left for the field being rendered on this thread, and whether it ran out. A
    /// render is synchronous (no `.await` inside), so the field that set it is the one that
    /// spends it: one word per thread, reset by every field.
    static WORK_LEFT: Cell<usize> = const { Cell::new(0) };
    static WORK_EXHAUSTED: Cell<bool> = const { Cell::new(false) };
}

/// Draws `units` from this field's work budget.
fn spend(units: usize) -> Result<(), minijinja::Error> {
    let left = WORK_LEFT.get();
    if units > left {
        WORK_EXHAUSTED.set(true);
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "work budget exhausted",
        ));
    }
    WORK_LEFT.set(left - units);
    Ok(())
}

/// Renders the fields of one message with one set of variables.
struct Renderer {
    vars: Arc<Vars>,
}

impl Renderer {
    fn new(vars: &BTreeMap<String, String>) -> Self {
        // The engine's context must be 'static: one copy of the map per message (not per
        // field), made only when the message has templates.
        Self {
            vars: Arc::new(Vars {
                map: vars.clone(),
                last_missing: Mutex::new(None),
                too_large: Mutex::new(None),
            }),
        }
    }

    /// Renders `source` as the field `name`; plain text is copied without the engine.
    fn field(&self, name: &str, source: &str) -> Result<String, TemplateError> {
        if !is_template(source) {
            return Ok(source.to_owned());
        }
        allowed(name, source)?;
        let env = environment();
        let template = env
            .template_from_named_str(name, source)
            .map_err(|err| TemplateError::new(name, syntax_error(source, &err)))?;
        *self.vars.last_missing.lock() = None;
        *self.vars.too_large.lock() = None;
        WORK_LEFT.set(WORK_MAX);
        WORK_EXHAUSTED.set(false);
        let mut out = Bounded {
            buf: Vec::with_capacity(source.len()),
            limit: RENDERED_FIELD_MAX_BYTES,
            exceeded: false,
        };
        let result =
            template.render_captured_to(Value::from_dyn_object(self.vars.clone()), &mut out);
        // A variable over the limit was hidden from the template; whether that made it fail or
        // a `default` stepped in, the field is refused with the real reason.
        if let Some((variable, bytes)) = self.vars.too_large.lock().take() {
            return Err(TemplateError::new(
                name,
                TemplateErrorKind::VariableTooLarge(variable, bytes),
            ));
        }
        if let Err(err) = result {
            let kind = if out.exceeded {
                TemplateErrorKind::TooLarge(RENDERED_FIELD_MAX_BYTES)
            } else if WORK_EXHAUSTED.get() {
                TemplateErrorKind::TooMuchWork(WORK_MAX)
            } else {
                self.runtime_error(env, source, &err)
            };
            return Err(TemplateError::new(name, kind));
        }
        // The engine writes whole `str`s and `Bounded` takes a write whole or not at all, so
        // the bytes are UTF-8; still, nothing from outside is unwrapped.
        String::from_utf8(out.buf).map_err(|_| {
            TemplateError::new(
                name,
                TemplateErrorKind::Render("rendered text is not UTF-8".into()),
            )
        })
    }

    fn runtime_error(
        &self,
        env: &Environment<'_>,
        source: &str,
        err: &minijinja::Error,
    ) -> TemplateErrorKind {
        match err.kind() {
            ErrorKind::OutOfFuel => TemplateErrorKind::OutOfFuel(TEMPLATE_FUEL),
            ErrorKind::UndefinedError => {
                // The engine does not say which name was undefined; the context records the
                // last name it was asked for and did not have. Trust it only if the failing
                // expression mentions that name (a `default`ed lookup earlier must not be
                // blamed for `{{ name.first }}`) and it is not a global function like `range`.
                let missing = self.vars.last_missing.lock().take();
                match missing {
                    Some(name)
                        if !env.globals().any(|(global, _)| global == name)
                            && expression_mentions(source, err, &name) =>
                    {
                        TemplateErrorKind::UndefinedVariable(name)
                    }
                    _ => TemplateErrorKind::Undefined(format!(
                        "{}{}",
                        expression(source, err),
                        location(source, err)
                    )),
                }
            }
            kind => {
                let what = err
                    .detail()
                    .map_or_else(|| kind.to_string(), |d| format!("{kind}: {d}"));
                TemplateErrorKind::Render(format!("{what}{}", location(source, err)))
            }
        }
    }
}

/// Checks `source` against the allowed subset (module docs), on the engine's own tokens.
/// A token the lexer cannot read ends the check: compiling reports that syntax error, with its
/// place, right after.
fn allowed(field: &str, source: &str) -> Result<(), TemplateError> {
    use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
    use minijinja::syntax::SyntaxConfig;

    #[derive(Clone, Copy, PartialEq)]
    enum After {
        BlockStart,
        Pipe,
        Other,
    }
    let refuse = |what: String, line: u16, column: u16| {
        Err(TemplateError::new(
            field,
            TemplateErrorKind::NotAllowed(format!(
                "{what} (line {line}, column {})",
                u32::from(column) + 1
            )),
        ))
    };
    let mut after = After::Other;
    let mut concatenations = 0;
    // A unit struct only while minijinja's `custom_syntax` feature is off; `default()` is
    // right either way.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    let tokens = tokenize(source, false, syntax, WhitespaceConfig::default());
    for token in tokens {
        let Ok((token, span)) = token else {
            return Ok(());
        };
        let (line, column) = (span.start_line, span.start_col);
        match (after, &token) {
            (After::BlockStart, Token::Ident(statement))
                if !ALLOWED_STATEMENTS.contains(statement) =>
            {
                return refuse(
                    format!("statement \"{statement}\" is not allowed (only if and for)"),
                    line,
                    column,
                );
            }
            (After::Pipe, Token::Ident(filter)) if !ALLOWED_FILTERS.contains(filter) => {
                return refuse(
                    format!(
                        "filter \"{filter}\" is not allowed (allowed: {})",
                        ALLOWED_FILTERS.join(", ")
                    ),
                    line,
                    column,
                );
            }
            (_, Token::Mul | Token::Pow) => {
                return refuse("operators * and ** are not allowed".into(), line, column);
            }
            (_, Token::Tilde | Token::Plus) => {
                concatenations += 1;
                if concatenations > MAX_CONCATENATIONS {
                    return refuse(
                        format!("more than {MAX_CONCATENATIONS} ~ or + operators"),
                        line,
                        column,
                    );
                }
            }
            _ => {}
        }
        after = match token {
            Token::BlockStart => After::BlockStart,
            Token::Pipe => After::Pipe,
            _ => After::Other,
        };
    }
    Ok(())
}

/// Says what is wrong with a template that does not compile, and where.
fn syntax_error(source: &str, err: &minijinja::Error) -> TemplateErrorKind {
    let what = match (err.kind(), err.detail()) {
        (ErrorKind::SyntaxError, Some(detail)) => detail.to_owned(),
        (kind, Some(detail)) => format!("{kind}: {detail}"),
        (kind, None) => kind.to_string(),
    };
    TemplateErrorKind::Syntax(format!("{what}{}", location(source, err)))
}

/// ` (line 2, column 7)` from the error's span, or ` (line 2)`, or nothing.
fn location(source: &str, err: &minijinja::Error) -> String {
    if let Some(before) = err.range().and_then(|r| source.get(..r.start)) {
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        return format!(" (line {line}, column {column})");
    }
    err.line()
        .map_or_else(String::new, |line| format!(" (line {line})"))
}

/// ` in "name.first"`: the failing expression, from the template (the client's own text,
/// never a variable's value), shortened to 60 characters; empty without a span.
fn expression(source: &str, err: &minijinja::Error) -> String {
    let Some(expr) = err.range().and_then(|r| source.get(r)) else {
        return String::new();
    };
    let expr = expr.trim();
    if expr.is_empty() {
        return String::new();
    }
    if expr.chars().count() > 60 {
        let short: String = expr.chars().take(60).collect();
        return format!(" in \"{short}…\"");
    }
    format!(" in \"{expr}\"")
}

/// True if the source text of the failing expression contains `name` as a whole identifier,
/// or if the engine gave no span to check against.
fn expression_mentions(source: &str, err: &minijinja::Error, name: &str) -> bool {
    let Some(expr) = err.range().and_then(|r| source.get(r)) else {
        return true;
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    expr.match_indices(name).any(|(at, _)| {
        let before = expr[..at].chars().next_back();
        let after = expr[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// The template context: the variables, the last name looked up that was not one of them
/// (the engine's undefined error does not carry it), and the first variable looked up that
/// was over [`VAR_MAX_BYTES`] (hidden from the template, reported after the render).
struct Vars {
    map: BTreeMap<String, String>,
    last_missing: Mutex<Option<String>>,
    too_large: Mutex<Option<(String, usize)>>,
}

impl fmt::Debug for Vars {
    /// Names and values are personal data: only the count is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vars({} variables)", self.map.len())
    }
}

impl Object for Vars {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str().and_then(|key| self.get_value_by_str(key))
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        match self.map.get(key) {
            Some(value) if value.len() > VAR_MAX_BYTES => {
                self.too_large
                    .lock()
                    .get_or_insert_with(|| (key.to_owned(), value.len()));
                None
            }
            Some(value) => Some(Value::from(value.as_str())),
            None => {
                *self.last_missing.lock() = Some(key.to_owned());
                None
            }
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.map.keys().map(|k| Value::from(k.as_str())).collect())
    }
}

/// An output that refuses to grow past `limit`. A write is taken whole or refused whole, so
/// the buffer always holds complete `str`s.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("rendered field too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sms(text: &str) -> Content {
        Content {
            sms: Some(SmsContent { text: text.into() }),
            ..Default::default()
        }
    }

    fn email(subject: &str, text_body: &str, html_body: &str) -> Content {
        Content {
            email: Some(EmailContent {
                subject: subject.into(),
                text_body: text_body.into(),
                html_body: html_body.into(),
            }),
            ..Default::default()
        }
    }

    /// `render`, owned: the tests build their content in temporaries.
    fn owned(content: &Content, vars: &BTreeMap<String, String>) -> Result<Content, TemplateError> {
        render(content, vars).map(Cow::into_owned)
    }

    fn sms_text(content: &Content) -> &str {
        content.sms.as_ref().map_or("", |s| s.text.as_str())
    }

    fn error(content: &Content, vars: &BTreeMap<String, String>) -> TemplateError {
        match render(content, vars) {
            Err(err) => err,
            Ok(rendered) => panic!("expected an error, rendered {rendered:?}"),
        }
    }

    #[test]
    fn renders_every_field_with_vars() {
        let content = Content {
            push: Some(PushContent {
                title: "Hi {{ first_name }}".into(),
                body: "Order {{ order }} shipped".into(),
                data: [
                    ("order".to_string(), "{{ order }}".to_string()),
                    ("plain".to_string(), "as is".to_string()),
                ]
                .into_iter()
                .collect(),
            }),
            email: Some(EmailContent {
                subject: "Your order {{ order }}".into(),
                text_body: "Dear {{ first_name }},\n".into(),
                html_body: "<p>Dear {{ first_name }}</p>".into(),
            }),
            sms: Some(SmsContent {
                text: "{{ first_name }}: order {{ order }}{# internal #}".into(),
            }),
        };
        let rendered =
            render(&content, &vars(&[("first_name", "Ada"), ("order", "A-17")])).expect("renders");
        let push = rendered.push.as_ref().expect("push");
        assert_eq!(push.title, "Hi Ada");
        assert_eq!(push.body, "Order A-17 shipped");
        assert_eq!(push.data["order"], "A-17");
        assert_eq!(push.data["plain"], "as is");
        let email = rendered.email.as_ref().expect("email");
        assert_eq!(email.subject, "Your order A-17");
        assert_eq!(email.text_body, "Dear Ada,\n", "trailing newline kept");
        assert_eq!(email.html_body, "<p>Dear Ada</p>");
        assert_eq!(sms_text(&rendered), "Ada: order A-17");
    }

    #[test]
    fn message_vars_override_attributes() {
        let merged = merge_vars(
            &vars(&[("first_name", "Ada"), ("city", "London")]),
            &vars(&[("first_name", "Augusta")]),
        );
        let rendered = owned(&sms("{{ first_name }} in {{ city }}"), &merged).expect("renders");
        assert_eq!(sms_text(&rendered), "Augusta in London");
    }

    #[test]
    fn undefined_variable_names_field_and_variable() {
        let content = email("Hello {{ first_name }}", "plain", "");
        let err = error(&content, &vars(&[("last_name", "Lovelace")]));
        assert_eq!(err.field(), "content.email.subject");
        assert_eq!(
            err.kind,
            TemplateErrorKind::UndefinedVariable("first_name".into())
        );
        assert_eq!(
            err.clone().into_invalid("message").to_string(),
            "invalid message.content.email.subject: undefined variable \"first_name\""
        );
        assert_eq!(
            check(&content, &BTreeMap::new()),
            Err(err),
            "check fails like render"
        );

        // A truthiness test of an undefined variable is an error too under Strict.
        let err = error(&sms("{% if vip %}VIP{% endif %}"), &BTreeMap::new());
        assert_eq!(err.kind, TemplateErrorKind::UndefinedVariable("vip".into()));

        // An attribute of a defined string is undefined, and a `default`ed lookup before it
        // must not be blamed.
        let err = error(
            &sms("{{ nick|default(\"x\") }} {{ name.first }}"),
            &vars(&[("name", "Ada")]),
        );
        assert_eq!(err.field(), "content.sms.text");
        assert_eq!(
            err.kind,
            TemplateErrorKind::Undefined(" in \"name.first\" (line 1, column 28)".into())
        );
    }

    #[test]
    fn push_data_errors_name_the_key() {
        let content = Content {
            push: Some(PushContent {
                title: "t".into(),
                body: String::new(),
                data: [("deep_link".to_string(), "app://{{ path }}".to_string())]
                    .into_iter()
                    .collect(),
            }),
            ..Default::default()
        };
        let err = error(&content, &BTreeMap::new());
        assert_eq!(err.field(), "content.push.data[\"deep_link\"]");
        assert_eq!(
            err.kind,
            TemplateErrorKind::UndefinedVariable("path".into())
        );
    }

    #[test]
    fn syntax_error_names_field_and_place() {
        let err = error(&email("ok", "Hi\n{{ first_name ", ""), &BTreeMap::new());
        assert_eq!(err.field(), "content.email.text_body");
        let TemplateErrorKind::Syntax(what) = &err.kind else {
            panic!("expected a syntax error, got {err}");
        };
        assert!(what.contains("line 2"), "{what}");

        let err = error(&sms("{% if x %}no end"), &vars(&[("x", "1")]));
        assert_eq!(err.field(), "content.sms.text");
        assert!(matches!(err.kind, TemplateErrorKind::Syntax(_)), "{err}");

        let err = error(&sms("{{ x|no_such_filter }}"), &vars(&[("x", "1")]));
        assert_eq!(err.field(), "content.sms.text");
        assert!(err.to_string().contains("no_such_filter"), "{err}");

        // No `debug()`: it would print every variable into the message.
        assert!(render(&sms("{{ debug() }}"), &BTreeMap::new()).is_err());
    }

    #[test]
    fn html_body_escapes_text_fields_do_not() {
        let v = vars(&[("name", "<b>Tom & \"Jerry\"</b>")]);
        let rendered = owned(
            &email(
                "{{ name }}",
                "{{ name }}",
                "<p>{{ name }}</p>{{ name|safe }}",
            ),
            &v,
        )
        .expect("renders");
        let email = rendered.email.as_ref().expect("email");
        assert_eq!(
            email.html_body,
            "<p>&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;&#x2f;b&gt;</p><b>Tom & \"Jerry\"</b>"
        );
        assert_eq!(email.text_body, "<b>Tom & \"Jerry\"</b>");
        assert_eq!(email.subject, "<b>Tom & \"Jerry\"</b>");
        let rendered = owned(&sms("{{ name }}"), &v).expect("renders");
        assert_eq!(sms_text(&rendered), "<b>Tom & \"Jerry\"</b>");
    }

    #[test]
    fn plain_content_is_returned_borrowed() {
        let content = Content {
            push: Some(PushContent {
                title: "Sale { today }".into(),
                body: "50% off".into(),
                data: [("k".to_string(), "}} {".to_string())]
                    .into_iter()
                    .collect(),
            }),
            email: Some(EmailContent {
                subject: "s".into(),
                text_body: "t".into(),
                html_body: "<p>{</p>".into(),
            }),
            sms: Some(SmsContent { text: "x".into() }),
        };
        let rendered = render(&content, &BTreeMap::new()).expect("renders");
        assert!(matches!(rendered, Cow::Borrowed(_)));
        assert_eq!(*rendered, content);
        assert!(check(&content, &BTreeMap::new()).is_ok());
        assert!(!has_templates(&Content::default()));
    }

    #[test]
    fn filters_and_default_under_strict() {
        let rendered = owned(
            &sms("Hi {{ first_name|default(\"there\") }}, {{ city|upper }}!"),
            &vars(&[("city", "Paris")]),
        )
        .expect("`default` makes an undefined variable legal");
        assert_eq!(sms_text(&rendered), "Hi there, PARIS!");
        let rendered = owned(
            &sms("Hi {{ first_name|default(\"there\") }}"),
            &vars(&[("first_name", "Ada")]),
        )
        .expect("renders");
        assert_eq!(sms_text(&rendered), "Hi Ada");
        let rendered = owned(
            &sms("{% if vip is defined %}VIP {% endif %}{{ n|int + 1 }}"),
            &vars(&[("n", "41")]),
        )
        .expect("`is defined` is legal");
        assert_eq!(sms_text(&rendered), "42");
    }

    #[test]
    fn endless_loop_runs_out_of_fuel() {
        let err = error(
            &sms("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"),
            &BTreeMap::new(),
        );
        assert_eq!(err.field(), "content.sms.text");
        assert_eq!(err.kind, TemplateErrorKind::OutOfFuel(TEMPLATE_FUEL));
        assert!(err.to_string().contains("steps"), "{err}");
        // A loop of a thousand items is well within the fuel.
        let rendered = owned(
            &sms("{% for i in range(1000) %}{% if loop.last %}{{ i }}{% endif %}{% endfor %}"),
            &BTreeMap::new(),
        )
        .expect("a thousand steps of loop fit");
        assert_eq!(sms_text(&rendered), "999");
    }

    #[test]
    fn rendered_size_is_bounded() {
        // A 4 KiB variable printed 20 times: 80 KiB, in few engine steps.
        let big = "x".repeat(VAR_MAX_BYTES);
        let err = error(
            &email("s", "{% for i in range(20) %}{{ v }}{% endfor %}", ""),
            &vars(&[("v", &big)]),
        );
        assert_eq!(err.field(), "content.email.text_body");
        assert_eq!(
            err.kind,
            TemplateErrorKind::TooLarge(RENDERED_FIELD_MAX_BYTES)
        );
        // Fifteen fit.
        let rendered = owned(
            &email("s", "{% for i in range(15) %}{{ v }}{% endfor %}", ""),
            &vars(&[("v", &big)]),
        )
        .expect("fits");
        assert_eq!(
            rendered.email.as_ref().map(|e| e.text_body.len()),
            Some(15 * big.len())
        );
    }

    #[test]
    fn variables_used_are_bounded() {
        let huge = "x".repeat(VAR_MAX_BYTES + 1);
        let v = vars(&[("huge", &huge), ("name", "Ada")]);
        let expected = TemplateErrorKind::VariableTooLarge("huge".into(), VAR_MAX_BYTES + 1);
        assert_eq!(error(&sms("{{ huge }}"), &v).kind, expected);
        assert_eq!(
            error(&sms("{{ huge|default('x') }}"), &v).kind,
            expected,
            "a default does not hide the real reason"
        );
        // Unused, it does not matter.
        let rendered = owned(&sms("{{ name }}"), &v).expect("renders");
        assert_eq!(sms_text(&rendered), "Ada");
    }

    #[test]
    fn rendered_content_still_fits_its_channel() {
        let err = error(
            &email("Hi {{ name }}", "b", ""),
            &vars(&[("name", "x\r\nBcc: all@example.com")]),
        );
        assert_eq!(err.field(), "content.email.subject");
        assert!(matches!(err.kind, TemplateErrorKind::Invalid(_)), "{err}");

        let long = "é".repeat(SMS_TEXT_MAX_CHARS / 2);
        let err = error(&sms("{{ a }}{{ a }}!"), &vars(&[("a", &long)]));
        assert_eq!(err.field(), "content.sms.text");
        assert!(matches!(err.kind, TemplateErrorKind::Invalid(_)), "{err}");
    }

    #[test]
    fn only_the_safe_subset_is_allowed() {
        let v = vars(&[("v", "abc"), ("n", "2")]);
        for (source, says) in [
            ("{% set x = v ~ v %}{{ x }}", "statement \"set\""),
            ("{%- macro m() %}{% endmacro %}", "statement \"macro\""),
            ("{% include 'other' %}", "statement \"include\""),
            ("{% filter upper %}x{% endfilter %}", "statement \"filter\""),
            ("{{ v|replace('a', v) }}", "filter \"replace\""),
            ("{{ range(10)|join(v) }}", "filter \"join\""),
            ("{% if v|indent(9) %}{% endif %}", "filter \"indent\""),
            ("{{ v * 100000000 }}", "operators * and **"),
            ("{{ n|int ** 2 }}", "operators * and **"),
            ("{{ v~v~v~v~v~v~v~v~v~v }}", "more than 8"),
        ] {
            let err = error(&sms(source), &v);
            assert_eq!(err.field(), "content.sms.text", "{source}");
            assert!(
                matches!(&err.kind, TemplateErrorKind::NotAllowed(what) if what.contains(says)),
                "{source}: {err}"
            );
        }
        let err = error(&sms("ok\n  {% set x = 1 %}"), &v);
        assert!(err.to_string().contains("(line 2, column 6)"), "{err}");

        // Inside a string or a raw block, the same characters are text.
        let rendered = owned(
            &sms("{{ \"a * b | replace\" }}{% raw %}{% set %}{% endraw %}{{ v ~ \"!\" }}"),
            &v,
        )
        .expect("allowed");
        assert_eq!(sms_text(&rendered), "a * b | replace{% set %}abc!");
        let rendered = owned(
            &sms("{% for c in v|reverse %}{{ loop.index }}{{ c|upper }}{% else %}none{% endfor %}"),
            &v,
        )
        .expect("allowed");
        assert_eq!(sms_text(&rendered), "1C2B3A");
    }

    #[test]
    fn filters_and_ranges_draw_on_a_work_budget() {
        // Each step is cheap in fuel but touches a 4 KiB string.
        let big = "x".repeat(VAR_MAX_BYTES);
        let started = std::time::Instant::now();
        let err = error(
            &sms(
                "{% for i in range(100000) %}{% if v|title|title|title == '' %}{% endif %}{% endfor %}",
            ),
            &vars(&[("v", &big)]),
        );
        assert_eq!(err.kind, TemplateErrorKind::TooMuchWork(WORK_MAX));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let err = error(
            &sms("{% for i in range(100) %}{{ range(100000)|last }}{% endfor %}"),
            &BTreeMap::new(),
        );
        assert_eq!(err.kind, TemplateErrorKind::TooMuchWork(WORK_MAX));
        // The budget is per field: the next render starts afresh.
        let rendered = owned(&sms("{{ v|title|length }}"), &vars(&[("v", &big)])).expect("fits");
        assert_eq!(sms_text(&rendered), "4096");
        assert_eq!(range_len(&[Value::from(5)]), 5);
        assert_eq!(
            range_len(&[Value::from(10), Value::from(0), Value::from(-3)]),
            3
        );
    }

    #[test]
    fn every_allowed_filter_works() {
        for &name in ALLOWED_FILTERS {
            assert!(builtin_filter(name).is_some(), "{name} has no builtin");
        }
        let v = vars(&[("n", "-2.5"), ("s", " ada lovelace "), ("html", "<i>")]);
        let rendered = owned(
            &email(
                "s",
                "{{ n|float|abs }} {{ n|float|round }} {{ n|int }} {{ s|trim|title }} \
                 {{ s|trim|capitalize }} {{ s|upper|trim }} {{ s|lower|length }} {{ s|count }} \
                 {{ s|trim|first }}{{ s|trim|last }} {{ s|trim|reverse }} {{ x|d('-') }} \
                 {{ html|e }} {{ n|string }}",
                "{{ html|safe }}{{ html|escape }}",
            ),
            &v,
        )
        .expect("renders");
        let email = rendered.email.as_ref().expect("email");
        assert_eq!(
            email.text_body,
            "2.5 -3.0 -2 Ada Lovelace Ada lovelace ADA LOVELACE 14 14 ae ecalevol ada - \
             &lt;i&gt; -2.5"
        );
        assert_eq!(email.html_body, "<i>&lt;i&gt;");
    }

    #[test]
    fn template_detection() {
        assert!(is_template("{{x}}"));
        assert!(is_template("a {% if %}"));
        assert!(is_template("{# c #}"));
        assert!(is_template("a{b{{"));
        assert!(!is_template("trailing {"));
        assert!(!is_template("{ {} } %} }}"));
        assert!(!is_template(""));
    }
}
