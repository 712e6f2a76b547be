//! Reviewer roles: what a reviewer may do. Granted by the configuration (`[[reviewers]]`, the
//! provider's groups in `[oidc.roles]`) and checked by every channel through
//! [`crate::auth::Identity::has`].

use serde::Deserialize;

/// A reviewer's role. Each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read requests, grants, rules, hosts and audit.
    Viewer,
    /// Also decide requests and revoke grants.
    Approver,
    /// Also apply and roll back rules.
    Admin,
}
