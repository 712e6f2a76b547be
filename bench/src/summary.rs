//! Tables and the round-trip plot for the results beyond hook overhead: decisions, footprint,
//! the fleet and audit verification. Presentation only; every figure is computed elsewhere.

use std::path::Path;

use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use crate::{Latency, Results};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().copied());
    t
}

fn us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// The decision round trips: kernel only, and through the real agent and central.
pub fn print_decisions(r: &Results) {
    if r.round_trip.is_none() && r.stack.is_empty() {
        return;
    }
    let mut t = table(&[
        "held connect(), approved",
        "samples",
        "p50",
        "p90",
        "p99",
        "max",
        "p50 vs kernel only",
    ]);
    let base = r.round_trip.as_ref().map(|k| k.p50_us);
    let mut row = |name: &str, l: &Latency| {
        t.add_row([
            name.to_string(),
            l.samples.to_string(),
            us(l.p50_us),
            us(l.p90_us),
            us(l.p99_us),
            us(l.max_us),
            base.map(|b| format!("{:.1}×", l.p50_us / b))
                .unwrap_or_else(|| "-".into()),
        ]);
    };
    if let Some(k) = &r.round_trip {
        row("kernel only: in-process approver on the ring buffer", k);
    }
    for s in &r.stack {
        row(
            &format!(
                "latch-agent + latch-central + gRPC reviewer, {}",
                s.database
            ),
            &s.round_trip,
        );
        row("  of which the reviewer's Decide call", &s.decide_call);
    }
    println!("{t}");
    if let Some(base) = r
        .overhead
        .iter()
        .find(|o| o.scenario == "no latch" && o.benchmark.starts_with("connect"))
    {
        println!(
            "baseline: connect() to loopback without Latch takes {}",
            us(base.ns_per_call / 1000.0)
        );
    }
    for s in &r.stack {
        println!(
            "targets through agent and central ({}): p50 < 1 ms ({}), p99 < 5 ms ({}){}",
            s.database,
            verdict(s.round_trip.p50_us < 1000.0),
            verdict(s.round_trip.p99_us < 5000.0),
            if s.decide_errors > 0 {
                format!("; {} Decide calls failed", s.decide_errors)
            } else {
                String::new()
            }
        );
    }
}

/// Memory and idle CPU of the deployed processes.
pub fn print_footprint(r: &Results) {
    let Some(f) = r.stack.iter().find_map(|s| s.footprint.as_ref()) else {
        return;
    };
    let mut t = table(&[
        "process (at rest, example rules)",
        "RSS",
        "of which own / files / BPF maps",
        "peak RSS",
        "threads",
        "idle CPU (% of a core)",
        "RSS after round trips",
    ]);
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let parts = |m: &crate::process_stats::Memory| {
        format!(
            "{} / {} / {}",
            mib(m.anon_kib),
            mib(m.files_kib),
            mib(m.bpf_maps_kib)
        )
    };
    t.add_row([
        "latch-agent".to_string(),
        mib(f.agent.rss_kib),
        parts(&f.agent),
        mib(f.agent.peak_rss_kib),
        f.agent.threads.to_string(),
        format!(
            "{:.2} % ({:.0} ms in {:.0} s)",
            f.agent_idle_cpu.percent_of_core, f.agent_idle_cpu.cpu_ms, f.agent_idle_cpu.interval_s
        ),
        mib(f.agent_after_load.rss_kib),
    ]);
    t.add_row([
        "latch-central (one agent)".to_string(),
        mib(f.central.rss_kib),
        parts(&f.central),
        mib(f.central.peak_rss_kib),
        f.central.threads.to_string(),
        format!(
            "{:.2} % ({:.0} ms in {:.0} s)",
            f.central_idle_cpu.percent_of_core,
            f.central_idle_cpu.cpu_ms,
            f.central_idle_cpu.interval_s
        ),
        mib(f.central_after_load.rss_kib),
    ]);
    println!("{t}");
    println!(
        "target: agent RSS < 30 MB ({})",
        verdict((f.agent.rss_kib as f64) * 1024.0 < 30e6)
    );
}

/// Central with many agents.
pub fn print_fleet(r: &Results) {
    if r.fleet.is_empty() {
        return;
    }
    let mut t = table(&[
        "database",
        "simulated agents",
        "connect all",
        "central RSS",
        "rule push (size): first / last agent",
        "decisions/s",
        "central CPU per decision",
        "decision p50 / p99",
        "central RSS after",
    ]);
    for f in &r.fleet {
        t.add_row([
            f.database.clone(),
            f.agents.to_string(),
            format!("{:.1} s ({:.0}/s)", f.connect_all_s, f.connects_per_s),
            format!("{:.0} MiB", f.central_connected.rss_mib()),
            format!(
                "({:.1} KiB) {:.0} / {:.0} ms",
                f.pushed_rules_bytes as f64 / 1024.0,
                f.push_first_ms,
                f.push_last_ms
            ),
            format!(
                "{:.0} ({} requests, {} outstanding, {} reviewers)",
                f.decisions_per_s, f.decisions, f.outstanding, f.reviewers
            ),
            format!("{:.2} ms", f.central_cpu_ms_per_decision),
            format!(
                "{} / {}",
                us(f.decision_latency.p50_us),
                us(f.decision_latency.p99_us)
            ),
            format!("{:.0} MiB", f.central_after.rss_mib()),
        ]);
    }
    println!("{t}");
    for f in &r.fleet {
        println!(
            "target with {} agents, {}: >= 5000 decisions/s ({})",
            f.agents,
            f.database,
            verdict(f.decisions_per_s >= 5000.0)
        );
    }
    for big in r.fleet.iter().filter(|f| f.agents >= 10_000) {
        println!(
            "targets with {} agents, {}: all connected <= 10 s ({}), rule push to all <= 1 s \
             ({}), central RSS <= 200 MiB ({})",
            big.agents,
            big.database,
            verdict(big.connect_all_s <= 10.0),
            verdict(big.push_last_ms <= 1000.0),
            verdict(big.central_connected.rss_mib() <= 200.0)
        );
    }
}

/// Audit chain verification.
pub fn print_audit(r: &Results) {
    if r.audit_verify.is_empty() {
        return;
    }
    let mut t = table(&[
        "audit records",
        "checkpoints",
        "database",
        "latch-central audit verify",
        "records/s",
        "verdict",
    ]);
    for a in &r.audit_verify {
        t.add_row([
            a.records.to_string(),
            a.checkpoints.to_string(),
            format!("{:.0} MiB", a.database_mib),
            format!("{:.1} s", a.verify_s),
            format!("{:.0}", a.records_per_s),
            if a.intact { "intact" } else { "NOT INTACT" }.to_string(),
        ]);
    }
    println!("{t}");
}

pub fn print_handoff(r: &Results) {
    let Some(h) = &r.handoff else {
        return;
    };
    let mut t = table(&[
        "write transaction",
        "through sqlx (a hand-off per statement)",
        "on the connection's thread",
        "ratio",
    ]);
    t.add_row([
        format!(
            "{} statements, {} × {} rounds",
            h.statements, h.transactions, h.rounds
        ),
        format!("{:.1} µs", h.sqlx_us),
        format!("{:.1} µs", h.on_thread_us),
        format!("{:.0}×", h.ratio),
    ]);
    println!("{t}");
}

/// Round-trip percentiles side by side, on a log scale (they differ by orders of magnitude).
pub fn plot_round_trip(r: &Results, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let mut bars: Vec<(String, f64, RGBColor)> = Vec::new();
    let mut series = vec![("kernel only".to_string(), r.round_trip.as_ref(), BLUE)];
    for (s, colour) in r.stack.iter().zip([RED, MAGENTA]) {
        series.push((
            format!("agent + central, {}", s.database),
            Some(&s.round_trip),
            colour,
        ));
    }
    for (name, lat, colour) in series {
        let Some(l) = lat else { continue };
        for (q, v) in [("p50", l.p50_us), ("p90", l.p90_us), ("p99", l.p99_us)] {
            bars.push((format!("{name} {q}"), v.max(1.0), colour));
        }
    }
    if bars.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(10.0f64, f64::max) * 2.0;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Held connect() approved the instant it appears (µs, log scale)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d((1.0..max).log_scale(), (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("µs")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v, c))| {
        Rectangle::new(
            [
                (1.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            c.mix(0.5).filled(),
        )
    }))?;
    // The targets: p50 1 ms, p99 5 ms.
    for target in [1000.0, 5000.0] {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (target, SegmentValue::Exact(0)),
                (target, SegmentValue::Exact(bars.len())),
            ],
            BLACK.mix(0.6),
        )))?;
    }
    root.present()?;
    Ok(())
}
