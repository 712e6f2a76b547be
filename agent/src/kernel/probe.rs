//! What the running kernel offers, found by asking it rather than by its version number: the
//! layout facts the programs need (tracefs formats, BTF), the LSM list, and whether BPF LSM
//! programs are really called here.

use std::{path::Path, process::Command, sync::OnceLock, time::Duration};

use agent_common::Counter;
use aya::{
    maps::{MapData, PerCpuArray},
    programs::Lsm,
    Btf, Ebpf,
};

use super::btf;

/// What the programs read from this kernel's structures, found in its BTF; each part is an error
/// of its own, for the part of the programs it turns off.
#[derive(Debug)]
pub struct Layout {
    /// [`bprm_offsets_in`].
    pub bprm: Result<Vec<(&'static str, u32)>, String>,
    /// [`ctime_offsets_in`].
    pub ctime: Result<(u32, u32), String>,
    /// [`ancestry_offsets_in`].
    pub ancestry: Result<Vec<(&'static str, u32)>, String>,
    /// [`compat_status_offset_in`].
    pub compat: Result<u32, String>,
    /// [`file_offsets_in`].
    pub files: Result<FileOffsets, String>,
    /// [`received_offsets_in`].
    pub received: Result<Vec<(&'static str, u32)>, String>,
}

impl Layout {
    /// Every part from one parsed BTF.
    pub fn of(b: &btf::Btf) -> Self {
        Layout {
            bprm: bprm_offsets_in(b),
            ctime: ctime_offsets_in(b),
            ancestry: ancestry_offsets_in(b),
            compat: compat_status_offset_in(b),
            files: file_offsets_in(b),
            received: received_offsets_in(b),
        }
    }

    /// Whether the programs can tell where a socket passed to a watched task was made: it needs
    /// the file, ancestry and received-socket offsets; the error is the first one missing.
    pub fn receives(&self) -> Result<(), String> {
        self.files.as_ref().map_err(|e| e.clone())?;
        self.ancestry.as_ref().map_err(|e| e.clone())?;
        self.received.as_ref().map(|_| ()).map_err(|e| e.clone())
    }

    /// Every part failing for the same reason (no readable BTF).
    fn unreadable(reason: &str) -> Self {
        Layout {
            bprm: Err(reason.to_string()),
            ctime: Err(reason.to_string()),
            ancestry: Err(reason.to_string()),
            compat: Err(reason.to_string()),
            files: Err(reason.to_string()),
            received: Err(reason.to_string()),
        }
    }
}

/// This kernel's [`Layout`], parsed from its BTF once per process: the running kernel's BTF
/// cannot change under it, and parsing it (megabytes) is most of the agent's own work in a
/// load. An agent loads once; tests and benchmarks load hundreds of times.
pub fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| match btf::Btf::from_kernel() {
        Ok(b) => Layout::of(&b),
        Err(e) => Layout::unreadable(&e.to_string()),
    })
}

/// The running kernel's BTF as aya reads it for loading and attaching, or why it cannot be
/// read. A load reads it once for every program that needs it (the LSM probe, the LSM hooks,
/// `restop`): parsing it is a good part of a load's own work.
pub type KernelBtf = Result<Btf, String>;

/// Reads [`KernelBtf`].
pub fn read_kernel_btf() -> KernelBtf {
    Btf::from_sys_fs().map_err(|e| e.to_string())
}

/// The format file of the system-call exit that the network hold uses to find `ret`.
const SYS_EXIT_FORMAT: &str = "events/syscalls/sys_exit_connect/format";

/// Byte offset of `ret` in the `syscalls:sys_exit_*` records of this kernel.
pub fn sys_exit_ret_offset(tracefs: &Path) -> Result<u32, String> {
    let path = tracefs.join(SYS_EXIT_FORMAT);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (network holds need system-call tracepoints, CONFIG_FTRACE_SYSCALLS)",
            path.display()
        )
    })?;
    parse_ret_offset(&text).ok_or_else(|| format!("{}: no `long ret` field", path.display()))
}

/// The offset of the field declared as `decl` (`pid_t child_pid`) in a tracepoint format
/// description.
pub fn parse_field_offset(format: &str, decl: &str) -> Option<u32> {
    let want = format!("field:{decl};");
    format
        .lines()
        .find(|l| l.trim_start().starts_with(&want))?
        .split(';')
        .find_map(|part| part.trim().strip_prefix("offset:"))?
        .trim()
        .parse()
        .ok()
}

/// Offsets in the records of the tracepoints that keep the lineage, by the global that holds
/// each: `sched_process_fork`'s `child_pid`, `cgroup_attach_task`'s `dst_root`, `dst_id`, `pid`,
/// and `sched_process_exec`'s `pid` and `old_pid`.
pub fn lineage_offsets(tracefs: &Path) -> Result<Vec<(&'static str, u32)>, String> {
    const FIELDS: &[(&str, &str, &str)] = &[
        (
            "FORK_CHILD_OFF",
            "events/sched/sched_process_fork/format",
            "pid_t child_pid",
        ),
        (
            "ATTACH_ROOT_OFF",
            "events/cgroup/cgroup_attach_task/format",
            "int dst_root",
        ),
        (
            "ATTACH_DST_OFF",
            "events/cgroup/cgroup_attach_task/format",
            "u64 dst_id",
        ),
        (
            "ATTACH_PID_OFF",
            "events/cgroup/cgroup_attach_task/format",
            "int pid",
        ),
    ];
    FIELDS
        .iter()
        .map(|(global, file, decl)| {
            let path = tracefs.join(file);
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            parse_field_offset(&text, decl)
                .map(|o| (*global, o))
                .ok_or_else(|| format!("{}: no `{decl}` field", path.display()))
        })
        .collect()
}

/// The offset of the `ret` field in a tracepoint format description.
pub fn parse_ret_offset(format: &str) -> Option<u32> {
    format
        .lines()
        .find(|l| l.contains("field:long ret;"))?
        .split(';')
        .find_map(|part| part.trim().strip_prefix("offset:"))?
        .trim()
        .parse()
        .ok()
}

/// Byte offsets of `linux_binprm.filename` and `linux_binprm.interp`, which the LSM exec hook
/// reads (the second tells an interpreter level from the first), by global name.
pub fn bprm_offsets_in(b: &btf::Btf) -> Result<Vec<(&'static str, u32)>, String> {
    [
        ("BPRM_FILENAME_OFF", "filename"),
        ("BPRM_INTERP_OFF", "interp"),
    ]
    .iter()
    .map(|(global, member)| {
        b.member_offset("linux_binprm", member)
            .map(|o| (*global, o))
            .map_err(|e| format!("linux_binprm.{member}: {e}"))
    })
    .collect()
}

/// Where `struct inode` keeps the change time, as (seconds, nanoseconds) offsets: the two
/// fields of Linux 6.11 and later, or a `timespec64` named `__i_ctime` (6.6 to 6.10) or
/// `i_ctime` (before).
pub fn ctime_offsets_in(b: &btf::Btf) -> Result<(u32, u32), String> {
    if let (Ok(sec), Ok(nsec)) = (
        b.member_offset("inode", "i_ctime_sec"),
        b.member_offset("inode", "i_ctime_nsec"),
    ) {
        return Ok((sec, nsec));
    }
    let ts = b
        .member_offset("inode", "__i_ctime")
        .or_else(|_| b.member_offset("inode", "i_ctime"))
        .map_err(|e| format!("inode change time: {e}"))?;
    let sec = b
        .member_offset("timespec64", "tv_sec")
        .map_err(|e| format!("timespec64.tv_sec: {e}"))?;
    let nsec = b
        .member_offset("timespec64", "tv_nsec")
        .map_err(|e| format!("timespec64.tv_nsec: {e}"))?;
    Ok((ts + sec, ts + nsec))
}

/// Where a task keeps x86's `TS_COMPAT` mark of a 32-bit system call: `task_struct.thread_info`
/// (the thread information lives in the task) plus `thread_info.status`. An error where this
/// kernel's BTF has no such field (arm64 keeps no `status`).
pub fn compat_status_offset_in(b: &btf::Btf) -> Result<u32, String> {
    let info = b
        .member_offset("task_struct", "thread_info")
        .map_err(|e| format!("task_struct.thread_info: {e}"))?;
    let status = b
        .member_offset("thread_info", "status")
        .map_err(|e| format!("thread_info.status: {e}"))?;
    Ok(info + status)
}

/// (global, structure, member names in the order tried) for walking a cgroup's ancestors from
/// `cgroup_attach_task`'s raw arguments.
const ANCESTRY_FIELDS: &[(&str, &str, &[&str])] = &[
    ("CGRP_KN_OFF", "cgroup", &["kn"]),
    ("CGRP_ROOT_OFF", "cgroup", &["root"]),
    ("ROOT_HIER_OFF", "cgroup_root", &["hierarchy_id"]),
    ("KN_ID_OFF", "kernfs_node", &["id"]),
    // Renamed when it became RCU-protected (6.15).
    ("KN_PARENT_OFF", "kernfs_node", &["parent", "__parent"]),
    ("TASK_PID_OFF", "task_struct", &["pid"]),
    ("TASK_CGROUPS_OFF", "task_struct", &["cgroups"]),
    ("CSS_SET_DFL_OFF", "css_set", &["dfl_cgrp"]),
    ("TASK_SIGNAL_OFF", "task_struct", &["signal"]),
    ("SIGNAL_LIVE_OFF", "signal_struct", &["live"]),
];

/// The offsets by which `moved_raw` reads the ancestors of the cgroup a thread moves to, by
/// global name; an error names the first field that is missing.
pub fn ancestry_offsets_in(b: &btf::Btf) -> Result<Vec<(&'static str, u32)>, String> {
    ANCESTRY_FIELDS
        .iter()
        .map(|(global, ty, members)| {
            let mut last = String::new();
            for member in *members {
                match b.member_offset(ty, member) {
                    Ok(o) => return Ok((*global, o)),
                    Err(e) => last = format!("{ty}.{member}: {e}"),
                }
            }
            Err(last)
        })
        .collect()
}

/// Offsets the kernel programs need to read the identity of an executed file, by global name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOffsets(pub Vec<(&'static str, u32)>);

/// (global, structure, member) for every offset in [`FileOffsets`].
const FILE_FIELDS: &[(&str, &str, &str)] = &[
    ("BPRM_FILE_OFF", "linux_binprm", "file"),
    ("FILE_INODE_OFF", "file", "f_inode"),
    ("INODE_INO_OFF", "inode", "i_ino"),
    ("INODE_SB_OFF", "inode", "i_sb"),
    ("SB_DEV_OFF", "super_block", "s_dev"),
    ("TASK_MM_OFF", "task_struct", "mm"),
    ("MM_EXE_FILE_OFF", "mm_struct", "exe_file"),
    ("MM_ARG_END_OFF", "mm_struct", "arg_end"),
    ("VMA_FILE_OFF", "vm_area_struct", "vm_file"),
    ("TASK_FILES_OFF", "task_struct", "files"),
    ("FILES_FDT_OFF", "files_struct", "fdt"),
    ("FDT_FD_OFF", "fdtable", "fd"),
    ("FDT_MAX_FDS_OFF", "fdtable", "max_fds"),
    ("TASK_TGID_OFF", "task_struct", "tgid"),
    ("TASK_PERSONALITY_OFF", "task_struct", "personality"),
    ("TASK_VFORK_DONE_OFF", "task_struct", "vfork_done"),
];

/// The offsets for reading a file's identity from a parsed BTF; an error names the first field
/// that is missing.
pub fn file_offsets_in(b: &btf::Btf) -> Result<FileOffsets, String> {
    FILE_FIELDS
        .iter()
        .map(|(global, ty, member)| {
            b.member_offset(ty, member)
                .map(|o| (*global, o))
                .map_err(|e| format!("{ty}.{member}: {e}"))
        })
        .collect::<Result<_, _>>()
        .map(FileOffsets)
}

/// (global, [(structure, member)] whose offsets add up to it) for reading a descriptor passed
/// to a watched task: is it a socket, of which family, made in which cgroup.
const RECEIVED_FIELDS: &[(&str, &[(&str, &str)])] = &[
    ("FILE_PRIV_OFF", &[("file", "private_data")]),
    ("INODE_MODE_OFF", &[("inode", "i_mode")]),
    ("SOCKET_SK_OFF", &[("socket", "sk")]),
    (
        "SK_FAMILY_OFF",
        &[("sock", "__sk_common"), ("sock_common", "skc_family")],
    ),
    // The cgroup pointer has been a field of its own since Linux 5.15; before, it was packed
    // with the classid in one word, and these offsets are not found.
    (
        "SK_CGROUP_OFF",
        &[("sock", "sk_cgrp_data"), ("sock_cgroup_data", "cgroup")],
    ),
];

/// The offsets by which the programs tell where a socket passed to a watched task was made, by
/// global name; an error names the first field that is missing.
pub fn received_offsets_in(b: &btf::Btf) -> Result<Vec<(&'static str, u32)>, String> {
    RECEIVED_FIELDS
        .iter()
        .map(|(global, path)| {
            path.iter()
                .try_fold((*global, 0u32), |(g, sum), (ty, member)| {
                    b.member_offset(ty, member)
                        .map(|o| (g, sum + o))
                        .map_err(|e| format!("{ty}.{member}: {e}"))
                })
        })
        .collect()
}

/// The active LSMs, in order, from securityfs (`None` where it cannot be read).
pub fn lsm_list() -> Option<String> {
    super::mounts::ensure_securityfs();
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the kernel said about BPF LSM.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LsmProbe {
    /// An LSM program loaded.
    pub loads: bool,
    /// It attached.
    pub attaches: bool,
    /// It was called on an exec while attached: the only proof that LSM programs work here.
    pub runs: bool,
    /// Why not, when it does not.
    pub reason: Option<String>,
}

/// Loads `probe_lsm`, attaches it for the length of one exec and checks the counter it bumps.
/// With `bpf` left out of `lsm=`, loading and attaching succeed and the program never runs.
pub fn lsm(ebpf: &mut Ebpf, counters: &PerCpuArray<MapData, u64>, kbtf: &KernelBtf) -> LsmProbe {
    let mut out = LsmProbe::default();
    let btf = match kbtf {
        Ok(b) => b,
        Err(e) => {
            out.reason = Some(format!("no kernel BTF: {e}"));
            return out;
        }
    };
    let Some(Ok(prog)) = ebpf.program_mut("probe_lsm").map(<&mut Lsm>::try_from) else {
        out.reason = Some("probe_lsm missing from the object".into());
        return out;
    };
    if let Err(e) = prog.load("bprm_check_security", btf) {
        out.reason = Some(format!("load: {}", super::error_chain(&e)));
        return out;
    }
    out.loads = true;
    let runs_before = count(counters);
    let link = match prog.attach() {
        Ok(l) => l,
        Err(e) => {
            out.reason = Some(format!("attach: {}", super::error_chain(&e)));
            let _ = prog.unload();
            return out;
        }
    };
    out.attaches = true;
    run_one_exec();
    out.runs = count(counters) > runs_before;
    let _ = prog.detach(link);
    let _ = prog.unload();
    if !out.runs {
        out.reason = Some(format!(
            "attached but never called (`bpf` is not in the active LSM list: {})",
            lsm_list().unwrap_or_else(|| "unreadable".into())
        ));
    }
    out
}

fn count(counters: &PerCpuArray<MapData, u64>) -> u64 {
    counters
        .get(&(Counter::LsmProbeRan as u32), 0)
        .map(|v| v.iter().sum())
        .unwrap_or(0)
}

/// Runs one short program so that `bprm_check_security` is called.
fn run_one_exec() {
    let candidates = ["/bin/true", "/usr/bin/true"];
    let program = candidates
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_exe().ok());
    let Some(program) = program else {
        return;
    };
    if let Ok(mut child) = Command::new(&program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // The hook ran before the exec finished; the exit status does not matter.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ret_in_a_sys_exit_format() {
        let f = "name: sys_exit_connect\nID: 2229\nformat:\n\
                 \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                 \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
                 \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert_eq!(parse_ret_offset(f), Some(16));
        assert_eq!(
            parse_ret_offset(&f.replace("offset:16", "offset:24")),
            Some(24)
        );
        assert_eq!(parse_ret_offset("field:int ret;\toffset:16;"), None);
        assert_eq!(parse_ret_offset("field:long ret;\toffset:x;"), None);
        assert_eq!(parse_ret_offset(""), None);
    }
}
