//! What the VM matrix needs on the machine, installed idempotently.
//!
//! Bookworm's own qemu (7.2) conflicts with the `qemu-utils` 10 that these machines carry from
//! bookworm-backports, so qemu comes from backports too. Backports are reached through a private
//! apt source list and private apt state under the cache directory: `/etc/apt` stays as it is, and
//! apt's index of the system is not changed for anyone else.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};

use super::Arch;

/// Runs a chatty command with its output kept, shown only when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("{:?} failed ({})", cmd, out.status);
    }
    Ok(())
}

/// virtme-ng release the guest scripts are written against.
pub const VIRTME_NG_VERSION: &str = "1.42";

/// Lists older than this are refreshed before they are used to look up kernels.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Private apt state: its own source list, lists and download cache, for one architecture.
pub struct Apt {
    dir: PathBuf,
    /// A foreign architecture whose packages are only downloaded, never installed.
    foreign: Option<Arch>,
    codename: String,
}

impl Apt {
    /// The state for this machine's own architecture, or for downloading another one's packages.
    /// A foreign architecture gets its own directory: `apt-get update` deletes the lists of the
    /// architectures it was not asked for.
    pub fn new(cache: &Path, foreign: Option<Arch>) -> Result<Apt> {
        let dir = match foreign {
            None => cache.join("apt"),
            Some(arch) => cache.join(format!("apt-{}", arch.deb())),
        };
        let apt = Apt {
            dir,
            foreign,
            codename: codename()?,
        };
        apt.write_sources()?;
        Ok(apt)
    }

    /// `apt-get` with the private state.
    pub fn get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// `apt-cache` with the private state.
    pub fn cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        c.args(self.options());
        c
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            "-o".into(),
            format!("Dir::Etc::SourceParts={d}/sources.d"),
            "-o".into(),
            "Dir::Etc::sourcelist=/dev/null".into(),
            "-o".into(),
            format!("Dir::State::Lists={d}/lists"),
            "-o".into(),
            format!("Dir::Cache={d}/cache"),
            // The state lives in root's home, which apt's unprivileged `_apt` user cannot write:
            // without this every download warns.
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ];
        if let Some(arch) = self.foreign {
            o.push("-o".into());
            o.push(format!("APT::Architectures::={}", arch.deb()));
        }
        o
    }

    /// The backports suite of this release.
    pub fn backports(&self) -> String {
        format!("{}-backports", self.codename)
    }

    fn write_sources(&self) -> Result<()> {
        let sources = self.dir.join("sources.d");
        for d in [
            sources.clone(),
            self.dir.join("lists/partial"),
            self.dir.join("cache/archives/partial"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let (name, system, mirror) = system_sources()?;
        let backports = format!(
            "Types: deb\nURIs: {mirror}\nSuites: {}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            self.backports()
        );
        let mut changed = false;
        for (file, text) in [
            (name.as_str(), system.as_str()),
            ("bpo.sources", &backports),
        ] {
            let path = sources.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                changed = true;
            }
        }
        if changed {
            // Lists fetched for other sources must not pass as fresh.
            let _ = std::fs::remove_file(self.stamp());
        }
        Ok(())
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    /// Runs `apt-get update` unless the lists are recent (or `force`).
    pub fn update(&self, force: bool) -> Result<()> {
        let fresh = std::fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(());
        }
        eprintln!(
            "vmtest: refreshing the private apt lists in {}",
            self.dir.display()
        );
        run(self.get().args(["update", "-qq"]))?;
        std::fs::write(self.stamp(), b"")?;
        Ok(())
    }
}

/// The release's code name (`bookworm`), from os-release.
fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: the VM matrix needs Debian")
}

/// The system's Debian source list (file name, text) and the mirror it uses, so that backports
/// come from the same mirror as everything else.
fn system_sources() -> Result<(String, String, String)> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = std::fs::read_to_string(deb822) {
        let mirror = text
            .lines()
            .filter_map(|l| l.strip_prefix("URIs:"))
            .flat_map(str::split_whitespace)
            .find(|u| !u.contains("security"))
            .map(str::to_string);
        if let Some(mirror) = mirror {
            return Ok(("debian.sources".into(), text, mirror));
        }
    }
    let classic = Path::new("/etc/apt/sources.list");
    if let Ok(text) = std::fs::read_to_string(classic) {
        let mirror = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("deb "))
            .filter_map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .find(|w| !w.starts_with('['))
                    .map(str::to_string)
            })
            .find(|u| !u.contains("security"));
        if let Some(mirror) = mirror {
            return Ok(("debian.list".into(), text, mirror));
        }
    }
    bail!(
        "found no Debian mirror in {} or {}: the VM matrix installs qemu from the same mirror's \
         backports",
        deb822.display(),
        classic.display()
    )
}

/// The installed version of a package, if it is installed.
fn installed_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", pkg])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('\t')?;
    status
        .contains("install ok installed")
        .then(|| version.to_string())
}

fn missing<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    pkgs.iter()
        .copied()
        .filter(|p| installed_version(p.split('/').next().unwrap_or(p)).is_none())
        .collect()
}

/// Installs the packages (names may carry `/suite`) that are not installed yet.
fn install(apt: &Apt, pkgs: &[&str], target: Option<&str>, why: &str) -> Result<()> {
    let todo = missing(pkgs);
    if todo.is_empty() {
        return Ok(());
    }
    apt.update(false)?;
    eprintln!("vmtest: installing {} ({why})", todo.join(" "));
    let mut c = apt.get();
    c.args(["install", "-y", "-qq", "--no-install-recommends"]);
    if let Some(t) = target {
        c.args(["-t", t]);
    }
    run(c.args(&todo))
}

/// Without `systemd-udevd` virtme-ng's init loses its output channel (`vng --exec` returns 255
/// with nothing printed). udev is pinned to the installed systemd so that apt does not upgrade
/// systemd under the running machine.
fn install_udev(apt: &Apt) -> Result<()> {
    if installed_version("udev").is_some() {
        return Ok(());
    }
    apt.update(false)?;
    let Some(systemd) = installed_version("systemd") else {
        return install(apt, &["udev"], None, "virtme-ng's init needs systemd-udevd");
    };
    let pinned = format!("udev={systemd}");
    let available = apt
        .cache()
        .args(["show", &pinned])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if available {
        eprintln!("vmtest: installing {pinned} (virtme-ng's init needs systemd-udevd; same version as the installed systemd)");
        return run(apt
            .get()
            .args(["install", "-y", "-qq", "--no-install-recommends", &pinned]));
    }
    eprintln!(
        "vmtest: udev {systemd} (the installed systemd's version) is gone from the archive; \
         installing the current udev and upgrading systemd to match"
    );
    run(apt.get().args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "udev",
        "systemd",
    ]))
}

/// Python with the `venv` module: Debian's own first, since a user's pyenv may lack it.
fn python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("python3")
    }
}

/// virtme-ng in a virtualenv under the cache; returns the `vng` path.
fn install_virtme_ng(apt: &Apt, cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    if crate::setup::reports_version(&vng, VIRTME_NG_VERSION) {
        return Ok(vng);
    }
    eprintln!(
        "vmtest: installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    );
    let made = Command::new(python())
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        install(apt, &["python3-venv"], None, "virtme-ng's virtualenv")?;
        run(Command::new(python())
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        &format!("virtme-ng=={VIRTME_NG_VERSION}"),
    ]))?;
    Ok(vng)
}

/// Paths of the installed tools.
pub struct Tools {
    /// virtme-ng's `vng`.
    pub vng: PathBuf,
    /// A statically linked busybox for this machine's architecture.
    pub busybox: PathBuf,
}

/// Installs everything the amd64 and arm64 guests need.
pub fn ensure(cache: &Path) -> Result<Tools> {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        bail!("the VM matrix installs its tools with apt: it needs Debian (bookworm)");
    }
    let apt = Apt::new(cache, None)?;
    let bpo = apt.backports();
    install(
        &apt,
        &["qemu-system-x86", "qemu-system-arm"],
        Some(&bpo),
        "qemu 10, from backports to match the installed qemu-utils",
    )?;
    let bpftool = format!("bpftool/{bpo}");
    install(
        &apt,
        &["busybox-static", &bpftool],
        None,
        "initramfs guests; bpftool for inspecting guests",
    )?;
    install(
        &apt,
        &["kmod", "cpio", "file"],
        None,
        "virtme-ng's depmod, initramfs and kernel version detection",
    )?;
    install_udev(&apt)?;
    let vng = install_virtme_ng(&apt, cache)?;
    Ok(Tools {
        vng,
        busybox: PathBuf::from("/bin/busybox"),
    })
}
