//! The identity of the file being executed: the device of its file system and its inode, read
//! from kernel structures at offsets the agent found in this kernel's BTF. Every name of a file
//! (links, bind mounts, `/proc/self/fd/N`, `execveat` with a descriptor) has the same identity.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::counters::{bump, Counter};
use crate::kconf::{self, FileOffsets};

/// (device in the kernel's `dev_t` encoding, inode number, change time in ns since the epoch,
/// the inode's kernel address); inode 0 (no file has it) when the identity could not be read,
/// change time 0 when it could not. Not an `Option`: the compiler may spill the undefined
/// payload of a `None`, which the verifier refuses as a read of an uninitialised register.
pub type FileId = (u32, u64, u64, u64);

/// The identity of no file.
pub const UNKNOWN: FileId = (0, 0, 0, 0);

/// Bit 31 of the nanoseconds is a flag on kernels with multigrain timestamps, not time.
const NSEC_MASK: u32 = 0x3fff_ffff;

/// The inode's change time in ns, or 0 when this kernel's BTF did not say where it is.
#[inline(always)]
fn ctime_of(inode: *const u8) -> u64 {
    let Some((sec_off, nsec_off)) = kconf::ctime_offsets() else {
        return 0;
    };
    // SAFETY: the helper checks the address; offsets come from this kernel's BTF.
    let sec = unsafe { bpf_probe_read_kernel(inode.wrapping_add(sec_off) as *const i64) };
    // SAFETY: as above; the low 32 bits of a `long` or a `u32`, little-endian either way.
    let nsec = unsafe { bpf_probe_read_kernel(inode.wrapping_add(nsec_off) as *const u32) };
    match (sec, nsec) {
        (Ok(s), Ok(n)) if s > 0 => (s as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add((n & NSEC_MASK) as u64),
        _ => {
            bump(Counter::FieldUnreadable);
            0
        }
    }
}

/// Reads a pointer-sized field; null when unreadable.
#[inline(always)]
pub fn ptr_at(base: *const u8, off: usize) -> *const u8 {
    if base.is_null() {
        return core::ptr::null();
    }
    // SAFETY: the helper checks the address; `base` is a kernel pointer we were given or read.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const *const u8) } {
        Ok(p) => p,
        Err(_) => core::ptr::null(),
    }
}

/// Identity of a `struct file *`.
#[inline(always)]
pub fn of_file(file: *const u8, o: &FileOffsets) -> FileId {
    let inode = ptr_at(file, o.file_inode);
    let sb = ptr_at(inode, o.inode_sb);
    if sb.is_null() {
        bump(Counter::FileUnreadable);
        return UNKNOWN;
    }
    // SAFETY: as in `ptr_at`; `i_ino` is an `unsigned long`, `s_dev` a `dev_t` (u32).
    let ino = unsafe { bpf_probe_read_kernel(inode.wrapping_add(o.inode_ino) as *const u64) };
    // SAFETY: as above.
    let dev = unsafe { bpf_probe_read_kernel(sb.wrapping_add(o.sb_dev) as *const u32) };
    match (dev, ino) {
        (Ok(d), Ok(i)) => (d, i, ctime_of(inode), inode as u64),
        _ => {
            bump(Counter::FileUnreadable);
            UNKNOWN
        }
    }
}

/// The file this level of an exec runs (`bprm->file`): the script, then its interpreter.
#[inline(always)]
pub fn of_bprm(bprm: *const u8) -> FileId {
    let Some(o) = kconf::file_offsets() else {
        return UNKNOWN;
    };
    of_file(ptr_at(bprm, o.bprm_file), &o)
}

/// The file the current task's image came from (`current->mm->exe_file`).
#[inline(always)]
pub fn of_current_image() -> FileId {
    let Some(o) = kconf::file_offsets() else {
        return UNKNOWN;
    };
    // SAFETY: the helper returns the running task; reading through it is checked by the helper.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = ptr_at(task, o.task_mm);
    of_file(ptr_at(mm, o.mm_exe_file), &o)
}
