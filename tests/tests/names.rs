//! Destinations by name, with the whole agent and a real DNS server (dnsmasq): the names a
//! watched workload resolves decide its connections, as the rules name them.
//!
//! Each technique runs first from a cgroup nobody watches, where it works; the evidence of a
//! connection is the listener that accepted it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    time::Duration,
};

use latch_tests::daemon::Daemon;
use latch_tests::dns::{DnsServer, SERVER};
use latch_tests::packets::{Arrivals, Sysctl};
use latch_tests::{outcome, privileged, probe, spawn_in, TestCgroup};

const EPERM: i64 = 1;
const EAGAIN: i64 = 11;

/// A listener on a loopback address of its own, which tells whether anything connected.
struct Destination {
    l: TcpListener,
    ip: IpAddr,
}

impl Destination {
    /// The first destination of a test, on a port the kernel chose: held from here on, so
    /// that no other test's port choice meets it.
    fn first(last: u8) -> (Destination, u16) {
        Destination::first_at(Ipv4Addr::new(127, 0, 0, last).into())
    }

    /// As [`Destination::first`], on `ip`.
    fn first_at(ip: IpAddr) -> (Destination, u16) {
        let d = Destination::at(ip, 0);
        let port = d.l.local_addr().expect("addr").port();
        (d, port)
    }

    fn new(last: u8, port: u16) -> Destination {
        Destination::at(Ipv4Addr::new(127, 0, 0, last).into(), port)
    }

    fn at(ip: IpAddr, port: u16) -> Destination {
        let l = TcpListener::bind((ip, port)).expect("bind destination");
        l.set_nonblocking(true).expect("nonblocking");
        Destination { l, ip }
    }

    /// Whether a connection arrived since the last call, looked at once: for what a hook
    /// refused, which never left.
    fn reached(&self) -> bool {
        latch_tests::accept_now(&self.l)
    }

    /// Whether a connection arrives, waiting for it: for what should arrive.
    fn arrives(&self) -> bool {
        latch_tests::arrives(&self.l)
    }
}

fn rules(workload_extra: &str, body: &str) -> String {
    format!("workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\n{workload_extra}rules:\n{body}")
}

fn run(cg: &std::path::Path, args: &[&str]) -> serde_json::Value {
    outcome(spawn_in(cg, &probe(), args))
}

fn resolve(cg: &std::path::Path, dns: &DnsServer, name: &str, port: u16) -> serde_json::Value {
    let conf = dns.resolv_conf.to_string_lossy().into_owned();
    run(cg, &["resolve", &conf, name, &port.to_string()])
}

fn ok(v: &serde_json::Value) -> bool {
    v["ok"] == serde_json::Value::Bool(true)
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn name_rules_decide_what_the_workload_resolved() {
    if !privileged() {
        return;
    }
    let (denied, port) = Destination::first(21);
    let allowed = Destination::new(22, port);
    let below = Destination::new(23, port);
    let apex = Destination::new(24, port);
    let pinned = Destination::new(25, port);
    let dns = DnsServer::start(
        &[
            "denied.test,127.0.0.21,300",
            "allowed.test,127.0.0.22,300",
            "a.corp.test,127.0.0.23,300",
            "corp.test,127.0.0.24,300",
            "pinned.test,127.0.0.25,300",
        ],
        &["alias.test,denied.test"],
    );
    // `unresolved: audit` lets an address through whether or not it was learned: a refusal
    // below comes from a rule, never from an address left unresolved.
    let rules = rules(
        "    unresolved: audit\n",
        "  - {name: no-denied, workload: test, on: connect, to: [denied.test, \"*.corp.test\"], action: deny}\n\
         \x20 - {name: pinned-name, workload: test, on: connect, to: [pinned.test], action: allow}\n\
         \x20 - {name: pinned-address, workload: test, on: connect, to: [127.0.0.25/32], action: deny}\n",
    );

    // Where nothing watches, every name reaches its address.
    let free = TestCgroup::new();
    for (name, dest) in [
        ("denied.test", &denied),
        ("alias.test", &denied),
        ("a.corp.test", &below),
    ] {
        let v = resolve(&free.path, &dns, name, port);
        assert!(ok(&v), "{name} unwatched: {v}");
        assert!(dest.arrives(), "{name} unwatched did not arrive: {v}");
    }

    let cg = TestCgroup::new();
    let _d = Daemon::start(&cg, &rules, "deny");
    for (name, dest, refused) in [
        ("allowed.test", &allowed, false),
        ("denied.test", &denied, true),
        // An alias of a refused name is refused.
        ("alias.test", &denied, true),
        // A wildcard covers the names below its domain, not the domain itself.
        ("a.corp.test", &below, true),
        ("corp.test", &apex, false),
        // A name's rule does not loosen a rule on its address: the stricter applies.
        ("pinned.test", &pinned, true),
    ] {
        let v = resolve(&cg.path, &dns, name, port);
        assert_eq!(v["resolved"], dest.ip.to_string(), "{name}: {v}");
        if refused {
            assert_eq!(v["errno"].as_i64(), Some(EPERM), "{name}: {v}");
            assert!(!dest.reached(), "{name} arrived: {v}");
        } else {
            assert!(ok(&v), "{name}: {v}");
            assert!(dest.arrives(), "{name} did not arrive: {v}");
        }
    }

    // A query of its own from an unconnected socket: the answer comes back from the server
    // the workload asked (not from the agent's proxy), and its address is learned all the same.
    let server = SocketAddr::from((SERVER, 53)).to_string();
    let v = run(
        &cg.path,
        &["dns-query", &server, "denied.test", &port.to_string()],
    );
    assert_eq!(v["from"], server, "{v}");
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "{v}");
    assert!(!denied.reached());
}

/// An IPv6 answer (AAAA, asked over IPv4 as the C library does) is learned like an IPv4 one,
/// and decides the workload's IPv6 connections.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn an_ipv6_answer_decides_connections_to_its_address() {
    if !privileged() {
        return;
    }
    let (six, port) = Destination::first_at(Ipv6Addr::LOCALHOST.into());
    let dns = DnsServer::start(&["six.test,::1,300"], &[]);
    let conf = dns.resolv_conf.to_string_lossy().into_owned();
    let p = port.to_string();
    let addr = SocketAddr::from((six.ip, port)).to_string();
    // `unresolved: audit`: before the lookup the address is let through, so that a refusal
    // after it can only come from the name's rule.
    let rules = rules(
        "    unresolved: audit\n",
        "  - {name: no-six, workload: test, on: connect, to: [six.test], action: deny}\n",
    );

    let free = TestCgroup::new();
    let v = run(&free.path, &["resolve", &conf, "six.test", &p, "inet6"]);
    assert_eq!(v["resolved"], "::1", "{v}");
    assert!(ok(&v) && six.arrives(), "unwatched: {v}");

    let cg = TestCgroup::new();
    let _d = Daemon::start(&cg, &rules, "deny");
    let v = run(&cg.path, &["connect", &addr]);
    assert!(ok(&v) && six.arrives(), "never resolved, so audited: {v}");
    let v = run(&cg.path, &["resolve", &conf, "six.test", &p, "inet6"]);
    assert_eq!(v["resolved"], "::1", "{v}");
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "resolved: {v}");
    assert!(!six.reached());
    // Learned now: the same address without a lookup is the name's too.
    let v = run(&cg.path, &["connect", &addr]);
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "after the lookup: {v}");
    assert!(!six.reached());
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn an_address_never_resolved_gets_the_unresolved_action_until_resolved_and_after_its_ttl() {
    if !privileged() {
        return;
    }
    let (short, port) = Destination::first(31);
    let dns = DnsServer::start(&["short.test,127.0.0.31,3"], &[]);
    let rules = rules(
        "    unresolved: deny\n",
        "  - {name: some-name, workload: test, on: connect, to: [other.test], action: deny}\n",
    );
    let addr = SocketAddr::from((short.ip, port)).to_string();

    let free = TestCgroup::new();
    assert!(ok(&run(&free.path, &["connect", &addr])));
    assert!(short.arrives());

    let cg = TestCgroup::new();
    let _d = Daemon::start(&cg, &rules, "deny");
    let v = run(&cg.path, &["connect", &addr]);
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "never resolved: {v}");
    assert!(!short.reached());

    let v = resolve(&cg.path, &dns, "short.test", port);
    assert!(ok(&v), "resolved: {v}");
    assert!(short.arrives());

    // The answer's TTL is 3 s: past it, the address is no longer one the workload resolved.
    std::thread::sleep(Duration::from_secs(5));
    let v = run(&cg.path, &["connect", &addr]);
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "after the TTL: {v}");
    assert!(!short.reached());
}

/// The packet backstop (cgroup `skb` egress) decides by the names a workload resolved, as the
/// socket hooks do: an ICMP echo from an unprivileged ping socket, which no socket hook sees,
/// to an address the workload resolved from a name a rule denies is dropped. Before the
/// workload resolved the name, the same echo went out (its `unresolved: audit`), so it is the
/// name that refuses it. The evidence is a raw ICMP socket of the test's own.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_packet_backstop_decides_by_the_names_the_workload_resolved() {
    if !privileged() {
        return;
    }
    let _ping = Sysctl::ping_sockets_for_root();
    let mut icmp = Arrivals::new(libc::SOCK_RAW, libc::IPPROTO_ICMP, None);
    let (dest, port) = Destination::first(41);
    let dns = DnsServer::start(&["echo.test,127.0.0.41,300"], &[]);
    let rules = rules(
        "    unresolved: audit\n",
        "  - {name: no-echo, workload: test, on: connect, to: [echo.test], action: deny}\n",
    );
    let id = std::process::id();
    let ping = |cg: &std::path::Path, tag: &str| run(cg, &["icmp", "ping", "127.0.0.41", tag]);
    let arrived = |icmp: &mut Arrivals, tag: &str| icmp.wait_for(format!("latch-{tag}").as_bytes());

    let free = TestCgroup::new();
    let tag = format!("{id}-free");
    let v = ping(&free.path, &tag);
    assert!(arrived(&mut icmp, &tag), "unwatched: {v}");

    let cg = TestCgroup::new();
    let _d = Daemon::start(&cg, &rules, "deny");
    // The raw socket takes in every ICMP packet of the host: not let fill meanwhile.
    icmp.forget();
    let tag = format!("{id}-before");
    let v = ping(&cg.path, &tag);
    assert!(ok(&v), "before the name was resolved: {v}");
    assert!(
        arrived(&mut icmp, &tag),
        "before the name was resolved: {v}"
    );

    let v = resolve(&cg.path, &dns, "echo.test", port);
    assert_eq!(v["resolved"], "127.0.0.41", "{v}");
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "{v}");
    assert!(!dest.reached(), "{v}");

    let tag = format!("{id}-after");
    let v = ping(&cg.path, &tag);
    // A later echo from outside, seen arriving: the earlier one would be there by now.
    let later = format!("{id}-later");
    let out = ping(&free.path, &later);
    assert!(
        arrived(&mut icmp, &later),
        "a later echo from an unwatched cgroup did not arrive: {out}"
    );
    assert!(
        !icmp.has(format!("latch-{tag}").as_bytes()),
        "an echo to an address resolved from a denied name went out: {v}"
    );
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "{v}");
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn answers_over_tcp_truncated_or_raced_by_a_forgery_are_learned_as_the_server_gave_them() {
    if !privileged() {
        return;
    }
    // One listener for every 127.0.1.x address of this test.
    let any = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = any.local_addr().expect("addr").port();
    let reached = || latch_tests::accept_now(&any);
    let arrives = || latch_tests::arrives(&any);
    // 40 addresses do not fit a UDP answer of 512 bytes: the server sets TC, and the C library
    // asks again over TCP.
    let big: Vec<String> = (1..=40)
        .map(|i| format!("big.test,127.0.1.{i},300"))
        .collect();
    let mut records: Vec<&str> = big.iter().map(String::as_str).collect();
    records.push("tcp.test,127.0.1.100,300");
    let dns = DnsServer::start(&records, &[]);
    let forger_at = Ipv4Addr::new(127, 0, 0, 154);
    let forged = Ipv4Addr::new(127, 0, 1, 200);
    let real = Ipv4Addr::new(127, 0, 1, 201);
    let forger = latch_tests::dns::ForgingServer::start(forger_at, forged, real);
    // Only what was learned connects.
    let rules = rules(
        "    unresolved: deny\n",
        "  - {name: some-name, workload: test, on: connect, to: [other.test], action: deny}\n",
    );
    let tcp_conf = dns.resolv_conf_tcp.to_string_lossy().into_owned();
    let forger_conf = forger.resolv_conf.to_string_lossy().into_owned();
    let forged_addr = SocketAddr::from((forged, port)).to_string();
    let p = port.to_string();

    let free = TestCgroup::new();
    let cg = TestCgroup::new();
    for (watched, cgroup) in [(false, &free), (true, &cg)] {
        let _d = watched.then(|| Daemon::start(cgroup, &rules, "deny"));
        let v = run(&cgroup.path, &["resolve", &tcp_conf, "tcp.test", &p]);
        assert!(ok(&v) && arrives(), "over TCP (watched: {watched}): {v}");
        let v = resolve(&cgroup.path, &dns, "big.test", port);
        assert!(ok(&v) && arrives(), "truncated (watched: {watched}): {v}");
        let v = run(&cgroup.path, &["resolve", &forger_conf, "forged.test", &p]);
        assert_eq!(v["resolved"], real.to_string(), "{v}");
        assert!(
            ok(&v) && arrives(),
            "raced by a forgery (watched: {watched}): {v}"
        );
        // The forged address was never an answer to this workload.
        let v = run(&cgroup.path, &["connect", &forged_addr]);
        if watched {
            assert_eq!(v["errno"].as_i64(), Some(EPERM), "forged address: {v}");
            assert!(!reached());
        } else {
            assert!(ok(&v) && arrives(), "{v}");
        }
    }
}

/// The proxy knows whose a query is by the port of the socket that sent it. Once that socket
/// is gone, another process on the same port (here one nobody watches, sending straight to
/// the proxy) is not taken for it: it gets no answer, and nothing is learned for the workload.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_released_socket_s_port_does_not_speak_for_the_workload_afterwards() {
    if !privileged() {
        return;
    }
    let (first, port) = Destination::first(61);
    let later = Destination::new(62, port);
    let _dns = DnsServer::start(
        &["first.test,127.0.0.61,300", "later.test,127.0.0.62,300"],
        &[],
    );
    let rules = rules(
        "    unresolved: deny\n",
        "  - {name: some-name, workload: test, on: connect, to: [other.test], action: deny}\n",
    );
    let cg = TestCgroup::new();
    let d = Daemon::start(&cg, &rules, "deny");
    let proxy = d.wait_status("the resolver proxy", |v| {
        v["dns_proxy_port"].as_u64().is_some_and(|p| p > 0)
    })["dns_proxy_port"]
        .as_u64()
        .expect("port")
        .to_string();
    let server = SocketAddr::from((SERVER, 53)).to_string();
    let v = run(
        &cg.path,
        &["dns-query", &server, "first.test", &port.to_string()],
    );
    assert!(ok(&v) && first.arrives(), "{v}");
    let local = v["local"].as_u64().expect("the probe's port").to_string();

    let free = TestCgroup::new();
    let proxy_addr = format!("127.0.0.1:{proxy}");
    let v = run(
        &free.path,
        &[
            "dns-query",
            &proxy_addr,
            "later.test",
            &port.to_string(),
            &local,
        ],
    );
    assert_eq!(
        v["local"].as_u64().map(|p| p.to_string()),
        Some(local),
        "{v}"
    );
    assert_eq!(
        v["errno"].as_i64(),
        Some(EAGAIN),
        "answered for a gone socket: {v}"
    );
    // Nothing was learned for the workload: the address is still unresolved there.
    let v = run(
        &cg.path,
        &["connect", &SocketAddr::from((later.ip, port)).to_string()],
    );
    assert_eq!(v["errno"].as_i64(), Some(EPERM), "{v}");
    assert!(!later.reached());
}
