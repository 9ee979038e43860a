//! # herald: the `herald` command's library
//!
//! What the command shares with its black-box tests: the demo data shapes (`herald up`,
//! `herald bench` and the tests exercise the same recipients and messages). The node, the
//! control plane and the store are their own crates; this crate only assembles them into a
//! command.

pub mod demo;
