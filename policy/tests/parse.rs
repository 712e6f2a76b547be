//! The rules language: what is accepted and how each kind of bad input is refused.

use policy::{Action, Matcher, PathPattern, PolicyError, PortRange, Protocol, RuleSet};

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
        } => {
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
        Matcher::Exec { paths } => {
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
