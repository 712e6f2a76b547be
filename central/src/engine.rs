//! The engine's state ([`Central`]): storage, the agents' streams, caches, keys and settings,
//! shared by every channel (gRPC, console, Slack, Teams) and by central's background tasks.
//!
//! It owns no transport: the gRPC services, the console and the chat surfaces hold an
//! `Arc<Central>` and call its methods; [`crate::server`] builds it and starts them. It must not
//! name a transport's types: a channel that needs state of its own keeps it.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};

pub mod identity_log;
pub mod rule_cache;

use identity_log::IdentityLog;
use rule_cache::RuleCache;

use crate::{
    auth::{AgentTokens, Authenticator},
    config::AuditConfig,
    events::{Event, Hub, Publisher, Snapshot},
    store::Store,
};

/// The longest the expiry loop sleeps between looks for due requests: another replica may have
/// accepted a request this one was not told of.
pub(crate) const EXPIRY_POLL_MS: i64 = 1000;

/// Central's engine: the state every channel acts through. Its operations are methods on it,
/// one module per concern ([`crate::approval`], [`crate::break_glass`], [`crate::grants`],
/// [`crate::rules`], [`crate::hosts`], [`crate::identity`], [`crate::audit`], and the delivery of
/// committed changes, [`Central::dispatch`]).
pub struct Central {
    pub(crate) store: Store,
    pub(crate) hub: Hub,
    pub(crate) publisher: Publisher,
    pub(crate) rules: RuleCache,
    pub(crate) reviewers: Arc<dyn Authenticator>,
    /// The identity provider behind `reviewers`, when `[oidc]` is configured.
    pub(crate) oidc: Option<Arc<crate::oidc::Oidc>>,
    pub(crate) agents: AgentTokens,
    pub(crate) replica_id: String,
    /// Wakes the expiry loop early, for a request due before the loop's next look
    /// ([`EXPIRY_POLL_MS`] at most).
    pub(crate) expiry_wake: Notify,
    pub(crate) stopping: watch::Sender<bool>,
    pub(crate) signing: ed25519_dalek::SigningKey,
    pub(crate) audit_config: AuditConfig,
    /// The gRPC listener's TLS, when `[tls]` is configured.
    pub(crate) tls: Option<Arc<crate::tls::ServerTls>>,
    pub(crate) identity_log: IdentityLog,
    pub(crate) break_glass: crate::config::BreakGlassConfig,
    /// Ids of requests that changed, for the chat surfaces' delivery (`crate::notify`); none
    /// when no surface is configured.
    pub(crate) chat: Option<mpsc::UnboundedSender<String>>,
    /// How the web console is reached (empty public URL: not served).
    pub(crate) web: crate::config::console::Settings,
    /// This replica's Prometheus metrics (see [`crate::metrics`]).
    pub(crate) metrics: crate::metrics::Metrics,
    /// The automatic reviewers' circuit breakers.
    pub(crate) breakers: crate::breaker::Breakers,
    /// Requests to post to their automatic reviewer (`crate::autoreview`); none when no
    /// reviewer is configured.
    pub(crate) auto_queue: Option<mpsc::UnboundedSender<String>>,
    /// Requests this replica delivered an event of lately (see [`crate::delivered`]).
    pub(crate) delivered: crate::delivered::Delivered,
}

impl Central {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This replica's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The metrics in the text exposition format, with the figures read from the store and the
    /// agent streams now.
    pub async fn render_metrics(&self) -> String {
        match self.requests_by_state().await {
            Ok(counts) => {
                for s in crate::metrics::STATES {
                    let n = counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
                    self.metrics
                        .requests
                        .get_or_create(&crate::metrics::StateLabel {
                            state: s.to_string(),
                        })
                        .set(n);
                }
            }
            Err(e) => {
                self.metrics.scrape_errors.inc();
                tracing::warn!(error = %e, "counting requests for /metrics failed");
            }
        }
        self.metrics
            .agents_connected
            .set(self.hub.agents().len() as i64);
        let (queued, fullest) = self.hub.queued();
        self.metrics.agent_queue_messages.set(queued as i64);
        self.metrics.agent_queue_max.set(fullest as i64);
        for (reviewer, open) in self.breakers.open_at(crate::clock::now_ms()) {
            self.metrics
                .breaker_open
                .get_or_create(&crate::metrics::ReviewerLabel { reviewer })
                .set(i64::from(open));
        }
        if let Some(w) = self.store.writer_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            self.metrics.store_writes(crate::metrics::StoreWrites {
                commits: w.commits.load(Relaxed),
                transactions: w.transactions.load(Relaxed),
                failed_batches: w.failed.load(Relaxed),
                abandoned: w.abandoned.load(Relaxed),
            });
        }
        self.metrics.render()
    }

    /// This replica's name.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The gRPC listener's TLS (certificate in force, reloads), when `[tls]` is configured.
    pub fn tls(&self) -> Option<&Arc<crate::tls::ServerTls>> {
        self.tls.as_ref()
    }

    /// Whether agents authenticate with a client certificate (TLS with a `client_ca_file`)
    /// rather than a token.
    pub fn agents_by_certificate(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.verifies_clients())
    }

    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Publishes a committed change. If publishing fails the change stays committed; it is
    /// delivered here directly, and to other replicas' agents when they reconnect.
    pub(crate) async fn publish(&self, event: Event) {
        self.publish_snapshot(event, None).await
    }

    /// Publishes a committed change of a request with its record as the change left it.
    pub(crate) async fn publish_snapshot(&self, event: Event, snapshot: Snapshot) {
        if let Err(e) = self
            .publisher
            .publish(event.clone(), snapshot.clone())
            .await
        {
            tracing::warn!(error = %e, ?event, "publishing failed; delivering on this replica only");
            self.dispatch(event, snapshot).await;
        }
    }
}

impl Central {
    /// Tells the chat surfaces that a request changed.
    pub(crate) fn chat_changed(&self, approval_id: &str) {
        if let Some(tx) = &self.chat {
            let _ = tx.send(approval_id.to_string());
        }
    }
}
