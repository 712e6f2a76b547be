//! Compiles a validated [`policy::RuleSet`] into the entries of the kernel's rule maps.
//!
//! The kernel takes the first matching clause of the longest matching destination prefix, so
//! this compiler does the precedence work once, here: every prefix node carries its own clauses
//! and those inherited from the shorter prefixes that contain it, sorted most specific first
//! (longer prefix, then narrower port range, then a named protocol, then the stricter action).
//! Exec paths: an exact path beats a prefix; between two rules naming the same path or prefix,
//! the stricter action wins. A path that rules with `args` name gets [`ARGS_RULE`] (held after
//! the exec for the agent to read the arguments) unless a rule denies it outright; the agent
//! then decides with [`exec_verdict`].

use std::collections::{BTreeMap, HashMap};

use agent_common::{
    proto, ExecExactKey, ExecFileKey, ExecPrefixData, Net4Data, Net6Data, PortRule, PortRules,
    RuleRef, ARGS_DENY_RULE, ARGS_RULE, PATH_CAP, PORT_RULES_CAP,
};
use ipnet::IpNet;
use policy::{ArgsMatch, Matcher, PathPattern, Protocol, RuleSet};

/// A rule set the kernel maps can hold, or why not.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// Too many clauses apply to one destination prefix for one workload.
    #[error(
        "workload '{workload}': {count} rule clauses apply to addresses in {net} (rules: {rules}); \
         the kernel holds at most {PORT_RULES_CAP} per prefix: merge port ranges or split the network"
    )]
    TooManyClauses {
        /// Workload name.
        workload: String,
        /// The prefix.
        net: IpNet,
        /// How many clauses.
        count: usize,
        /// Rule names involved.
        rules: String,
    },
}

/// Map entries for one rule set.
#[derive(Debug, Default, Clone)]
pub struct Compiled {
    /// `EXEC_EXACT` entries.
    pub exec_exact: Vec<(ExecExactKey, RuleRef)>,
    /// `EXEC_PREFIX` entries: (prefix length in bits, data, value).
    pub exec_prefix: Vec<(u32, ExecPrefixData, RuleRef)>,
    /// `EXEC_FILES` entries: the files the exec rules name, by identity (filled from the host's
    /// file system by [`crate::programs::resolve`], not by [`compile`]).
    pub exec_files: Vec<(ExecFileKey, RuleRef)>,
    /// `NET4_RULES` entries.
    pub net4: Vec<(u32, Net4Data, PortRules)>,
    /// `NET6_RULES` entries.
    pub net6: Vec<(u32, Net6Data, PortRules)>,
    /// What the rules say at each exec path or prefix a rule with `args` names, for the agent's
    /// decision once the arguments are known (the kernel only holds such an exec).
    pub exec_args: BTreeMap<(u32, PathPattern), ArgsKey>,
    /// The real path each `EXEC_FILES` entry was resolved from (by [`crate::programs::resolve`]).
    pub exec_file_paths: HashMap<ExecFileKey, String>,
    /// The clauses of rules that name hosts, which the resolver proxy applies to the names of
    /// each answer.
    pub names: crate::dns::NameRules,
}

/// The rules at one exec path or prefix that has rules with `args`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArgsKey {
    /// The strictest rule without `args`, if any.
    pub base: Option<RuleRef>,
    /// The rules with `args`.
    pub args: Vec<(RuleRef, ArgsMatch)>,
}

/// How strict a kernel entry is: deny, then an exec held for its arguments where a rule denies
/// some, then one held for its arguments, then approve, audit, allow.
pub fn strictness(r: &RuleRef) -> (u8, u8) {
    let held_for_args = match r.rule_id {
        ARGS_DENY_RULE => 2,
        ARGS_RULE => 1,
        _ => 0,
    };
    (r.action, held_for_args)
}

/// An exec's arguments, `argv[1..]`, as the agent read them; `None` when they are not known
/// (the exec is held before it happened, or its command line is too long to read).
pub type Args<'a> = Option<&'a [Vec<u8>]>;

/// What the rules say about an exec of `path` by `workload` with `args`: the exact path's rules,
/// else the longest prefix's. At a path or prefix with rules that have `args`, those whose
/// arguments do not match are left out, and when none is left there the next shorter prefix
/// decides. `None`: no rule names the path (the workload's default applies).
///
/// Arguments not known: the stricter of every rule with `args` matching and none matching
/// (where nothing is left then, `default`, the workload's default), so that no choice of
/// arguments the agent could not read gets a weaker verdict than the one it could have read.
pub fn exec_verdict(
    c: &Compiled,
    workload: u32,
    path: &str,
    args: Args<'_>,
    default: RuleRef,
) -> Option<RuleRef> {
    match args {
        Some(a) => walk(c, workload, path, &|m: &ArgsMatch| m.matches(a)),
        None => {
            let all = walk(c, workload, path, &|_: &ArgsMatch| true)?;
            let none = walk(c, workload, path, &|_: &ArgsMatch| false).unwrap_or(default);
            Some(if none.action > all.action { none } else { all })
        }
    }
}

/// [`exec_verdict`] with `matches` saying which rules with `args` count.
fn walk(
    c: &Compiled,
    workload: u32,
    path: &str,
    matches: &dyn Fn(&ArgsMatch) -> bool,
) -> Option<RuleRef> {
    let exact = PathPattern::Exact(path.to_owned());
    if let Some(k) = c.exec_args.get(&(workload, exact)) {
        if let Some(r) = k.decide(matches) {
            return Some(r);
        }
    } else if let Some(r) = exact_entry(c, workload, path) {
        return Some(r);
    }
    // Prefixes that contain the path, longest first: the kernel's entries and those with args.
    let mut prefixes: Vec<(usize, Option<RuleRef>)> = Vec::new();
    let wbe = workload.to_be_bytes();
    let bytes = path.as_bytes();
    for (bits, d, v) in &c.exec_prefix {
        let n = (*bits as usize / 8).saturating_sub(4);
        if d.workload_be == wbe && n <= bytes.len() && d.path[..n] == bytes[..n] {
            let p = String::from_utf8_lossy(&d.path[..n]).into_owned();
            let decided = match c.exec_args.get(&(workload, PathPattern::Prefix(p))) {
                Some(k) => k.decide(matches),
                None => Some(*v),
            };
            prefixes.push((n, decided));
        }
    }
    prefixes.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    prefixes.into_iter().find_map(|(_, d)| d)
}

impl ArgsKey {
    /// The strictest of the rule without `args` and the rules whose `args` count.
    fn decide(&self, matches: &dyn Fn(&ArgsMatch) -> bool) -> Option<RuleRef> {
        self.base
            .into_iter()
            .chain(
                self.args
                    .iter()
                    .filter(|(_, m)| matches(m))
                    .map(|(r, _)| *r),
            )
            .max_by_key(|r| r.action)
    }
}

fn exact_entry(c: &Compiled, workload: u32, path: &str) -> Option<RuleRef> {
    let bytes = path.as_bytes();
    c.exec_exact
        .iter()
        .find(|(k, _)| {
            k.workload == workload
                && k.len as usize == bytes.len()
                && &k.path[..bytes.len()] == bytes
        })
        .map(|(_, v)| *v)
}

impl Compiled {
    /// Number of map entries.
    pub fn len(&self) -> usize {
        self.exec_exact.len()
            + self.exec_prefix.len()
            + self.exec_files.len()
            + self.net4.len()
            + self.net6.len()
    }

    /// Whether there are no entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the host's file system names programs: symlinked directories (`/bin` → `/usr/bin` on
/// merged-/usr systems) and canonical paths. The kernel sees the path given to `execve`, so a
/// rule on `/usr/bin/curl` must also be keyed under `/bin/curl` and under the file's real path.
pub trait PathAliases {
    /// Top-level symlinks to directories, as (link, canonical target).
    fn dir_links(&self) -> Vec<(String, String)>;
    /// The canonical path of an existing file or directory.
    fn canonical(&self, path: &str) -> Option<String>;
}

/// The host's real file system.
pub struct HostPaths;

impl PathAliases for HostPaths {
    fn dir_links(&self) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir("/") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_symlink()).unwrap_or(false))
            .filter_map(|e| {
                let link = e.path();
                let target = std::fs::canonicalize(&link).ok()?;
                target.is_dir().then(|| {
                    (
                        link.to_string_lossy().into_owned(),
                        target.to_string_lossy().into_owned(),
                    )
                })
            })
            .collect()
    }

    fn canonical(&self, path: &str) -> Option<String> {
        std::fs::canonicalize(path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// Adds, to every exec rule, the other names the same program has on this host: its canonical
/// path, and the same path under every symlinked top-level directory. A copy or a hard link
/// elsewhere is a different path and is not caught by path rules.
pub fn with_path_aliases(rules: &RuleSet, fs: &dyn PathAliases) -> RuleSet {
    let links = fs.dir_links();
    let mut out = rules.clone();
    for r in &mut out.rules {
        let Matcher::Exec { paths, .. } = &mut r.matcher else {
            continue;
        };
        let mut extra = Vec::new();
        for p in paths.iter() {
            let (path, is_prefix) = match p {
                PathPattern::Exact(s) => (s.as_str(), false),
                PathPattern::Prefix(s) => (s.as_str(), true),
            };
            // A prefix's last component is partial (`/usr/bin/ssh*`): resolve its directory.
            let (dir, tail) = if is_prefix {
                match path.rfind('/') {
                    Some(i) => (&path[..i], &path[i..]),
                    None => continue,
                }
            } else {
                (path, "")
            };
            let mut names = vec![path.to_string()];
            if let Some(real) = fs.canonical(if dir.is_empty() { "/" } else { dir }) {
                let real = format!("{}{tail}", real.trim_end_matches('/'));
                if real != path {
                    names.push(real);
                }
            }
            for name in names.clone() {
                for (link, target) in &links {
                    if let Some(rest) = name.strip_prefix(target.as_str()) {
                        if rest.starts_with('/') {
                            names.push(format!("{link}{rest}"));
                        }
                    }
                }
            }
            for n in names.into_iter().skip(1) {
                if n.len() <= policy::MAX_PATH_LEN {
                    extra.push(if is_prefix {
                        PathPattern::Prefix(n)
                    } else {
                        PathPattern::Exact(n)
                    });
                }
            }
        }
        for e in extra {
            if !paths.contains(&e) {
                paths.push(e);
            }
        }
    }
    out
}

/// What the kernel's exec maps say about `path` for `workload`: the exact entry, else the
/// longest prefix. The agent uses it for execs the kernel could not match by itself.
pub fn match_exec(c: &Compiled, workload: u32, path: &str) -> Option<RuleRef> {
    if let Some(r) = exact_entry(c, workload, path) {
        return Some(r);
    }
    let bytes = path.as_bytes();
    let wbe = workload.to_be_bytes();
    c.exec_prefix
        .iter()
        .filter(|(bits, d, _)| {
            let n = (*bits as usize / 8).saturating_sub(4);
            d.workload_be == wbe && n <= bytes.len() && d.path[..n] == bytes[..n]
        })
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, _, v)| *v)
}

/// Converts the policy action into the kernel's code.
pub fn kernel_action(a: policy::Action) -> agent_common::Action {
    match a {
        policy::Action::Allow => agent_common::Action::Allow,
        policy::Action::Audit => agent_common::Action::Audit,
        policy::Action::Approve => agent_common::Action::Approve,
        policy::Action::Deny => agent_common::Action::Deny,
    }
}

#[derive(Clone, Copy)]
struct Clause {
    prefix_len: u8,
    rule: PortRule,
}

impl Clause {
    fn sort_key(&self) -> impl Ord {
        let width = self.rule.port_hi - self.rule.port_lo;
        (
            std::cmp::Reverse(self.prefix_len),
            width,
            self.rule.proto == proto::ANY,
            std::cmp::Reverse(self.rule.action),
            self.rule.rule_id,
        )
    }
}

/// Compiles a rule set.
pub fn compile(rules: &RuleSet) -> Result<Compiled, CompileError> {
    let mut out = Compiled::default();
    let names: HashMap<u32, &str> = rules.ids();
    let mut exact: BTreeMap<(u32, String), RuleRef> = BTreeMap::new();
    let mut prefix: BTreeMap<(u32, String), RuleRef> = BTreeMap::new();
    // workload -> network -> clauses declared on exactly that network
    let mut nets: BTreeMap<u32, BTreeMap<IpNet, Vec<PortRule>>> = BTreeMap::new();

    for r in &rules.rules {
        let action = kernel_action(r.action) as u8;
        let rref = RuleRef {
            rule_id: r.id,
            action,
            flags: 0,
            _pad: [0; 2],
        };
        match &r.matcher {
            Matcher::Exec { paths, args, .. } => {
                for p in paths {
                    let kernel = match args {
                        Some(m) => {
                            let key = out.exec_args.entry((r.workload_id, p.clone()));
                            key.or_default().args.push((rref, m.clone()));
                            RuleRef {
                                rule_id: if r.action == policy::Action::Deny {
                                    ARGS_DENY_RULE
                                } else {
                                    ARGS_RULE
                                },
                                action: agent_common::Action::Approve as u8,
                                flags: 0,
                                _pad: [0; 2],
                            }
                        }
                        None => rref,
                    };
                    let (table, path) = match p {
                        PathPattern::Exact(s) => (&mut exact, s),
                        PathPattern::Prefix(s) => (&mut prefix, s),
                    };
                    table
                        .entry((r.workload_id, path.clone()))
                        .and_modify(|cur| {
                            if strictness(&kernel) > strictness(cur) {
                                *cur = kernel;
                            }
                        })
                        .or_insert(kernel);
                }
            }
            Matcher::Connect {
                to,
                names: hosts,
                new_names,
                ports,
                protocol,
            } => {
                let proto = match protocol {
                    Protocol::Any => proto::ANY,
                    Protocol::Tcp => proto::TCP,
                    Protocol::Udp => proto::UDP,
                };
                let ranges: Vec<(u16, u16)> = if ports.is_empty() {
                    vec![(0, u16::MAX)]
                } else {
                    ports.iter().map(|p| (p.lo, p.hi)).collect()
                };
                let clause = |(lo, hi): (u16, u16)| PortRule {
                    port_lo: lo,
                    port_hi: hi,
                    proto,
                    action,
                    _pad: [0; 2],
                    rule_id: r.id,
                };
                for host in hosts {
                    for &range in &ranges {
                        out.names.add(r.workload_id, host.clone(), clause(range));
                    }
                }
                if *new_names {
                    for &range in &ranges {
                        out.names.add_new(r.workload_id, clause(range));
                    }
                }
                for net in to {
                    let list = nets
                        .entry(r.workload_id)
                        .or_default()
                        .entry(net.trunc())
                        .or_default();
                    for &range in &ranges {
                        list.push(clause(range));
                    }
                }
            }
        }
    }

    // The rules without `args` at each path or prefix that also has rules with them.
    for r in &rules.rules {
        let Matcher::Exec {
            paths, args: None, ..
        } = &r.matcher
        else {
            continue;
        };
        let rref = RuleRef {
            rule_id: r.id,
            action: kernel_action(r.action) as u8,
            flags: 0,
            _pad: [0; 2],
        };
        for p in paths {
            if let Some(k) = out.exec_args.get_mut(&(r.workload_id, p.clone())) {
                if k.base.is_none_or(|b| rref.action > b.action) {
                    k.base = Some(rref);
                }
            }
        }
    }

    for ((workload, path), rref) in exact {
        let mut key = ExecExactKey {
            workload,
            len: path.len() as u32,
            path: [0; PATH_CAP],
        };
        key.path[..path.len()].copy_from_slice(path.as_bytes());
        out.exec_exact.push((key, rref));
    }
    for ((workload, path), rref) in prefix {
        let mut data = ExecPrefixData {
            workload_be: workload.to_be_bytes(),
            path: [0; PATH_CAP],
        };
        data.path[..path.len()].copy_from_slice(path.as_bytes());
        out.exec_prefix
            .push((((4 + path.len()) * 8) as u32, data, rref));
    }

    for (workload, by_net) in &nets {
        let wname = rules
            .workloads
            .iter()
            .find(|w| w.id == *workload)
            .map(|w| w.name.clone())
            .unwrap_or_else(|| workload.to_string());
        for (net, _) in by_net.iter() {
            let mut clauses: Vec<Clause> = Vec::new();
            // Every declared network that contains this one contributes its clauses: at most
            // one per shorter prefix length, so this is O(address bits) per node.
            for len in 0..=net.prefix_len() {
                let Ok(outer) = IpNet::new(net.addr(), len) else {
                    continue;
                };
                if let Some(rules_here) = by_net.get(&outer.trunc()) {
                    for pr in rules_here {
                        clauses.push(Clause {
                            prefix_len: len,
                            rule: *pr,
                        });
                    }
                }
            }
            clauses.sort_by_key(|c| c.sort_key());
            clauses
                .dedup_by_key(|c| (c.rule.port_lo, c.rule.port_hi, c.rule.proto, c.rule.rule_id));
            if clauses.len() > PORT_RULES_CAP {
                let mut involved: Vec<&str> = clauses
                    .iter()
                    .map(|c| names.get(&c.rule.rule_id).copied().unwrap_or("?"))
                    .collect();
                involved.sort();
                involved.dedup();
                return Err(CompileError::TooManyClauses {
                    workload: wname,
                    net: *net,
                    count: clauses.len(),
                    rules: involved.join(", "),
                });
            }
            let mut value = PortRules {
                len: clauses.len() as u32,
                ..PortRules::EMPTY
            };
            for (slot, c) in value.rules.iter_mut().zip(&clauses) {
                *slot = c.rule;
            }
            let wbe = workload.to_be_bytes();
            match net {
                IpNet::V4(n) => out.net4.push((
                    32 + n.prefix_len() as u32,
                    Net4Data {
                        workload_be: wbe,
                        addr: n.network().octets(),
                    },
                    value,
                )),
                IpNet::V6(n) => out.net6.push((
                    32 + n.prefix_len() as u32,
                    Net6Data {
                        workload_be: wbe,
                        addr: n.network().octets(),
                    },
                    value,
                )),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::Action;

    fn rules(text: &str) -> RuleSet {
        RuleSet::parse("t.yaml", text).expect("valid rules")
    }

    const BASE: &str = "workloads:\n  - name: w\n    cgroups: [/w]\nrules:\n";

    fn lookup4(c: &Compiled, addr: [u8; 4], port: u16, proto: u8) -> Option<(u32, u8)> {
        // What the kernel does: longest prefix, then the first matching clause.
        let best = c
            .net4
            .iter()
            .filter(|(len, d, _)| {
                let bits = len - 32;
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from_be_bytes(d.addr) & mask == u32::from_be_bytes(addr) & mask
            })
            .max_by_key(|(len, _, _)| *len)?;
        best.2.rules[..best.2.len as usize]
            .iter()
            .find(|r| (r.proto == 0 || r.proto == proto) && r.port_lo <= port && port <= r.port_hi)
            .map(|r| (r.rule_id, r.action))
    }

    #[test]
    fn inherited_clauses_keep_shorter_prefix_rules_reachable() {
        let rs = rules(&format!(
            "{BASE}  - {{name: wide, workload: w, on: connect, to: [10.0.0.0/8], action: deny}}\n  - {{name: db, workload: w, on: connect, to: [10.1.0.0/16], ports: [5432], action: approve}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        let wide = rs.rules[0].id;
        let db = rs.rules[1].id;
        assert_eq!(
            lookup4(&c, [10, 1, 2, 3], 5432, 6),
            Some((db, Action::Approve as u8))
        );
        // Same /16, other port: the /8 deny still applies, inherited into the /16 node.
        assert_eq!(
            lookup4(&c, [10, 1, 2, 3], 22, 6),
            Some((wide, Action::Deny as u8))
        );
        assert_eq!(
            lookup4(&c, [10, 9, 9, 9], 5432, 6),
            Some((wide, Action::Deny as u8))
        );
        assert_eq!(lookup4(&c, [11, 0, 0, 1], 5432, 6), None);
    }

    #[test]
    fn stricter_action_wins_between_equally_specific_clauses() {
        let rs = rules(&format!(
            "{BASE}  - {{name: a, workload: w, on: connect, to: [10.0.0.1], action: audit}}\n  - {{name: d, workload: w, on: connect, to: [10.0.0.1/32], action: deny}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        assert_eq!(
            lookup4(&c, [10, 0, 0, 1], 80, 6).map(|r| r.1),
            Some(Action::Deny as u8)
        );
    }

    #[test]
    fn protocol_and_port_range_are_honoured() {
        let rs = rules(&format!(
            "{BASE}  - {{name: dns, workload: w, on: connect, to: [0.0.0.0/0], ports: [53], protocol: udp, action: audit}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        assert!(lookup4(&c, [8, 8, 8, 8], 53, 17).is_some());
        assert!(lookup4(&c, [8, 8, 8, 8], 53, 6).is_none());
        assert!(lookup4(&c, [8, 8, 8, 8], 54, 17).is_none());
    }

    #[test]
    fn exec_paths_compile_to_exact_and_prefix_keys() {
        let rs = rules(&format!(
            "{BASE}  - {{name: t, workload: w, on: exec, paths: [/usr/bin/curl, /usr/bin/ssh*], action: approve}}\n  - {{name: k, workload: w, on: exec, paths: [/usr/bin/curl], action: deny}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        assert_eq!(c.exec_exact.len(), 1);
        let (k, v) = &c.exec_exact[0];
        assert_eq!(&k.path[..k.len as usize], b"/usr/bin/curl");
        assert_eq!(
            v.action,
            Action::Deny as u8,
            "the stricter of two rules on one path wins"
        );
        let (bits, d, _) = &c.exec_prefix[0];
        assert_eq!(*bits, (4 + "/usr/bin/ssh".len() as u32) * 8);
        assert_eq!(&d.path[..12], b"/usr/bin/ssh");
        assert_eq!(d.workload_be, rs.workloads[0].id.to_be_bytes());
    }

    #[test]
    fn too_many_overlapping_clauses_is_an_error_naming_the_prefix() {
        let ports: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        let rs = rules(&format!(
            "{BASE}  - {{name: many, workload: w, on: connect, to: [10.0.0.0/8], ports: [{}], action: deny}}\n",
            ports.join(",")
        ));
        match compile(&rs) {
            Err(e @ CompileError::TooManyClauses { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("10.0.0.0/8") && m.contains("many") && m.contains("17"),
                    "{m}"
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    struct FakeFs;
    impl PathAliases for FakeFs {
        fn dir_links(&self) -> Vec<(String, String)> {
            vec![
                ("/bin".into(), "/usr/bin".into()),
                ("/sbin".into(), "/usr/sbin".into()),
            ]
        }
        fn canonical(&self, path: &str) -> Option<String> {
            match path {
                "/usr/bin/awk" => Some("/usr/bin/mawk".into()),
                "/usr/bin" | "/bin" => Some("/usr/bin".into()),
                "/opt/tools" => Some("/opt/tools".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn exec_rules_get_the_other_names_of_the_same_program() {
        let rs = rules(&format!(
            "{BASE}  - {{name: t, workload: w, on: exec, paths: [/usr/bin/awk, /bin/ssh*, /opt/tools/x], action: deny}}\n"
        ));
        let out = with_path_aliases(&rs, &FakeFs);
        let Matcher::Exec { paths, .. } = &out.rules[0].matcher else {
            panic!("exec rule")
        };
        let has = |p: &PathPattern| paths.contains(p);
        assert!(
            has(&PathPattern::Exact("/usr/bin/mawk".into())),
            "canonical target: {paths:?}"
        );
        assert!(
            has(&PathPattern::Exact("/bin/awk".into())),
            "through the /bin link: {paths:?}"
        );
        assert!(has(&PathPattern::Exact("/bin/mawk".into())), "{paths:?}");
        assert!(
            has(&PathPattern::Prefix("/usr/bin/ssh".into())),
            "prefix directory resolved: {paths:?}"
        );
        assert!(!paths
            .iter()
            .any(|p| matches!(p, PathPattern::Exact(s) if s.starts_with("/sbin"))));
        assert_eq!(
            paths
                .iter()
                .filter(|p| **p == PathPattern::Exact("/opt/tools/x".into()))
                .count(),
            1
        );
    }

    #[test]
    fn user_space_exec_match_follows_the_kernel_order() {
        let rs = rules(&format!(
            "{BASE}  - {{name: p, workload: w, on: exec, paths: ['/usr/bin/ssh*'], action: approve}}\n  - {{name: e, workload: w, on: exec, paths: [/usr/bin/ssh-agent], action: allow}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        let w = rs.workloads[0].id;
        assert_eq!(
            match_exec(&c, w, "/usr/bin/ssh").map(|r| r.rule_id),
            Some(rs.rules[0].id)
        );
        assert_eq!(
            match_exec(&c, w, "/usr/bin/ssh-agent").map(|r| r.rule_id),
            Some(rs.rules[1].id)
        );
        assert_eq!(match_exec(&c, w, "/usr/bin/scp"), None);
        assert_eq!(match_exec(&c, w + 1, "/usr/bin/ssh"), None);
    }

    #[test]
    fn ipv6_rules_compile_with_workload_prefix() {
        let rs = rules(&format!(
            "{BASE}  - {{name: v6, workload: w, on: connect, to: ['fd00:ec2::254/128'], action: deny}}\n"
        ));
        let c = compile(&rs).expect("compiles");
        assert_eq!(c.net6.len(), 1);
        assert_eq!(c.net6[0].0, 32 + 128);
    }

    #[test]
    fn argument_rules_hold_in_the_kernel_and_decide_in_the_agent() {
        let rs = rules(&format!(
            "{BASE}  - {{name: kube-approve, workload: w, on: exec, paths: [/usr/bin/kubectl], args: {{any: [delete, drain, scale]}}, action: approve}}
  - {{name: kube-prod-deny, workload: w, on: exec, paths: [/usr/bin/kubectl], args: {{all: ['delete', '--context=prod*']}}, action: deny}}
  - {{name: kube-audit, workload: w, on: exec, paths: [/usr/bin/kubectl], action: audit}}
  - {{name: bin-approve, workload: w, on: exec, paths: ['/usr/bin/*'], action: approve}}
  - {{name: aws-cp, workload: w, on: exec, paths: ['/opt/aws/*'], args: {{any: ['s3 cp']}}, action: approve}}
  - {{name: rm-deny, workload: w, on: exec, paths: [/usr/bin/rm], action: deny}}
  - {{name: rm-args, workload: w, on: exec, paths: [/usr/bin/rm], args: {{any: ['-rf']}}, action: approve}}
"
        ));
        let c = compile(&rs).expect("compiles");
        let w = rs.rules[0].workload_id;
        let id = |name: &str| rs.rules.iter().find(|r| r.name == name).expect(name).id;
        // The kernel: a path with rules with `args` is held for them, unless denied outright.
        let kernel = |path: &str| match_exec(&c, w, path).map(|r| (r.rule_id, r.action));
        // A rule with `args` denies some invocations: with nobody to decide, all are refused.
        assert_eq!(
            kernel("/usr/bin/kubectl"),
            Some((ARGS_DENY_RULE, Action::Approve as u8))
        );
        assert_eq!(
            kernel("/opt/aws/bin/aws"),
            Some((ARGS_RULE, Action::Approve as u8))
        );
        assert_eq!(
            kernel("/usr/bin/rm"),
            Some((id("rm-deny"), Action::Deny as u8))
        );
        assert_eq!(
            kernel("/usr/bin/ls"),
            Some((id("bin-approve"), Action::Approve as u8))
        );

        // The agent, with the arguments the program received.
        let words = |a: &[&str]| a.iter().map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
        // (program, its arguments if known, the rule and action expected)
        type Case<'a> = (&'a str, Option<&'a [&'a str]>, Option<(&'a str, Action)>);
        let cases: &[Case] = &[
            (
                "/usr/bin/kubectl",
                Some(&["get", "pods"]),
                Some(("kube-audit", Action::Audit)),
            ),
            (
                "/usr/bin/kubectl",
                Some(&["delete", "pod", "x"]),
                Some(("kube-approve", Action::Approve)),
            ),
            (
                "/usr/bin/kubectl",
                Some(&["--context=prod-eu", "delete", "ns"]),
                Some(("kube-prod-deny", Action::Deny)),
            ),
            (
                "/usr/bin/kubectl",
                Some(&["scale", "--context=prod"]),
                Some(("kube-approve", Action::Approve)),
            ),
            // Not known (held before the exec): every rule with `args` counts.
            (
                "/usr/bin/kubectl",
                None,
                Some(("kube-prod-deny", Action::Deny)),
            ),
            // No args rule matches at the prefix, and no rule without args: the next shorter
            // prefix decides.
            ("/opt/aws/bin/aws", Some(&["s3", "ls"]), None),
            (
                "/opt/aws/bin/aws",
                Some(&["--region", "x", "s3", "cp", "a", "b"]),
                Some(("aws-cp", Action::Approve)),
            ),
            ("/opt/aws/bin/aws", Some(&["s3", "x", "cp"]), None),
            ("/usr/bin/rm", Some(&["x"]), Some(("rm-deny", Action::Deny))),
            (
                "/usr/bin/ls",
                Some(&["delete"]),
                Some(("bin-approve", Action::Approve)),
            ),
            ("/home/x/kubectl", Some(&["delete"]), None),
        ];
        let allow = RuleRef {
            rule_id: 0,
            action: Action::Allow as u8,
            flags: 0,
            _pad: [0; 2],
        };
        for &(path, args, want) in cases {
            let a = args.map(words);
            let got = exec_verdict(&c, w, path, a.as_deref(), allow).map(|r| (r.rule_id, r.action));
            let want = want.map(|(n, act)| (id(n), act as u8));
            assert_eq!(got, want, "{path} {args:?}");
        }
    }

    #[test]
    fn arguments_not_known_never_get_a_weaker_verdict_than_any_arguments_would() {
        // A rule with `args` that is weaker than what applies without it: unknown arguments
        // must not be decided by it alone.
        let rs = rules(&format!(
            "{BASE}  - {{name: kube-get, workload: w, on: exec, paths: [/usr/bin/kubectl], args: {{any: [get]}}, action: audit}}
  - {{name: tools, workload: w, on: exec, paths: ['/usr/*'], action: deny}}
  - {{name: aws-cp, workload: w, on: exec, paths: [/opt/aws], args: {{any: ['s3 cp']}}, action: audit}}
"
        ));
        let c = compile(&rs).expect("compiles");
        let w = rs.rules[0].workload_id;
        let id = |name: &str| rs.rules.iter().find(|r| r.name == name).expect(name).id;
        let default = |action: Action| RuleRef {
            rule_id: 0,
            action: action as u8,
            flags: 0,
            _pad: [0; 2],
        };
        let get = [b"get".to_vec()];
        let delete = [b"delete".to_vec()];
        // (program, arguments if known, workload default, expected rule and action)
        type Case<'a> = (&'a str, Option<&'a [Vec<u8>]>, Action, (u32, Action));
        let cases: &[Case] = &[
            (
                "/usr/bin/kubectl",
                Some(&get),
                Action::Allow,
                (id("kube-get"), Action::Audit),
            ),
            (
                "/usr/bin/kubectl",
                Some(&delete),
                Action::Allow,
                (id("tools"), Action::Deny),
            ),
            // Unknown: the shorter prefix's deny, which `delete` would get.
            (
                "/usr/bin/kubectl",
                None,
                Action::Allow,
                (id("tools"), Action::Deny),
            ),
            // Unknown, and nothing but the workload's default behind the rule: the default.
            ("/opt/aws", None, Action::Deny, (0, Action::Deny)),
            (
                "/opt/aws",
                None,
                Action::Allow,
                (id("aws-cp"), Action::Audit),
            ),
            ("/opt/aws", Some(&delete), Action::Deny, (0, Action::Deny)),
        ];
        for &(path, args, dflt, (rule, action)) in cases {
            let got = exec_verdict(&c, w, path, args, default(dflt))
                .map(|r| (r.rule_id, r.action))
                .unwrap_or((0, dflt as u8));
            assert_eq!(
                got,
                (rule, action as u8),
                "{path} {args:?} default {dflt:?}"
            );
        }
    }
}
