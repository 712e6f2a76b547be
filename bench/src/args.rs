//! Exec of a program that rules with `args` name: every exec is held once the new image is in
//! place, its arguments are read and decided, and it is released. The agent's part runs here
//! in the driver, through the same functions the agent uses (`/proc/PID/cmdline`, the rules'
//! verdict), so the figure is the hold, the read, the verdict and the release, without the
//! agent's channels.

use agent_common::{Action, Outcome};
use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use latch_agent::{
    events::KernelEvent,
    kernel::{Decision, Engine},
    programs::argv,
    rules::{self, Compiled},
};

use crate::{content::ExecWorker, median, rules_text, Row, Setup};

/// Decides every exec the kernel held for its arguments, as the agent does.
fn release_held(
    engine: &mut Engine,
    ring: &mut RingBuf<MapData>,
    compiled: &Compiled,
) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        let ev = KernelEvent::decode(&item);
        drop(item);
        let Ok(ev) = ev else { continue };
        if !agent_common::is_args_rule(ev.rule_id) || ev.outcome != Outcome::Paused {
            continue;
        }
        let id = ev.request.context("a held exec without a request id")?;
        let words = argv::read(ev.tgid)?;
        let path = ev.path.clone().unwrap_or_default();
        let default = agent_common::RuleRef {
            rule_id: 0,
            action: Action::Allow as u8,
            flags: 0,
            _pad: [0; 2],
        };
        let verdict = rules::exec_verdict(compiled, ev.workload, &path, Some(&words), default);
        let allow = verdict.is_some_and(|r| r.action <= Action::Audit as u8);
        engine.decide(
            id,
            if allow {
                Decision::Allow
            } else {
                Decision::Deny
            },
        )?;
        n += 1;
    }
    Ok(n)
}

/// fork+exec of `/bin/true` with no Latch, against the same with an argument rule on it that
/// its arguments do not match (held, read, allowed).
pub(crate) fn rows(
    setup: &mut Setup,
    rounds: usize,
    (batch, batches): (usize, usize),
) -> Result<Vec<Row>> {
    let addr = "127.0.0.1:9".parse()?;
    let cg = setup.cgroup.path.clone();
    let text = format!(
        "{}  - {{name: true-args, workload: bench, on: exec, paths: [/bin/true], args: {{any: \
         [--never-given]}}, action: approve}}\n",
        rules_text(&setup.cgroup.rel, 0)
    );
    let (mut base, mut held) = (Vec::new(), Vec::new());
    eprintln!("latch-bench: {rounds} rounds of exec with argument rules");
    for round in 0..rounds {
        setup.unload()?;
        base.push(crate::measure(&cg, "exec", addr, batch, batches)?);
        let compiled = setup.load_text(&text, 0)?;
        let engine = setup.engine.as_mut().context("engine")?;
        let mut ring = engine.take_events().context("event ring")?;
        let w = ExecWorker {
            cg: &cg,
            addr,
            batch,
            batches,
        };
        let mut released = 0;
        held.push(w.run_releasing(engine, &mut ring, |e, r| {
            let n = release_held(e, r, &compiled)?;
            released += n;
            Ok(n)
        })?);
        if released < batch * batches {
            bail!(
                "only {released} of the worker's {} execs were held",
                batch * batches
            );
        }
        eprintln!(
            "  round {}/{rounds}: args, {released} execs held and released",
            round + 1
        );
    }
    setup.unload()?;
    let (b, h) = (median(&mut base), median(&mut held));
    Ok(vec![Row {
        benchmark: "fork+exec /bin/true".into(),
        scenario: "watched, argument rule: held, read, released".into(),
        ns_per_call: h,
        ratio: h / b,
        kernel_ns_per_run: None,
    }])
}
