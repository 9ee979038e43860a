//! # herald-testkit: what every black-box test of Herald stands on
//!
//! Owns the pieces the tests in `tests/` used to copy into each file: a local cluster of real
//! processes on loopback ([`cluster`]), a node in process on a manual clock ([`in_process`]), the one way to wait for a state ([`eventually`]), and the
//! `Delivery` calls that send a message and wait for its log ([`delivery`]).
//!
//! It must never be a dependency of production code (it is `publish = false` and panics instead
//! of returning errors: a test cannot go on without its cluster), never sleep a fixed time to let
//! things settle (every wait names the state it waits for and is bounded), and never assert what
//! a test checks: helpers return logs and states, the tests assert on them.
//!
//! ## Layout
//! - [`cluster`]: [`cluster::Cluster`] — a `redis-server`, a `herald control` and `herald node`
//!   processes on random ports, one log file per process, kept when the test panics;
//!   [`cluster::NodeSpec`] for per-test node config and environment (a node of its own with
//!   [`cluster::Cluster::add_node`]); SIGTERM and exit waits of a [`cluster::Process`]; gRPC
//!   channel helpers, [`cluster::authed`] and the test tenants' API keys; [`cluster::herald_bin`]
//!   finds the binary.
//! - [`eventually`]: [`eventually::eventually`] and friends — poll a probe with a short, growing
//!   interval until it reports a state, or panic saying what was awaited, for how long, and
//!   (with [`eventually::eventually_ok`]) what was seen last.
//! - [`in_process`]: [`in_process::InProcess`] — a control plane and one node in the test's own
//!   process, on the embedded store and a manual clock the test advances (timeouts, quiet hours,
//!   cap windows without sleeping).
//! - [`campaigns`]: the `Campaigns` calls, the funnel identity, and [`campaigns::audit`] (what
//!   a campaign did per recipient, read back from Redis two independent ways).
//! - [`delivery`]: `Send`/`GetMessage` wrappers, [`delivery::is_terminal`], and the waits on a
//!   message's log: [`delivery::wait_terminal`], [`delivery::wait_for_log`],
//!   [`delivery::send_until_terminal`], [`delivery::wait_all_terminal`].

pub mod campaigns;
pub mod cluster;
pub mod delivery;
pub mod eventually;
pub mod in_process;
pub mod journeys;
