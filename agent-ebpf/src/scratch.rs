//! Per-CPU working memory: the BPF stack is 512 bytes and an exec key alone is 256.

use agent_common::ExecPrefixData;

use crate::counters::{bump, Counter};
pub use crate::maps::Scratch;
use crate::maps::{ExecPrefixKey, SCRATCH};

#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    match SCRATCH.get_ptr_mut(0) {
        // SAFETY: the map value lives as long as the map; see the doc comment on `Scratch` for
        // why no other program run aliases it.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            bump(Counter::ScratchMissing);
            None
        }
    }
}

#[allow(dead_code)]
fn _assert_prefix_key_size() {
    const _: () = assert!(
        core::mem::size_of::<ExecPrefixKey>() == 4 + core::mem::size_of::<ExecPrefixData>()
    );
}
