//! The engine task's side of destinations by name: whose a DNS query is, what an answer
//! teaches the kernel, and forgetting it when its TTL runs out or the rules change.

use std::time::Duration;

use agent_common::{DnsOrigin, DnsPeerKey, Learned};
use tokio::sync::oneshot;

use super::{Command, EngineHandle, State};
use crate::dns::{learned::kernel_key, message::Answer, proxy::Learner};
use crate::kernel::monotonic_ns;

/// Shortest time an answer's addresses are kept: an answer with TTL 0 is for the connection
/// that follows it.
const MIN_TTL: Duration = Duration::from_secs(1);

impl State {
    pub(super) fn dns_origin(&self, key: DnsPeerKey) -> Option<DnsOrigin> {
        match self.engine.dns_origin(&key) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("resolver proxy: {e}");
                None
            }
        }
    }

    /// Learns an answer's addresses for a workload: the kernel has them (with the clauses of
    /// the rules of the answer's names) when this returns `true`.
    pub(super) fn learn(&mut self, workload: u32, answer: Answer) -> bool {
        let Some(policy) = self.policy.clone() else {
            return false;
        };
        let new = self.is_new(&policy, workload, &answer.names);
        let v = policy.compiled.names.verdicts(workload, &answer.names, new);
        if v.dropped > 0 {
            tracing::warn!(
                names = ?answer.names,
                dropped = v.dropped,
                "more name rule clauses apply than the kernel holds per address; the least \
                 specific were left out"
            );
        }
        let now = monotonic_ns();
        let mut ok = true;
        for (addr, ttl) in &answer.addrs {
            let keep = Duration::from_secs(u64::from(*ttl)).max(MIN_TTL);
            let expires_ns = now.saturating_add(keep.as_nanos() as u64);
            let evicted = self
                .learned
                .learn(workload, *addr, answer.names.clone(), expires_ns);
            for (w, a) in evicted.keys {
                self.metrics.dns_evicted.inc();
                if let Err(e) = self.engine.unlearn(&kernel_key(w, a)) {
                    tracing::warn!("cannot forget {a} for workload {w}: {e}");
                }
            }
            let value = Learned {
                expires_ns,
                rules: v.rules,
            };
            if let Err(e) = self.engine.learn(kernel_key(workload, *addr), value) {
                tracing::warn!("cannot learn {addr} for workload {workload}: {e}");
                ok = false;
            }
        }
        // Before the workload has the answer: a grant on the name covers what it connects to.
        if let Some(name) = answer.names.first() {
            let addrs: Vec<std::net::IpAddr> = answer.addrs.iter().map(|(a, _)| *a).collect();
            self.extend_name_grants(workload, name, &addrs);
        }
        tracing::debug!(workload, names = ?answer.names, addrs = answer.addrs.len(), "learned");
        ok
    }

    /// Forgets the addresses whose TTL ran out.
    pub(super) fn expire_learned(&mut self) {
        for (w, a) in self.learned.expire(monotonic_ns()) {
            if let Err(e) = self.engine.unlearn(&kernel_key(w, a)) {
                tracing::warn!("cannot forget {a} for workload {w}: {e}");
            }
        }
    }

    /// The rules changed: every learned address gets the clauses its names have now.
    pub(super) fn relearn(&mut self) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let entries: Vec<_> = self
            .learned
            .iter()
            .map(|(k, e)| (*k, e.names.clone(), e.expires_ns))
            .collect();
        for ((w, a), names, expires_ns) in entries {
            let new = self.is_new(&policy, w, &names);
            let v = policy.compiled.names.verdicts(w, &names, new);
            let value = Learned {
                expires_ns,
                rules: v.rules,
            };
            if let Err(e) = self.engine.learn(kernel_key(w, a), value) {
                tracing::warn!("cannot update {a} for workload {w}: {e}");
            }
        }
    }
}

impl State {
    /// Whether the name a workload asked for (the first of `names`) is new to it: it has rules
    /// of new names, and no approval of one made the name known.
    fn is_new(&self, policy: &super::Policy, workload: u32, names: &[String]) -> bool {
        if !policy.compiled.names.has_new_names(workload) {
            return false;
        }
        let Some(asked) = names.first() else {
            return false;
        };
        let known = policy
            .rules
            .workloads
            .iter()
            .find(|w| w.id == workload)
            .and_then(|w| self.known_names.get(&w.name));
        !known.is_some_and(|k| k.contains(asked))
    }

    /// Central says these names are known to `workload` (by name): the addresses already
    /// learned for them lose the clauses of the rules of new names.
    pub(super) fn know_names(&mut self, workload: String, names: Vec<String>) {
        let set = self.known_names.entry(workload).or_default();
        let before = set.len();
        set.extend(names);
        if set.len() != before {
            self.relearn();
        }
    }

    /// The name a workload last resolved to this address, while it counts.
    pub(super) fn host_name(&self, workload: u32, addr: std::net::IpAddr) -> Option<String> {
        self.learned
            .get(workload, addr, monotonic_ns())
            .and_then(|e| e.names.first().cloned())
    }
}

impl EngineHandle {
    /// The name a workload last resolved to an address (the name it asked for), while the
    /// answer's TTL lasts: what a reviewer is shown beside the address.
    pub async fn host_name(
        &self,
        workload: u32,
        addr: std::net::IpAddr,
    ) -> Result<Option<String>, super::EngineGone> {
        self.ask(|reply| Command::HostName(workload, addr, reply))
            .await
    }
}

impl EngineHandle {
    /// Central says these names are known to the workload named `workload`: connections to
    /// them are no longer held as new.
    pub async fn know_names(
        &self,
        workload: String,
        names: Vec<String>,
    ) -> Result<(), super::EngineGone> {
        self.ask(|reply| Command::KnownNames(workload, names, reply))
            .await
    }
}

impl Learner for EngineHandle {
    async fn origin(&self, key: DnsPeerKey) -> Option<DnsOrigin> {
        self.ask(|reply: oneshot::Sender<Option<DnsOrigin>>| Command::DnsOrigin(key, reply))
            .await
            .ok()
            .flatten()
    }

    async fn learn(&self, workload: u32, answer: Answer) -> bool {
        self.ask(|reply| Command::Learn {
            workload,
            answer,
            reply,
        })
        .await
        .unwrap_or(false)
    }
}
