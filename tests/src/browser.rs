//! A real browser for end-to-end tests of the web console: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver) with `fantoccini`.
//!
//! Each [`Browser`] runs its own chromedriver on a free loopback port, in a process group of its
//! own so that nothing it started outlives the test, and a fresh Chromium profile. Chromium is
//! kept off the network: no background networking, component updates, sync or QUIC, and every
//! host name but loopback resolves to nothing.
//!
//! Without Chromium or chromedriver the tests fail loudly; `LATCH_SKIP_BROWSER=1` skips them on
//! purpose.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::stack::{free_port, wait_listening};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, found on `PATH`.
pub struct Installed {
    /// The browser.
    pub chromium: PathBuf,
    /// Its WebDriver.
    pub chromedriver: PathBuf,
}

/// Whether browser tests run here: the programs they need, or `None` (after saying so) when
/// `LATCH_SKIP_BROWSER=1`. Panics (a loud failure) when they are missing and nobody said to skip.
pub fn installed() -> Option<Installed> {
    if std::env::var("LATCH_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: LATCH_SKIP_BROWSER=1 (browser tests not run)");
        return None;
    }
    let chromium = on_path(&["chromium", "chromium-browser"]);
    let chromedriver = on_path(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Installed {
            chromium,
            chromedriver,
        }),
        (chromium, chromedriver) => panic!(
            "the web console's browser test needs Chromium and chromedriver (found: chromium {:?}, \
             chromedriver {:?}); install Debian packages `chromium` and `chromium-driver` \
             (cargo xtask setup does) or set LATCH_SKIP_BROWSER=1 to skip it explicitly",
            chromium, chromedriver
        ),
    }
}

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: fantoccini::Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium.
    pub async fn start(programs: &Installed) -> Browser {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("latch-chromium-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("browser profile directory");
        let port = free_port();
        let log = std::fs::File::create(profile.with_extension("chromedriver.log")).ok();
        let mut driver = Command::new(&programs.chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", programs.chromedriver.display()));
        wait_listening(&mut driver, port, "chromedriver");
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--disable-dev-shm-usage".into(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into(),
            "--window-size=1280,1024".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": programs.chromium.display().to_string(),
                "args": args,
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                let _ = kill_group(&driver);
                panic!("start a Chromium session through chromedriver: {e}")
            });
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop does the rest.
    }
}

fn kill_group(child: &Child) -> nix::Result<()> {
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in chromedriver's process group: one signal ends them all.
        let _ = kill_group(&self.driver);
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.profile.with_extension("chromedriver.log"));
        }
    }
}
