//! Debian's kernels, downloaded as packages and unpacked into the cache (never installed).
//!
//! Versions are pinned so that a run is reproducible; Debian drops superseded point releases
//! from the archive, so a pinned version that is gone falls back to the newest of its series,
//! and the run says which one it booted.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::{
    deps::{run, Apt},
    Arch,
};

/// One kernel of the matrix.
#[derive(Debug)]
pub struct KernelSpec {
    /// What the command line and the table call it.
    pub label: &'static str,
    pub arch: Arch,
    /// The package booted when the archive still has it.
    pub pinned: &'static str,
    /// The newest kernel of its architecture: where the default plan runs the slow suites.
    pub newest: bool,
    /// The series: package names `{prefix}N{suffix}` with a number N.
    prefix: &'static str,
    suffix: &'static str,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.1",
        arch: Arch::Amd64,
        pinned: "linux-image-6.1.0-57-amd64",
        newest: false,
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    KernelSpec {
        label: "6.12",
        arch: Arch::Amd64,
        pinned: "linux-image-6.12.117+deb12-amd64",
        newest: true,
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
    },
    KernelSpec {
        label: "6.12-arm64",
        arch: Arch::Arm64,
        pinned: "linux-image-6.12.117+deb12-arm64",
        newest: true,
        prefix: "linux-image-6.12.",
        suffix: "+deb12-arm64",
    },
];

impl KernelSpec {
    /// The series number of a package of this series (`57` of `linux-image-6.1.0-57-amd64`).
    fn series_number(&self, pkg: &str) -> Option<u64> {
        pkg.strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?
            .parse()
            .ok()
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The package it came from.
    pub package: String,
    /// Whether that is the pinned package.
    pub pinned: bool,
    /// `uname -r` as the package names it.
    pub release: String,
    /// The boot image.
    pub image: PathBuf,
}

/// Unpacks packages for `arch` under `cache`.
pub struct Store<'a> {
    cache: &'a Path,
    apt: &'a Apt,
    arch: Arch,
}

impl<'a> Store<'a> {
    pub fn new(cache: &'a Path, apt: &'a Apt, arch: Arch) -> Store<'a> {
        Store { cache, apt, arch }
    }

    fn unpacked(&self, pkg: &str) -> PathBuf {
        self.cache.join("pkgs").join(self.arch.deb()).join(pkg)
    }

    /// Downloads and unpacks `pkg` unless that was done before; returns where it is unpacked.
    pub fn unpack(&self, pkg: &str) -> Result<PathBuf> {
        let dir = self.unpacked(pkg);
        let done = dir.join(".unpacked");
        if done.exists() {
            return Ok(dir);
        }
        let debs = self.cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        self.apt.update(false)?;
        eprintln!("vmtest: downloading {pkg} ({})", self.arch.deb());
        let qualified = match self.arch {
            Arch::Amd64 => pkg.to_string(),
            Arch::Arm64 => format!("{pkg}:{}", self.arch.deb()),
        };
        run(self
            .apt
            .get()
            .current_dir(&debs)
            .args(["download", "-qq", &qualified]))?;
        let deb = newest_deb(&debs, pkg, self.arch)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::write(&done, b"")?;
        // The unpacked tree is what is kept; the package would only double the cache.
        let _ = std::fs::remove_file(&deb);
        Ok(dir)
    }

    /// Whether the archive (as the private lists know it) has `pkg`.
    fn available(&self, pkg: &str) -> bool {
        self.apt
            .cache()
            .args(["show", "-q", pkg])
            .output()
            .map(|o| o.status.success() && !o.stdout.is_empty())
            .unwrap_or(false)
    }

    /// The newest package of the series that the archive has.
    fn newest(&self, spec: &KernelSpec) -> Result<Option<String>> {
        let out = self
            .apt
            .cache()
            .args(["pkgnames", spec.prefix])
            .output()
            .context("apt-cache pkgnames")?;
        Ok(newest_of(spec, &String::from_utf8_lossy(&out.stdout)))
    }

    /// The pinned kernel, or the newest of its series when the archive no longer has it.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Kernel> {
        let mut package = spec.pinned.to_string();
        if !self.unpacked(&package).join(".unpacked").exists() {
            self.apt.update(false)?;
            if !self.available(&package) {
                // Lists a day old may predate a new point release; the pin may simply be gone.
                self.apt.update(true)?;
            }
            if !self.available(&package) {
                let Some(newest) = self.newest(spec)? else {
                    bail!(
                        "the archive has neither {} nor another kernel of its series",
                        spec.pinned
                    );
                };
                eprintln!(
                    "vmtest: {} is gone from the archive; using the newest of its series, {newest}",
                    spec.pinned
                );
                package = newest;
            }
        }
        let dir = self.unpack(&package)?;
        let (image, release) = boot_image(&dir)?;
        Ok(Kernel {
            pinned: package == spec.pinned,
            package,
            release,
            image,
        })
    }
}

/// The package of the series with the highest number among `names` (one a line).
fn newest_of(spec: &KernelSpec, names: &str) -> Option<String> {
    names
        .lines()
        .filter_map(|p| {
            spec.series_number(p.trim())
                .map(|n| (n, p.trim().to_string()))
        })
        .max()
        .map(|(_, p)| p)
}

/// The `.deb` that `apt-get download` left for `pkg` (name_version_arch.deb).
fn newest_deb(dir: &Path, pkg: &str, arch: Arch) -> Result<PathBuf> {
    let prefix = format!("{pkg}_");
    let suffix = format!("_{}.deb", arch.deb());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("apt-get download left no {prefix}*{suffix}"))
}

/// The kernel image in an unpacked package and its release.
fn boot_image(dir: &Path) -> Result<(PathBuf, String)> {
    let boot = dir.join("boot");
    for entry in std::fs::read_dir(&boot).with_context(|| format!("{}", boot.display()))? {
        let path = entry?.path();
        let Some(release) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        else {
            continue;
        };
        let release = release.to_string();
        return Ok((path, release));
    }
    bail!("no boot/vmlinuz-* in {}", dir.display())
}

/// Static busybox for a foreign architecture's initramfs.
pub fn foreign_busybox(store: &Store) -> Result<PathBuf> {
    let dir = store.unpack("busybox-static")?;
    let bin = dir.join("bin/busybox");
    if !bin.exists() {
        bail!("busybox-static has no bin/busybox in {}", dir.display());
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_a_series_by_number_not_by_text() {
        let names = "linux-image-6.12.95+deb12-amd64\n\
                     linux-image-6.12.117+deb12-amd64\n\
                     linux-image-6.12.118+deb12-cloud-amd64\n\
                     linux-image-6.12.119+deb12-amd64-unsigned\n\
                     linux-image-6.12.120+deb12-rt-amd64\n";
        assert_eq!(
            newest_of(&KERNELS[1], names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        let names = "linux-image-6.1.0-9-amd64\nlinux-image-6.1.0-57-amd64\n\
                     linux-image-6.1.0-58-cloud-amd64\n";
        assert_eq!(
            newest_of(&KERNELS[0], names).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            newest_of(&KERNELS[0], "linux-image-6.1.0-57-amd64-dbg\n"),
            None
        );
    }
}
