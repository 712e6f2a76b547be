//! Change notification: what happened (a request changed, a grant was revoked, rules were
//! applied) and its delivery to the agent streams and reviewer watches of every replica.
//!
//! With SQLite there is one replica and events go through an in-process channel. With PostgreSQL
//! every replica publishes with `pg_notify` after its transaction commits and listens with
//! `LISTEN`, including to its own events: one path, whichever replica made the change. Events
//! carry ids only; each replica reads the current state from the database before pushing it.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use latch_proto::{
    encoded::EncodedAgentMessage,
    v1::{AgentMessage, RequestEvent},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;

use crate::store::{Store, StoreError};

/// The PostgreSQL channel replicas notify each other on.
pub const CHANNEL: &str = "latch_events";

/// Messages an agent stream may queue before it is closed as too slow (the agent reconnects and
/// the replay on subscription catches it up).
pub const AGENT_QUEUE: usize = 1024;

/// Something changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A request was created, voted on or resolved.
    Request {
        /// Central's id.
        approval_id: String,
        /// Its host.
        host_id: String,
    },
    /// A grant was revoked.
    Revoked {
        /// Grant.
        grant_id: String,
        /// Its host.
        host_id: String,
    },
    /// A rules version was applied.
    Rules {
        /// Version.
        version: i64,
    },
}

/// A request's record as the change that published it left it: a replica that made the change
/// delivers it without reading the request back.
pub type Snapshot = Option<Arc<latch_proto::v1::ApprovalRecord>>;

/// Where events are published.
#[derive(Clone, Debug)]
pub enum Publisher {
    /// This process only (SQLite), with the publisher's snapshot.
    Local(mpsc::UnboundedSender<(Event, Snapshot)>),
    /// Every replica on the database (PostgreSQL `NOTIFY`).
    Postgres(Store),
}

impl Publisher {
    /// Publishes an event; call after the change is committed. Other replicas read the state
    /// the event names; the snapshot serves this one.
    pub async fn publish(&self, event: Event, snapshot: Snapshot) -> Result<(), StoreError> {
        match self {
            Publisher::Local(tx) => {
                // The receiver lives as long as the service; a send error means it is stopping.
                let _ = tx.send((event, snapshot));
                Ok(())
            }
            Publisher::Postgres(store) => {
                let payload = serde_json::to_string(&event).map_err(|e| StoreError::Corrupt {
                    what: "event".into(),
                    message: e.to_string(),
                })?;
                store.notify(CHANNEL, &payload).await
            }
        }
    }
}

/// What an agent stream's queue holds: a message encoded once and shared with every stream it
/// goes to (a rules push to 10,000 agents is one encoding, not 10,000 copies waiting in queues
/// and 10,000 encodings), or the status that ends the stream. A pointer either way, so an empty
/// queue of [`AGENT_QUEUE`] slots stays small.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A message.
    Message(EncodedAgentMessage),
    /// The end of the stream.
    End(Box<tonic::Status>),
}

/// The sending side of an agent stream's queue.
pub type AgentSender = mpsc::Sender<Outgoing>;

/// The agent stream that a queue's receiver feeds.
pub fn agent_stream(
    rx: mpsc::Receiver<Outgoing>,
) -> impl Stream<Item = Result<EncodedAgentMessage, tonic::Status>> + Unpin {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|o| match o {
        Outgoing::Message(m) => Ok(m),
        Outgoing::End(status) => Err(*status),
    })
}

struct AgentConn {
    id: u64,
    tx: AgentSender,
    labels: HashMap<String, String>,
    /// Newest rules version pushed on this stream.
    rules_sent: Arc<AtomicU64>,
}

/// Rules versions whose push stays encoded: a fleet's selectors pick a few versions at a time.
const RULES_KEPT: usize = 16;

/// The streams open on this replica.
pub struct Hub {
    agents: Mutex<HashMap<String, Vec<AgentConn>>>,
    watchers: broadcast::Sender<RequestEvent>,
    next_id: AtomicU64,
    /// The newest rules versions' pushes, encoded once for every stream that gets one here: a
    /// new version's push, and the subscriptions of a fleet reconnecting. A version never
    /// changes once stored.
    rules: Mutex<BTreeMap<i64, EncodedAgentMessage>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            agents: Mutex::new(HashMap::new()),
            watchers: broadcast::channel(1024).0,
            next_id: AtomicU64::new(1),
            rules: Mutex::new(BTreeMap::new()),
        }
    }
}

/// An open agent stream, as listed by [`Hub::agents`].
#[derive(Clone, Debug)]
pub struct AgentEntry {
    /// Host.
    pub host_id: String,
    /// Its labels when the stream opened.
    pub labels: HashMap<String, String>,
    /// Newest rules version pushed.
    pub rules_sent: Arc<AtomicU64>,
    /// Connection id within the hub.
    pub id: u64,
}

/// A registered agent stream.
#[derive(Debug)]
pub struct AgentHandle {
    /// Connection id within the hub.
    pub id: u64,
    /// Host.
    pub host_id: String,
    /// Newest rules version pushed.
    pub rules_sent: Arc<AtomicU64>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<AgentConn>>> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The push of rules `version`, encoded from `push()` the first time it is asked for.
    pub fn rules_push(
        &self,
        version: i64,
        push: impl FnOnce() -> AgentMessage,
    ) -> EncodedAgentMessage {
        let mut kept = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = kept.get(&version) {
            return m.clone();
        }
        let m = EncodedAgentMessage::new(&push());
        kept.insert(version, m.clone());
        while kept.len() > RULES_KEPT {
            kept.pop_first();
        }
        m
    }

    /// Registers an agent stream.
    pub fn add_agent(
        &self,
        host_id: &str,
        labels: HashMap<String, String>,
        tx: AgentSender,
    ) -> AgentHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rules_sent = Arc::new(AtomicU64::new(0));
        self.lock()
            .entry(host_id.to_string())
            .or_default()
            .push(AgentConn {
                id,
                tx,
                labels,
                rules_sent: rules_sent.clone(),
            });
        AgentHandle {
            id,
            host_id: host_id.to_string(),
            rules_sent,
        }
    }

    /// Removes an agent stream. Returns whether the host has no stream left here.
    pub fn remove_agent(&self, host_id: &str, id: u64) -> bool {
        let mut agents = self.lock();
        if let Some(v) = agents.get_mut(host_id) {
            v.retain(|c| c.id != id);
            if v.is_empty() {
                agents.remove(host_id);
                return true;
            }
            return false;
        }
        true
    }

    /// Sends to every stream of a host; streams that are gone or too slow are closed.
    pub fn send_to_host(&self, host_id: &str, msg: &AgentMessage) -> usize {
        // Encoded outside the lock every stream of this replica waits on (a few hundred bytes,
        // cheaper than looking the host up twice).
        let msg = EncodedAgentMessage::new(msg);
        let mut agents = self.lock();
        let Some(conns) = agents.get_mut(host_id) else {
            return 0;
        };
        let mut sent = 0;
        conns.retain(|c| match c.tx.try_send(Outgoing::Message(msg.clone())) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(e) => {
                tracing::warn!(host_id, error = %e, "closing agent stream that cannot keep up");
                false
            }
        });
        sent
    }

    /// The streams open here.
    pub fn agents(&self) -> Vec<AgentEntry> {
        self.lock()
            .iter()
            .flat_map(|(h, v)| {
                v.iter().map(|c| AgentEntry {
                    host_id: h.clone(),
                    labels: c.labels.clone(),
                    rules_sent: c.rules_sent.clone(),
                    id: c.id,
                })
            })
            .collect()
    }

    /// Sends to one stream.
    pub fn send_to(&self, host_id: &str, id: u64, msg: EncodedAgentMessage) {
        let mut agents = self.lock();
        if let Some(conns) = agents.get_mut(host_id) {
            conns.retain(|c| c.id != id || c.tx.try_send(Outgoing::Message(msg.clone())).is_ok());
        }
    }

    /// Messages waiting in the queues of the streams open here: in all, and in the fullest.
    pub fn queued(&self) -> (usize, usize) {
        self.lock()
            .values()
            .flatten()
            .map(|c| c.tx.max_capacity() - c.tx.capacity())
            .fold((0, 0), |(all, max), n| (all + n, max.max(n)))
    }

    /// Whether a host has a stream here.
    pub fn is_connected(&self, host_id: &str) -> bool {
        self.lock().contains_key(host_id)
    }

    /// Ends every agent stream with `status` (the service is stopping).
    pub fn close_all(&self, status: tonic::Status) {
        let mut agents = self.lock();
        for (_, conns) in agents.drain() {
            for c in conns {
                let _ = c.tx.try_send(Outgoing::End(Box::new(status.clone())));
            }
        }
    }

    /// A new reviewer watch.
    pub fn watch(&self) -> broadcast::Receiver<RequestEvent> {
        self.watchers.subscribe()
    }

    /// Tells every reviewer watch.
    pub fn notify_watchers(&self, ev: RequestEvent) {
        let _ = self.watchers.send(ev);
    }
}

/// A stream that runs `on_drop` when the client goes away.
pub struct Guarded<S> {
    inner: S,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, on_drop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Guarded {
            inner,
            on_drop: Some(Box::new(on_drop)),
        }
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f()
        }
    }
}

impl<S: Stream + Unpin> Stream for Guarded<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_version_is_encoded_once_and_the_newest_are_kept() {
        let hub = Hub::default();
        let made = std::cell::Cell::new(0);
        let push = |v: i64| {
            hub.rules_push(v, || {
                made.set(made.get() + 1);
                AgentMessage {
                    body: Some(latch_proto::v1::agent_message::Body::Rules(
                        latch_proto::v1::RuleSetPush {
                            version: v as u64,
                            ..Default::default()
                        },
                    )),
                }
            })
        };
        let first = push(1);
        let again = push(1);
        assert_eq!(made.get(), 1, "version 1 encoded again");
        assert!(std::ptr::eq(first.as_bytes(), again.as_bytes()));
        assert_eq!(
            first.message().expect("decode").body,
            Some(latch_proto::v1::agent_message::Body::Rules(
                latch_proto::v1::RuleSetPush {
                    version: 1,
                    ..Default::default()
                }
            ))
        );
        for v in 2..=(RULES_KEPT as i64 + 1) {
            push(v);
        }
        assert_eq!(made.get(), RULES_KEPT + 1);
        // The oldest went; the newest stay.
        push(RULES_KEPT as i64 + 1);
        assert_eq!(made.get(), RULES_KEPT + 1);
        push(1);
        assert_eq!(
            made.get(),
            RULES_KEPT + 2,
            "version 1 was kept past the bound"
        );
    }

    #[test]
    fn queued_counts_what_waits_in_every_stream_and_the_fullest() {
        let hub = Hub::default();
        assert_eq!(hub.queued(), (0, 0));
        let (a, _ra) = mpsc::channel(8);
        let (b, _rb) = mpsc::channel(8);
        let (c, mut rc) = mpsc::channel(8);
        hub.add_agent("h1", HashMap::new(), a);
        hub.add_agent("h1", HashMap::new(), b);
        hub.add_agent("h2", HashMap::new(), c);
        let msg = AgentMessage::default();
        assert_eq!(hub.send_to_host("h1", &msg), 2);
        assert_eq!(hub.send_to_host("h1", &msg), 2);
        assert_eq!(hub.send_to_host("h2", &msg), 1);
        assert_eq!(hub.queued(), (5, 2));
        // What a stream has taken no longer waits.
        assert!(rc.try_recv().is_ok());
        assert_eq!(hub.queued(), (4, 2));
        let _ = hub.send_to_host("h2", &msg);
        let _ = hub.send_to_host("h2", &msg);
        let _ = hub.send_to_host("h2", &msg);
        assert_eq!(hub.queued(), (7, 3));
    }
}
