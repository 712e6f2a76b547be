//! The rules language: what is accepted and how each kind of bad input is refused.

use policy::{
    Action, Matcher, PathPattern, PolicyError, PortRange, Protocol, RuleSet, Sha256, Workload,
};

const GOOD: &str = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*", "/system.slice/llm-runner.service"]
rules:
  - name: no-cloud-metadata
    workload: ai-agents
    on: connect
    to: ["169.254.169.254/32", "fd00:ec2::254/128"]
    action: deny
  - name: prod-db-needs-a-human
    workload: ai-agents
    on: connect
    to: ["10.20.0.0/16"]
    ports: [5432, "6000-6010"]
    protocol: tcp
    action: approve
    approvers: { groups: ["dba-oncall"], count: 2 }
    timeout: 10m
  - name: network-tools
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/curl", "/usr/bin/ssh*"]
    action: approve
"#;

fn refuse(text: &str) -> PolicyError {
    match RuleSet::parse("rules.yaml", text) {
        Ok(_) => panic!("accepted a bad file:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn accepts_the_documented_example() {
    let rs = RuleSet::parse("rules.yaml", GOOD).expect("valid");
    assert_eq!(rs.workloads.len(), 1);
    assert_eq!(rs.rules.len(), 3);
    let db = &rs.rules[1];
    assert_eq!(db.action, Action::Approve);
    assert_eq!(db.approvers.count, 2);
    assert_eq!(db.timeout.as_secs(), 600);
    assert_eq!(db.line, Some(11));
    match &db.matcher {
        Matcher::Connect {
            to,
            ports,
            protocol,
            names,
            new_names,
        } => {
            assert!(names.is_empty() && !new_names);
            assert_eq!(to[0].to_string(), "10.20.0.0/16");
            assert_eq!(
                ports,
                &[
                    PortRange { lo: 5432, hi: 5432 },
                    PortRange { lo: 6000, hi: 6010 }
                ]
            );
            assert_eq!(*protocol, Protocol::Tcp);
        }
        m => panic!("wrong matcher {m:?}"),
    }
    match &rs.rules[2].matcher {
        Matcher::Exec { paths, .. } => {
            assert_eq!(paths[0], PathPattern::Exact("/usr/bin/curl".into()));
            assert_eq!(paths[1], PathPattern::Prefix("/usr/bin/ssh".into()));
        }
        m => panic!("wrong matcher {m:?}"),
    }
    assert_ne!(rs.rules[0].id, rs.rules[1].id);
    assert_eq!(rs.workloads[0].default_action, Action::Allow);
}

#[test]
fn ids_are_stable_across_files() {
    let a = RuleSet::parse("a", GOOD).expect("valid");
    let reordered = GOOD.replace("ai.slice", "other.slice");
    let b = RuleSet::parse("b", &reordered).expect("valid");
    assert_eq!(a.rules[1].id, b.rules[1].id);
}

#[test]
fn invalid_cidr_names_rule_line_and_value() {
    let text = GOOD.replace("10.20.0.0/16", "10.20.0.0/33");
    let e = refuse(&text);
    let msg = e.to_string();
    assert!(
        msg.contains("rules.yaml:11: rule 'prod-db-needs-a-human': `to[0]`: invalid CIDR"),
        "{msg}"
    );
    assert!(msg.contains("10.20.0.0/33"), "{msg}");
}

#[test]
fn host_bits_in_cidr_are_refused_with_a_suggestion() {
    let e = refuse(&GOOD.replace("10.20.0.0/16", "10.20.1.0/16"));
    assert!(e.to_string().contains("did you mean '10.20.0.0/16'"), "{e}");
}

#[test]
fn empty_path_is_refused() {
    let e = refuse(&GOOD.replace("\"/usr/bin/curl\"", "\"\""));
    assert!(
        e.to_string()
            .contains("rule 'network-tools': `paths[0]`: empty path"),
        "{e}"
    );
}

#[test]
fn overlong_path_is_refused() {
    let long = format!("/{}", "a".repeat(300));
    let e = refuse(&GOOD.replace("/usr/bin/curl", &long));
    assert!(
        e.to_string()
            .contains("is 301 bytes long; the limit is 247"),
        "{e}"
    );
}

#[test]
fn upside_down_port_range_is_refused() {
    let e = refuse(&GOOD.replace("6000-6010", "6010-6000"));
    assert!(
        e.to_string()
            .contains("`ports[1]`: port range '6010-6000' is upside down"),
        "{e}"
    );
}

#[test]
fn out_of_range_port_is_refused() {
    let e = refuse(&GOOD.replace("[5432,", "[70000,"));
    assert!(
        e.to_string().contains("port 70000 is outside 1-65535"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_refused_with_line() {
    let e = refuse(&GOOD.replace("    action: deny", "    acton: deny"));
    let p = &e.problems[0];
    assert_eq!(p.line, Some(10), "{e}");
    assert!(p.message.contains("unknown field `acton`"), "{e}");
}

#[test]
fn unknown_workload_and_duplicate_names_are_all_reported() {
    let text = GOOD
        .replace(
            "workload: ai-agents\n    on: exec",
            "workload: nobody\n    on: exec",
        )
        .replace("name: network-tools", "name: no-cloud-metadata");
    let e = refuse(&text);
    let msg = e.to_string();
    assert!(msg.contains("unknown workload 'nobody'"), "{msg}");
    assert!(msg.contains("defined more than once"), "{msg}");
}

#[test]
fn inner_glob_is_refused() {
    let e = refuse(&GOOD.replace("/usr/bin/ssh*", "/usr/*/ssh"));
    assert!(e.to_string().contains("only a single trailing `*`"), "{e}");
}

#[test]
fn not_yaml_is_refused_with_position() {
    let e = refuse("rules: [\n  - {name: x\n");
    assert!(e.problems[0].line.is_some(), "{e}");
}

#[test]
fn exec_rule_with_connect_fields_is_refused() {
    let e = refuse(&GOOD.replace("    on: exec\n", "    on: exec\n    ports: [22]\n"));
    assert!(
        e.to_string().contains("belong to `on: connect` rules"),
        "{e}"
    );
}

#[test]
fn bad_timeouts_are_refused() {
    let e = refuse(&GOOD.replace("timeout: 10m", "timeout: soon"));
    assert!(
        e.to_string().contains("timeout 'soon' is not a duration"),
        "{e}"
    );
    let e = refuse(&GOOD.replace("timeout: 10m", "timeout: 30d"));
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn relative_cgroup_is_refused() {
    let e = refuse(&GOOD.replace("\"/ai.slice/*\"", "\"ai.slice\""));
    assert!(
        e.to_string()
            .contains("workload 'ai-agents': cgroup 'ai.slice' must start with '/'"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_a_rules_document_says_what_one_looks_like() {
    let e = refuse("- just\n- a list\n");
    assert!(
        e.to_string()
            .contains("a rules file is a mapping with `workloads:` and `rules:`"),
        "{e}"
    );
}

#[test]
fn approve_rules_may_route_to_a_slack_channel() {
    let text = GOOD.replace(
        "    timeout: 10m\n",
        "    notify: { slack: \"#dba-oncall\" }\n    timeout: 10m\n",
    );
    let rs = RuleSet::parse("rules.yaml", &text).expect("valid");
    assert_eq!(rs.rules[1].notify.slack.as_deref(), Some("#dba-oncall"));
    assert_eq!(rs.rules[2].notify.slack, None);
    let by_id = text.replace("#dba-oncall", "C0123456789");
    let rs = RuleSet::parse("rules.yaml", &by_id).expect("channel id");
    assert_eq!(rs.rules[1].notify.slack.as_deref(), Some("C0123456789"));
}

#[test]
fn bad_slack_routes_are_refused() {
    for (channel, needle) in [
        ("dba oncall", "'dba oncall' is not a Slack channel"),
        ("#DBA", "'#DBA' is not a Slack channel"),
        ("#", "'#' is not a Slack channel"),
        ("<!channel>", "'<!channel>' is not a Slack channel"),
    ] {
        let e = refuse(&GOOD.replace(
            "    timeout: 10m\n",
            &format!("    notify: {{ slack: \"{channel}\" }}\n    timeout: 10m\n"),
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("rule 'prod-db-needs-a-human'") && msg.contains(needle),
            "{msg}"
        );
    }
    let e = refuse(&GOOD.replace(
        "    action: deny\n",
        "    action: deny\n    notify: { slack: \"#sec\" }\n",
    ));
    assert!(
        e.to_string()
            .contains("`notify` only applies to `action: approve`, not `deny`"),
        "{e}"
    );
    let e = refuse(&GOOD.replace(
        "    timeout: 10m\n",
        "    notify: { teams: \"x\" }\n    timeout: 10m\n",
    ));
    assert!(e.to_string().contains("unknown field `teams`"), "{e}");
}

const CURL_SHA: &str = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
const TOOL_SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

const CONTENT: &str = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
    unknown_programs: approve
    known_programs: ["/opt/agent/bin/*", "/usr/local/bin/helper"]
  - name: build
    cgroups: ["/build.slice/*"]
  - name: batch
    cgroups: ["/batch.slice/*"]
rules:
  - name: no-curl-anywhere
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/curl"]
    copies: true
    action: deny
  - name: known-bad-tool
    workload: build
    on: exec
    sha256: ["9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    action: deny
  - name: batch-ssh
    workload: batch
    on: exec
    paths: ["/usr/bin/ssh*"]
    copies: false
    action: audit
"#;

fn digest(hex: &str) -> Sha256 {
    hex.parse().expect("valid digest")
}

#[test]
fn sha256_reads_either_case_and_prints_lower_case() {
    let d = digest(CURL_SHA);
    assert_eq!(d.0[0], 0x9f);
    assert_eq!(d.0[31], 0x08);
    assert_eq!(d.to_string(), CURL_SHA.to_ascii_lowercase());
    assert_eq!(d, digest(&CURL_SHA.to_ascii_lowercase()));
    assert_eq!(
        serde_json::to_string(&d).expect("json"),
        format!("\"{}\"", CURL_SHA.to_ascii_lowercase())
    );
    for bad in [
        "",
        "abc",
        &CURL_SHA[1..],
        &format!("{CURL_SHA}0"),
        &CURL_SHA.replace('F', "g"),
    ] {
        let e = bad.parse::<Sha256>().expect_err(bad);
        assert!(
            e.contains(&format!("'{bad}'")) && e.contains("not a SHA-256 digest"),
            "{e}"
        );
    }
    let multibyte = format!("é{}", &CURL_SHA[2..]);
    assert!(multibyte.parse::<Sha256>().is_err());
    assert!(serde_json::from_str::<Sha256>("\"abc\"").is_err());
}

#[test]
fn programs_by_content_parse() {
    let rs = RuleSet::parse("rules.yaml", CONTENT).expect("valid");
    let ai = rs.workload("ai-agents").expect("ai-agents");
    assert_eq!(ai.unknown_programs, Some(Action::Approve));
    assert_eq!(
        ai.known_programs,
        [
            PathPattern::Prefix("/opt/agent/bin/".into()),
            PathPattern::Exact("/usr/local/bin/helper".into()),
        ]
    );
    let build = rs.workload("build").expect("build");
    assert_eq!(build.unknown_programs, None);
    assert!(build.known_programs.is_empty());

    assert_eq!(
        rs.rules[0].matcher,
        Matcher::Exec {
            paths: vec![PathPattern::Exact("/usr/bin/curl".into())],
            sha256: vec![],
            copies: true,
            args: None,
        }
    );
    // The upper- and lower-case spellings of one digest are one program, kept once.
    assert_eq!(
        rs.rules[1].matcher,
        Matcher::Exec {
            paths: vec![],
            sha256: vec![digest(CURL_SHA), digest(TOOL_SHA)],
            copies: false,
            args: None,
        }
    );
    match &rs.rules[2].matcher {
        Matcher::Exec { sha256, copies, .. } => assert!(sha256.is_empty() && !copies),
        m => panic!("wrong matcher {m:?}"),
    }

    let batch = rs.workload("batch").expect("batch").id;
    assert!(rs.decides_content(ai.id), "unknown_programs (and copies)");
    assert!(rs.decides_content(build.id), "sha256");
    assert!(!rs.decides_content(batch), "paths only, copies: false");
    assert!(!rs.decides_content(12345), "no such workload");

    // unknown_programs alone is enough.
    let only_unknown = CONTENT.replace("    copies: true\n", "").replace(
        "known_programs: [\"/opt/agent/bin/*\", \"/usr/local/bin/helper\"]",
        "known_programs: []",
    );
    let rs = RuleSet::parse("rules.yaml", &only_unknown).expect("valid");
    assert!(rs.decides_content(rs.workloads[0].id));
    assert!(rs.workloads[0].known_programs.is_empty());
    // And without it, paths alone are not.
    let neither = only_unknown.replace("    unknown_programs: approve\n", "");
    let rs = RuleSet::parse("rules.yaml", &neither).expect("valid");
    assert!(!rs.decides_content(rs.workloads[0].id));
    assert!(rs.decides_content(rs.workloads[1].id));
}

#[test]
fn rule_set_round_trips_through_json() {
    let rs = RuleSet::parse("rules.yaml", CONTENT).expect("valid");
    let json = serde_json::to_string(&rs).expect("serialize");
    assert!(json.contains(&CURL_SHA.to_ascii_lowercase()), "{json}");
    assert!(json.contains("\"copies\":true"), "{json}");
    assert!(json.contains("\"unknown_programs\":\"approve\""), "{json}");
    let back: RuleSet = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rs);

    // Unset fields are left out, so documents for older agents look as they did.
    let plain = RuleSet::parse("rules.yaml", GOOD).expect("valid");
    let json = serde_json::to_string(&plain).expect("serialize");
    for field in ["sha256", "copies", "unknown_programs", "known_programs"] {
        assert!(!json.contains(field), "{field} in {json}");
    }
    assert_eq!(
        serde_json::from_str::<RuleSet>(&json).expect("again"),
        plain
    );
}

#[test]
fn rule_set_json_from_before_content_rules_still_reads() {
    let old = r#"{
      "workloads": [
        {"id": 7, "name": "ai-agents", "cgroups": ["/ai.slice/*"], "default_action": "allow"}
      ],
      "rules": [
        {"id": 9, "name": "network-tools", "workload": "ai-agents", "workload_id": 7,
         "matcher": {"on": "exec", "paths": [{"exact": "/usr/bin/curl"}, {"prefix": "/usr/bin/ssh"}]},
         "action": "approve", "approvers": {"groups": [], "count": 1},
         "timeout": 600, "on_timeout": "deny", "line": 3}
      ]
    }"#;
    let rs: RuleSet = serde_json::from_str(old).expect("old document");
    assert_eq!(
        rs.workloads[0],
        Workload {
            id: 7,
            name: "ai-agents".into(),
            cgroups: vec!["/ai.slice/*".into()],
            default_action: Action::Allow,
            unknown_programs: None,
            known_programs: vec![],
            context_env: vec![],
            unresolved: None,
        }
    );
    assert_eq!(
        rs.rules[0].matcher,
        Matcher::Exec {
            paths: vec![
                PathPattern::Exact("/usr/bin/curl".into()),
                PathPattern::Prefix("/usr/bin/ssh".into()),
            ],
            sha256: vec![],
            copies: false,
            args: None,
        }
    );
    assert!(!rs.decides_content(7));
}

#[test]
fn bad_content_rules_are_refused() {
    let connect =
        "  - name: egress\n    workload: ai-agents\n    on: connect\n    to: [\"10.0.0.0/8\"]\n";
    let exec = "  - name: tools\n    workload: ai-agents\n    on: exec\n";
    let doc = |workload_extra: &str, rule: &str, fields: &str| {
        format!(
            "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\n{workload_extra}\
             rules:\n{rule}{fields}    action: deny\n"
        )
    };
    let cases: Vec<(String, &str, &[&str])> =
        vec![
        (
            doc("", exec, "    sha256: [\"abc\"]\n"),
            "rules.yaml:5: rule 'tools'",
            &["`sha256[0]`: 'abc' is not a SHA-256 digest (64 hexadecimal characters)"],
        ),
        (
            doc("", exec, &format!("    sha256: [\"{TOOL_SHA}\", \"{}\"]\n", &TOOL_SHA[..63])),
            "rule 'tools'",
            &["`sha256[1]`", "is not a SHA-256 digest"],
        ),
        (
            doc("", exec, &format!("    sha256: [\"{}\"]\n", TOOL_SHA.replace('c', "x"))),
            "rule 'tools'",
            &["`sha256[0]`", "is not a SHA-256 digest"],
        ),
        (
            doc("", connect, &format!("    sha256: [\"{TOOL_SHA}\"]\n")),
            "rules.yaml:5: rule 'egress'",
            &["`sha256` belongs to `on: exec` rules"],
        ),
        (
            doc("", connect, "    copies: true\n"),
            "rule 'egress'",
            &["`copies` belongs to `on: exec` rules"],
        ),
        (
            doc("", exec, ""),
            "rules.yaml:5: rule 'tools'",
            &["`paths` and `sha256` are both empty: name programs by path or by content"],
        ),
        (
            doc("", exec, "    paths: []\n    sha256: []\n"),
            "rule 'tools'",
            &["`paths` and `sha256` are both empty"],
        ),
        (
            doc("", exec, &format!("    sha256: [\"{TOOL_SHA}\"]\n    copies: true\n")),
            "rule 'tools'",
            &["`copies: true` needs exact `paths`", "hashing"],
        ),
        (
            doc("", exec, "    paths: [\"/usr/bin/curl\", \"/usr/bin/ssh*\"]\n    copies: true\n"),
            "rule 'tools'",
            &["`copies: true` with `paths[1]` '/usr/bin/ssh*', a prefix", "exact paths"],
        ),
        (
            doc(
                "    unknown_programs: deny\n    known_programs: [\"/opt/tools/*\", \"opt/x\"]\n",
                exec,
                "    paths: [\"/usr/bin/curl\"]\n",
            ),
            "rules.yaml:2: workload 'ai-agents'",
            &["`known_programs[1]`: 'opt/x' is not absolute"],
        ),
        (
            doc(
                "    unknown_programs: deny\n    known_programs: [\"/opt/*/bin\"]\n",
                exec,
                "    paths: [\"/usr/bin/curl\"]\n",
            ),
            "workload 'ai-agents'",
            &["`known_programs[0]`", "only a single trailing `*`"],
        ),
        (
            doc(
                "    known_programs: [\"/opt/tools/*\"]\n",
                exec,
                "    paths: [\"/usr/bin/curl\"]\n",
            ),
            "rules.yaml:2: workload 'ai-agents'",
            &["`known_programs` only applies with `unknown_programs`"],
        ),
        (
            doc(
                "    unknown_programs: sometimes\n",
                exec,
                "    paths: [\"/usr/bin/curl\"]\n",
            ),
            "",
            &["unknown variant `sometimes`", "allow", "deny"],
        ),
    ];
    for (text, subject, needles) in cases {
        let msg = refuse(&text).to_string();
        assert!(msg.contains(subject), "{subject:?} not in {msg}\n{text}");
        for needle in needles {
            assert!(msg.contains(needle), "{needle:?} not in {msg}\n{text}");
        }
    }
}

#[test]
fn connect_rules_with_copies_false_are_still_refused() {
    // `copies` says nothing about a connect rule, whatever its value.
    let e = refuse(&GOOD.replace(
        "    action: deny\n",
        "    action: deny\n    copies: false\n",
    ));
    assert!(
        e.to_string()
            .contains("rule 'no-cloud-metadata': `copies` belongs to `on: exec` rules"),
        "{e}"
    );
}

#[test]
fn argument_rules_parse_and_round_trip() {
    let text = "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\nrules:\n\
                \x20 - name: kubectl-changes\n    workload: ai-agents\n    on: exec\n\
                \x20   paths: [\"/usr/bin/kubectl\"]\n\
                \x20   args: { any: [\"delete\", \"drain\", \"scale\"], all: [\"--context=prod*\"] }\n\
                \x20   action: approve\n";
    let rs = RuleSet::parse("rules.yaml", text).expect("valid");
    let Matcher::Exec { args: Some(a), .. } = &rs.rules[0].matcher else {
        panic!("no args in {:?}", rs.rules[0].matcher);
    };
    assert_eq!(a.any.len(), 3);
    assert!(a.matches(&["--context=prod-eu", "delete", "pod", "x"]));
    assert!(!a.matches(&["--context=prod-eu", "get", "pods"]));
    let json = serde_json::to_string(&rs).expect("serialize");
    assert!(
        json.contains(r#""args":{"any":["delete","drain","scale"],"all":["--context=prod*"]}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<RuleSet>(&json).expect("back"), rs);
    // A rule without `args` leaves it out of the document.
    let plain = RuleSet::parse("rules.yaml", GOOD).expect("valid");
    assert!(!serde_json::to_string(&plain)
        .expect("json")
        .contains("args"));
}

#[test]
fn bad_argument_rules_are_refused() {
    let exec = "  - name: tools\n    workload: ai-agents\n    on: exec\n";
    let connect =
        "  - name: egress\n    workload: ai-agents\n    on: connect\n    to: [\"10.0.0.0/8\"]\n";
    let doc = |rule: &str, fields: &str, action: &str| {
        format!(
            "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\n\
             rules:\n{rule}{fields}    action: {action}\n"
        )
    };
    let paths = "    paths: [\"/usr/bin/kubectl\"]\n";
    let cases: Vec<(String, &str, &[&str])> = vec![
        (
            doc(exec, &format!("{paths}    args: {{}}\n"), "deny"),
            "rules.yaml:5: rule 'tools'",
            &["`args` names no words"],
        ),
        (
            doc(
                exec,
                &format!("{paths}    args: {{ any: [\"delete\", \"\"] }}\n"),
                "deny",
            ),
            "rule 'tools'",
            &["`args.any[1]`: is empty"],
        ),
        (
            doc(
                exec,
                &format!("{paths}    args: {{ all: [\"get *\"] }}\n"),
                "deny",
            ),
            "rule 'tools'",
            &["`args.all[0]`", "the word '*' matches every argument"],
        ),
        (
            doc(
                exec,
                &format!("{paths}    args: {{ any: [\"delete\"] }}\n"),
                "allow",
            ),
            "rule 'tools'",
            &["`args` with `action: allow` changes nothing"],
        ),
        (
            doc(
                exec,
                &format!("{paths}    copies: true\n    args: {{ any: [\"delete\"] }}\n"),
                "deny",
            ),
            "rule 'tools'",
            &["`args` with `sha256` or `copies`", "`paths` only"],
        ),
        (
            doc(
                exec,
                &format!("{paths}    args: {{ some: [\"delete\"] }}\n"),
                "deny",
            ),
            "",
            &["unknown field `some`", "any", "all"],
        ),
        (
            doc(connect, "    args: { any: [\"x\"] }\n", "deny"),
            "rule 'egress'",
            &["`args` belongs to `on: exec` rules"],
        ),
    ];
    for (text, subject, needles) in cases {
        let msg = refuse(&text).to_string();
        assert!(msg.contains(subject), "{subject:?} not in {msg}\n{text}");
        for needle in needles {
            assert!(msg.contains(needle), "{needle:?} not in {msg}\n{text}");
        }
    }
}

#[test]
fn context_env_names_variables_and_bad_names_are_refused() {
    let with = |list: &str| {
        CONTENT.replace(
            "  - name: build\n    cgroups: [\"/build.slice/*\"]\n",
            &format!(
                "  - name: build\n    cgroups: [\"/build.slice/*\"]\n    context_env: {list}\n"
            ),
        )
    };
    let rs = RuleSet::parse("rules.yaml", &with("[AGENT_SESSION_ID, tool_call_id, _X1]"))
        .expect("valid");
    assert_eq!(
        rs.workload("build").expect("build").context_env,
        ["AGENT_SESSION_ID", "tool_call_id", "_X1"]
    );
    assert!(rs.workload("ai-agents").expect("ai").context_env.is_empty());
    let many: Vec<String> = (0..17).map(|i| format!("V{i}")).collect();
    for (list, says) in [
        (
            "[\"1ST\"]",
            "`context_env[0]` '1ST' is not an environment variable name",
        ),
        (
            "[\"A-B\"]",
            "`context_env[0]` 'A-B' is not an environment variable name",
        ),
        (
            "[\"\"]",
            "`context_env[0]` '' is not an environment variable name",
        ),
        ("[\"A=1\"]", "'A=1' is not an environment variable name"),
        ("[A, B, A]", "`context_env[2]` 'A' is listed twice"),
        (
            &format!("[{}]", many.join(", ")),
            "`context_env` names 17 variables; at most 16",
        ),
        (
            &format!("[{}]", "A".repeat(129)),
            "is not an environment variable name",
        ),
    ] {
        let e = RuleSet::parse("rules.yaml", &with(list))
            .expect_err(list)
            .to_string();
        assert!(e.contains(says) && e.contains("build"), "{list}: {e}");
    }
}

#[test]
fn connect_rules_name_hosts_beside_networks() {
    let text = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
    unresolved: approve
rules:
  - name: buckets
    workload: ai-agents
    on: connect
    to: ["*.S3.amazonaws.com.", "api.openai.com", "10.20.0.0/16", "api.openai.com"]
    ports: [443]
    action: deny
"#;
    let rs = RuleSet::parse("rules.yaml", text).expect("valid");
    match &rs.rules[0].matcher {
        Matcher::Connect { to, names, .. } => {
            assert_eq!(to.len(), 1);
            let shown: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            assert_eq!(shown, ["*.s3.amazonaws.com", "api.openai.com"]);
        }
        m => panic!("wrong matcher {m:?}"),
    }
    assert_eq!(rs.workloads[0].unresolved, Some(Action::Approve));
    let id = rs.workloads[0].id;
    assert!(rs.decides_names(id));
    // Serialized and read back (as central stores and pushes it), the names survive.
    let back: RuleSet = serde_json::from_str(&serde_json::to_string(&rs).unwrap()).unwrap();
    assert_eq!(back, rs);
    assert!(!RuleSet::parse("rules.yaml", GOOD)
        .expect("valid")
        .decides_names(id));
}

#[test]
fn bad_host_names_are_refused_naming_the_entry() {
    let cases: &[(&str, &str)] = &[
        ("*.com", "`to[0]`: '*.com' covers a whole top-level domain"),
        (
            "a..example.com",
            "`to[0]`: 'a..example.com' is not a host name: it has an empty label",
        ),
        ("ex_ample.com/8", "`to[0]`: invalid CIDR"),
        (
            "db.*.example.com",
            "`to[0]`: 'db.*.example.com' is not a host name: `*` may only start a name",
        ),
        ("10.0.0.300", "`to[0]`: invalid CIDR"),
    ];
    for (entry, want) in cases {
        let e = refuse(&GOOD.replace("10.20.0.0/16", entry));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "rules.yaml:11: rule 'prod-db-needs-a-human': {want}"
            )),
            "{entry}: {msg}"
        );
    }
}

/// A grant on a held connection covers the host name only where the rule that held it names
/// that host; an address rule, an exec rule or another name leaves it on the address.
#[test]
fn a_rule_names_a_host_only_through_its_host_patterns() {
    let set = RuleSet::parse(
        "rules.yaml",
        r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - {name: by-name, workload: ai-agents, on: connect, to: ["api.example.com", "*.s3.example.com"], action: approve}
  - {name: mixed, workload: ai-agents, on: connect, to: ["db.example.com", "10.0.0.0/8"], action: approve}
  - {name: by-address, workload: ai-agents, on: connect, to: ["10.0.0.0/8"], action: approve}
  - {name: a-program, workload: ai-agents, on: exec, paths: ["/usr/bin/curl"], action: approve}
"#,
    )
    .expect("valid");
    let rule = |n: &str| set.rules.iter().find(|r| r.name == n).expect("rule");
    let cases: &[(&str, &str, bool)] = &[
        ("by-name", "api.example.com", true),
        ("by-name", "x.api.example.com", false),
        ("by-name", "bucket.s3.example.com", true),
        ("by-name", "s3.example.com", false),
        ("mixed", "db.example.com", true),
        ("mixed", "other.example.com", false),
        ("by-address", "db.example.com", false),
        ("a-program", "api.example.com", false),
    ];
    for (r, name, want) in cases {
        assert_eq!(rule(r).names_host(name), *want, "{r} names {name}");
    }
}

/// What a rule's networks cover: its addresses, ports and protocol, nothing of its names.
#[test]
fn a_rule_covers_an_address_through_its_networks_ports_and_protocol() {
    let set = RuleSet::parse(
        "rules.yaml",
        r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - {name: db, workload: ai-agents, on: connect, to: ["10.20.0.0/16", "fd00::/8"], ports: [5432, "6000-6010"], protocol: tcp, action: approve}
  - {name: any-port, workload: ai-agents, on: connect, to: ["192.0.2.1/32"], action: deny}
  - {name: by-name, workload: ai-agents, on: connect, to: ["api.example.com"], action: approve}
  - {name: a-program, workload: ai-agents, on: exec, paths: ["/usr/bin/curl"], action: approve}
"#,
    )
    .expect("valid");
    let rule = |n: &str| set.rules.iter().find(|r| r.name == n).expect("rule");
    let cases: &[(&str, &str, u16, bool, bool)] = &[
        ("db", "10.20.1.5", 5432, true, true),
        ("db", "::ffff:10.20.1.5", 5432, true, true),
        ("db", "10.20.1.5", 6005, true, true),
        ("db", "10.20.1.5", 5433, true, false),
        ("db", "10.20.1.5", 5432, false, false),
        ("db", "10.21.1.5", 5432, true, false),
        ("db", "fd00::5", 6000, true, true),
        ("any-port", "192.0.2.1", 1, false, true),
        ("any-port", "192.0.2.2", 1, false, false),
        ("by-name", "192.0.2.1", 443, true, false),
        ("a-program", "192.0.2.1", 443, true, false),
    ];
    for (r, addr, port, tcp, want) in cases {
        let a: std::net::IpAddr = addr.parse().expect("address");
        assert_eq!(
            rule(r).covers_address(a, *port, *tcp),
            *want,
            "{r} covers {addr} port {port} tcp {tcp}"
        );
    }
}

/// A rule of new names: every name the workload has not reached before, with the ports,
/// protocol and action of any connect rule; it names no `to`, and says something `allow` does
/// not.
#[test]
fn a_rule_of_new_names_is_read_and_its_misuses_are_refused() {
    let head = "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\nrules:\n";
    let set = RuleSet::parse(
        "rules.yaml",
        &format!("{head}  - {{name: first-time, workload: ai-agents, on: connect, new_names: true, ports: [443], action: approve}}\n"),
    )
    .expect("valid");
    let r = &set.rules[0];
    assert!(matches!(
        &r.matcher,
        Matcher::Connect { new_names: true, to, names, ports, .. }
            if to.is_empty() && names.is_empty() && ports == &[PortRange { lo: 443, hi: 443 }]
    ));
    assert!(set.is_new_names(r.id));
    assert!(
        set.decides_names(r.workload_id),
        "its DNS goes through the agent"
    );
    let cases: &[(&str, &str)] = &[
        (
            "{name: x, workload: ai-agents, on: connect, new_names: true, to: [api.example.com], action: approve}",
            "it takes no `to`",
        ),
        (
            "{name: x, workload: ai-agents, on: connect, new_names: true, action: allow}",
            "`new_names` with `allow`",
        ),
        (
            "{name: x, workload: ai-agents, on: connect, new_names: false, action: approve}",
            "`to` is empty",
        ),
        (
            "{name: x, workload: ai-agents, on: exec, paths: [/usr/bin/curl], new_names: true, action: approve}",
            "`new_names`, `ports` and `protocol` belong to `on: connect`",
        ),
    ];
    for (rule, want) in cases {
        let e = refuse(&format!("{head}  - {rule}\n"));
        assert!(e.to_string().contains(want), "{rule}: {e}");
    }
}
