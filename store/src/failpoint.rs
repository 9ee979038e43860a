//! # store::failpoint: fault injection (feature `failpoints`)
//!
//! Owns the names of the failpoints both backends evaluate ([`GET_MESSAGE`], [`BEFORE_COMMIT`],
//! [`AFTER_COMMIT`]; where each sits and what it does is listed in the crate docs,
//! "Failpoints"), the error an injected `return` answers, and the evaluation of a point from
//! async code. Without the feature only the names are compiled (tests of other crates can name
//! the points either way); the points themselves are compiled out.
//!
//! It must never have an effect while no failpoint is configured, and never decide anything
//! for the backends: a point only answers "return here" or lets the call go on.

/// In `get_message`, before reading: `return` answers a read timeout.
pub const GET_MESSAGE: &str = "store::get_message";
/// In the write path, just before a commit is applied or sent: `return` fails its callers,
/// nothing applied.
pub const BEFORE_COMMIT: &str = "store::before_commit";
/// In the write path, once a commit ran: `return` fails its callers although the ops were
/// applied.
pub const AFTER_COMMIT: &str = "store::after_commit";
/// Every failpoint of the store.
pub const ALL: [&str; 3] = [GET_MESSAGE, BEFORE_COMMIT, AFTER_COMMIT];

/// The kind of call a failpoint interrupts (it names the injected timeout).
#[cfg(feature = "failpoints")]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Call {
    Read,
    Write,
}

/// The error an injected `return` answers: a timeout, as a slow Redis or disk would give,
/// saying it was injected.
#[cfg(feature = "failpoints")]
pub(crate) fn timed_out(call: Call) -> crate::Error {
    let what = match call {
        Call::Read => "read",
        Call::Write => "write",
    };
    crate::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("failpoint: store {what} timed out"),
    ))
}

/// Evaluates the failpoint `name`: `Err(timed_out(call))` when its action is `return`, else
/// `Ok` once the action is done. `sleep` and `pause` block their thread, so the point runs on
/// the blocking pool: a stalled store stalls the calls at the point, never a runtime worker
/// (a paused point must not stop the runtime of the test that will lift it).
#[cfg(feature = "failpoints")]
pub(crate) async fn inject(name: &'static str, call: Call) -> crate::Result<()> {
    let point = move || {
        fail::fail_point!(name, |_| true);
        false
    };
    match tokio::task::spawn_blocking(point).await {
        Ok(true) => Err(timed_out(call)),
        Ok(false) => Ok(()),
        Err(error) => match error.try_into_panic() {
            // A `panic` action panics in the caller, as an inline `fail_point!` would.
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is shutting down.
            Err(_) => Err(crate::Error::Closed),
        },
    }
}
