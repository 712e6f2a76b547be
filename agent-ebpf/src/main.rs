//! Latch's kernel programs.
//!
//! They own the decision made in the kernel for one operation of a watched task: match it
//! against the rules in the maps, apply a grant, hold it (pending entry, event, SIGSTOP and a
//! system-call restart) or apply the fail mode when the agent is gone. They must not allocate,
//! loop without a bound, or panic, and they keep no policy of their own: everything they know
//! comes from maps the agent fills.
//!
//! Programs:
//! - `connect4`, `connect6`, `sendmsg4`, `sendmsg6`: cgroup `sock_addr` hooks attached at the
//!   cgroup v2 root; everything outside a watched cgroup returns at once. A held call is
//!   recorded and failed with `-ERESTARTNOINTR`.
//! - `recvmsg4`, `recvmsg6`: cgroup `sock_addr` hooks at the root; an answer of the agent's
//!   resolver proxy to a query the connect and sendmsg hooks turned to it is shown as coming
//!   from the server the workload asked (see `dns`).
//! - `egress`: cgroup `skb` egress at the cgroup v2 root; drops what no socket hook decided (ping
//!   and raw sockets, other IP protocols) when a rule denies or holds its destination.
//! - `sock_new`, `sock_gone`: cgroup `sock_create`/`sock_release` at the cgroup v2 root; record
//!   the sockets of threads that left their watched cgroup, for `egress`.
//! - `held`: `syscalls:sys_exit_{connect,sendto,sendmsg,sendmmsg}`; stops a thread whose call a
//!   socket hook held and tells the agent (socket hooks may not send signals on most kernels).
//!   `held32_*` (LSM backend, x86): the same at the fexit of the 32-bit system-call wrappers,
//!   which those tracepoints do not see.
//! - `bpf_guard`: BPF LSM `bpf` (LSM backend): refuses `bpf()` to watched tasks.
//! - `exec_lsm`: BPF LSM `bprm_check_security` (LSM backend): exec decided before it happens,
//!   at every level of an interpreter chain, by the identity of the file and then its path.
//! - `exec`: `sched:sched_process_exec` (tracepoint backend): the new image of a watched task,
//!   before its first instruction.
//! - `restop`: fexit of `get_signal` (tracepoint backend): a held exec's task that is about to
//!   return to user space without a decision (a foreign SIGCONT, a tracer) is stopped again
//!   before it runs an instruction. Runs only when a task handles a signal.
//! - `gate`: raw `sys_enter` (tracepoint backend, behind `restop`, which a racing SIGCONT can
//!   defeat): ends such a task at its first system call. On the tracepoint backend the program
//!   is `gate32`, which also ends a watched task at its first 32-bit system call (the 64-bit
//!   system-call tracepoints below do not see those).
//! - `exit`: `sched:sched_process_exit`; drops the pending entry and the lineage of a task that
//!   went away.
//! - `execd`, `exec_exit`: `sched:sched_process_exec` and the exits of `execve`/`execveat`;
//!   move a lineage to a thread's new id, and spend an approval that covered an interpreter
//!   chain once the execve has returned.
//! - `fork`, `moved`: `sched:sched_process_fork` and `cgroup:cgroup_attach_task`; keep the
//!   lineage by which a task that leaves a watched cgroup stays watched. `moved_raw` (the same
//!   event as a raw tracepoint) replaces `moved` where BTF lets it read the destination's
//!   ancestors, so a move below a watched cgroup gives a lineage too; `fork_raw` replaces
//!   `fork` there, and tells a child started in another cgroup (`CLONE_INTO_CGROUP`).
//! - `map_lsm`, `mprotect_lsm` (LSM backend: `mmap_file`, `file_mprotect`) and `map_tp`
//!   (tracepoint backend: `syscalls:sys_enter_mmap`; `map_kp`, `mprotect_kp` on
//!   `security_mmap_file`, `security_file_mprotect` in its place where kprobes work): a program
//!   a rule refuses or holds, mapped for execution without an exec (the dynamic loader run as a
//!   program, or a mapping made executable by `mprotect`), is refused, or its task ended.
//! - `fork_share` (tracepoint backend: `task:task_newtask`): a watched task that makes a
//!   process sharing its descriptor table or memory (other than by `vfork`) is ended, so that
//!   what a call completed for a task ended at its entry is left to no process that runs.
//! - `socket_lsm` (LSM backend: `socket_create`) and `socket_tp`, `uring_tp` (tracepoint
//!   backend: `syscalls:sys_enter_socket`, `io_uring:io_uring_submit_req`): no `AF_PACKET`
//!   socket for a watched task, whether made by `socket()` or submitted to io_uring.
//! - `debug_lsm`, `traceme_lsm` (LSM backend: `ptrace_access_check`, `ptrace_traceme`) and
//!   `ptrace_tp`, `debug_kp` (tracepoint backend: `syscalls:sys_enter_ptrace`, a kprobe on
//!   `ptrace_may_access`; `vm_tp` on `sys_enter_process_vm_{readv,writev}` and `getfd_tp` on
//!   `sys_enter_pidfd_getfd` where the kprobe cannot attach): a watched task may not debug
//!   another process.
//! - `receive_lsm` (LSM backend: `file_receive`) and `receive_kp` (tracepoint backend: a kprobe
//!   on `security_file_receive`): a watched task may not be passed an IP or link-layer socket
//!   made outside the cgroups of its workload.
//! - `probe_lsm`: attached for a moment at start-up to learn whether BPF LSM programs really
//!   run here (they load and attach even where `bpf` is missing from `lsm=`, and then never run).
#![no_std]
#![no_main]
// Compare-and-swap for counted grants; see `pause::take_use`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod compat;
mod counters;
mod debug;
mod dns;
mod exec;
mod fp_key;
mod identity;
mod kconf;
mod lineage;
mod link_layer;
mod mapped;
mod maps;
mod net;
mod packet;
mod pause;
mod received;
mod report;
mod scope;
mod scratch;
mod shared;
mod sock_lineage;
mod stop;

use aya_ebpf::{
    macros::{
        cgroup_skb, cgroup_sock, cgroup_sock_addr, fexit, kprobe, lsm, raw_tracepoint, tracepoint,
    },
    programs::{
        FExitContext, LsmContext, ProbeContext, RawTracePointContext, SkBuffContext,
        SockAddrContext, SockContext, TracePointContext,
    },
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn exec(ctx: TracePointContext) -> u32 {
    exec::on_exec(&ctx);
    0
}

#[tracepoint]
pub fn held(ctx: TracePointContext) -> u32 {
    stop::on_syscall_exit(&ctx);
    0
}

/// The 32-bit calls' `held`, one program per x86 system-call wrapper (an fexit program is
/// loaded for one function).
#[fexit(function = "__ia32_sys_connect")]
pub fn held32_connect(ctx: FExitContext) -> i32 {
    stop::on_compat_return(&ctx);
    0
}

#[fexit(function = "__ia32_sys_sendto")]
pub fn held32_sendto(ctx: FExitContext) -> i32 {
    stop::on_compat_return(&ctx);
    0
}

#[fexit(function = "__ia32_compat_sys_sendmsg")]
pub fn held32_sendmsg(ctx: FExitContext) -> i32 {
    stop::on_compat_return(&ctx);
    0
}

#[fexit(function = "__ia32_compat_sys_sendmmsg")]
pub fn held32_sendmmsg(ctx: FExitContext) -> i32 {
    stop::on_compat_return(&ctx);
    0
}

#[fexit(function = "__ia32_compat_sys_socketcall")]
pub fn held32_sockcall(ctx: FExitContext) -> i32 {
    stop::on_compat_return(&ctx);
    0
}

#[lsm(hook = "bprm_check_security")]
pub fn exec_lsm(ctx: LsmContext) -> i32 {
    exec::on_bprm_check(&ctx)
}

#[fexit(function = "get_signal")]
pub fn restop(_ctx: FExitContext) -> i32 {
    exec::on_signal_return();
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn gate(_ctx: RawTracePointContext) -> i32 {
    exec::on_syscall();
    0
}

/// `gate` for the tracepoint backend, pinned under the same name: also ends a watched task at
/// its first 32-bit system call.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn gate32(ctx: RawTracePointContext) -> i32 {
    compat::on_syscall(ctx.arg::<u64>(1));
    exec::on_syscall();
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn exit(_ctx: TracePointContext) -> u32 {
    pause::on_exit();
    lineage::on_exit();
    exec::args_done();
    0
}

/// Every backend: a finished exec moves a lineage to the thread's new id and spends an approval
/// that covered the exec's interpreter chain.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn execd(ctx: TracePointContext) -> u32 {
    // Without the record's thread ids (unreadable), the current one: an exec marked for its
    // arguments must still be held.
    let old =
        lineage::on_exec(&ctx).unwrap_or(aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32);
    exec::chain_done(old);
    exec::args_after_exec(&ctx, old);
    0
}

/// `sys_exit_execve`, `sys_exit_execveat`: an execve that failed spends its approval too.
#[tracepoint]
pub fn exec_exit(ctx: TracePointContext) -> u32 {
    exec::on_execve_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn fork(ctx: TracePointContext) -> u32 {
    lineage::on_fork(&ctx);
    0
}

/// `fork` where the kernel's BTF gives the child's cgroup, pinned under the same name.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn fork_raw(ctx: RawTracePointContext) -> i32 {
    lineage::on_fork_raw(&ctx);
    0
}

/// Tracepoint backend: `task:task_newtask` as a raw tracepoint; a watched task that makes a
/// process sharing its descriptor table or memory is ended.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn fork_share(ctx: RawTracePointContext) -> i32 {
    shared::on_new_task(&ctx);
    0
}

#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn moved(ctx: TracePointContext) -> u32 {
    lineage::on_attach(&ctx);
    0
}

/// `moved` where the kernel's BTF gives the cgroup's ancestors, pinned under the same name.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn moved_raw(ctx: RawTracePointContext) -> i32 {
    lineage::on_attach_raw(&ctx);
    0
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    net::check::<false, false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    net::check::<false, true>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    net::check::<true, false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    net::check::<true, true>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::answer::<false>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::answer::<true>(&ctx)
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    packet::egress(&ctx)
}

#[cgroup_sock(sock_create)]
pub fn sock_new(ctx: SockContext) -> i32 {
    sock_lineage::on_create(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn sock_gone(ctx: SockContext) -> i32 {
    sock_lineage::on_release(&ctx)
}

/// LSM backend: a watched task may not use `bpf()` at all, so that no workload, whatever its
/// capabilities, can open the pinned maps or detach the hooks.
#[lsm(hook = "bpf")]
pub fn bpf_guard(_ctx: LsmContext) -> i32 {
    if scope::watched().is_some() {
        counters::bump(counters::Counter::BpfRefused);
        return -1;
    }
    0
}

/// LSM backend: `mmap_file(file, reqprot, prot, flags)`.
#[lsm(hook = "mmap_file")]
pub fn map_lsm(ctx: LsmContext) -> i32 {
    let (file, prot): (*const u8, u64) = (ctx.arg(0), ctx.arg(2));
    mapped::lsm_verdict(file, prot)
}

/// LSM backend: `file_mprotect(vma, reqprot, prot)`.
#[lsm(hook = "file_mprotect")]
pub fn mprotect_lsm(ctx: LsmContext) -> i32 {
    let (vma, prot): (*const u8, u64) = (ctx.arg(0), ctx.arg(2));
    mapped::lsm_verdict(mapped::vma_file(vma), prot)
}

/// LSM backend: `socket_create(family, type, protocol, kern)`.
#[lsm(hook = "socket_create")]
pub fn socket_lsm(ctx: LsmContext) -> i32 {
    let (family, kern): (i32, i32) = (ctx.arg(0), ctx.arg(3));
    if link_layer::refused(family, kern) {
        return -1;
    }
    0
}

/// Tracepoint backend: `syscalls:sys_enter_socket`.
#[tracepoint]
pub fn socket_tp(ctx: TracePointContext) -> u32 {
    link_layer::on_socket_enter(&ctx);
    0
}

/// Tracepoint backend: `io_uring:io_uring_submit_req`.
#[tracepoint]
pub fn uring_tp(ctx: TracePointContext) -> u32 {
    link_layer::on_uring_submit(&ctx);
    0
}

/// LSM backend: `ptrace_access_check(child, mode)`.
#[lsm(hook = "ptrace_access_check")]
pub fn debug_lsm(ctx: LsmContext) -> i32 {
    let (child, mode): (*const u8, u32) = (ctx.arg(0), ctx.arg(1));
    debug::lsm_access(child, mode)
}

/// LSM backend: `ptrace_traceme(parent)`.
#[lsm(hook = "ptrace_traceme")]
pub fn traceme_lsm(ctx: LsmContext) -> i32 {
    debug::lsm_traceme(ctx.arg(0))
}

/// Tracepoint backend: `syscalls:sys_enter_ptrace`.
#[tracepoint]
pub fn ptrace_tp(ctx: TracePointContext) -> u32 {
    debug::on_ptrace_enter(&ctx);
    0
}

/// Tracepoint backend: `syscalls:sys_enter_process_vm_readv` and `_writev`, where `debug_kp`
/// cannot attach.
#[tracepoint]
pub fn vm_tp(ctx: TracePointContext) -> u32 {
    debug::on_vm_enter(&ctx);
    0
}

/// Tracepoint backend: `syscalls:sys_enter_pidfd_getfd`, where `debug_kp` cannot attach.
#[tracepoint]
pub fn getfd_tp(_ctx: TracePointContext) -> u32 {
    debug::on_getfd_enter();
    0
}

/// LSM backend: `file_receive(file)`.
#[lsm(hook = "file_receive")]
pub fn receive_lsm(ctx: LsmContext) -> i32 {
    received::lsm_receive(&ctx)
}

/// Tracepoint backend: the entry of `security_file_receive`.
#[kprobe]
pub fn receive_kp(ctx: ProbeContext) -> u32 {
    received::on_receive(&ctx);
    0
}

/// Tracepoint backend: the entry of `ptrace_may_access`.
#[kprobe]
pub fn debug_kp(ctx: ProbeContext) -> u32 {
    debug::on_may_access(&ctx);
    0
}

/// Tracepoint backend: `syscalls:sys_enter_mmap`.
#[tracepoint]
pub fn map_tp(ctx: TracePointContext) -> u32 {
    mapped::on_mmap_enter(&ctx);
    0
}

/// Tracepoint backend where kprobes work: the entry of `security_mmap_file(file, prot, flags)`.
#[kprobe]
pub fn map_kp(ctx: ProbeContext) -> u32 {
    let (Some(file), Some(prot)) = (ctx.arg::<*const u8>(0), ctx.arg::<u64>(1)) else {
        counters::bump(counters::Counter::FieldUnreadable);
        return 0;
    };
    mapped::on_mmap_file(file, prot);
    0
}

/// Tracepoint backend where kprobes work: the entry of `security_file_mprotect(vma, reqprot,
/// prot)`.
#[kprobe]
pub fn mprotect_kp(ctx: ProbeContext) -> u32 {
    let (Some(vma), Some(prot)) = (ctx.arg::<*const u8>(0), ctx.arg::<u64>(2)) else {
        counters::bump(counters::Counter::FieldUnreadable);
        return 0;
    };
    mapped::on_file_mprotect(vma, prot);
    0
}

/// Tracepoint backend: `syscalls:sys_exit_clone`, `_clone3` and `_vfork`.
#[tracepoint]
pub fn clone_exit(_ctx: TracePointContext) -> u32 {
    mapped::on_clone_exit();
    0
}

/// Start-up probe only: attached while the agent runs one exec, to see whether LSM programs are
/// called on this kernel at all.
#[lsm(hook = "bprm_check_security")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    counters::bump(counters::Counter::LsmProbeRan);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program in which this is reachable, so no loaded program panics.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
