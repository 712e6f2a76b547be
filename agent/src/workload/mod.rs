//! The workload's side channel: a held workload asks the agent what it waits for, waits for the
//! decision, and reads who decided and why.
//!
//! Served on a Unix socket every local user may connect to (`workload_socket`, default
//! `/run/latch/workload.sock`). The caller is known by the socket's peer credentials, never by
//! what it says: a process sees the held requests of its own process tree (or, asking with
//! `"scope": "parent"`, of its parent's tree), and only those of its own user unless it is root.
//! Nothing of one tree is visible from another, not even whether an id exists.
//!
//! Owns: the board of held and recently decided requests as the workload may see them, the
//! socket and its line protocol, and telling callers apart. Must not: decide, resume or read
//! anything of a request beyond what the engine task and the central link tell it; it never
//! touches the kernel maps.

mod board;
mod lineage;
mod protocol;
mod serve;

pub use board::{Board, JustifyError, Opened, Resolution};
pub use lineage::Stamp;
pub use protocol::{
    parse_request, Hold, RequestView, Scope, WorkloadRequest, MAX_JUSTIFICATION, MAX_LINE,
    MAX_WAIT_S,
};
pub use serve::{bind, call, serve, WorkloadError};
