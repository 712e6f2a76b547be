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

/// The host's fingerprint key (`agent_common::FingerprintKey`), set by the agent at load from
/// the key it keeps in the pinned `FP_KEY` map.
#[unsafe(no_mangle)]
static FP_KEY_LO: u64 = 0;
#[unsafe(no_mangle)]
static FP_KEY_HI: u64 = 0;

#[inline(always)]
pub fn fp_key_lo() -> u64 {
    // SAFETY: as in `read`.
    unsafe { core::ptr::read_volatile(&FP_KEY_LO) }
}

#[inline(always)]
pub fn fp_key_hi() -> u64 {
    // SAFETY: as in `read`.
    unsafe { core::ptr::read_volatile(&FP_KEY_HI) }
}

#[inline(always)]
pub fn sys_exit_ret_offset() -> usize {
    read(&SYS_EXIT_RET_OFF) as usize
}

#[inline(always)]
pub fn bprm_filename_offset() -> usize {
    read(&BPRM_FILENAME_OFF) as usize
}

/// `child_pid` in the `sched_process_fork` record (from the format file: its layout changed when
/// the comm fields became dynamic).
#[unsafe(no_mangle)]
static FORK_CHILD_OFF: u32 = 44;

/// `pid` and `old_pid` in the `sched_process_exec` record (from the format file).
#[unsafe(no_mangle)]
static EXEC_PID_OFF: u32 = 12;
#[unsafe(no_mangle)]
static EXEC_OLD_PID_OFF: u32 = 16;

#[inline(always)]
pub fn exec_pid_offset() -> usize {
    read(&EXEC_PID_OFF) as usize
}

#[inline(always)]
pub fn exec_old_pid_offset() -> usize {
    read(&EXEC_OLD_PID_OFF) as usize
}

/// `dst_root`, `dst_id` and `pid` in the `cgroup_attach_task` record (from the format file).
#[unsafe(no_mangle)]
static ATTACH_ROOT_OFF: u32 = 8;
#[unsafe(no_mangle)]
static ATTACH_DST_OFF: u32 = 16;
#[unsafe(no_mangle)]
static ATTACH_PID_OFF: u32 = 24;

#[inline(always)]
pub fn fork_child_offset() -> usize {
    read(&FORK_CHILD_OFF) as usize
}

#[inline(always)]
pub fn attach_root_offset() -> usize {
    read(&ATTACH_ROOT_OFF) as usize
}

#[inline(always)]
pub fn attach_dst_offset() -> usize {
    read(&ATTACH_DST_OFF) as usize
}

#[inline(always)]
pub fn attach_pid_offset() -> usize {
    read(&ATTACH_PID_OFF) as usize
}

/// 1 when the offsets below were all found in this kernel's BTF, so the programs can read the
/// identity (device, inode) of the file being executed; 0 leaves exec matching to paths.
#[unsafe(no_mangle)]
static FILE_ID_ON: u32 = 0;

/// `struct linux_binprm`.`file` (`struct file *`): the file this level of the exec runs (the
/// script, then its interpreter).
#[unsafe(no_mangle)]
static BPRM_FILE_OFF: u32 = 0;

/// `struct file`.`f_inode`.
#[unsafe(no_mangle)]
static FILE_INODE_OFF: u32 = 0;

/// `struct inode`.`i_ino`.
#[unsafe(no_mangle)]
static INODE_INO_OFF: u32 = 0;

/// `struct inode`.`i_sb`.
#[unsafe(no_mangle)]
static INODE_SB_OFF: u32 = 0;

/// `struct super_block`.`s_dev`.
#[unsafe(no_mangle)]
static SB_DEV_OFF: u32 = 0;

/// `struct task_struct`.`mm`.
#[unsafe(no_mangle)]
static TASK_MM_OFF: u32 = 0;

/// `struct mm_struct`.`exe_file`: the file the task's current image came from.
#[unsafe(no_mangle)]
static MM_EXE_FILE_OFF: u32 = 0;

/// `struct mm_struct`.`arg_end`: 0 while the kernel builds a new image (set when it lays out
/// the argument area, after the program and its ELF interpreter are mapped; user space cannot
/// set it to 0).
#[unsafe(no_mangle)]
static MM_ARG_END_OFF: u32 = 0;

/// `struct vm_area_struct`.`vm_file`.
#[unsafe(no_mangle)]
static VMA_FILE_OFF: u32 = 0;

/// `struct task_struct`.`files`, `struct files_struct`.`fdt`, `struct fdtable`.`fd` and
/// `.max_fds`: the file behind a descriptor.
#[unsafe(no_mangle)]
static TASK_FILES_OFF: u32 = 0;
#[unsafe(no_mangle)]
static FILES_FDT_OFF: u32 = 0;
#[unsafe(no_mangle)]
static FDT_FD_OFF: u32 = 0;
#[unsafe(no_mangle)]
static FDT_MAX_FDS_OFF: u32 = 0;

/// `struct task_struct`.`tgid`: the process of a task a hook is given (not the current one).
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = 0;

/// `struct task_struct`.`personality`: under `READ_IMPLIES_EXEC` a readable mapping is an
/// executable one, whatever `prot` the system call names.
#[unsafe(no_mangle)]
static TASK_PERSONALITY_OFF: u32 = 0;

/// `struct task_struct`.`vfork_done`: set in a child made by `vfork` (`CLONE_VFORK`) until it
/// execs or exits, while its parent waits.
#[unsafe(no_mangle)]
static TASK_VFORK_DONE_OFF: u32 = 0;

/// Offsets for reading a file's identity.
#[derive(Clone, Copy)]
pub struct FileOffsets {
    pub bprm_file: usize,
    pub file_inode: usize,
    pub inode_ino: usize,
    pub inode_sb: usize,
    pub sb_dev: usize,
    pub task_mm: usize,
    pub mm_exe_file: usize,
    pub mm_arg_end: usize,
    pub vma_file: usize,
    pub task_files: usize,
    pub files_fdt: usize,
    pub fdt_fd: usize,
    pub fdt_max_fds: usize,
    pub task_tgid: usize,
    pub task_personality: usize,
    pub task_vfork_done: usize,
}

/// The offsets, or `None` where this kernel's BTF did not give them all.
#[inline(always)]
pub fn file_offsets() -> Option<FileOffsets> {
    if read(&FILE_ID_ON) == 0 {
        return None;
    }
    Some(FileOffsets {
        bprm_file: read(&BPRM_FILE_OFF) as usize,
        file_inode: read(&FILE_INODE_OFF) as usize,
        inode_ino: read(&INODE_INO_OFF) as usize,
        inode_sb: read(&INODE_SB_OFF) as usize,
        sb_dev: read(&SB_DEV_OFF) as usize,
        task_mm: read(&TASK_MM_OFF) as usize,
        mm_exe_file: read(&MM_EXE_FILE_OFF) as usize,
        mm_arg_end: read(&MM_ARG_END_OFF) as usize,
        vma_file: read(&VMA_FILE_OFF) as usize,
        task_files: read(&TASK_FILES_OFF) as usize,
        files_fdt: read(&FILES_FDT_OFF) as usize,
        fdt_fd: read(&FDT_FD_OFF) as usize,
        fdt_max_fds: read(&FDT_MAX_FDS_OFF) as usize,
        task_tgid: read(&TASK_TGID_OFF) as usize,
        task_personality: read(&TASK_PERSONALITY_OFF) as usize,
        task_vfork_done: read(&TASK_VFORK_DONE_OFF) as usize,
    })
}

/// `struct linux_binprm`.`interp` (`const char *`): the same pointer as `filename` at the first
/// level of an exec, the interpreter's path at the levels below it. 0 when BTF lacks it.
#[unsafe(no_mangle)]
static BPRM_INTERP_OFF: u32 = 0;

/// `struct inode`: the seconds and nanoseconds of the change time (`i_ctime`, `__i_ctime` or
/// `i_ctime_sec`/`i_ctime_nsec` depending on the release). `CTIME_ON` is 1 when found.
#[unsafe(no_mangle)]
static CTIME_ON: u32 = 0;
#[unsafe(no_mangle)]
static CTIME_SEC_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CTIME_NSEC_OFF: u32 = 0;

/// Offset of `linux_binprm.interp`, when known.
#[inline(always)]
pub fn bprm_interp_offset() -> Option<usize> {
    match read(&BPRM_INTERP_OFF) {
        0 => None,
        o => Some(o as usize),
    }
}

/// Offsets of the change time's seconds and nanoseconds in `struct inode`, when known.
#[inline(always)]
pub fn ctime_offsets() -> Option<(usize, usize)> {
    if read(&CTIME_ON) == 0 {
        return None;
    }
    Some((
        read(&CTIME_SEC_OFF) as usize,
        read(&CTIME_NSEC_OFF) as usize,
    ))
}

/// `struct task_struct`.`thread_info` + `struct thread_info`.`status` (x86: where `TS_COMPAT`
/// marks a 32-bit system call). `COMPAT_ON` is 1 when found.
#[unsafe(no_mangle)]
static TASK_STATUS_OFF: u32 = 0;
#[unsafe(no_mangle)]
static COMPAT_ON: u32 = 0;

/// The offset of the current task's `thread_info.status`, when this kernel has one.
#[inline(always)]
pub fn compat_status_offset() -> Option<usize> {
    (read(&COMPAT_ON) == 1).then(|| read(&TASK_STATUS_OFF) as usize)
}

/// Where a cgroup keeps its id and its parent, and a task its id (from BTF): `cgroup.kn`,
/// `cgroup.root`, `cgroup_root.hierarchy_id`, `kernfs_node.id`, `kernfs_node.parent` (`__parent`
/// since 6.15), `task_struct.pid`. With them the move of a thread is decided by the ancestors of
/// the cgroup it moves to, not only by that cgroup's id. `ANCESTRY_ON` is 1 when all were found.
#[unsafe(no_mangle)]
static ANCESTRY_ON: u32 = 0;
#[unsafe(no_mangle)]
static CGRP_KN_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CGRP_ROOT_OFF: u32 = 0;
#[unsafe(no_mangle)]
static ROOT_HIER_OFF: u32 = 0;
#[unsafe(no_mangle)]
static KN_ID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static KN_PARENT_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = 0;
/// `task_struct.cgroups` and `css_set.dfl_cgrp`: the cgroup v2 a task is in (a child started
/// elsewhere by `clone3(CLONE_INTO_CGROUP)`).
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CSS_SET_DFL_OFF: u32 = 0;
/// `task_struct.signal` and `signal_struct.live`: how many threads of a process are still
/// running, so that an exiting leader's lineage stays for the threads that outlive it.
#[unsafe(no_mangle)]
static TASK_SIGNAL_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SIGNAL_LIVE_OFF: u32 = 0;

/// Offsets for walking a cgroup's ancestors.
#[derive(Clone, Copy)]
pub struct Ancestry {
    pub cgrp_kn: usize,
    pub cgrp_root: usize,
    pub root_hierarchy: usize,
    pub kn_id: usize,
    pub kn_parent: usize,
    pub task_pid: usize,
    pub task_cgroups: usize,
    pub css_set_dfl: usize,
    pub task_signal: usize,
    pub signal_live: usize,
}

/// The offsets, or `None` where this kernel's BTF did not give them all.
#[inline(always)]
pub fn ancestry() -> Option<Ancestry> {
    if read(&ANCESTRY_ON) == 0 {
        return None;
    }
    Some(Ancestry {
        cgrp_kn: read(&CGRP_KN_OFF) as usize,
        cgrp_root: read(&CGRP_ROOT_OFF) as usize,
        root_hierarchy: read(&ROOT_HIER_OFF) as usize,
        kn_id: read(&KN_ID_OFF) as usize,
        kn_parent: read(&KN_PARENT_OFF) as usize,
        task_pid: read(&TASK_PID_OFF) as usize,
        task_cgroups: read(&TASK_CGROUPS_OFF) as usize,
        css_set_dfl: read(&CSS_SET_DFL_OFF) as usize,
        task_signal: read(&TASK_SIGNAL_OFF) as usize,
        signal_live: read(&SIGNAL_LIVE_OFF) as usize,
    })
}

/// The port of the agent's resolver proxy on loopback (UDP and TCP, IPv4 and IPv6); 0: none,
/// DNS queries go where they were sent.
#[unsafe(no_mangle)]
static DNS_PROXY_PORT: u32 = 0;

#[inline(always)]
pub fn dns_proxy_port() -> u16 {
    read(&DNS_PROXY_PORT) as u16
}

/// 1 when the proxy also listens on `::1` (the host has IPv6 loopback); 0: queries to IPv6
/// servers go where they were sent.
#[unsafe(no_mangle)]
static DNS_PROXY_V6: u32 = 0;

#[inline(always)]
pub fn dns_proxy_v6() -> bool {
    read(&DNS_PROXY_V6) != 0
}

/// The agent's network namespace (its cookie): DNS queries are sent to the proxy only from
/// there; 0: not known, every namespace's are.
#[unsafe(no_mangle)]
static AGENT_NETNS: u64 = 0;

#[inline(always)]
pub fn agent_netns() -> u64 {
    // SAFETY: as in `read`.
    unsafe { core::ptr::read_volatile(&AGENT_NETNS) }
}

/// Where a socket passed to a watched task was made (from BTF): `file.private_data` (the
/// socket behind a socket's file), `inode.i_mode`, `socket.sk`, the family and the cgroup v2
/// pointer of a `struct sock`. `RECEIVED_ON` is 1 when these, the file offsets and the
/// ancestry offsets were all found.
#[unsafe(no_mangle)]
static RECEIVED_ON: u32 = 0;
#[unsafe(no_mangle)]
static FILE_PRIV_OFF: u32 = 0;
#[unsafe(no_mangle)]
static INODE_MODE_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SOCKET_SK_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SK_FAMILY_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SK_CGROUP_OFF: u32 = 0;

/// Offsets for reading a passed socket.
#[derive(Clone, Copy)]
pub struct Received {
    pub file_inode: usize,
    pub file_private: usize,
    pub inode_mode: usize,
    pub socket_sk: usize,
    pub sk_family: usize,
    pub sk_cgroup: usize,
}

/// The offsets, or `None` where this kernel's BTF did not give them all.
#[inline(always)]
pub fn received() -> Option<Received> {
    if read(&RECEIVED_ON) == 0 {
        return None;
    }
    Some(Received {
        file_inode: read(&FILE_INODE_OFF) as usize,
        file_private: read(&FILE_PRIV_OFF) as usize,
        inode_mode: read(&INODE_MODE_OFF) as usize,
        socket_sk: read(&SOCKET_SK_OFF) as usize,
        sk_family: read(&SK_FAMILY_OFF) as usize,
        sk_cgroup: read(&SK_CGROUP_OFF) as usize,
    })
}
