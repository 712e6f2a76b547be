//! `cargo xtask vmtest`: the privileged suites on Debian's kernels, in virtual machines.
//!
//! The kernel programs meet another verifier, another helper set and another LSM configuration
//! on each kernel, so a green run on the development machine's kernel says little about the
//! kernels the agent is deployed on. This boots Debian's own kernels with BPF LSM enabled and
//! disabled: amd64 through virtme-ng, which shares this machine's root file system so the test
//! binaries run unchanged; arm64 with a minimal initramfs (a boot check for now). It prints one
//! table and writes `target/vmtest/matrix.json`; each boot's full logs stay in
//! `target/vmtest/<kernel>-lsm-<on|off>/`.
//!
//! Everything it needs is installed by the command itself, into `~/.cache/latch/vm`; `/etc/apt`
//! and `/boot` are left as they are.

mod boot;
mod deps;
mod initramfs;
mod kernels;
mod matrix;
mod report;
mod suites;
mod virtme;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use self::{
    initramfs::Extra,
    kernels::{KernelSpec, Store, KERNELS},
    matrix::{Matrix, Planned},
    report::RunResult,
    suites::Suite,
};
use crate::root;

/// `cargo xtask vmtest`'s options.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Kernels, comma-separated: 6.1, 6.12, 6.12-arm64 [default: all].
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// BPF LSM modes, comma-separated: on (the kernel's default LSM list), off (`lsm=` without
    /// bpf) [default: both].
    #[arg(long, value_delimiter = ',', value_enum)]
    lsm: Vec<Lsm>,
    /// Suites to run on every amd64 boot, comma-separated [default: the plan printed at the
    /// start, which fits the CI's time].
    #[arg(long, value_delimiter = ',', value_enum)]
    suites: Vec<Suite>,
    /// Run only the tests whose names contain this (passed to the test binaries).
    #[arg(long)]
    test_filter: Option<String>,
    /// A statically linked arm64 program to run in the arm64 guest, with its arguments
    /// (whitespace-separated).
    #[arg(long)]
    arm64_exec: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lsm {
    On,
    Off,
}

impl Lsm {
    fn name(self) -> &'static str {
        match self {
            Lsm::On => "on",
            Lsm::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's name for it.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// How qemu runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// LSMs for a boot without BPF LSM when the kernel's own list is not known yet; Debian's 6.1 and
/// 6.12 enable these by default, besides bpf.
const LSM_WITHOUT_BPF: &str = "lockdown,capability,landlock,yama,apparmor,tomoyo";

/// Longest a boot may take to reach its script. Boots take 18–38 s under emulation here, more
/// while the machine builds; a boot still silent after this has hung.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// Longest one suite may run inside a guest, a guard against a hung test only.
const SUITE_LIMIT: Duration = Duration::from_secs(1800);

/// The suites that run on an amd64 boot when none are named. Every suite on every boot does not
/// fit the CI's time under emulation (see `PLAN_WHY`), so:
/// - `kernel` everywhere: it loads every program of the boot's backend (the verifier of each
///   kernel) and holds, allows and denies with each;
/// - every other suite with both backends (BPF LSM on, and off: the tracepoint backend), each on
///   one kernel, the two kernels sharing the work;
/// - `integrity` (a hostile workload's ways around a rule) on three of the four boots: both
///   backends on 6.1, and LSM on 6.12, the backend that kernel gives by default;
/// - `systemd` (the shipped agent unit under a real systemd) with each backend, where the
///   daemon suite runs, last in its boot: it leaves its units, its slices' cgroups and the
///   agent's pins under `/sys/fs/bpf/latch` behind;
/// - not [`NATIVE_ONLY`].
fn default_suites(kernel: &KernelSpec, lsm: Lsm) -> Vec<Suite> {
    let rest: &[Suite] = match (kernel.newest, lsm) {
        (false, Lsm::On) => &[
            Suite::Integrity,
            Suite::Daemon,
            Suite::Names,
            Suite::Systemd,
        ],
        (false, Lsm::Off) => &[Suite::Integrity, Suite::Content, Suite::Args],
        (true, Lsm::On) => &[Suite::Integrity, Suite::Content, Suite::Args],
        (true, Lsm::Off) => &[Suite::Daemon, Suite::Names, Suite::Systemd],
    };
    let mut s = vec![Suite::Kernel];
    s.extend_from_slice(rest);
    s
}

/// Suites the default plan leaves to the native run (`--suites` still runs them in guests):
/// `central` adds the agent-central protocol, which the kernel does not change, and it is the
/// slowest suite under emulation (7-8 min a boot); its kernel side (holds, decisions, fail
/// modes, restarts on pinned maps) is in `kernel` and `daemon` on every backend.
const NATIVE_ONLY: &[Suite] = &[Suite::Central];

/// Printed with the default plan.
const PLAN_WHY: &str = "default plan: emulated (where KVM does not work) a boot takes 15-40 s \
     and a suite 1-8 min, and one machine can be twice as fast as another; every suite on every \
     boot took over 80 min on a slow one, past the CI's 90 min with the build, the native tests \
     and the fuzzing. --suites runs the named suites on every boot";

fn plan(args: &Args) -> Result<Vec<Planned>> {
    let specs: Vec<&'static KernelSpec> = if args.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        args.kernels
            .iter()
            .map(|k| {
                KERNELS
                    .iter()
                    .find(|s| s.label == k.trim())
                    .with_context(|| {
                        let known: Vec<&str> = KERNELS.iter().map(|s| s.label).collect();
                        format!("unknown kernel {k:?}; known: {}", known.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    let modes = if args.lsm.is_empty() {
        vec![Lsm::On, Lsm::Off]
    } else {
        args.lsm.clone()
    };
    let mut out = Vec::new();
    for spec in specs {
        // On before off: the off boot's `lsm=` list is the on boot's minus bpf.
        for lsm in [Lsm::On, Lsm::Off] {
            if !modes.contains(&lsm) {
                continue;
            }
            let suites = match spec.arch {
                Arch::Arm64 => Vec::new(),
                Arch::Amd64 if args.suites.is_empty() => default_suites(spec, lsm),
                Arch::Amd64 => {
                    let mut s = args.suites.clone();
                    s.sort();
                    s.dedup();
                    s
                }
            };
            out.push(Planned { spec, lsm, suites });
        }
    }
    Ok(out)
}

/// Where downloads, unpacked kernels and virtme-ng live between runs.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("latch/vm")
}

/// A path as the report shows it: relative to the workspace when inside it.
pub fn relative(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `--arm64-exec` as an initramfs extra.
fn arm64_extra(spec: &str) -> Result<Extra> {
    let mut words = spec.split_whitespace();
    let program = PathBuf::from(words.next().context("--arm64-exec names no program")?);
    let name: String = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        bail!("--arm64-exec: {} names no file", program.display());
    }
    Ok(Extra {
        name,
        program,
        args: words.map(str::to_string).collect(),
        files: Vec::new(),
    })
}

/// The matrix as `cargo xtask test` runs it: fails loudly where VMs cannot run, unless
/// `LATCH_SKIP_VM=1` says to skip it.
pub fn from_test() -> Result<()> {
    if std::env::var("LATCH_SKIP_VM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: LATCH_SKIP_VM=1 (VM kernel matrix not run)");
        return Ok(());
    }
    let passed = run(&Args::default()).context(
        "cannot run the VM kernel matrix here; LATCH_SKIP_VM=1 skips it explicitly where VMs \
         cannot run",
    )?;
    if !passed {
        bail!("the VM kernel matrix failed (see the table above)");
    }
    Ok(())
}

/// `cargo xtask vmtest`.
pub fn vmtest(args: &Args) -> Result<()> {
    if !run(args)? {
        bail!("the VM kernel matrix failed (see the table above)");
    }
    Ok(())
}

/// Runs the matrix: `Ok(false)` when a suite or a boot failed, an error when the matrix could not
/// be run at all.
fn run(args: &Args) -> Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the VM kernel matrix installs qemu and loads kernel programs in guests: run it as root");
    }
    let t0 = Instant::now();
    let planned = plan(args)?;
    if planned.is_empty() {
        bail!("nothing to run: no kernel and LSM mode selected");
    }
    eprintln!("vmtest: plan ({} boots):", planned.len());
    for p in &planned {
        let what = match p.spec.arch {
            Arch::Arm64 => "initramfs boot check (kernel, LSM list, bpffs)".to_string(),
            Arch::Amd64 => {
                let names: Vec<&str> = p.suites.iter().map(|s| s.name()).collect();
                format!("suites {}", names.join(", "))
            }
        };
        eprintln!("vmtest:   {:<22} {what}", p.name());
    }
    if args.suites.is_empty() && planned.iter().any(|p| p.spec.arch == Arch::Amd64) {
        let native: Vec<&str> = NATIVE_ONLY.iter().map(|s| s.name()).collect();
        eprintln!("vmtest:   {:<22} {}", "natively only", native.join(", "));
        eprintln!("vmtest: {PLAN_WHY}");
    }
    if let Some(f) = &args.test_filter {
        eprintln!("vmtest: only tests matching {f:?}");
    }
    let extras = match &args.arm64_exec {
        Some(spec) => vec![arm64_extra(spec)?],
        None => Vec::new(),
    };

    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("mkdir {}", cache.display()))?;
    let tools = deps::ensure(&cache)?;

    // Kernels first: a kernel gone from the archive should fail the run before it builds.
    let apt_native = deps::Apt::new(&cache, None)?;
    let apt_arm64 = if planned.iter().any(|p| p.spec.arch == Arch::Arm64) {
        Some(deps::Apt::new(&cache, Some(Arch::Arm64))?)
    } else {
        None
    };
    let mut kernels = BTreeMap::new();
    let mut arm64_busybox = None;
    for p in &planned {
        if kernels.contains_key(p.spec.label) {
            continue;
        }
        let store = match (p.spec.arch, &apt_arm64) {
            (Arch::Arm64, Some(apt)) => Store::new(&cache, apt, Arch::Arm64),
            _ => Store::new(&cache, &apt_native, Arch::Amd64),
        };
        let k = store.kernel(p.spec)?;
        eprintln!(
            "vmtest: kernel {}: {}{}",
            p.spec.label,
            k.package,
            if k.pinned {
                ""
            } else {
                " (newer than the pinned one)"
            }
        );
        if p.spec.arch == Arch::Arm64 && arm64_busybox.is_none() {
            arm64_busybox = Some(kernels::foreign_busybox(&store)?);
        }
        kernels.insert(p.spec.label, k);
    }

    let wanted: Vec<Suite> = {
        let mut w: Vec<Suite> = planned.iter().flat_map(|p| p.suites.clone()).collect();
        w.sort();
        w.dedup();
        w
    };
    let binaries = if wanted.is_empty() {
        BTreeMap::new()
    } else {
        suites::build(&wanted)?
    };

    let out = root().join("target/vmtest");
    std::fs::create_dir_all(&out)?;
    let accel = match planned.iter().find(|p| p.spec.arch == Arch::Amd64) {
        Some(p) => {
            let image = &kernels[p.spec.label].image;
            if initramfs::kvm_works(image, &tools.busybox, &out.join("kvm-check")) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        None => Accel::Tcg,
    };
    eprintln!(
        "vmtest: {}",
        match accel {
            Accel::Kvm => "KVM works here: guests run with hardware virtualization",
            Accel::Tcg => "no working KVM here: guests run under emulation (TCG), slowly",
        }
    );

    let mut matrix = Matrix {
        vng: &tools.vng,
        accel,
        kernels,
        binaries,
        arm64_busybox,
        extras,
        filter: args.test_filter.as_deref(),
        out: out.clone(),
        default_lsms: BTreeMap::new(),
    };
    let accel_name = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let mut results: Vec<RunResult> = Vec::new();
    for p in &planned {
        let started = Instant::now();
        let result = matrix.boot(p)?;
        eprintln!(
            "vmtest: {} done in {:.0}s: {}",
            p.name(),
            started.elapsed().as_secs_f64(),
            report::summary(&result)
        );
        results.push(result);
        // Written after every boot, so a run stopped half-way still leaves what it found.
        report::write_json(&out, accel_name, &results)?;
    }
    Ok(report::finish(&results, t0.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Planned) -> Vec<&'static str> {
        p.suites.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn default_plan() {
        let planned = plan(&Args::default()).expect("plan");
        let rows: Vec<(String, Vec<&str>)> = planned.iter().map(|p| (p.name(), names(p))).collect();
        assert_eq!(
            rows,
            vec![
                (
                    "6.1-lsm-on".into(),
                    vec!["kernel", "integrity", "daemon", "names", "systemd"]
                ),
                (
                    "6.1-lsm-off".into(),
                    vec!["kernel", "integrity", "content", "args"]
                ),
                (
                    "6.12-lsm-on".into(),
                    vec!["kernel", "integrity", "content", "args"]
                ),
                (
                    "6.12-lsm-off".into(),
                    vec!["kernel", "daemon", "names", "systemd"]
                ),
                ("6.12-arm64-lsm-on".into(), vec![]),
                ("6.12-arm64-lsm-off".into(), vec![]),
            ]
        );
    }

    #[test]
    fn the_default_plan_runs_every_suite_with_both_backends() {
        let planned = plan(&Args::default()).expect("plan");
        for suite in <Suite as clap::ValueEnum>::value_variants() {
            for lsm in [Lsm::On, Lsm::Off] {
                let boots = planned
                    .iter()
                    .filter(|p| p.lsm == lsm && p.suites.contains(suite))
                    .count();
                if NATIVE_ONLY.contains(suite) {
                    assert_eq!(boots, 0, "{} runs in a guest", suite.name());
                } else {
                    assert!(
                        boots > 0,
                        "{} runs on no boot with LSM {lsm:?}",
                        suite.name()
                    );
                }
            }
        }
    }

    #[test]
    fn named_suites_run_on_every_selected_boot() {
        let args = Args {
            kernels: vec!["6.1".into()],
            lsm: vec![Lsm::Off],
            suites: vec![Suite::Central, Suite::Kernel, Suite::Central],
            ..Args::default()
        };
        let planned = plan(&args).expect("plan");
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].name(), "6.1-lsm-off");
        assert_eq!(names(&planned[0]), vec!["kernel", "central"]);
    }

    #[test]
    fn unknown_kernel_is_refused() {
        let args = Args {
            kernels: vec!["5.10".into()],
            ..Args::default()
        };
        assert!(plan(&args).is_err());
    }
}
