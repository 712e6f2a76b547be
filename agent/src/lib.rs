//! `latch-agent`, the host daemon, as a library.
//!
//! It owns everything on the host between the kernel programs and the outside world: the
//! kernel engine ([`kernel`]), the rule compiler ([`rules`]), the mapping of workload globs to
//! cgroups ([`cgroups`]), the event reader ([`events`]), the task that owns the engine
//! ([`engine_task`]), the local admin socket ([`admin`]), the workload's side channel
//! ([`workload`]), the trace context of a held process ([`tracecontext`]), TLS to central ([`tls`]), and its configuration
//! ([`config`]).
//! It does not decide anything by itself: decisions come from a reviewer (through central, or
//! the local admin socket until central is configured) or from the rule's timeout.
//!
//! The kernel object it loads is built from `agent-ebpf` by `build.rs` and embedded in the binary.

pub mod admin;
pub mod central_link;
pub mod cgroups;
pub mod config;
pub mod context;
pub mod dns;
pub mod doctor;
pub mod engine_task;
pub mod events;
pub mod heap;
pub mod kernel;
pub mod local_socket;
pub mod metrics;
pub mod privileged;
pub mod procfs;
pub mod programs;
pub mod recorder;
pub mod rings;
pub mod rules;
pub mod tls;
pub mod tracecontext;
pub mod workload;

/// Wall-clock time in Unix milliseconds (for deadlines and records people read).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
