//! Prometheus metrics of the agent, served at `/metrics` on the configured address (loopback by
//! default): what an operator watches to see that enforcement is healthy.
//!
//! - `latch_pending_operations`: operations held right now.
//! - `latch_decisions_total{outcome}`: decisions applied (allow, deny, grant, expired).
//! - `latch_decision_seconds`: from the kernel holding an operation to the decision applied.
//! - `latch_kernel_total{counter}`: every kernel counter (drops, refusals, fail-mode verdicts…);
//!   `counter="ringbuf_full"` is events the kernel could not hand over.
//! - `latch_central_connected`: 1 while the link to central is up.
//! - `latch_events_total`: events read from the kernel.
//! - `latch_dns_queries_total{result}`: workload DNS queries through the resolver proxy, by what
//!   became of them; `latch_dns_evicted_total`: learned addresses dropped for a workload's bound.

use std::sync::{atomic::AtomicI64, Arc};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label of `latch_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// allow, deny, grant or expired.
    pub outcome: String,
}

/// Label of `latch_kernel_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabel {
    /// Kernel counter name.
    pub counter: String,
}

/// Label of `latch_dns_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabel {
    /// answered, unplaced, malformed, mismatched, upstream_failed, overloaded or unlearned.
    pub result: &'static str,
}

/// The agent's metrics. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Held operations.
    pub pending: Gauge,
    /// Decisions by outcome.
    pub decisions: Family<OutcomeLabel, Counter>,
    /// Hold-to-decision latency.
    pub decision_seconds: Histogram,
    /// Kernel counters (set from the per-CPU map, monotonic).
    pub kernel: Family<CounterLabel, Gauge<i64, AtomicI64>>,
    /// Link to central.
    pub central_connected: Gauge,
    /// Events read.
    pub events: Counter,
    /// 1 while the journal's disk (or quota) is full.
    pub journal_disk_full: Gauge,
    /// Records that could not be journaled.
    pub journal_lost: Counter,
    /// Records central acknowledged.
    pub journal_shipped: Counter,
    /// Watched processes with dangerous capabilities, at the last rescan.
    pub privileged: Gauge,
    /// Workload DNS queries through the resolver proxy, by result.
    pub dns_queries: Family<DnsLabel, Counter>,
    /// Learned addresses dropped to keep a workload within its bound.
    pub dns_evicted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("latch");
        let pending = Gauge::default();
        let decisions = Family::<OutcomeLabel, Counter>::default();
        // 100 µs to ~30 min: automated approvals are sub-millisecond, people take minutes.
        let decision_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 12),
        );
        let kernel = Family::<CounterLabel, Gauge<i64, AtomicI64>>::default();
        let central_connected = Gauge::default();
        let events = Counter::default();
        let journal_disk_full = Gauge::default();
        let journal_lost = Counter::default();
        let journal_shipped = Counter::default();
        let privileged = Gauge::default();
        let dns_queries = Family::<DnsLabel, Counter>::default();
        let dns_evicted = Counter::default();
        registry.register(
            "dns_queries",
            "Workload DNS queries through the resolver proxy, by what became of them",
            dns_queries.clone(),
        );
        registry.register(
            "dns_evicted",
            "Learned addresses dropped to keep a workload within its bound",
            dns_evicted.clone(),
        );
        registry.register(
            "privileged_watched_processes",
            "Watched processes with capabilities that can undo enforcement (CAP_SYS_ADMIN, CAP_BPF, CAP_NET_RAW, ...)",
            privileged.clone(),
        );
        registry.register(
            "pending_operations",
            "Operations held in the kernel now",
            pending.clone(),
        );
        registry.register(
            "decisions",
            "Decisions applied, by outcome",
            decisions.clone(),
        );
        registry.register(
            "decision_seconds",
            "Time from the kernel holding an operation to its decision",
            decision_seconds.clone(),
        );
        registry.register(
            "kernel",
            "Kernel counters (drops, refusals, fail-mode verdicts, pauses)",
            kernel.clone(),
        );
        registry.register(
            "central_connected",
            "1 while the link to central is up",
            central_connected.clone(),
        );
        registry.register(
            "events",
            "Events read from the kernel ring buffer",
            events.clone(),
        );
        registry.register(
            "journal_disk_full",
            "1 while the journal cannot write (disk or quota full)",
            journal_disk_full.clone(),
        );
        registry.register(
            "journal_lost",
            "Records that could not be journaled",
            journal_lost.clone(),
        );
        registry.register(
            "journal_shipped",
            "Journal records central acknowledged",
            journal_shipped.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            pending,
            decisions,
            decision_seconds,
            kernel,
            central_connected,
            events,
            journal_disk_full,
            journal_lost,
            journal_shipped,
            privileged,
            dns_queries,
            dns_evicted,
        }
    }

    /// Counts a DNS query by what became of it.
    pub fn dns(&self, result: &'static str) {
        self.dns_queries.get_or_create(&DnsLabel { result }).inc();
    }

    /// Counts a decision.
    pub fn decided(&self, outcome: &str, held_for_s: f64) {
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        if held_for_s >= 0.0 {
            self.decision_seconds.observe(held_for_s);
        }
    }

    /// The Prometheus text format (0.0.4), which every scraper and `promtool` read.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        promtext::from_openmetrics(&out)
    }
}

/// Serves `/metrics` until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, promtext::CONTENT_TYPE)],
                    m.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.pending.set(3);
        m.decided("allow", 0.002);
        m.kernel
            .get_or_create(&CounterLabel {
                counter: "ringbuf_full".into(),
            })
            .set(7);
        let text = m.render();
        for want in [
            "latch_pending_operations 3",
            "latch_decisions_total{outcome=\"allow\"} 1",
            "latch_decision_seconds_count 1",
            "latch_kernel{counter=\"ringbuf_full\"} 7",
            "latch_central_connected 0",
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
    }
}
