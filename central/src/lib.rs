//! `latch-central`: the service the central team runs.
//!
//! It owns the gRPC API for agents and reviewers ([`api`], contract in `latch-proto`), the
//! engine's shared state ([`engine`]) and the delivery of committed changes, the approval engine
//! ([`approval`]), grants ([`grants`]), rules versions and their distribution
//! ([`rules`], validated with the `policy` crate), hosts ([`hosts`]), the audit record
//! ([`audit`]), reviewer and agent authentication ([`auth`]), change delivery across replicas
//! ([`events`]), storage on SQLite or PostgreSQL ([`store`]) and TLS with client certificates
//! for the gRPC listener ([`tls`]). The reviewers' web console ([`web`]) is served on a listener
//! of its own and acts only through the same engine methods as the API, as do Slack and Teams
//! ([`notify`], whose Slack callbacks arrive on the console's listener). The audit chain's encoding,
//! checkpoints, export formats and verifier ([`chain`]), the evidence report ([`report`]) and
//! terminal/HTML escaping ([`text`]) are pure: `latchctl` uses them too, offline. So is the N-of-M
//! tally ([`tally`]), which every channel's votes go through. Its Prometheus registry
//! ([`metrics`]) is served on a listener of its own when `metrics_listen` is set.
//!
//! Modules import in one direction (checked by `tests/layers.rs`): pure code and storage, then
//! the engine and its domain modules, then the channels (gRPC, console, chat), then the wiring
//! ([`server`]).
//!
//! It must not touch hosts' kernels or agents' local state: it tells agents what to enforce and
//! what was decided, over their stream, and nothing else. It does not define the rules language
//! (that is `policy`) nor the wire format (that is `latch-proto`).

pub mod api;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod auto;
pub mod auto_protocol;
pub mod autoreview;
pub mod break_glass;
pub mod breaker;
pub mod chain;
pub mod clock;
pub mod config;
mod delivered;
mod dispatch;
pub mod engine;
pub mod error;
pub mod events;
pub mod grants;
pub mod hosts;
pub mod identity;
pub mod known_names;
pub mod merge;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod report;
pub mod review;
pub mod role;
pub mod rules;
pub mod server;
pub mod store;
pub mod tally;
pub mod text;
pub mod tls;
pub mod validate;
pub mod web;

pub use config::Config;
pub use engine::Central;
pub use error::{Error, Result};
pub use server::{start, start_with, Server, StartError};
