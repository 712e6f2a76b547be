//! One boot of the matrix: the guest for its architecture, and its report turned into a row.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    boot::Limits,
    initramfs::{self, Extra},
    kernels::{Kernel, KernelSpec},
    relative,
    report::RunResult,
    suites::Suite,
    virtme, Accel, Arch, Lsm, BOOT_LIMIT, LSM_WITHOUT_BPF, SUITE_LIMIT,
};
use crate::root;

/// One planned boot.
pub struct Planned {
    pub spec: &'static KernelSpec,
    pub lsm: Lsm,
    pub suites: Vec<Suite>,
}

impl Planned {
    /// Its name, also its directory under `target/vmtest`.
    pub fn name(&self) -> String {
        format!("{}-lsm-{}", self.spec.label, self.lsm.name())
    }
}

/// What every boot shares.
pub struct Matrix<'a> {
    pub vng: &'a Path,
    pub accel: Accel,
    pub kernels: BTreeMap<&'static str, Kernel>,
    pub binaries: BTreeMap<Suite, PathBuf>,
    pub arm64_busybox: Option<PathBuf>,
    pub extras: Vec<Extra>,
    pub filter: Option<&'a str>,
    pub out: PathBuf,
    /// The LSM list each kernel enables by default, as its LSM-on guest reported it (empty at
    /// the start).
    pub default_lsms: BTreeMap<&'static str, String>,
}

impl<'a> Matrix<'a> {
    /// The kernel command line that leaves BPF LSM out: the kernel's own list minus `bpf` when
    /// an LSM-on boot of it reported that list, a fixed list otherwise.
    fn lsm_append(&self, p: &Planned) -> Option<String> {
        if p.lsm == Lsm::On {
            return None;
        }
        let list = match self.default_lsms.get(p.spec.label) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|l| *l != "bpf" && !l.is_empty())
                .collect::<Vec<_>>()
                .join(","),
            None => LSM_WITHOUT_BPF.to_string(),
        };
        Some(format!("lsm={list}"))
    }

    /// Boots `p` and reports it; only a failure to run the VM at all is an error.
    pub fn boot(&mut self, p: &Planned) -> Result<RunResult> {
        let kernel = self
            .kernels
            .get(p.spec.label)
            .with_context(|| format!("kernel {} was not prepared", p.spec.label))?;
        let dir = self.out.join(p.name());
        let append = self.lsm_append(p);
        eprintln!(
            "vmtest: booting {} ({}{})",
            p.name(),
            kernel.release,
            append
                .as_deref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default()
        );
        let (outcome, report) = match p.spec.arch {
            Arch::Amd64 => {
                let suites = p
                    .suites
                    .iter()
                    .map(|s| {
                        self.binaries
                            .get(s)
                            .map(|b| (*s, b.clone()))
                            .with_context(|| format!("the {} suite was not built", s.name()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let guest = virtme::Guest {
                    vng: self.vng,
                    image: &kernel.image,
                    accel: self.accel,
                    append: append.clone(),
                    suites,
                    agent: root().join("target/debug/latch-agent"),
                    filter: self.filter,
                    suite_limit: SUITE_LIMIT,
                    limits: Limits {
                        boot: BOOT_LIMIT,
                        // `doctor` and the file copies besides the suites.
                        total: BOOT_LIMIT
                            + Duration::from_secs(180)
                            + SUITE_LIMIT * p.suites.len() as u32,
                    },
                };
                guest.boot(&p.name(), &dir)?
            }
            Arch::Arm64 => {
                let busybox = self
                    .arm64_busybox
                    .as_deref()
                    .context("no arm64 busybox was unpacked")?;
                let guest = initramfs::Guest {
                    arch: Arch::Arm64,
                    accel: Accel::Tcg,
                    kernel: &kernel.image,
                    busybox,
                    append: append.clone().unwrap_or_default(),
                    extras: &self.extras,
                    limits: Limits {
                        boot: BOOT_LIMIT,
                        total: BOOT_LIMIT + SUITE_LIMIT * self.extras.len() as u32,
                    },
                    retry: true,
                };
                guest.boot(&p.name(), &dir)?
            }
        };
        let mut result = RunResult {
            kernel: p.spec.label.to_string(),
            arch: p.spec.arch.deb(),
            package: kernel.package.clone(),
            package_pinned: kernel.pinned,
            lsm_mode: p.lsm.name(),
            lsm_list: report.lsm,
            uname: report.uname,
            boot_seconds: outcome.last.started_after.map(|d| d.as_secs_f64()),
            boot_attempts: outcome.attempts,
            boot_error: outcome.error().or(report.incomplete),
            doctor: report.doctor,
            bpffs: report.bpffs,
            suites: report.suites,
            dir: relative(&dir),
        };
        check_lsm(&mut result, p.lsm);
        if p.lsm == Lsm::On {
            if let Some(list) = &result.lsm_list {
                self.default_lsms.insert(p.spec.label, list.clone());
            }
        }
        Ok(result)
    }
}

/// A boot whose LSM list contradicts its mode tested the wrong thing: that is a failure too.
fn check_lsm(result: &mut RunResult, lsm: Lsm) {
    let Some(list) = &result.lsm_list else {
        if result.boot_error.is_none() {
            result.boot_error = Some("the guest reported no LSM list".into());
        }
        return;
    };
    let has_bpf = list.split(',').any(|l| l.trim() == "bpf");
    if has_bpf != (lsm == Lsm::On) {
        result.boot_error.get_or_insert(format!(
            "asked for BPF LSM {}, the guest's LSMs are {list}",
            lsm.name()
        ));
    }
}
