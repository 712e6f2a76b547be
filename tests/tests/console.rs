//! The web console in a real browser: headless Chromium signs in at an OpenID provider through
//! its login form, watches a held `connect()` appear in the live queue, opens it and approves it;
//! the paused workload continues and its connect succeeds. A viewer sees no buttons, and a
//! decision the viewer posts anyway is refused.
//!
//! Real binaries throughout: `latch-central` with `[web]` and `[oidc]`, `latch-agent` linked to
//! it, the kernel holding a real process in a test cgroup, and the test identity provider over
//! real HTTP.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use fantoccini::{Client, Locator};
use latch_proto::v1::{DecideRequest, DecisionKind, RequestState};
use latch_test_idp::TestIdp;
use latch_tests::{
    browser::{self, Browser},
    outcome, patience, privileged, probe, spawn_in,
    stack::{apply, free_port, wait_listening, wait_request, Extra, Stack, ALICE},
    wait_state, TestCgroup,
};

/// Arguments of the held process that must reach the page as text only.
const HOSTILE_ARGS: [&str; 3] = [
    "<script>alert(1)</script>",
    "javascript:alert(2)",
    "\"quoted\" & 'single'",
];

async fn url_of(c: &Client) -> String {
    c.current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default()
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(patience())
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no {css} on {}: {e}", url_of(c).await),
    }
}

/// Waits until the element `css` exists and its text satisfies `pred`; returns the text.
async fn wait_text(c: &Client, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + patience();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if pred(&t) {
                    return t;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {what} on {}",
            url_of(c).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens the console, follows it to the identity provider's login form, signs in as `user` and
/// returns to the request queue.
async fn sign_in(c: &Client, console: &str, user: &str) {
    c.goto(&format!("{console}/requests"))
        .await
        .expect("open the console");
    wait_for(c, "#sso").await.click().await.expect("click SSO");
    let name = wait_for(c, "#username").await;
    assert!(
        !url_of(c).await.starts_with(console),
        "the login form is the provider's"
    );
    name.send_keys(user).await.expect("type the user name");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");
    wait_for(c, "#queue").await;
    assert_eq!(url_of(c).await, format!("{console}/requests"));
}

/// Waits for the live queue to show the held request of process `pid`'s connect to `target`
/// and returns its approval id.
async fn wait_row(c: &Client, target: &str) -> String {
    let deadline = Instant::now() + patience();
    loop {
        for row in c
            .find_all(Locator::Css("#pending tr[data-state=pending]"))
            .await
            .expect("rows")
        {
            if row.text().await.unwrap_or_default().contains(target) {
                return row
                    .attr("data-approval-id")
                    .await
                    .expect("attribute")
                    .expect("approval id");
            }
        }
        assert!(
            Instant::now() < deadline,
            "the held request never appeared in the live queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_reviewer_approves_a_held_connect_in_the_browser_and_a_viewer_cannot() {
    if !privileged() {
        return;
    }
    let Some(programs) = browser::installed() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());

    let idp = TestIdp::start().await.expect("identity provider");
    idp.add_user("carol", "carol@example.com", &["sre-oncall"]);
    idp.add_user("vic", "vic@example.com", &["engineering"]);
    let web_port = free_port();
    let console = format!("http://127.0.0.1:{web_port}");
    idp.add_client(
        "latch-console",
        None,
        &[&format!("{console}/auth/callback")],
    );
    let cg = TestCgroup::new();
    let mut stack = Stack::start_extra(
        &cg,
        &Extra {
            central: format!(
                "[web]\nlisten = \"127.0.0.1:{web_port}\"\n\
                 [oidc]\nissuer = \"{issuer}\"\naudiences = [\"latch\"]\nconsole_client_id = \"latch-console\"\n\
                 [oidc.roles]\n\"sre-oncall\" = \"approver\"\n\"engineering\" = \"viewer\"\n",
                issuer = idp.issuer()
            ),
            ..Extra::default()
        },
    )
    .await;
    wait_listening(&mut stack.central, web_port, "the web console");
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();

    let b = Browser::start(&programs).await;
    let c = &b.client;
    sign_in(c, &console, "carol").await;
    wait_text(c, "#me", "carol's address", |t| t == "carol@example.com").await;
    wait_text(c, "#live-status", "a live stream", |t| t == "live").await;
    let queue = c.find(Locator::Css("#pending")).await.expect("queue");

    // A held connect appears in the open page, without a reload.
    let mut args = vec!["connect", target.as_str()];
    args.extend(HOSTILE_ARGS);
    let child = spawn_in(&cg.path, &probe(), &args);
    let pid = child.id();
    let approval_id = wait_row(c, &target).await;
    wait_state(pid, 'T');
    queue
        .text()
        .await
        .expect("the queue element from before is still in the document: no reload");

    // Its page shows the context, the workload's text as text.
    c.find(Locator::Css(&format!(
        "#pending tr[data-approval-id=\"{approval_id}\"] a.open"
    )))
    .await
    .expect("review link")
    .click()
    .await
    .expect("open the request");
    wait_for(c, "#decide").await;
    assert!(
        wait_text(c, "#target", "the destination", |t| t.contains(&target))
            .await
            .contains("/tcp")
    );
    wait_text(c, "#rule", "the rule", |t| t.starts_with("db ")).await;
    wait_text(c, "#host", "the host", |t| t == stack.host).await;
    let argv: Vec<String> = {
        let mut v = Vec::new();
        for li in c
            .find_all(Locator::Css("#argv li code"))
            .await
            .expect("argv")
        {
            v.push(li.text().await.expect("text"));
        }
        v
    };
    for a in HOSTILE_ARGS {
        assert!(
            argv.iter().any(|x| x == a),
            "{a:?} not shown as text: {argv:?}"
        );
    }
    assert!(
        c.find_all(Locator::Css("#argv script, #argv a, #process a"))
            .await
            .expect("query")
            .is_empty(),
        "workload text became markup"
    );
    assert!(c.get_alert_text().await.is_err(), "a script ran");

    // Approve with a reason: the paused process continues and its connect succeeds.
    wait_for(c, "#reason")
        .await
        .send_keys("checked with the owner")
        .await
        .expect("type a reason");
    wait_for(c, "#approve-once")
        .await
        .click()
        .await
        .expect("approve");
    wait_text(c, "#notice", "the confirmation", |t| {
        t.contains("Decision recorded")
    })
    .await;
    wait_text(c, "#state", "approved", |t| t == "approved").await;
    assert_eq!(
        outcome(child)["ok"],
        true,
        "the approved connect() succeeds"
    );
    wait_text(c, "#decision", "who decided", |t| {
        t.contains(&idp.subject_of("carol")) && t.contains("checked with the owner")
    })
    .await;

    // A viewer: no buttons, and a decision posted anyway is refused.
    wait_for(c, "#logout")
        .await
        .click()
        .await
        .expect("sign out");
    wait_for(c, "#sso").await;
    sign_in(c, &console, "vic").await;
    wait_text(c, "#role", "the viewer role", |t| t == "viewer").await;
    wait_text(c, "#live-status", "a live stream", |t| t == "live").await;
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    let approval_id = wait_row(c, &target).await;
    c.goto(&format!("{console}/requests/{approval_id}"))
        .await
        .expect("open the request");
    wait_text(c, "#why-not", "why not", |t| t.contains("viewer")).await;
    for button in ["#decide", "#approve-once", "#approve-for", "#deny"] {
        assert!(
            c.find_all(Locator::Css(button))
                .await
                .expect("query")
                .is_empty(),
            "the viewer sees {button}"
        );
    }
    let csrf = c
        .find(Locator::Css("input[name=csrf]"))
        .await
        .expect("the session's CSRF field (sign-out form)")
        .attr("value")
        .await
        .expect("attribute")
        .expect("value");
    let session = c
        .get_all_cookies()
        .await
        .expect("cookies")
        .into_iter()
        .find(|k| k.name() == "latch-session")
        .expect("the viewer's session cookie");
    assert_eq!(session.http_only(), Some(true));
    let refused = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{console}/requests/{approval_id}/decide"))
        .header("cookie", format!("latch-session={}", session.value()))
        .form(&[
            ("csrf", csrf.as_str()),
            ("decision", "approve_once"),
            ("reason", "viewers cannot"),
        ])
        .send()
        .await
        .expect("post as the viewer");
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let body = refused.text().await.expect("body");
    assert!(body.contains("is not an approver"), "{body}");
    let mut alice = stack.reviewer(ALICE).await;
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    assert!(
        rec.votes.is_empty(),
        "the viewer's decision was not counted"
    );
    wait_state(pid, 'T');
    alice
        .decide(DecideRequest {
            approval_id: rec.approval_id,
            kind: DecisionKind::Deny as i32,
            duration_seconds: 0,
            scope: 0,
            reason: "end of test".into(),
        })
        .await
        .expect("deny");
    assert_eq!(outcome(child)["errno"], 1);
    // The queue the viewer is watching drops the resolved request.
    let deadline = Instant::now() + patience();
    c.goto(&format!("{console}/requests")).await.expect("queue");
    wait_text(c, "#live-status", "a live stream", |t| t == "live").await;
    while !c
        .find_all(Locator::Css(&format!(
            "#pending tr[data-approval-id=\"{approval_id}\"]"
        )))
        .await
        .expect("rows")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the denied request stayed in the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.close().await;
    idp.stop().await;
}
