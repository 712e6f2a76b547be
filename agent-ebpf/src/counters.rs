//! The per-CPU counters: every error path and every verdict leaves a trace here.

pub use agent_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}
