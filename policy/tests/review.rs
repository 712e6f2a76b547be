//! Review chains in the rules language: what a rule may say about who decides, and how each
//! mistake is refused with the rule, the line and the reason.

use policy::{review::check_expression, AutoStep, PolicyError, ReviewStep, RuleSet, Verdict};

fn file(rule_tail: &str) -> String {
    format!(
        "workloads:\n  - name: w\n    cgroups: [\"/w.slice\"]\nrules:\n  - name: deploy\n    workload: w\n    on: connect\n    to: [\"10.0.0.0/8\"]\n{rule_tail}"
    )
}

fn refuse(text: &str) -> PolicyError {
    match RuleSet::parse("rules.yaml", text) {
        Ok(_) => panic!("accepted a bad file:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn a_chain_with_checks_is_kept_in_order() {
    let set = RuleSet::parse(
        "rules.yaml",
        &file(
            "    action: approve\n    review: [policy, human]\n    policy:\n      - name: deploy-job\n        approve_if: 'parent.exe == \"/usr/bin/deploy\" && destination.port == 5432'\n      - name: no-root\n        deny_if: 'process.uid == 0 || process.argv.exists(a, a == \"--force\")'\n",
        ),
    )
    .expect("valid");
    let r = &set.rules[0];
    assert_eq!(r.review, vec![ReviewStep::Policy, ReviewStep::Human]);
    assert_eq!(
        r.checks
            .iter()
            .map(|c| (c.name.as_str(), c.verdict))
            .collect::<Vec<_>>(),
        [("deploy-job", Verdict::Approve), ("no-root", Verdict::Deny)]
    );
    let auto = RuleSet::parse(
        "rules.yaml",
        &file("    action: approve\n    review: [policy, auto, human]\n    policy:\n      - {name: a, deny_if: 'process.uid == 0'}\n    auto: {reviewer: risk-bot, advisory: true}\n"),
    )
    .expect("valid");
    assert_eq!(
        auto.rules[0].review,
        vec![ReviewStep::Policy, ReviewStep::Auto, ReviewStep::Human]
    );
    assert_eq!(
        auto.rules[0].auto,
        Some(AutoStep {
            reviewer: "risk-bot".into(),
            advisory: true
        })
    );
    // A rule that says nothing is decided by people alone.
    let plain = RuleSet::parse("rules.yaml", &file("    action: approve\n")).expect("valid");
    assert_eq!(plain.rules[0].review, vec![ReviewStep::Human]);
    assert!(plain.rules[0].checks.is_empty());
}

#[test]
fn each_mistake_is_refused_with_its_reason() {
    let cases = [
        (
            "    action: approve\n    review: [policy, robot]\n",
            "unknown variant `robot`",
        ),
        (
            "    action: approve\n    review: [policy, human]\n",
            "`review` has `policy` but the rule has no `policy` checks",
        ),
        (
            "    action: approve\n    policy:\n      - {name: a, approve_if: 'true'}\n",
            "`policy` checks need `review: [policy, human]`",
        ),
        (
            "    action: approve\n    review: [human]\n    policy:\n      - {name: a, approve_if: 'true'}\n",
            "`review` has no `policy` step",
        ),
        (
            "    action: approve\n    review: [human, policy]\n    policy:\n      - {name: a, approve_if: 'true'}\n",
            "`review` is out of order",
        ),
        (
            "    action: approve\n    review: [human, human]\n",
            "`review` names `human` twice",
        ),
        ("    action: approve\n    review: []\n", "`review` is empty"),
        (
            "    action: deny\n    review: [human]\n",
            "`review` only applies to `action: approve`",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: 'true', deny_if: 'false'}\n",
            "`policy[0]` ('a'): give exactly one of `approve_if` and `deny_if`",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a}\n",
            "give exactly one of",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: 'process.uid =='}\n",
            "`policy[0]` ('a'): the expression does not parse",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: 'secrets.token == \"x\"'}\n",
            "the expression reads `secrets`, which a check cannot see",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: '  '}\n",
            "the expression is empty",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: 'a b', approve_if: 'true'}\n",
            "a check's name is 1 to 63 letters",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: 'true'}\n      - {name: a, deny_if: 'true'}\n",
            "`policy[1]` ('a'): the name is used twice",
        ),
        (
            "    action: approve\n    review: [policy]\n    policy:\n      - {name: a, approve_if: 'true', when: 'x'}\n",
            "unknown field `when`",
        ),
        (
            "    action: approve\n    review: [auto, human]\n",
            "`review` has `auto` but the rule names no `auto.reviewer`",
        ),
        (
            "    action: approve\n    auto: {reviewer: bot}\n",
            "`auto` needs `review: [auto, human]`",
        ),
        (
            "    action: approve\n    review: [human]\n    auto: {reviewer: bot}\n",
            "the rule has `auto` but `review` has no `auto` step",
        ),
        (
            "    action: approve\n    review: [auto, policy]\n    auto: {reviewer: bot}\n    policy:\n      - {name: a, approve_if: 'true'}\n",
            "`review` is out of order",
        ),
        (
            "    action: approve\n    review: [auto]\n    auto: {reviewer: bot, advisory: true}\n",
            "`auto.advisory` recommends to people, but `review` has no `human` step",
        ),
        (
            "    action: approve\n    review: [auto, human]\n    auto: {reviewer: 'a bot'}\n",
            "`auto.reviewer` 'a bot' is not a reviewer name",
        ),
        (
            "    action: approve\n    review: [auto, human]\n    auto: {reviewer: bot, model: x}\n",
            "unknown field `model`",
        ),
        (
            "    action: approve\n    approvers: {count: 2}\n    review: [auto, human]\n    auto: {reviewer: bot}\n",
            "`auto` may decide alone, but `approvers.count` is 2",
        ),
        (
            "    action: approve\n    approvers: {count: 2}\n    review: [policy, human]\n    policy:\n      - {name: a, approve_if: 'true'}\n",
            "`policy[0]` ('a'): `approve_if` would approve alone",
        ),
        (
            "    action: approve\n    on_timeout: allow\n    review: [policy]\n    policy:\n      - {name: a, deny_if: 'process.uid == 0'}\n",
            "`on_timeout: allow` in a chain without `human`",
        ),
        (
            "    action: approve\n    on_timeout: allow\n    review: [auto]\n    auto: {reviewer: bot}\n",
            "`on_timeout: allow` in a chain without `human`",
        ),
    ];
    for (tail, want) in cases {
        let e = refuse(&file(tail));
        let text = e.to_string();
        assert!(text.contains(want), "{want:?} not in {text:?} for:\n{tail}");
        if !want.starts_with("unknown") {
            let p = &e.problems[0];
            assert_eq!(p.subject.as_deref(), Some("rule 'deploy'"), "{text}");
            assert_eq!(p.line, Some(5), "{text}");
        }
    }
}

#[test]
fn expressions_read_only_the_request() {
    for ok in [
        "op == 'exec' && exec.path == '/usr/bin/kubectl' && process.argv.exists(a, a == 'get')",
        "destination.address.startsWith('10.') && destination.port in [5432, 6432]",
        "'deploy' in host.labels && host.labels['deploy'] == 'yes'",
        "ancestors.exists(x, x.exe == '/usr/bin/make') && workload == 'w' && rule == 'r'",
        "has(env.SESSION) && env.SESSION.matches('^s-[0-9]+$') && process.user == 'ci'",
    ] {
        assert_eq!(check_expression(ok), Ok(()), "{ok}");
    }
    let long = format!("{}true", "true && ".repeat(600));
    let e = check_expression(&long).expect_err("too long");
    assert!(e.contains("at most 4096"), "{e}");
}

#[test]
fn a_macro_binds_only_its_own_name() {
    assert_eq!(
        check_expression("process.argv.all(word, word != '--force')"),
        Ok(())
    );
    // The name a macro binds is its own; what it ranges over is still checked.
    let e = check_expression("secret.exists(a, a == 1)").expect_err("unknown root");
    assert!(e.contains("`secret`") && !e.contains("`a`"), "{e}");
}

#[test]
fn the_example_rules_parse_with_their_chain() {
    let set = RuleSet::parse(
        "examples/rules.yaml",
        include_str!("../../examples/rules.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let db = set
        .rules
        .iter()
        .find(|r| r.name == "prod-db-needs-a-human")
        .expect("the example's database rule");
    assert_eq!(db.review, vec![ReviewStep::Policy, ReviewStep::Human]);
    assert_eq!(db.checks.len(), 1);
}

mod robustness {
    use proptest::prelude::*;

    /// Pieces of CEL and of what is not CEL, so that generated text reaches deep into the
    /// parser instead of failing at the first character.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("process".to_string()),
            Just("env".to_string()),
            Just(".".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("&&".to_string()),
            Just("||".to_string()),
            Just("==".to_string()),
            Just("!".to_string()),
            Just("?".to_string()),
            Just(":".to_string()),
            Just(",".to_string()),
            Just("exists(a, a".to_string()),
            Just("matches(".to_string()),
            Just("0x".to_string()),
            Just("1e999".to_string()),
            Just("b'".to_string()),
            Just("r\"".to_string()),
            Just("\"\"\"".to_string()),
            Just("\\u".to_string()),
            Just("-9223372036854775809".to_string()),
            Just("18446744073709551616u".to_string()),
            "[ -~]{0,6}",
            "\\PC{0,3}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: a clear refusal or an accepted expression, never a panic.
        #[test]
        fn any_text_is_checked_without_a_panic(parts in proptest::collection::vec(token(), 0..24)) {
            let text = parts.join(" ");
            if let Err(e) = policy::review::check_expression(&text) {
                prop_assert!(!e.is_empty());
            }
        }
    }
}
