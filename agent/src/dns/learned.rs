//! What each workload resolved: address → the names of the answer and when it expires. The
//! engine task keeps this table beside the kernel's `LEARNED` map, which holds the clauses of
//! the names' rules; here are the names themselves (for requests and reviewers), the bound per
//! workload and the expiry.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use agent_common::{family, LearnedKey};

/// Most addresses one workload may have learned at once; a new one beyond it replaces the one
/// that expires first.
pub const PER_WORKLOAD: usize = 4096;

/// Most addresses all workloads together may have learned: the kernel map's size
/// (`LEARNED`). A new one beyond it replaces the one of any workload that expires first.
pub const TOTAL: usize = 16_384;

/// One learned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name asked for, then the names its aliases led to.
    pub names: Vec<String>,
    /// `CLOCK_MONOTONIC` ns after which it no longer counts.
    pub expires_ns: u64,
}

/// The table.
#[derive(Debug, Default)]
pub struct Learned {
    entries: HashMap<(u32, IpAddr), Entry>,
    /// (expiry, workload, address): the order of expiry, for eviction and sweeps.
    by_expiry: BTreeSet<(u64, u32, IpAddr)>,
    /// Each workload's (expiry, address), in the same order: a full workload's first entry is
    /// found without walking the others'.
    per_workload: HashMap<u32, BTreeSet<(u64, IpAddr)>>,
}

/// What one [`Learned::learn`] changed besides its own entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries removed to stay within [`PER_WORKLOAD`].
    pub keys: Vec<(u32, IpAddr)>,
}

impl Learned {
    /// Records that `workload` resolved `addr` through `names`, until `expires_ns`. A later
    /// answer for the same address replaces the earlier one: an address is decided by the
    /// names the workload resolved to it last.
    pub fn learn(
        &mut self,
        workload: u32,
        addr: IpAddr,
        names: Vec<String>,
        expires_ns: u64,
    ) -> Evicted {
        let addr = canonical(addr);
        let mut evicted = Evicted::default();
        if let Some(old) = self.entries.get(&(workload, addr)) {
            let at = old.expires_ns;
            self.remove(at, workload, addr);
        } else {
            let own = self.per_workload.get(&workload);
            let first = match own {
                Some(own) if own.len() >= PER_WORKLOAD => {
                    own.first().map(|&(at, a)| (at, workload, a))
                }
                _ if self.entries.len() >= TOTAL => self.by_expiry.first().copied(),
                _ => None,
            };
            if let Some((at, w, a)) = first {
                self.remove(at, w, a);
                evicted.keys.push((w, a));
            }
        }
        self.by_expiry.insert((expires_ns, workload, addr));
        self.per_workload
            .entry(workload)
            .or_default()
            .insert((expires_ns, addr));
        self.entries
            .insert((workload, addr), Entry { names, expires_ns });
        evicted
    }

    /// Removes one entry from every index.
    fn remove(&mut self, at: u64, workload: u32, addr: IpAddr) {
        self.by_expiry.remove(&(at, workload, addr));
        self.entries.remove(&(workload, addr));
        if let Some(own) = self.per_workload.get_mut(&workload) {
            own.remove(&(at, addr));
            if own.is_empty() {
                self.per_workload.remove(&workload);
            }
        }
    }

    /// The entry for an address, while it has not expired at `now_ns`.
    pub fn get(&self, workload: u32, addr: IpAddr, now_ns: u64) -> Option<&Entry> {
        self.entries
            .get(&(workload, canonical(addr)))
            .filter(|e| e.expires_ns > now_ns)
    }

    /// Removes every entry expired at `now_ns`, and returns their keys.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(u32, IpAddr)> {
        let mut gone = Vec::new();
        while let Some(&(at, w, a)) = self.by_expiry.first() {
            if at > now_ns {
                break;
            }
            self.remove(at, w, a);
            gone.push((w, a));
        }
        gone
    }

    /// Every entry (for recomputing the kernel's clauses when the rules change).
    pub fn iter(&self) -> impl Iterator<Item = (&(u32, IpAddr), &Entry)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An address as the kernel keys it: a v4-mapped IPv6 address is the IPv4 address it reaches,
/// so that an A and an AAAA answer for the same host are one entry here as in the kernel.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The kernel's key for a learned address.
pub fn kernel_key(workload: u32, addr: IpAddr) -> LearnedKey {
    let (family, addr) = kernel_addr(addr);
    LearnedKey {
        workload,
        family,
        _pad: [0; 3],
        addr,
    }
}

/// An address as the kernel's hooks see a destination: its [`family`] and bytes in network
/// order, IPv4 in the first 4 and the rest zero.
pub fn kernel_addr(addr: IpAddr) -> (u8, [u8; 16]) {
    let v4 = |a: std::net::Ipv4Addr| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.octets());
        (family::INET, b)
    };
    match addr {
        IpAddr::V4(a) => v4(a),
        // The kernel decides a v4-mapped destination as the IPv4 address it reaches.
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or((family::INET6, a.octets()), v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_expire_in_order_and_a_new_answer_replaces_the_old() {
        let mut t = Learned::default();
        t.learn(1, ip("10.0.0.1"), vec!["a.test".into()], 100);
        t.learn(1, ip("10.0.0.2"), vec!["b.test".into()], 50);
        t.learn(2, ip("10.0.0.1"), vec!["c.test".into()], 70);
        assert_eq!(t.get(1, ip("10.0.0.1"), 10).unwrap().names, ["a.test"]);
        assert!(
            t.get(1, ip("10.0.0.2"), 50).is_none(),
            "expired at its time"
        );
        // Answered again with another name and a later expiry.
        t.learn(1, ip("10.0.0.2"), vec!["d.test".into()], 200);
        assert_eq!(t.expire(80), [(2, ip("10.0.0.1"))]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(1, ip("10.0.0.2"), 150).unwrap().names, ["d.test"]);
        assert_eq!(t.expire(1000).len(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn a_workload_over_its_share_loses_the_entry_that_expires_first() {
        let mut t = Learned::default();
        for i in 0..PER_WORKLOAD as u32 {
            let a = IpAddr::V4((0x0a00_0000 + i).into());
            assert!(t.learn(1, a, vec![], 1000 + u64::from(i)).keys.is_empty());
        }
        // Another workload's share is its own, even where its entries expire first.
        assert!(t.learn(2, ip("10.0.0.0"), vec![], 1).keys.is_empty());
        let e = t.learn(1, ip("192.0.2.1"), vec![], 5000);
        assert_eq!(e.keys, [(1, ip("10.0.0.0"))]);
        assert_eq!(t.len(), PER_WORKLOAD + 1);
        assert!(t.get(2, ip("10.0.0.0"), 0).is_some());
        // An entry renewed with a later expiry is no longer the first to go.
        assert!(t.learn(1, ip("10.0.0.1"), vec![], 9000).keys.is_empty());
        let e = t.learn(1, ip("192.0.2.2"), vec![], 5000);
        assert_eq!(e.keys, [(1, ip("10.0.0.2"))]);
        assert!(t.get(1, ip("10.0.0.1"), 0).is_some());
        // Expired entries leave every index: the workload makes room without evicting.
        let gone = t.expire(u64::MAX - 1);
        assert_eq!(gone.len(), PER_WORKLOAD + 1);
        assert!(t.is_empty());
        assert!(t.learn(1, ip("192.0.2.3"), vec![], 1).keys.is_empty());
    }

    #[test]
    fn all_workloads_together_stay_within_the_kernel_map() {
        let mut t = Learned::default();
        for i in 0..TOTAL as u32 {
            let workload = i / (PER_WORKLOAD as u32 / 2);
            let a = IpAddr::V4((0x0a00_0000 + i).into());
            assert!(t
                .learn(workload, a, vec![], 1000 + u64::from(i))
                .keys
                .is_empty());
        }
        assert_eq!(t.len(), TOTAL);
        // A workload under its own share still makes room: the entry that expires first goes,
        // whoever's it is.
        let e = t.learn(99, ip("192.0.2.1"), vec![], 1);
        assert_eq!(e.keys, [(0, ip("10.0.0.0"))]);
        assert_eq!(t.len(), TOTAL);
        assert!(t.get(99, ip("192.0.2.1"), 0).is_some());
    }

    #[test]
    fn a_v4_mapped_answer_is_the_same_entry_as_the_ipv4_one() {
        let mut t = Learned::default();
        t.learn(1, ip("10.1.2.3"), vec!["a.test".into()], 100);
        t.learn(1, ip("::ffff:10.1.2.3"), vec!["b.test".into()], 200);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(1, ip("10.1.2.3"), 150).unwrap().names, ["b.test"]);
        assert_eq!(t.expire(150), []);
    }

    #[test]
    fn v4_mapped_addresses_are_kept_as_ipv4() {
        let k = kernel_key(3, ip("::ffff:10.1.2.3"));
        assert_eq!((k.family, &k.addr[..4]), (family::INET, &[10, 1, 2, 3][..]));
        let k = kernel_key(3, ip("fd00::1"));
        assert_eq!(k.family, family::INET6);
    }
}
