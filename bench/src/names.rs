//! Destinations by name: what the resolver proxy adds to a DNS lookup, and what a `connect()`
//! costs when the kernel knows 10,000 learned names.
//!
//! The real agent (the release `latch-agent`, standalone, with a rules file) and a real DNS
//! server (dnsmasq on 127.0.0.1:53, authoritative for every name, so that its own answer time is
//! small beside what is measured). The workers send raw queries from an unconnected UDP socket,
//! as a stub resolver does, and time each one to its answer; unwatched, a query goes to dnsmasq
//! directly, watched, the kernel turns it to the agent's proxy, which asks dnsmasq, writes what
//! it learned into the kernel's map and answers.
//!
//! 10,000 names are learned by three workloads (the agent keeps at most 4,096 addresses per
//! workload), each name on an address of its own in 127.77.0.0/16, which is loopback: a
//! `connect()` to a learned address reaches a listener on this host.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
};

use anyhow::{bail, Context, Result};
use latch_tests::{daemon::Daemon, dns::DnsServer, TestCgroup};
use serde::Serialize;

use crate::{
    kernel_stats, latency_of, measure, median, run_worker, worker_args, KernelTime, Latency, Row,
};

/// Turns BPF run-time statistics off when the section ends, however it ends.
struct StatsOff;

impl Drop for StatsOff {
    fn drop(&mut self) {
        crate::set_bpf_stats(false);
    }
}

/// Names the workloads learn, in all.
pub const NAMES: u32 = 10_000;

/// Workloads that share them.
const WORKLOADS: u32 = 3;

/// The domain every benchmark name is below.
pub const DOMAIN: &str = "bench.test";

/// The address of name `i`: one of its own on loopback.
pub fn address_of(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Name `i`.
pub fn name_of(i: u32) -> String {
    format!("n{i}.{DOMAIN}")
}

/// A query for the A records of `name`, as a stub resolver sends it.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).with_context(|| format!("name {name:?}"))?,
        RecordType::A,
    ));
    m.to_vec().context("encoding a query")
}

/// Whether `answer` answers query `id`: `Some(addresses)` when it does, `None` for a message
/// with another id (a stray; the caller keeps waiting).
pub fn answer_to(answer: &[u8], id: u16) -> Result<Option<usize>> {
    let m =
        hickory_proto::op::Message::from_vec(answer).context("an answer that does not parse")?;
    if m.id() != id {
        return Ok(None);
    }
    Ok(Some(m.answers().len()))
}

/// What the section measured.
#[derive(Serialize)]
pub struct NamesResults {
    /// Queries straight to the server (an unwatched workload).
    pub lookup_direct: Latency,
    /// The same queries from a watched workload whose rules name hosts: through the proxy.
    pub lookup_proxied: Latency,
    /// p50 through the proxy over p50 direct.
    pub lookup_p50_ratio: f64,
    /// Addresses in the kernel's map when the connect figures were taken (the agent's status).
    pub learned_addresses: u64,
}

/// The rules: three workloads, each allowed `*.bench.test`, and nothing else said about
/// addresses, so that a connect is decided by what was learned.
fn rules(cgroups: &[&TestCgroup]) -> String {
    let mut s = String::from("workloads:\n");
    for (i, cg) in cgroups.iter().enumerate() {
        s.push_str(&format!(
            "  - name: names-{i}\n    cgroups: [\"{}\"]\n    unresolved: audit\n",
            cg.rel
        ));
    }
    s.push_str("rules:\n");
    for i in 0..cgroups.len() {
        s.push_str(&format!(
            "  - {{name: bench-names-{i}, workload: names-{i}, on: connect, to: [\"*.{DOMAIN}\"], action: allow}}\n"
        ));
    }
    s
}

/// Runs the `dns` worker in `cg` over names `first..first + count`, `rounds` times, and returns
/// every query's round trip in nanoseconds.
fn lookups(cg: &Path, first: u32, count: u32, rounds: usize) -> Result<Vec<u64>> {
    let server = SocketAddr::from((latch_tests::dns::SERVER, 53));
    let mut args = worker_args("dns", server, count as usize, rounds);
    args.extend(["--first".to_string(), first.to_string()]);
    let v = run_worker(cg, &args)?;
    v["ns"]
        .as_array()
        .context("dns worker output has no `ns`")?
        .iter()
        .map(|n| n.as_u64().context("a sample that is not a number"))
        .collect()
}

/// The section: `connect()` to a learned address with one name learned; lookups direct and
/// through the proxy; `connect()` again once the workloads have learned 10,000 names.
pub fn run(rounds: usize, (batch, batches): (usize, usize)) -> Result<(NamesResults, Vec<Row>)> {
    let records: Vec<String> = (0..NAMES)
        .map(|i| format!("{},{},3600", name_of(i), address_of(i)))
        .collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let _dns = DnsServer::start(&records, &[]);

    // Every learned address is loopback: one listener on all of them.
    let listener = TcpListener::bind("0.0.0.0:0").context("bind the connect target")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let target = SocketAddr::from((address_of(0), port));

    let unwatched = TestCgroup::new();
    let watched: Vec<TestCgroup> = (0..WORKLOADS).map(|_| TestCgroup::new()).collect();
    let refs: Vec<&TestCgroup> = watched.iter().collect();
    let daemon = Daemon::start(&watched[0], &rules(&refs), "deny");

    // connect() with only its own name learned.
    lookups(&watched[0].path, 0, 1, 1)?;
    let one_learned = learned(&daemon)?;
    // The kernel's own time per run of the watched calls' hook: wall clock on a shared machine
    // (with the agent running beside the workers) swings more than a map lookup costs.
    crate::set_bpf_stats(true);
    let _stats_off = StatsOff;
    let connects = |rounds: usize| -> Result<(f64, f64, Option<f64>)> {
        let (mut base, mut watched_ns) = (Vec::new(), Vec::new());
        let mut kernel = KernelTime::default();
        for _ in 0..rounds {
            base.push(measure(&unwatched.path, "connect", target, batch, batches)?);
            let before = kernel_stats("connect4");
            watched_ns.push(measure(
                &watched[0].path,
                "connect",
                target,
                batch,
                batches,
            )?);
            kernel.add(before, kernel_stats("connect4"));
        }
        Ok((median(&mut base), median(&mut watched_ns), kernel.per_run()))
    };
    let (base, one, one_kernel) = connects(rounds)?;

    // Lookups: the first workload's share of the names, interleaved direct and proxied.
    let share = NAMES / WORKLOADS;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.extend(lookups(&unwatched.path, 0, share, 1)?);
        proxied.extend(lookups(&watched[0].path, 0, share, 1)?);
    }

    // The other workloads learn the rest.
    for (i, cg) in (1..WORKLOADS).zip(&watched[1..]) {
        let first = share * i;
        let count = if i == WORKLOADS - 1 {
            NAMES - first
        } else {
            share
        };
        lookups(&cg.path, first, count, 1)?;
    }
    let learned_addresses = learned(&daemon)?;
    if learned_addresses < u64::from(NAMES) {
        bail!(
            "the agent learned {learned_addresses} addresses of the {NAMES} names resolved; \
             the connect figure would not be with {NAMES}"
        );
    }
    // Against a baseline of its own, interleaved with it: minutes have passed since the first.
    let (base_again, all, all_kernel) = connects(rounds)?;

    let row = |scenario: String, ns: f64, baseline: f64, kernel: Option<f64>| Row {
        benchmark: "connect() to a learned address".into(),
        scenario,
        ns_per_call: ns,
        ratio: ns / baseline,
        kernel_ns_per_run: kernel,
    };
    let rows = vec![
        row("no latch".into(), base, base, None),
        row(
            format!("watched, {one_learned} learned"),
            one,
            base,
            one_kernel,
        ),
        row("no latch, again".into(), base_again, base_again, None),
        row(
            format!("watched, {learned_addresses} learned"),
            all,
            base_again,
            all_kernel,
        ),
    ];
    let lookup_direct = latency_of(&direct)?;
    let lookup_proxied = latency_of(&proxied)?;
    Ok((
        NamesResults {
            lookup_p50_ratio: lookup_proxied.p50_us / lookup_direct.p50_us,
            lookup_direct,
            lookup_proxied,
            learned_addresses,
        },
        rows,
    ))
}

/// Addresses the agent has learned, from its status.
fn learned(d: &Daemon) -> Result<u64> {
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("agent status output")?;
    v["learned_addresses"]
        .as_u64()
        .context("the agent's status has no learned_addresses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_an_address_of_its_own_on_loopback() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..NAMES {
            let a = address_of(i);
            assert!(a.is_loopback(), "{a}");
            assert_ne!(a.octets()[3], 0, "{a}");
            assert!(seen.insert(a), "{} shares {a}", name_of(i));
        }
    }
}
