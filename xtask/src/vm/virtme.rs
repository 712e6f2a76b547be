//! amd64 guests through virtme-ng: the guest sees this machine's root file system (copy-on-write),
//! so the test binaries and the binaries they start run unchanged, from their own paths.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Result;

use super::{
    boot::{self, Limits, Outcome},
    initramfs::sh_quote,
    report::{self, Doctor, GuestReport, Status, SuiteResult},
    suites::Suite,
    Accel,
};

/// The suites' guard for what should happen at once (`LATCH_TEST_PATIENCE_SECS`), in emulated
/// guests.
const TCG_PATIENCE: Duration = Duration::from_secs(120);

/// One virtme-ng boot that runs the suites.
pub struct Guest<'a> {
    pub vng: &'a Path,
    pub image: &'a Path,
    pub accel: Accel,
    /// Extra kernel command line (the `lsm=` list).
    pub append: Option<String>,
    pub suites: Vec<(Suite, PathBuf)>,
    /// `latch-agent`, for `doctor`.
    pub agent: PathBuf,
    pub filter: Option<&'a str>,
    /// Per suite, inside the guest.
    pub suite_limit: Duration,
    pub limits: Limits,
}

impl Guest<'_> {
    /// The guest's script. It writes everything into `dir` (shared read-write with the host);
    /// `started` first, which is how the host tells a boot that hangs from tests that take long.
    fn script(&self, dir: &Path) -> String {
        let r = sh_quote(&dir.to_string_lossy());
        let agent = sh_quote(&self.agent.to_string_lossy());
        let mut s = format!(
            r#"#!/bin/sh
R={r}
up() {{ cut -d' ' -f1 /proc/uptime; }}
up > "$R/started"
echo "vmtest guest: started"
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
if mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; then
    echo ok > "$R/bpffs"
else
    echo failed > "$R/bpffs"
fi
uname -r > "$R/uname"
cat /sys/kernel/security/lsm > "$R/lsm"
echo "vmtest guest: $(uname -r), LSMs $(cat /sys/kernel/security/lsm)"
if [ -x {agent} ]; then
    timeout -k 5 120 {agent} doctor --json > "$R/doctor.json" 2> "$R/doctor.err"
    echo $? > "$R/doctor.rc"
fi
export RUST_BACKTRACE=1
# A throwaway guest: the systemd suite may install the units and start systemd here.
export LATCH_SYSTEMD_GUEST=1
{patience}# Each suite gets its own temporary directory, copied next to its log when it fails: what the
# tests keep for inspection (daemon logs, configurations) would otherwise die with the guest.
# Sockets stay out, and so does anything big.
suite() {{
    name=$1; bin=$2; shift 2
    export TMPDIR=/tmp/vmtest-$name
    mkdir -p "$TMPDIR"
    s=$(up)
    (cd "$(dirname "$bin")" && timeout -k 10 {limit} "$bin" "$@") > "$R/$name.log" 2>&1
    rc=$?
    echo "$rc $s $(up)" > "$R/$name.result"
    echo "vmtest guest: suite $name exited $rc"
    if [ "$rc" != 0 ]; then
        mkdir -p "$R/$name-tmp"
        (cd "$TMPDIR" && find . -type f -size -20M -exec cp --parents {{}} "$R/$name-tmp/" \;)
    fi
}}
"#,
            limit = self.suite_limit.as_secs(),
            // Under emulation an agent needs 12-25 s to load its programs, more than the
            // suites' default 20 s guard for things that should happen at once.
            patience = match self.accel {
                Accel::Kvm => String::new(),
                Accel::Tcg => format!(
                    "export LATCH_TEST_PATIENCE_SECS={}\n",
                    TCG_PATIENCE.as_secs()
                ),
            },
        );
        for (suite, bin) in &self.suites {
            // The suites find their helper binaries next to their own path: run them from it.
            // Two threads for two CPUs: with LATCH_TEST_PATIENCE_SECS raised, two agents
            // loading their programs at once no longer overrun the suites' guards, and one
            // thread would make the daemon and central suites take twice as long.
            let mut line = format!(
                "suite {} {} --test-threads=2",
                suite.name(),
                sh_quote(&bin.to_string_lossy()),
            );
            if let Some(f) = self.filter {
                line.push(' ');
                line.push_str(&sh_quote(f));
            }
            s.push_str(&line);
            s.push('\n');
        }
        s.push_str("echo done > \"$R/finished\"\n");
        s
    }

    fn command(&self, script: &Path, dir: &Path) -> Command {
        let mut c = Command::new(self.vng);
        // vng runs its helpers (`virtme-run`) by name from its virtualenv.
        if let Some(bin) = self.vng.parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(dirs) {
                c.env("PATH", joined);
            }
        }
        if self.accel == Accel::Tcg {
            c.arg("--disable-kvm");
        }
        c.arg("-r")
            .arg(self.image)
            .args(["--cpus", "2", "--memory", "4G"])
            .arg(format!("--rwdir={}", dir.display()));
        if let Some(a) = &self.append {
            c.arg("--append").arg(a);
        }
        c.arg("--exec")
            .arg(format!("sh {}", sh_quote(&script.to_string_lossy())));
        c
    }

    /// Boots in `dir` (emptied first) and reads back what the guest did.
    pub fn boot(&self, name: &str, dir: &Path) -> Result<(Outcome, GuestReport)> {
        let script = dir.join("guest.sh");
        let text = self.script(dir);
        let reset = || -> Result<()> {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
            std::fs::write(&script, &text)?;
            Ok(())
        };
        let started_file = dir.join("started");
        let started = || started_file.exists();
        let outcome = boot::run(
            name,
            &self.command(&script, dir),
            &dir.join("vng.log"),
            &started,
            &reset,
            self.limits,
            true,
        )?;
        let report = self.read(dir, outcome.last.stopped_by.is_some());
        Ok((outcome, report))
    }

    fn read(&self, dir: &Path, stopped: bool) -> GuestReport {
        let text = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|t| t.trim().to_string())
        };
        let mut suites = Vec::new();
        for (suite, _) in &self.suites {
            let name = suite.name();
            let log_path = dir.join(format!("{name}.log"));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let counts = report::parse_libtest(&log);
            let result = text(&format!("{name}.result"));
            let fields: Vec<&str> = result.as_deref().unwrap_or("").split_whitespace().collect();
            let code: Option<i32> = fields.first().and_then(|c| c.parse().ok());
            let seconds = match (
                fields.get(1).and_then(|s| s.parse::<f64>().ok()),
                fields.get(2).and_then(|s| s.parse::<f64>().ok()),
            ) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let status = match code {
                None if stopped && log_path.exists() => Status::TimedOut,
                None => Status::NotRun,
                // coreutils' `timeout`: 124 after TERM, 137 after the KILL that follows.
                Some(124 | 137) => Status::TimedOut,
                Some(0) if counts.summarised && counts.failed == 0 => Status::Ok,
                Some(_) if counts.summarised => Status::Failed,
                Some(_) => Status::Crashed,
            };
            suites.push(SuiteResult {
                suite: name.to_string(),
                status,
                passed: counts.passed,
                failed: counts.failed,
                ignored: counts.ignored,
                filtered_out: counts.filtered_out,
                exit_code: code,
                seconds,
                failures: counts.failures,
                log: super::relative(&log_path),
            });
        }
        GuestReport {
            uname: text("uname"),
            lsm: text("lsm"),
            bpffs: text("bpffs").map(|b| b == "ok"),
            doctor: Doctor::read(dir),
            suites,
            incomplete: (!dir.join("finished").exists())
                .then(|| "the guest stopped before the end of its script".to_string()),
        }
    }
}
