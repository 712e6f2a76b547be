//! Facts about the running kernel that the agent reads before loading the programs (from BTF
//! and tracefs) and writes into these read-only globals, so that no offset is compiled in.

/// Byte offset of `ret` in the `syscalls:sys_exit_*` records (from the format file).
#[unsafe(no_mangle)]
static SYS_EXIT_RET_OFF: u32 = 16;

/// Byte offset of `filename` (`const char *`) in `struct linux_binprm` (from BTF); 0 when the
/// kernel has no BTF, in which case the LSM program is never attached.
#[unsafe(no_mangle)]
static BPRM_FILENAME_OFF: u32 = 0;

#[inline(always)]
fn read(v: &'static u32) -> u32 {
    // SAFETY: a static; the volatile read keeps the compiler from folding in the default value
    // the loader overwrites.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn sys_exit_ret_offset() -> usize {
    read(&SYS_EXIT_RET_OFF) as usize
}

#[inline(always)]
pub fn bprm_filename_offset() -> usize {
    read(&BPRM_FILENAME_OFF) as usize
}
