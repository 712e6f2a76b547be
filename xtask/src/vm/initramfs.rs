//! Guests with nothing but an initramfs: static busybox, an `/init` that prepares what the agent
//! needs from the kernel and reports it on the serial console, and optional extra programs.
//!
//! They boot any kernel in seconds, including those of another architecture, where this
//! machine's root file system (what virtme-ng shares) would be of no use.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    boot::{self, Limits, Outcome},
    report::{self, GuestReport, Status, SuiteResult},
    Accel, Arch,
};

/// A program to copy into the initramfs and run there: statically linked (or with its libraries
/// among `files`) and built for the guest's architecture.
#[derive(Debug, Clone)]
pub struct Extra {
    /// What the report calls it; also its directory in the guest (`/extra/NAME`). Letters,
    /// digits, `-` and `_` only.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Further files it needs, copied beside it.
    pub files: Vec<PathBuf>,
}

/// A `newc` cpio archive, the format the kernel unpacks as initramfs.
struct Cpio {
    buf: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            buf: Vec::new(),
            inode: 1,
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0, // mtime: fixed, so the same inputs make the same archive
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.inode += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// Quotes a word for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Markers `/init` prints; everything else on the console is the kernel's or the programs'.
const MARK: &str = "LATCH-";

fn init_script(extras: &[Extra]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo LATCH-START
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null
echo "LATCH-UNAME $(uname -r)"
echo "LATCH-LSM $(cat /sys/kernel/security/lsm 2>/dev/null)"
if mount -t bpf bpf /sys/fs/bpf; then echo LATCH-BPFFS ok; else echo LATCH-BPFFS failed; fi
"#,
    );
    for e in extras {
        let prog = e
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args: Vec<String> = e.args.iter().map(|a| sh_quote(a)).collect();
        // `name` is a plain word (see `Extra::name`), safe unquoted.
        s.push_str(&format!(
            "echo LATCH-RUN-BEGIN {name}\n(cd /extra/{name} && {prog} {args})\n\
             echo \"LATCH-RUN-END {name} $?\"\n",
            name = e.name,
            prog = sh_quote(&format!("./{prog}")),
            args = args.join(" "),
        ));
    }
    s.push_str("echo LATCH-DONE\npoweroff -f\n");
    s
}

/// Builds the archive: busybox, `/init`, the extras.
fn archive(busybox: &Path, extras: &[Extra]) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "run", "extra", "root", "etc",
    ] {
        c.dir(d);
    }
    let bb = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    c.file("bin/busybox", 0o755, &bb);
    c.file("init", 0o755, init_script(extras).as_bytes());
    for e in extras {
        let dir = format!("extra/{}", e.name);
        c.dir(&dir);
        for (path, mode) in
            std::iter::once((&e.program, 0o755)).chain(e.files.iter().map(|f| (f, 0o644)))
        {
            let name = path
                .file_name()
                .with_context(|| format!("{} names no file", path.display()))?
                .to_string_lossy();
            let data =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            c.file(&format!("{dir}/{name}"), mode, &data);
        }
    }
    Ok(c.finish())
}

/// The qemu command line for an initramfs guest.
fn qemu(arch: Arch, accel: Accel, kernel: &Path, initrd: &Path, append: &str) -> Command {
    let (program, machine, cpu, console) = match (arch, accel) {
        (Arch::Amd64, Accel::Kvm) => ("qemu-system-x86_64", None, "host", "ttyS0"),
        (Arch::Amd64, Accel::Tcg) => ("qemu-system-x86_64", None, "max", "ttyS0"),
        // Pointer authentication emulated exactly is slow under TCG; the implementation-defined
        // algorithm is what the kernel needs.
        (Arch::Arm64, _) => (
            "qemu-system-aarch64",
            Some("virt"),
            "max,pauth-impdef=on",
            "ttyAMA0",
        ),
    };
    let mut c = Command::new(program);
    if let Some(m) = machine {
        c.args(["-M", m]);
    }
    let accel = match (arch, accel) {
        (Arch::Amd64, Accel::Kvm) => "kvm",
        _ => "tcg",
    };
    c.args(["-accel", accel, "-cpu", cpu, "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console={console} rdinit=/init panic=-1 quiet {append}"
        ));
    c
}

/// What `/init` printed.
#[derive(Debug, Default)]
struct Console {
    pub uname: Option<String>,
    pub lsm: Option<String>,
    pub bpffs: Option<bool>,
    pub done: bool,
    /// Each extra's output and exit code.
    pub runs: Vec<(String, String, Option<i32>)>,
}

fn parse(console: &str) -> Console {
    let mut r = Console::default();
    let mut current: Option<(String, String)> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        let Some(at) = line.find(MARK) else {
            if let Some((_, out)) = current.as_mut() {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        let rest = &line[at + MARK.len()..];
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "UNAME" => r.uname = Some(value.trim().to_string()),
            "LSM" => r.lsm = Some(value.trim().to_string()),
            "BPFFS" => r.bpffs = Some(value.trim() == "ok"),
            "DONE" => r.done = true,
            "RUN-BEGIN" => current = Some((value.trim().to_string(), String::new())),
            "RUN-END" => {
                let code = value.split_whitespace().last().and_then(|c| c.parse().ok());
                if let Some((name, out)) = current.take() {
                    r.runs.push((name, out, code));
                }
            }
            _ => {}
        }
    }
    r
}

/// One initramfs boot.
pub struct Guest<'a> {
    pub arch: Arch,
    pub accel: Accel,
    pub kernel: &'a Path,
    pub busybox: &'a Path,
    /// Extra kernel command line.
    pub append: String,
    pub extras: &'a [Extra],
    pub limits: Limits,
    /// Whether a boot that never starts is tried once more.
    pub retry: bool,
}

impl Guest<'_> {
    /// Boots (retrying a boot that never started), with the console in `dir/console.log` and
    /// each extra's output in `dir/NAME.log`.
    pub fn boot(&self, name: &str, dir: &Path) -> Result<(Outcome, GuestReport)> {
        let initrd = dir.join("initrd.cpio");
        let log = dir.join("console.log");
        let cmd = qemu(self.arch, self.accel, self.kernel, &initrd, &self.append);
        let data = archive(self.busybox, self.extras)?;
        let reset = || -> Result<()> {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
            std::fs::write(&initrd, &data).with_context(|| format!("writing {}", initrd.display()))
        };
        let started = || {
            std::fs::read(&log)
                .map(|b| String::from_utf8_lossy(&b).contains("LATCH-START"))
                .unwrap_or(false)
        };
        let outcome = boot::run(name, &cmd, &log, &started, &reset, self.limits, self.retry)?;
        let _ = std::fs::remove_file(&initrd);
        let console = parse(&String::from_utf8_lossy(
            &std::fs::read(&log).unwrap_or_default(),
        ));
        let mut suites = Vec::new();
        for (name, output, code) in console.runs {
            let log = dir.join(format!("{name}.log"));
            std::fs::write(&log, &output).with_context(|| format!("writing {}", log.display()))?;
            let counts = report::parse_libtest(&output);
            // Any program may run here, not only a libtest binary: its exit code decides, and
            // libtest's counts when it printed them.
            let status = match code {
                Some(0) if !counts.summarised || counts.failed == 0 => Status::Ok,
                Some(_) if counts.summarised => Status::Failed,
                _ => Status::Crashed,
            };
            suites.push(SuiteResult {
                suite: name,
                status,
                passed: counts.passed,
                failed: counts.failed,
                ignored: counts.ignored,
                filtered_out: counts.filtered_out,
                exit_code: code,
                seconds: None,
                failures: counts.failures,
                log: super::relative(&log),
            });
        }
        let report = GuestReport {
            uname: console.uname,
            lsm: console.lsm,
            bpffs: console.bpffs,
            doctor: Default::default(),
            suites,
            incomplete: (!console.done)
                .then(|| "the guest stopped before the end of its checks".to_string()),
        };
        Ok((outcome, report))
    }
}

/// Whether KVM really works here: `/dev/kvm` can be a software hypervisor on which qemu aborts
/// (`failed to set MSR`) or hangs in the firmware, so only a boot that gets through counts. The
/// verdict is kept for the host's boot (`boot_id`) and the kernel, since the check costs a boot
/// limit where KVM hangs.
pub fn kvm_works(kernel: &Path, busybox: &Path, dir: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = format!("{} {}", boot_id.trim(), kernel.display());
    let verdict = dir.join("verdict");
    if let Some(known) = std::fs::read_to_string(&verdict).ok().and_then(|t| {
        t.strip_prefix(&format!("{key}\n"))
            .map(|v| v.trim() == "yes")
    }) {
        return known;
    }
    let guest = Guest {
        arch: Arch::Amd64,
        accel: Accel::Kvm,
        kernel,
        busybox,
        append: String::new(),
        extras: &[],
        // With working KVM this boot takes a second or two.
        limits: Limits {
            boot: Duration::from_secs(30),
            total: Duration::from_secs(60),
        },
        retry: false,
    };
    let works = match guest.boot("KVM check", dir) {
        Ok((outcome, report)) => outcome.error().is_none() && report.incomplete.is_none(),
        Err(_) => false,
    };
    let _ = std::fs::write(
        &verdict,
        format!("{key}\n{}\n", if works { "yes" } else { "no" }),
    );
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers() {
        let console = "[    0.1] noise\r\nLATCH-START\r\nLATCH-UNAME 6.12.1\r\n\
                       LATCH-LSM lockdown,capability,bpf\r\nLATCH-BPFFS ok\r\n\
                       LATCH-RUN-BEGIN agent\r\nhello\r\nLATCH-RUN-END agent 3\r\nLATCH-DONE\r\n";
        let r = parse(console);
        assert_eq!(r.uname.as_deref(), Some("6.12.1"));
        assert_eq!(r.lsm.as_deref(), Some("lockdown,capability,bpf"));
        assert_eq!(r.bpffs, Some(true));
        assert!(r.done);
        assert_eq!(r.runs, vec![("agent".into(), "hello\n".into(), Some(3))]);
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
