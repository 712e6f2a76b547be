//! Grants that cover a host name. A reviewer who approves "for an hour" a connection held by a
//! rule that names its host approves the host, not the one address it had at that moment: cloud
//! endpoints answer with another address on the next lookup. The kernel finds grants by the
//! fingerprint of an address, so the engine task writes a copy of such a grant under each
//! address the workload resolves the name to while the grant lasts ([`crate::kernel::Engine::extend_grant`]),
//! at the decision for the addresses already learned, and at each answer after it.
//!
//! The copies carry the grant's own expiry, so the kernel ends them with it; a revocation removes
//! them with the grant ([`crate::kernel::Engine::extensions`]).

use std::net::IpAddr;

use agent_common::{fingerprint, FingerprintKey, GrantKey};

use super::State;
use crate::kernel::monotonic_ns;

/// A grant on a host name, as the engine task extends it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameGrant {
    /// The name, as rules compare names (the one the workload asked for).
    pub name: String,
    /// The workload whose answers extend it: the held connection's, whatever the grant's
    /// scope. Its rule is that workload's, so only that workload's connections can use a copy,
    /// and only its address rules say where a copy may not go.
    pub workload: u32,
    /// The held connection's port and protocol, which the grant keeps.
    pub port: u16,
    /// [`agent_common::proto`] number.
    pub proto: u8,
}

/// The grants on names in force, by the kernel key of the grant the decision wrote.
#[derive(Debug, Default)]
pub struct NameGrants {
    grants: Vec<(GrantKey, NameGrant)>,
}

impl From<Vec<(GrantKey, NameGrant)>> for NameGrants {
    fn from(grants: Vec<(GrantKey, NameGrant)>) -> NameGrants {
        let mut book = NameGrants::default();
        for (base, g) in grants {
            book.add(base, g);
        }
        book
    }
}

impl NameGrants {
    /// Records a grant on a name (a second record for the same key replaces the first).
    pub fn add(&mut self, base: GrantKey, g: NameGrant) {
        self.remove(&base);
        self.grants.push((base, g));
    }

    /// Forgets the grant written at `base`; whether it was one on a name.
    pub fn remove(&mut self, base: &GrantKey) -> bool {
        let before = self.grants.len();
        self.grants.retain(|(k, _)| k != base);
        self.grants.len() != before
    }

    /// The grants an answer for `name` to `workload` extends.
    pub fn covering<'a>(
        &'a self,
        workload: u32,
        name: &'a str,
    ) -> impl Iterator<Item = &'a (GrantKey, NameGrant)> + 'a {
        self.grants
            .iter()
            .filter(move |(_, g)| g.name == name && g.workload == workload)
    }
}

/// The fingerprint of `addr` on the grant's port and protocol, as the kernel's socket hooks
/// compute it for a connection there (an IPv4 address as IPv4, whatever the socket's family).
pub fn target(key: &FingerprintKey, g: &NameGrant, addr: IpAddr) -> u64 {
    let (fam, bytes) = crate::dns::learned::kernel_addr(addr);
    fingerprint::network(key, fam, g.proto, &bytes, g.port)
}

/// Whether a network rule of `workload` that asks or refuses covers `addr` on the grant's port
/// and protocol. Such an address is not the name's to answer for: the kernel holds a connection
/// that both a name rule and an address rule ask about under the name rule, so a copy there
/// would let a workload that picks its own DNS answers (a server of its own) walk past the
/// address rule's approval with a grant on a name.
pub fn guarded(rules: &[policy::Rule], workload: u32, g: &NameGrant, addr: IpAddr) -> bool {
    let tcp = g.proto == agent_common::proto::TCP;
    rules.iter().any(|r| {
        r.workload_id == workload
            && matches!(r.action, policy::Action::Approve | policy::Action::Deny)
            && r.covers_address(addr, g.port, tcp)
    })
}

impl State {
    /// A decision wrote a grant at `base` that covers `g`'s name: it is extended now to every
    /// address the workload has learned for the name.
    pub(super) fn grant_name(&mut self, base: GrantKey, g: NameGrant) {
        let now = monotonic_ns();
        let addrs: Vec<(u32, IpAddr)> = self
            .learned
            .iter()
            .filter(|((w, _), e)| {
                e.expires_ns > now && e.names.first() == Some(&g.name) && *w == g.workload
            })
            .map(|(k, _)| *k)
            .collect();
        tracing::info!(name = %g.name, addresses = addrs.len(), "grant covers a host name");
        let grant = (base, g);
        for (w, a) in addrs {
            self.extend(&grant, w, a);
        }
        self.name_grants.add(grant.0, grant.1);
    }

    /// The workload learned `addrs` for `name`: every grant on that name reaches them.
    pub(super) fn extend_name_grants(&mut self, workload: u32, name: &str, addrs: &[IpAddr]) {
        let grants: Vec<(GrantKey, NameGrant)> =
            self.name_grants.covering(workload, name).cloned().collect();
        for grant in grants {
            for a in addrs {
                if !self.extend(&grant, workload, *a) {
                    // The grant ended: nothing more to extend.
                    self.name_grants.remove(&grant.0);
                    break;
                }
            }
        }
    }

    /// Writes one copy for an address `workload` resolved the name to, unless an address rule
    /// guards it; `false` once the grant is no longer in force.
    fn extend(&mut self, (base, g): &(GrantKey, NameGrant), workload: u32, addr: IpAddr) -> bool {
        let rules = self.policy.as_ref().map(|p| p.rules.rules.as_slice());
        if guarded(rules.unwrap_or_default(), workload, g, addr) {
            tracing::info!(name = %g.name, %addr, "a grant on a host name does not reach an address an address rule asks about");
            return true;
        }
        let target = target(&self.engine.fingerprint_key(), g, addr);
        match self.engine.extend_grant(base, target) {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(name = %g.name, %addr, "cannot extend a grant on a host name: {e}");
                true
            }
        }
    }

    /// The grant at `base` is revoked: its copies go with it. Returns their keys (whose
    /// connections the revocation may close).
    pub(super) fn revoke_name_grant(&mut self, base: &GrantKey) -> Vec<GrantKey> {
        if !self.name_grants.remove(base) {
            return Vec::new();
        }
        let copies = match self.engine.extensions(base) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot find the copies of a revoked grant on a host name: {e}");
                return Vec::new();
            }
        };
        for k in &copies {
            if let Err(e) = self.engine.revoke(k) {
                tracing::error!("cannot revoke a copy of a grant on a host name: {e}");
            }
        }
        copies
    }
}

#[cfg(test)]
mod tests {
    use agent_common::scope;

    use super::*;

    fn key(scope: u8, subject: u64, target: u64) -> GrantKey {
        GrantKey {
            scope,
            _pad: [0; 3],
            rule_id: 7,
            subject,
            target,
        }
    }

    fn grant(name: &str, workload: u32) -> NameGrant {
        NameGrant {
            name: name.into(),
            workload,
            port: 443,
            proto: agent_common::proto::TCP,
        }
    }

    #[test]
    fn an_answer_extends_the_grants_on_its_name_of_its_own_workload_whatever_their_scope() {
        let mut book = NameGrants::default();
        book.add(key(scope::WORKLOAD, 1, 10), grant("a.test", 1));
        book.add(key(scope::PROCESS, 42, 11), grant("a.test", 1));
        book.add(key(scope::HOST, 0, 12), grant("a.test", 1));
        book.add(key(scope::WORKLOAD, 2, 13), grant("a.test", 2));
        book.add(key(scope::WORKLOAD, 1, 14), grant("b.test", 1));
        let targets = |w: u32, name: &str| -> Vec<u64> {
            book.covering(w, name).map(|(k, _)| k.target).collect()
        };
        let cases: &[(u32, &str, &[u64])] = &[
            (1, "a.test", &[10, 11, 12]),
            (2, "a.test", &[13]),
            (3, "a.test", &[]),
            (1, "b.test", &[14]),
            (1, "x.a.test", &[]),
            (1, "A.test", &[]),
        ];
        for (w, name, want) in cases {
            assert_eq!(targets(*w, name), *want, "workload {w}, {name}");
        }
    }

    #[test]
    fn a_mapped_address_is_the_ipv4_address_it_reaches() {
        let k = FingerprintKey::default();
        let g = grant("a.test", 1);
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(target(&k, &g, v4), target(&k, &g, mapped));
        assert_ne!(target(&k, &g, v4), target(&k, &g, v6));
        let other_port = NameGrant {
            port: 80,
            ..g.clone()
        };
        assert_ne!(target(&k, &g, v4), target(&k, &other_port, v4));
    }

    #[test]
    fn an_address_an_address_rule_asks_about_is_not_the_names() {
        let set = policy::RuleSet::parse(
            "rules.yaml",
            r#"
workloads:
  - name: w
    cgroups: ["/w.slice"]
  - name: v
    cgroups: ["/v.slice"]
rules:
  - {name: db, workload: w, on: connect, to: ["10.20.0.0/16"], ports: [5432], action: approve}
  - {name: meta, workload: w, on: connect, to: ["169.254.169.254/32"], action: deny}
  - {name: open, workload: w, on: connect, to: ["10.30.0.0/16"], action: allow}
  - {name: logged, workload: w, on: connect, to: ["10.40.0.0/16"], action: audit}
  - {name: other, workload: v, on: connect, to: ["10.50.0.0/16"], action: approve}
  - {name: by-name, workload: w, on: connect, to: ["a.test"], action: approve}
"#,
        )
        .expect("rules");
        let w = set.workloads.iter().find(|x| x.name == "w").expect("w").id;
        let g = |port: u16, proto: u8| NameGrant {
            name: "a.test".into(),
            workload: w,
            port,
            proto,
        };
        let tcp = agent_common::proto::TCP;
        let udp = agent_common::proto::UDP;
        let cases: &[(&str, u16, u8, bool)] = &[
            ("10.20.1.5", 5432, tcp, true),
            ("::ffff:10.20.1.5", 5432, tcp, true),
            ("10.20.1.5", 443, tcp, false),
            ("169.254.169.254", 80, udp, true),
            ("10.30.1.1", 443, tcp, false),
            ("10.40.1.1", 443, tcp, false),
            ("10.50.1.1", 443, tcp, false),
            ("192.0.2.1", 443, tcp, false),
        ];
        for (addr, port, proto, want) in cases {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(
                guarded(&set.rules, w, &g(*port, *proto), a),
                *want,
                "{addr} port {port} proto {proto}"
            );
        }
    }

    #[test]
    fn a_grant_recorded_twice_is_one_and_goes_once() {
        let mut book = NameGrants::default();
        let k = key(scope::WORKLOAD, 1, 10);
        book.add(k, grant("a.test", 1));
        book.add(k, grant("b.test", 1));
        assert_eq!(book.covering(1, "a.test").count(), 0);
        assert_eq!(book.covering(1, "b.test").count(), 1);
        assert!(book.remove(&k));
        assert!(!book.remove(&k));
        assert_eq!(book.covering(1, "b.test").count(), 0);
    }
}
