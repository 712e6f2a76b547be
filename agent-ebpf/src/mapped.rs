//! Programs mapped for execution without an exec. The dynamic loader run as a program
//! (`/lib64/ld-linux-x86-64.so.2 /usr/bin/curl`) is an exec of the loader, which then maps the
//! program itself; so does any loader that `mmap`s a file with `PROT_EXEC`, or `mprotect`s a
//! mapping of one to it. A file that a rule names by an exact path and refuses or holds (or
//! whose cached content verdict does) is refused here too: with `EPERM` on the LSM backend
//! (`mmap_file`, `file_mprotect`); on the tracepoint backend, by ending the task at the entry
//! of an `mmap` with `PROT_EXEC` of such a file (a tracepoint cannot refuse, and kernels
//! without BPF LSM often lack kprobes too); a readable mapping under the `READ_IMPLIES_EXEC`
//! personality is an executable one there too. Where the kernel has kprobes, the tracepoint
//! backend probes the two LSM entry points instead (`security_mmap_file`,
//! `security_file_mprotect`), so that it decides on the file the kernel maps and sees `mprotect`;
//! without kprobes it sees `mmap` at its entry and not `mprotect`. A
//! mapping cannot wait for a reviewer, so a held program is refused: it runs only by an exec,
//! which is held.
//!
//! Not decided here: the mappings the kernel makes while it builds a new image (the program and
//! its ELF interpreter, decided at the exec), recognised by the end of the image's argument
//! area not being set yet; a task mapping its own image again; files only a prefix names (they
//! may be libraries, which every program maps).

use agent_common::{event_flags, rule_flags, Action, ExecFileKey, Op, Watch};
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    programs::TracePointContext,
};

use crate::counters::{bump, Counter};
use crate::identity::{self, FileId};
use crate::maps::{CONTENT, DOOMED_MM, EXEC_FILES};
use crate::pause;
use crate::{kconf, scope};

const PROT_READ: u64 = 1;
const PROT_EXEC: u64 = 4;
/// `personality(2)`'s flag (`include/uapi/linux/personality.h`).
const READ_IMPLIES_EXEC: u32 = 0x0400000;
const EPERM: i32 = -1;

/// `mmap_file` / `file_mprotect` (LSM backend): 0, or `-EPERM` to refuse.
#[inline(always)]
pub fn lsm_verdict(file: *const u8, prot: u64) -> i32 {
    if refused(file, prot) {
        EPERM
    } else {
        0
    }
}

/// Offsets of `prot` and `fd` in the `syscalls:sys_enter_mmap` record: the arguments follow
/// the common header and the system call number, 8 bytes each (`addr`, `len`, `prot`, `flags`,
/// `fd`, `off`).
const MMAP_PROT: usize = 16 + 2 * 8;
const MMAP_FD: usize = 16 + 4 * 8;

/// `syscalls:sys_enter_mmap` (tracepoint backend): a refused mapping ends the task, which runs
/// nothing of it (the kill is taken on the way back to user space, after this one call).
pub fn on_mmap_enter(ctx: &TracePointContext) {
    // SAFETY: reading the record the kernel passed, at the system call ABI's fixed offsets.
    let (prot, fd) = match unsafe { (ctx.read_at::<u64>(MMAP_PROT), ctx.read_at::<i64>(MMAP_FD)) } {
        (Ok(p), Ok(f)) => (p, f),
        _ => return,
    };
    // An anonymous mapping maps no program: no need to read the personality for it.
    if fd < 0 {
        return;
    }
    let prot = prot | implied_exec(prot);
    if prot & PROT_EXEC == 0 {
        return;
    }
    if refused(fd_file(fd as u64), prot) {
        end_task();
    }
}

/// `PROT_EXEC` where the kernel will add it: a readable mapping under the `READ_IMPLIES_EXEC`
/// personality (which any process may set for itself) is mapped executable.
#[inline(always)]
fn implied_exec(prot: u64) -> u64 {
    if prot & PROT_READ == 0 {
        return 0;
    }
    let Some(o) = kconf::file_offsets() else {
        return 0;
    };
    // SAFETY: the helper returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the helper checks the address; the offset comes from this kernel's BTF.
    match unsafe { bpf_probe_read_kernel(task.wrapping_add(o.task_personality) as *const u32) } {
        Ok(p) if p & READ_IMPLIES_EXEC != 0 => PROT_EXEC,
        Ok(_) => 0,
        Err(_) => {
            bump(Counter::FieldUnreadable);
            0
        }
    }
}

/// The `struct file *` behind the current task's descriptor `fd`; null when there is none.
#[inline(always)]
fn fd_file(fd: u64) -> *const u8 {
    let Some(o) = kconf::file_offsets() else {
        return core::ptr::null();
    };
    // SAFETY: the helper returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let fdt = identity::ptr_at(identity::ptr_at(task, o.task_files), o.files_fdt);
    if fdt.is_null() {
        return core::ptr::null();
    }
    // SAFETY: the helper checks the address; the offset comes from this kernel's BTF.
    let max = unsafe { bpf_probe_read_kernel(fdt.wrapping_add(o.fdt_max_fds) as *const u32) };
    match max {
        Ok(m) if fd < m as u64 => {}
        _ => return core::ptr::null(),
    }
    let table = identity::ptr_at(fdt, o.fdt_fd);
    identity::ptr_at(table, (fd as usize) * core::mem::size_of::<usize>())
}

/// Tracepoint backend, where kprobes work: the entry of `security_mmap_file(file, prot, flags)`,
/// which every mapping of a file passes with the file the kernel maps (not the descriptor as it
/// was when the system call began, which another thread may `dup2` over meanwhile). The
/// mapping completes; the task is ended before it returns to user space.
#[inline(always)]
pub fn on_mmap_file(file: *const u8, prot: u64) {
    let prot = prot | implied_exec(prot);
    if refused(file, prot) {
        end_task();
    }
}

/// Tracepoint backend, where kprobes work: the entry of `security_file_mprotect(vma, reqprot,
/// prot)`, once for each mapping a `mprotect` changes, with `prot` as the kernel will apply it
/// (`READ_IMPLIES_EXEC` included): a program mapped readable and then made executable.
#[inline(always)]
pub fn on_file_mprotect(vma: *const u8, prot: u64) {
    if refused(vma_file(vma), prot) {
        end_task();
    }
}

/// Ends the current task for a mapping it is making (which completes). A `vfork` child shares
/// its parent's memory, and the parent wakes when the child ends: the memory is marked, and
/// the parent is ended on its way back from the call ([`on_clone_exit`]).
#[inline(always)]
fn end_task() {
    pause::kill_current();
    let Some(o) = kconf::file_offsets() else {
        return;
    };
    // SAFETY: the helper returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if identity::ptr_at(task, o.task_vfork_done).is_null() {
        return;
    }
    let mm = identity::ptr_at(task, o.task_mm);
    if mm.is_null() {
        return;
    }
    if DOOMED_MM.insert(&(mm as u64), &1, 0).is_err() {
        bump(Counter::DoomedFull);
    }
}

/// `syscalls:sys_exit_clone`, `_clone3` and `_vfork` (tracepoint backend): a task whose memory
/// a `vfork` child it waited for mapped a refused program into is ended before it returns to
/// user space.
pub fn on_clone_exit() {
    let Some(o) = kconf::file_offsets() else {
        return;
    };
    // SAFETY: the helper returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = identity::ptr_at(task, o.task_mm) as u64;
    if mm == 0 || DOOMED_MM.get_ptr(&mm).is_none() {
        return;
    }
    let _ = DOOMED_MM.remove(&mm);
    bump(Counter::MapRefused);
    pause::kill_current();
}

/// The file of a `struct vm_area_struct *` (null for an anonymous mapping).
#[inline(always)]
pub fn vma_file(vma: *const u8) -> *const u8 {
    match kconf::file_offsets() {
        Some(o) => identity::ptr_at(vma, o.vma_file),
        None => core::ptr::null(),
    }
}

/// Whether mapping `file` with `prot` is refused (and reported).
#[inline(always)]
fn refused(file: *const u8, prot: u64) -> bool {
    if prot & PROT_EXEC == 0 || file.is_null() {
        return false;
    }
    let Some((cgroup, watch)) = scope::watched() else {
        return false;
    };
    let Some(o) = kconf::file_offsets() else {
        // No identities on this kernel: nothing to match a mapping against.
        return false;
    };
    // SAFETY: the helper returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = identity::ptr_at(task, o.task_mm);
    if mm.is_null() {
        return false;
    }
    // SAFETY: `mm` is the task's own mm; the offset comes from this kernel's BTF.
    let arg_end = unsafe { bpf_probe_read_kernel(mm.wrapping_add(o.mm_arg_end) as *const u64) };
    match arg_end {
        // The kernel is building a new image: decided at the exec.
        Ok(0) => return false,
        Ok(_) => {}
        Err(_) => {
            bump(Counter::FieldUnreadable);
            return false;
        }
    }
    let id = identity::of_file(file, &o);
    if id.1 == 0 {
        return false;
    }
    let image = identity::of_current_image();
    if image.0 == id.0 && image.1 == id.1 {
        return false;
    }
    let (rule_id, action) = rule_of(watch, id);
    if action != Action::Deny as u8 && action != Action::Approve as u8 {
        return false;
    }
    bump(Counter::MapRefused);
    report(cgroup, watch, id, rule_id, action);
    true
}

/// The strictest of the file's exact-path rule and its cached content verdict: (rule, action),
/// action 0 when neither says anything.
#[inline(always)]
fn rule_of(watch: Watch, id: FileId) -> (u32, u8) {
    let (dev, ino, ctime, inode) = id;
    let key = ExecFileKey {
        workload: watch.workload,
        dev,
        ino,
    };
    let mut best = (0u32, 0u8);
    if let Some(r) = EXEC_FILES.get_ptr(&key) {
        // SAFETY: map value pointer from lookup.
        let r = unsafe { *r };
        if r.flags & rule_flags::EXACT != 0 {
            best = (r.rule_id, r.action);
        }
    }
    if ctime != 0 {
        if let Some(v) = CONTENT.get_ptr(&key) {
            // SAFETY: map value pointer from lookup.
            let v = unsafe { *v };
            if v.ctime_ns == ctime && v.inode == inode && v.action > best.1 {
                best = (v.rule_id, v.action);
            }
        }
    }
    best
}

#[inline(always)]
fn report(cgroup: u64, watch: Watch, id: FileId, rule_id: u32, action: u8) {
    pause::report_refusal(cgroup, watch, action, rule_id, |ev| {
        ev.op = Op::Exec as u8;
        ev.flags = event_flags::MAPPED;
        ev.file_dev = id.0;
        ev.addr[8..].copy_from_slice(&id.1.to_ne_bytes());
        ev.file_ctime_ns = id.2;
        ev.file_inode = id.3;
    });
}
