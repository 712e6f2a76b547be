//! Which requests this replica has lately delivered an event of.
//!
//! A request's creation is published with its record, which saves reading it back; but
//! publishing happens after the commit, and another change of the request (a decision made the
//! moment it appeared) can be delivered first. The record of the creation is used only when
//! nothing of the request was delivered before it; otherwise the request is read as it is now.
//! Owns nothing but the set; must not touch the store or the streams.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// How many requests are remembered. A creation is published microseconds after its commit;
/// this many other deliveries in between would take minutes at any rate central reaches.
const REMEMBERED: usize = 65_536;

/// Requests with an event delivered lately, oldest forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

/// A request id as a number: 16 bytes a request instead of a string's 60.
fn key(approval_id: &str) -> u128 {
    match uuid::Uuid::parse_str(approval_id) {
        Ok(u) => u.as_u128(),
        // Ids are central's own UUIDs; anything else is hashed rather than refused.
        Err(_) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            approval_id.hash(&mut h);
            u128::from(h.finish())
        }
    }
}

impl Delivered {
    /// Notes a delivery of `approval_id`; true when one was noted before (and is remembered).
    pub(crate) fn note(&self, approval_id: &str) -> bool {
        let k = key(approval_id);
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !r.set.insert(k) {
            return true;
        }
        r.order.push_back(k);
        if r.order.len() > REMEMBERED {
            if let Some(old) = r.order.pop_front() {
                r.set.remove(&old);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_new_once_and_forgotten_after_the_bound() {
        let d = Delivered::default();
        let first = uuid::Uuid::new_v4().to_string();
        assert!(!d.note(&first));
        assert!(d.note(&first));
        assert!(!d.note("not-a-uuid"));
        assert!(d.note("not-a-uuid"));
        for _ in 0..REMEMBERED {
            d.note(&uuid::Uuid::new_v4().to_string());
        }
        assert!(!d.note(&first), "the oldest is forgotten past the bound");
        let r = d.inner.lock().expect("lock");
        assert_eq!(r.set.len(), REMEMBERED);
        assert_eq!(r.order.len(), REMEMBERED);
    }
}
