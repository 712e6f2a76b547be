//! Exec in a workload that decides programs by content: what a cached verdict costs each exec,
//! and what the first exec of a program pays while the agent hashes it. The agent's part (read
//! the event, open and hash the held file, cache the verdict, release) runs here in the driver,
//! through the same functions the agent uses, so the figure is the hold, the hash and the
//! release, without the agent's channels.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::{watch_flags, Action, ContentVerdict, ExecFileKey, Outcome};
use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use latch_agent::{
    events::KernelEvent,
    kernel::{Decision, Engine},
    programs::{content, known::Known},
};
use latch_tests::spawn_in;

use crate::{median, worker_args, Row, Setup, Worker};

/// Releases every exec the kernel held for its content: hashed, cached as allowed, released.
fn release_held(engine: &mut Engine, ring: &mut RingBuf<MapData>, known: &Known) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        let ev = KernelEvent::decode(&item);
        drop(item);
        let Ok(ev) = ev else { continue };
        if !ev.content || ev.outcome != Outcome::Paused {
            continue;
        }
        let id = ev.request.context("a held exec without a request id")?;
        content::inspect(&ev, Some(known)).with_context(|| format!("hashing {:?}", ev.path))?;
        if let Some(f) = ev.file.filter(|f| f.ctime_ns != 0) {
            let key = ExecFileKey {
                workload: ev.workload,
                dev: f.dev,
                ino: f.ino,
            };
            let verdict = ContentVerdict {
                ctime_ns: f.ctime_ns,
                inode: f.inode,
                rule_id: 0,
                action: Action::Allow as u8,
                _pad: [0; 3],
            };
            engine.remember_content(key, verdict)?;
        }
        engine.decide(id, Decision::Allow)?;
        n += 1;
    }
    Ok(n)
}

/// Waits for `child` while `release` lets go of what the kernel holds for it.
fn run_releasing(
    engine: &mut Engine,
    ring: &mut RingBuf<MapData>,
    child: &mut std::process::Child,
    mut release: impl FnMut(&mut Engine, &mut RingBuf<MapData>) -> Result<usize>,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        release(engine, ring)?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("pid {} never finished", child.id());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The exec worker (fork+exec of `/bin/true` in a loop) in a watched cgroup.
pub(crate) struct ExecWorker<'a> {
    pub cg: &'a Path,
    pub addr: std::net::SocketAddr,
    pub batch: usize,
    pub batches: usize,
}

impl ExecWorker<'_> {
    /// Runs the worker while `release` lets go of what the kernel holds; its ns per exec.
    pub(crate) fn run_releasing(
        &self,
        engine: &mut Engine,
        ring: &mut RingBuf<MapData>,
        release: impl FnMut(&mut Engine, &mut RingBuf<MapData>) -> Result<usize>,
    ) -> Result<f64> {
        let args = worker_args("exec", self.addr, self.batch, self.batches);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut w = Worker::start(self.cg, &args)?;
        let mut child = w.0.take().context("worker")?;
        let st = run_releasing(engine, ring, &mut child, release)?;
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            use std::io::Read;
            so.read_to_string(&mut out)?;
        }
        if !st.success() {
            bail!("exec worker failed: {st}");
        }
        let v: serde_json::Value = serde_json::from_str(&out).context("worker output")?;
        v["ns_per_call"].as_f64().context("ns_per_call")
    }
}

/// Copies of `/bin/true` nobody has run, old enough that the agent hashes them at once.
fn fresh_copies(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = dir.join(format!("true-{i}"));
        std::fs::copy("/bin/true", &p).context("copy /bin/true")?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        out.push(p);
    }
    std::thread::sleep(content::SETTLE + Duration::from_millis(50));
    Ok(out)
}

/// Spawn-to-exit of `program` in `cg`, in ns.
fn first_exec(
    setup: &mut Setup,
    ring: Option<&mut RingBuf<MapData>>,
    known: &Known,
    cg: &Path,
    program: &Path,
) -> Result<f64> {
    let t = Instant::now();
    let mut child = spawn_in(cg, program, &[]);
    let st = match (ring, setup.engine.as_mut()) {
        (Some(ring), Some(engine)) => {
            run_releasing(engine, ring, &mut child, |e, r| release_held(e, r, known))?
        }
        _ => child.wait()?,
    };
    if !st.success() {
        bail!("{} failed: {st}", program.display());
    }
    Ok(t.elapsed().as_nanos() as f64)
}

/// The rows: fork+exec of a cached program against no Latch, and the first exec of a new
/// program against the first exec of a new program with no Latch.
pub(crate) fn rows(
    setup: &mut Setup,
    rounds: usize,
    (batch, batches): (usize, usize),
) -> Result<Vec<Row>> {
    let known = Known::new(latch_agent::programs::known::DPKG_DIR);
    let dir = tempfile::Builder::new()
        .prefix("latch-bench-content-")
        .tempdir()?;
    let per_round = 3;
    let copies = fresh_copies(dir.path(), rounds * per_round * 2)?;
    let mut copies = copies.into_iter();
    let addr = "127.0.0.1:9".parse()?;
    let cg = setup.cgroup.path.clone();
    let (mut base, mut cached, mut new_base, mut new_held) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    eprintln!("latch-bench: {rounds} rounds of exec with content rules");
    for round in 0..rounds {
        setup.unload()?;
        base.push(crate::measure(&cg, "exec", addr, batch, batches)?);
        for _ in 0..per_round {
            let p = copies.next().context("copies")?;
            new_base.push(first_exec(setup, None, &known, &cg, &p)?);
        }
        setup.load_with(0, watch_flags::CONTENT)?;
        let engine = setup.engine.as_mut().context("engine")?;
        let mut ring = engine.take_events().context("event ring")?;
        // The worker's own exec and its first /bin/true are held and hashed once, in the
        // warm-up batch; every measured exec finds the verdict cached.
        let w = ExecWorker {
            cg: &cg,
            addr,
            batch,
            batches,
        };
        cached.push(w.run_releasing(engine, &mut ring, |e, r| release_held(e, r, &known))?);
        for _ in 0..per_round {
            let p = copies.next().context("copies")?;
            new_held.push(first_exec(setup, Some(&mut ring), &known, &cg, &p)?);
        }
        eprintln!("  round {}/{rounds}: content", round + 1);
    }
    setup.unload()?;
    let (b, c) = (median(&mut base), median(&mut cached));
    let (nb, nh) = (median(&mut new_base), median(&mut new_held));
    Ok(vec![
        Row {
            benchmark: "fork+exec /bin/true".into(),
            scenario: "watched, content rules, verdict cached".into(),
            ns_per_call: c,
            ratio: c / b,
            kernel_ns_per_run: None,
        },
        Row {
            benchmark: "first exec of a new program".into(),
            scenario: "no latch".into(),
            ns_per_call: nb,
            ratio: 1.0,
            kernel_ns_per_run: None,
        },
        Row {
            benchmark: "first exec of a new program".into(),
            scenario: "watched, content rules: held, hashed, released".into(),
            ns_per_call: nh,
            ratio: nh / nb,
            kernel_ns_per_run: None,
        },
    ])
}
