//! Giving freed heap back to the system after the agent's bursts of allocation: loading the
//! kernel programs reads the kernel's BTF several times over (each offset probe, and the loader's
//! relocations), and a new rule set is compiled beside the one in force. The allocator keeps
//! what was freed for later use, so without this an agent at rest stays as large as it once was
//! while loading.
//!
//! Owns: that one call. Must not: be called on a hot path (it walks the allocator's free lists).

/// Returns free heap pages to the kernel (glibc's `malloc_trim`); nothing elsewhere.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim works on the allocator's own free lists and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
