//! Destinations by name. Workloads whose rules name hosts have their DNS queries turned by
//! the kernel to [`proxy`], which learns the addresses of each answer for the workload before
//! passing it on; the engine task keeps what was learned ([`learned`]) and gives the kernel,
//! per address, the clauses of the rules of its names ([`names`]). [`message`] reads DNS
//! messages with a maintained library.
//!
//! This module owns no kernel object: the proxy reaches the engine through [`proxy::Learner`].

pub mod learned;
pub mod message;
pub mod names;
pub mod proxy;

pub use names::NameRules;
