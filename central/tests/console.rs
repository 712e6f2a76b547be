//! The web console over real HTTP against a real central (SQLite), without a browser: sign-in,
//! redirects, CSRF, security headers, escaping of what workloads control, roles, the live queue,
//! decisions and revocations reaching the agent's stream.

mod common;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use common::{apply_rules, Agent, Env, ADMIN, ALICE, BOB, CAROL, HANG, VIEWER};
use latch_central::{config::WebConfig, Server};
use latch_test_idp::TestIdp;
use reqwest::{header, StatusCode};

/// A browser stand-in: keeps cookies, follows no redirects.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

struct Page {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let at = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))
            + marker.len();
        self.body[at..].split('"').next().unwrap_or("").to_string()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        let addr: SocketAddr = server.web_addr().expect("console configured");
        Browser {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, req: reqwest::RequestBuilder) -> Page {
        let res = tokio::time::timeout(
            HANG,
            req.header(header::COOKIE, self.cookie_header()).send(),
        )
        .await
        .expect("console hung")
        .expect("console request");
        let page = Page {
            status: res.status(),
            headers: res.headers().clone(),
            body: String::new(),
        };
        for c in page.set_cookies() {
            let c = cookie::Cookie::parse(c).expect("set-cookie");
            if c.max_age().is_some_and(|a| a.is_zero()) {
                self.cookies.remove(c.name());
            } else {
                self.cookies
                    .insert(c.name().to_string(), c.value().to_string());
            }
        }
        Page {
            body: res.text().await.expect("body"),
            ..page
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.finish(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.finish(req).await
    }

    /// Approves the request at `path` once.
    async fn approve(&mut self, path: &str, csrf: &str) -> Page {
        self.post(
            &format!("{path}/decide"),
            &[
                ("csrf", csrf),
                ("decision", "approve_once"),
                ("reason", "looks right"),
            ],
        )
        .await
    }

    async fn sign_in(&mut self, token: &str) {
        let login = self.get("/login?next=/requests").await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let csrf = login.csrf();
        let res = self
            .post(
                "/login/token",
                &[("csrf", &csrf), ("token", token), ("next", "/requests")],
            )
            .await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
        assert_eq!(res.location(), "/requests");
    }
}

fn with_console(env: &mut Env, public_url: Option<&str>) {
    env.config.web = Some(WebConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: public_url.map(str::to_string),
        ..WebConfig::default()
    });
}

async fn started(public_url: Option<&str>) -> (Env, Server) {
    let mut env = Env::sqlite().await;
    with_console(&mut env, public_url);
    let server = env.start().await;
    apply_rules(&server).await;
    (env, server)
}

#[tokio::test]
async fn signed_out_browsers_are_sent_to_the_login_page() {
    let (_env, server) = started(None).await;
    let mut b = Browser::new(&server);
    for path in [
        "/requests",
        "/requests/abc",
        "/grants",
        "/hosts",
        "/audit?kind=request.",
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            p.location().starts_with("/login?next=%2F"),
            "{path}: {}",
            p.location()
        );
    }
    let p = b.get("/").await;
    assert_eq!(p.location(), "/requests");
    // Forms and the event stream are refused outright rather than redirected.
    let p = b
        .post(
            "/requests/abc/decide",
            &[("decision", "deny"), ("reason", "x")],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    // A made-up session id is no session.
    b.cookies
        .insert("latch-session".into(), "made-up-session-id".into());
    let p = b.get("/requests").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let login = b.get("/login").await;
    assert!(login.body.contains("Sign in with an access token"));
    assert!(
        !login.body.contains("id=\"sso\""),
        "no identity provider configured, no SSO button"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let (_env, server) = started(None).await;
    let mut b = Browser::new(&server);
    let login = b.get("/login").await;
    b.sign_in(ALICE).await;
    let queue = b.get("/requests").await;
    let script = b.get("/static/console.js").await;
    let missing = b.get("/no/such/page").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        script.headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    for p in [&login, &queue, &script, &missing] {
        let csp = p.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        for needle in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(needle), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(p.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(p.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(p.headers[header::REFERRER_POLICY], "no-referrer");
    }
    assert_eq!(queue.headers[header::CACHE_CONTROL], "no-store");
    // No inline script or style anywhere: the policy would block it.
    for p in [&login, &queue] {
        assert!(!p.body.contains("<script>"), "{}", p.body);
        assert!(!p.body.contains("style="), "{}", p.body);
        assert!(p.body.contains("<script src=\"/static/console.js\""));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_use_safe_cookies_and_end_at_sign_out() {
    let (_env, server) = started(None).await;
    let mut b = Browser::new(&server);
    let login = b.get("/login").await;
    let csrf = login.csrf();
    // A token form without the login cookie's value is refused.
    let p = b
        .post(
            "/login/token",
            &[("csrf", "forged"), ("token", ALICE), ("next", "/requests")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post(
            "/login/token",
            &[("csrf", &csrf), ("token", "not-a-token"), ("next", "/")],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("not valid"), "{}", p.body);
    let p = b
        .post(
            "/login/token",
            &[
                ("csrf", &csrf),
                ("token", ALICE),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/requests", "never off-site after a login");
    let session = p
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("latch-session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http here: {session}");
    let queue = b.get("/requests").await;
    assert_eq!(queue.status, StatusCode::OK);
    assert!(
        queue.body.contains("title=\"alice\">alice@example.com<"),
        "{}",
        queue.body
    );
    // Sign out needs the session's CSRF token too.
    let p = b.post("/logout", &[("csrf", "wrong")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let stolen = b.cookies.get("latch-session").cloned().expect("session");
    let p = b.post("/logout", &[("csrf", &queue.csrf())]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    b.cookies.insert("latch-session".into(), stolen);
    let p = b.get("/requests").await;
    assert_eq!(
        p.status,
        StatusCode::SEE_OTHER,
        "a closed session stays closed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn https_public_url_makes_cookies_secure() {
    let (_env, server) = started(Some("https://latch.example.com")).await;
    assert_eq!(
        server.central().console_request_url("abc").as_deref(),
        Some("https://latch.example.com/requests/abc")
    );
    let mut b = Browser::new(&server);
    let login = b.get("/login").await;
    let c = login
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-latch-login="))
        .expect("login cookie");
    assert!(c.contains("Secure") && c.contains("HttpOnly"), "{c}");
    let csrf = login.csrf();
    let p = b
        .post(
            "/login/token",
            &[("csrf", &csrf), ("token", ALICE), ("next", "/requests")],
        )
        .await;
    let c = p
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-latch-session="))
        .expect("session cookie");
    assert!(c.contains("Secure"), "{c}");
    server.shutdown().await;
}

fn hostile(agent: &Agent, id: &str) -> latch_proto::v1::ApprovalRequest {
    let mut r = agent.request(id, "prod-db");
    r.argv = vec![
        "python3".into(),
        "<script>alert(1)</script>".into(),
        "javascript:alert(document.cookie)".into(),
        "\"><img src=x onerror=alert(2)>".into(),
        "it's".into(),
    ];
    r.exe = "/tmp/<b>x</b>".into();
    r.cgroup_path = "/ai.slice/\"quoted\".service".into();
    r.unit = "evil\u{202e}cod.service".into();
    r
}

#[tokio::test]
async fn what_workloads_control_renders_as_text() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(hostile(&agent, "r-hostile")).await;
    let mut b = Browser::new(&server);
    b.sign_in(ALICE).await;
    let list = b.get("/requests").await;
    let page = b.get(&format!("/requests/{}", accepted.approval_id)).await;
    assert_eq!(page.status, StatusCode::OK);
    for body in [&page.body, &list.body] {
        for raw in [
            "<script>alert",
            "<img",
            "<b>x",
            "\"><img",
            "href=\"javascript:",
            "\u{202e}",
        ] {
            assert!(!body.contains(raw), "{raw:?} reached the page");
        }
    }
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "javascript:alert(document.cookie)",
        "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;",
        "it's",
        "/tmp/&lt;b&gt;x&lt;/b&gt;",
        "/ai.slice/&quot;quoted&quot;.service",
        "evil\\u{202e}cod.service",
    ] {
        assert!(page.body.contains(escaped), "{escaped} missing");
    }
    // The only links on the page are the console's own.
    for href in page.body.split("href=\"").skip(1) {
        assert!(href.starts_with('/'), "link {href:.40}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn forms_without_the_session_csrf_token_change_nothing() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(agent.request("r-csrf", "prod-db")).await;
    let path = format!("/requests/{}", accepted.approval_id);
    let mut b = Browser::new(&server);
    b.sign_in(ALICE).await;
    let page = b.get(&path).await;
    assert!(page.body.contains("id=\"approve-once\""));
    for csrf in ["", "guessed", "A".repeat(43).as_str()] {
        let p = b
            .post(
                &format!("{path}/decide"),
                &[
                    ("csrf", csrf),
                    ("decision", "approve_once"),
                    ("reason", "forged"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "csrf {csrf:?}");
    }
    // Another session's token is no better.
    let mut other = Browser::new(&server);
    other.sign_in(ADMIN).await;
    let theirs = other.get(&path).await.csrf();
    let p = b
        .post(
            &format!("{path}/decide"),
            &[("csrf", &theirs), ("decision", "deny"), ("reason", "x")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let page = b.get(&path).await;
    assert!(
        page.body.contains("data-state=\"pending\""),
        "still pending"
    );

    // With it, the decision reaches the agent's stream.
    let p = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "approve_once"),
                ("reason", "checked with the owner"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), format!("{path}?done=decided"));
    let d = agent.next_decision().await;
    assert_eq!(d.request_id, "r-csrf");
    assert_eq!(d.decided_by, "alice");
    assert_eq!(d.reason, "checked with the owner");
    let page = b.get(p.location()).await;
    assert!(page.body.contains("data-state=\"approved\""));
    assert!(page.body.contains("Decision recorded"));
    assert!(!page.body.contains("id=\"decide\""), "no form once decided");
    server.shutdown().await;
}

#[tokio::test]
async fn viewers_see_no_buttons_and_are_refused_anyway() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(agent.request("r-viewer", "prod-db")).await;
    let path = format!("/requests/{}", accepted.approval_id);
    let mut b = Browser::new(&server);
    b.sign_in(VIEWER).await;
    let page = b.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    for button in [
        "approve-once",
        "approve-for",
        "id=\"deny\"",
        "id=\"decide\"",
    ] {
        assert!(!page.body.contains(button), "viewer sees {button}");
    }
    assert!(page.body.contains("Your role (viewer) cannot decide"));
    let p = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "approve_once"),
                ("reason", "I can see it"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("is not an approver"), "{}", p.body);
    let page = b.get(&path).await;
    assert!(page.body.contains("data-state=\"pending\""));
    // Grants show no revoke form either.
    let grants = b.get("/grants").await;
    assert!(!grants.body.contains(">Revoke<"));
    server.shutdown().await;
}

#[tokio::test]
async fn the_requester_may_deny_but_not_approve() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut r = agent.request("r-self", "prod-db");
    r.requester = "user:alice".into();
    let accepted = agent.submit(r).await;
    let path = format!("/requests/{}", accepted.approval_id);
    let mut b = Browser::new(&server);
    b.sign_in(ALICE).await;
    let page = b.get(&path).await;
    assert!(!page.body.contains("approve-once"));
    assert!(page.body.contains("id=\"deny\""));
    let p = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "approve_once"),
                ("reason", "mine"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("cannot approve it"), "{}", p.body);
    assert!(p.body.contains("id=\"error\""));
    server.shutdown().await;
}

#[tokio::test]
async fn grants_are_listed_and_revoked_through_the_engine() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(agent.request("r-grant", "prod-db")).await;
    let path = format!("/requests/{}", accepted.approval_id);
    let mut b = Browser::new(&server);
    b.sign_in(ALICE).await;
    let page = b.get(&path).await;
    let bad = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "approve_for"),
                ("reason", "maintenance"),
                ("for", "a while"),
                ("scope", "workload"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("for &#39;a while&#39;") || bad.body.contains("for 'a while'"),
        "{}",
        bad.body
    );
    let p = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "approve_for"),
                ("reason", "maintenance"),
                ("for", "2h"),
                ("scope", "workload"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let d = agent.next_decision().await;
    let grant = d.grant.expect("a grant");
    let grants = b.get("/grants").await;
    assert!(grants.body.contains(&grant.grant_id));
    assert!(grants.body.contains(">Revoke<"));
    let revoke = format!("/grants/{}/revoke", grant.grant_id);
    let p = b
        .post(&revoke, &[("csrf", "nope"), ("reason", "done")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post(&revoke, &[("csrf", &grants.csrf()), ("reason", " ")])
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let p = b
        .post(
            &revoke,
            &[
                ("csrf", &grants.csrf()),
                ("reason", "maintenance over"),
                ("close_connections", "1"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let r = tokio::time::timeout(HANG, agent.next_revocation())
        .await
        .expect("hung");
    assert_eq!(r.grant_id, grant.grant_id);
    assert_eq!(r.revoked_by, "alice");
    assert!(r.close_connections, "the box asked to cut its connections");
    let all = b.get("/grants?all=1").await;
    assert!(all.body.contains("revoked by alice: maintenance over"));
    server.shutdown().await;
}

#[tokio::test]
async fn hosts_and_audit_search() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.submit(agent.request("r-audit", "prod-db")).await;
    let mut b = Browser::new(&server);
    b.sign_in(VIEWER).await;
    let hosts = b.get("/hosts").await;
    assert!(hosts.body.contains("data-host-id=\"h1\""), "{}", hosts.body);
    assert!(hosts.body.contains("h1.example"));
    let audit = b.get("/audit?kind=request.&host_id=h1").await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(audit.body.contains("request.created"), "{}", audit.body);
    assert!(!audit.body.contains("rules.applied"), "filtered by kind");
    assert!(audit.body.contains("id=\"next-page\""));
    let bad = b.get("/audit?since=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("since &#39;yesterday&#39;") || bad.body.contains("since 'yesterday'"),
        "{}",
        bad.body
    );
    let bad = b.get("/audit?limit=0").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = b.get("/requests?state=sideways").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    server.shutdown().await;
}

/// Reads server-sent events until one named `name` whose data contains `needle`.
async fn next_event(
    res: &mut reqwest::Response,
    buf: &mut String,
    name: &str,
    needle: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event == name && data.contains(needle) {
                return data;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event with {needle}"))
            .expect("event stream")
            .expect("event stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_queue_stream_sends_a_snapshot_then_changes() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let first = agent.submit(agent.request("r-before", "prod-db")).await;
    let mut b = Browser::new(&server);
    b.sign_in(VIEWER).await;
    let mut res = b
        .http
        .get(format!("{}/events/requests", b.base))
        .header(header::COOKIE, b.cookie_header())
        .send()
        .await
        .expect("event stream");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("type")
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    let snapshot = next_event(&mut res, &mut buf, "snapshot", &first.approval_id).await;
    let rows: serde_json::Value = serde_json::from_str(&snapshot).expect("json");
    assert_eq!(rows[0]["state"], "pending");
    assert_eq!(rows[0]["target"], "10.20.1.5:5432/tcp");

    // A new request arrives on the open stream, then its resolution.
    let second = agent.submit(hostile(&agent, "r-after")).await;
    let data = next_event(&mut res, &mut buf, "request", &second.approval_id).await;
    let row: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(row["state"], "pending");
    assert_eq!(row["requester"], "unit:runner.service");
    let mut alice = Browser::new(&server);
    alice.sign_in(ALICE).await;
    let path = format!("/requests/{}", second.approval_id);
    let page = alice.get(&path).await;
    let p = alice
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "deny"),
                ("reason", "no"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let data = next_event(&mut res, &mut buf, "request", &second.approval_id).await;
    let row: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(row["state"], "denied");

    // Signed out, the stream is refused.
    let anonymous = b
        .http
        .get(format!("{}/events/requests", b.base))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    drop(res);
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown with the stream closed");
}

/// Opens `b`'s live queue and reads its snapshot.
async fn open_queue(b: &mut Browser, buf: &mut String) -> reqwest::Response {
    let mut res = b
        .http
        .get(format!("{}/events/requests", b.base))
        .header(header::COOKIE, b.cookie_header())
        .send()
        .await
        .expect("event stream");
    assert_eq!(res.status(), StatusCode::OK);
    next_event(&mut res, buf, "snapshot", "").await;
    res
}

/// Reads a live queue until it ends; fails if `never` shows up in it first.
async fn until_ended(res: &mut reqwest::Response, buf: &mut String, never: &str) {
    tokio::time::timeout(HANG, async {
        while let Ok(Some(chunk)) = res.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            assert!(
                !buf.contains(never),
                "the live queue sent {never} after its session ended: {buf}"
            );
        }
    })
    .await
    .expect("the live queue outlived its session");
}

#[tokio::test]
async fn signing_out_ends_the_live_queue() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut b = Browser::new(&server);
    b.sign_in(VIEWER).await;
    let csrf = b.get("/requests").await.csrf();
    let mut buf = String::new();
    let mut res = open_queue(&mut b, &mut buf).await;
    // Signed in, a new request reaches the open stream.
    let before = agent.submit(agent.request("r-signed-in", "prod-db")).await;
    next_event(&mut res, &mut buf, "request", &before.approval_id).await;

    let p = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    // Not identical to the one before, which still waits: it would be counted in that row.
    let mut different = agent.request("r-signed-out", "prod-db");
    different.destination.as_mut().expect("destination").port = 5433;
    let after = agent.submit(different).await;
    until_ended(&mut res, &mut buf, &after.approval_id).await;
    server.shutdown().await;
}

#[tokio::test]
async fn signing_out_on_another_replica_ends_the_live_queue() {
    let Some(mut env) = Env::postgres().await else {
        return;
    };
    with_console(&mut env, None);
    let (a, other) = (env.start().await, env.start().await);
    apply_rules(&a).await;
    let mut agent = Agent::connect(&a, "h1", vec![], vec![]).await;
    let mut b = Browser::new(&a);
    b.sign_in(VIEWER).await;
    let mut buf = String::new();
    let mut res = open_queue(&mut b, &mut buf).await;
    let before = agent.submit(agent.request("r-signed-in", "prod-db")).await;
    next_event(&mut res, &mut buf, "request", &before.approval_id).await;

    // The same browser, sent to the other replica by a load balancer, signs out there.
    let mut there = Browser::new(&other);
    there.cookies = b.cookies.clone();
    let csrf = there.get("/requests").await.csrf();
    let p = there.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    // Not identical to the one before, which still waits: it would be counted in that row.
    let mut different = agent.request("r-signed-out", "prod-db");
    different.destination.as_mut().expect("destination").port = 5433;
    let after = agent.submit(different).await;
    until_ended(&mut res, &mut buf, &after.approval_id).await;
    other.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_session_works_on_every_replica_until_signed_out_on_one() {
    let Some(mut env) = Env::postgres().await else {
        return;
    };
    with_console(&mut env, None);
    let (a, other) = (env.start_replica("a").await, env.start_replica("b").await);
    apply_rules(&a).await;
    let mut agent = Agent::connect(&a, "h1", vec![], vec![]).await;
    let mut here = Browser::new(&a);
    here.sign_in(ALICE).await;
    let csrf = here.get("/requests").await.csrf();

    // The same browser, sent to the other replica by a load balancer: signed in there as well,
    // with the same CSRF token.
    let mut there = Browser::new(&other);
    there.cookies = here.cookies.clone();
    let page = there.get("/requests").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("title=\"alice\">alice@example.com<"),
        "{}",
        page.body
    );
    assert_eq!(page.csrf(), csrf);
    // A decision there is alice's.
    let first = agent.submit(agent.request("r-there", "prod-db")).await;
    let p = there
        .approve(&format!("/requests/{}", first.approval_id), &csrf)
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.decided_by.as_str()),
        ("r-there", "alice")
    );

    // Signed out on the first replica, the session is refused on the other: pages send the
    // browser to sign in, forms decide nothing.
    let p = here.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let p = there.get("/requests").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(p.location().starts_with("/login?"), "{}", p.location());
    let second = agent.submit(agent.request("r-after", "prod-db")).await;
    let p = there
        .approve(&format!("/requests/{}", second.approval_id), &csrf)
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{}", p.body);
    let row = other
        .central()
        .request_row(&second.approval_id)
        .await
        .expect("read request")
        .expect("request exists");
    assert_eq!(row.state, latch_central::approval::State::Pending);
    other.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn an_open_event_stream_does_not_hold_up_shutdown() {
    let (_env, server) = started(None).await;
    let mut b = Browser::new(&server);
    b.sign_in(VIEWER).await;
    let mut res = b
        .http
        .get(format!("{}/events/requests", b.base))
        .header(header::COOKIE, b.cookie_header())
        .send()
        .await
        .expect("event stream");
    let mut buf = String::new();
    next_event(&mut res, &mut buf, "snapshot", "").await;
    tokio::time::timeout(HANG, server.shutdown())
        .await
        .expect("shutdown finished with a stream open");
    // The stream ended with the service.
    let ended = tokio::time::timeout(HANG, async {
        loop {
            match res.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the service");
}

/// Follows the console's redirect to the identity provider, signs in there as `user` through its
/// login form, and returns the callback URL (path and query) the provider sends the browser to.
async fn sign_in_at_provider(b: &mut Browser, next: &str, user: &str) -> String {
    let start = b.get(&format!("/login/oidc?next={next}")).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
    let authorize = url::Url::parse(start.location()).expect("authorization URL");
    let q: HashMap<String, String> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "SHA-256, base64url");
    assert!(q["state"].len() >= 16 && q["nonce"].len() >= 32, "{q:?}");
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{q:?}");
    assert_eq!(q["redirect_uri"], format!("{}/auth/callback", b.base));
    let idp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let form = idp
        .get(authorize.as_str())
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("form");
    let marker = "name=\"request\" value=\"";
    let at = form.find(marker).unwrap_or_else(|| panic!("{form}")) + marker.len();
    let request = form[at..].split('"').next().unwrap_or("").to_string();
    let mut submit = authorize.clone();
    submit.set_query(None);
    let done = idp
        .post(submit.as_str())
        .form(&[("request", request.as_str()), ("username", user)])
        .send()
        .await
        .expect("sign in at the provider");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let callback = url::Url::parse(done.headers()[header::LOCATION].to_str().expect("location"))
        .expect("callback URL");
    assert_eq!(format!("http://{}", callback.authority()), b.base);
    format!("{}?{}", callback.path(), callback.query().unwrap_or(""))
}

async fn with_provider() -> (Env, Server, TestIdp) {
    provider_on(Env::sqlite().await).await
}

async fn provider_on(mut env: Env) -> (Env, Server, TestIdp) {
    let idp = TestIdp::start().await.expect("identity provider");
    // Not the address of the static reviewer alice: the provider's alice is another person.
    idp.add_user("alice", "alice@idp.example.com", &["sre-oncall"]);
    idp.add_user("intern", "intern@example.com", &["interns"]);
    with_console(&mut env, None);
    env.config.oidc = Some(
        toml::from_str(&format!(
            "issuer = \"{}\"\naudiences = [\"latch\"]\nconsole_client_id = \"latch-console\"\n\
             [roles]\n\"sre-oncall\" = \"approver\"\n",
            idp.issuer()
        ))
        .expect("oidc config"),
    );
    let server = env.start().await;
    let web = server.web_addr().expect("console");
    idp.add_client(
        "latch-console",
        None,
        &[&format!("http://{web}/auth/callback")],
    );
    (env, server, idp)
}

#[tokio::test]
async fn signing_in_at_the_identity_provider_with_pkce_state_and_nonce() {
    let (_env, server, idp) = with_provider().await;
    let mut b = Browser::new(&server);
    let login = b.get("/login?next=/hosts").await;
    assert!(login.body.contains("id=\"sso\""), "{}", login.body);
    assert!(login.body.contains(idp.issuer()));
    let callback = sign_in_at_provider(&mut b, "/hosts", "alice").await;
    let p = b.get(&callback).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/hosts");
    let hosts = b.get("/hosts").await;
    assert_eq!(hosts.status, StatusCode::OK);
    assert!(
        hosts.body.contains("alice@idp.example.com"),
        "{}",
        hosts.body
    );
    assert!(hosts.body.contains(&idp.subject_of("alice")));
    assert!(hosts.body.contains(">approver<"));
    let known = server
        .central()
        .identity_by_email("alice@idp.example.com")
        .await
        .expect("look-up")
        .expect("the console's sign-in is remembered for look-ups by e-mail");
    assert_eq!(known.subject, idp.subject_of("alice"));

    // The same answer again is refused: a login is used once.
    let mut replay = Browser::new(&server);
    replay.cookies = b.cookies.clone();
    replay.cookies.remove("latch-session");
    let p = replay.get(&callback).await;
    assert_eq!(p.location(), "/login?failed=stale");

    // An answer delivered to another browser than the one that started the login is refused.
    let mut victim = Browser::new(&server);
    let mut attacker = Browser::new(&server);
    let callback = sign_in_at_provider(&mut attacker, "/requests", "alice").await;
    let p = victim.get(&callback).await;
    assert_eq!(p.location(), "/login?failed=stale");
    assert!(!victim.cookies.contains_key("latch-session"));

    // A forged state, and an answer claiming another issuer, are refused.
    let callback = sign_in_at_provider(&mut attacker, "/requests", "alice").await;
    let forged = callback.replace("state=", "state=x");
    assert_eq!(
        attacker.get(&forged).await.location(),
        "/login?failed=stale"
    );
    let callback = sign_in_at_provider(&mut attacker, "/requests", "alice").await;
    let mixed = callback.replace("iss=", "iss=https%3A%2F%2Fevil.example&x=");
    assert_eq!(
        attacker.get(&mixed).await.location(),
        "/login?failed=provider"
    );
    let p = attacker.get("/login?failed=provider").await;
    assert!(p.body.contains("did not sign you in"));

    // A person none of whose groups has a role gets no session.
    let mut intern = Browser::new(&server);
    let callback = sign_in_at_provider(&mut intern, "/requests", "intern").await;
    let p = intern.get(&callback).await;
    assert_eq!(p.location(), "/login?failed=no_role");
    assert!(!intern.cookies.contains_key("latch-session"));
    server.shutdown().await;
    idp.stop().await;
}

/// More logins started than the server once kept (10,000), all from one client that never
/// finishes them.
const FLOOD: usize = 10_001;

#[tokio::test]
async fn a_flood_of_started_sign_ins_refuses_nobody_else() {
    let (_env, server, idp) = with_provider().await;
    let base = Browser::new(&server).base;
    let flooder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let workers = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (flooder, url) = (flooder.clone(), format!("{base}/login/oidc?next=/requests"));
        tasks.spawn(async move {
            for _ in (w..FLOOD).step_by(workers) {
                let res = flooder.get(&url).send().await.expect("start a sign-in");
                assert_eq!(
                    res.status(),
                    StatusCode::SEE_OTHER,
                    "every start is answered"
                );
            }
        });
    }
    tokio::time::timeout(HANG, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("flooding task");
        }
    })
    .await
    .expect("the flood hung");

    // Another browser signs in at the provider as usual.
    let mut b = Browser::new(&server);
    let callback = sign_in_at_provider(&mut b, "/hosts", "alice").await;
    let p = b.get(&callback).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/hosts");
    let hosts = b.get("/hosts").await;
    assert_eq!(hosts.status, StatusCode::OK);
    assert!(
        hosts.body.contains("alice@idp.example.com"),
        "{}",
        hosts.body
    );
    server.shutdown().await;
    idp.stop().await;
}

/// The browser's login cookie, as a test can make it: signed with the key central derives from
/// its audit signing key.
fn sealed_login(env: &Env, state: &str, expires_at_ms: i64) -> String {
    use latch_central::web::pending::{LoginKey, PendingLogin};
    let signing = latch_central::chain::load_or_create_signing_key(&env.config.signing_key_path())
        .expect("audit signing key");
    PendingLogin {
        state: state.to_string(),
        return_to: "/hosts".into(),
        expires_at_ms,
    }
    .seal(&LoginKey::derive(&signing))
}

fn query_value(path_and_query: &str, name: &str) -> String {
    url::Url::parse(&format!("http://x{path_and_query}"))
        .expect("callback")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {path_and_query}"))
}

#[tokio::test]
async fn altered_forged_and_expired_login_cookies_are_refused() {
    let (env, server, idp) = with_provider().await;
    let mut b = Browser::new(&server);
    let callback = sign_in_at_provider(&mut b, "/hosts", "alice").await;
    let sealed = b.cookies.get("latch-oidc").cloned().expect("login cookie");
    let state = query_value(&callback, "state");

    // Its content changed (a longer life, another return path) under the old signature.
    let (body, tag) = sealed.rsplit_once('.').expect("signed");
    let (version, payload) = body.split_once('.').expect("versioned");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut login: serde_json::Value =
        serde_json::from_slice(&b64.decode(payload).expect("base64")).expect("json");
    login["exp"] = serde_json::json!(login["exp"].as_i64().expect("exp") + 86_400_000);
    login["next"] = serde_json::json!("/audit");
    let altered = format!(
        "{version}.{}.{tag}",
        b64.encode(serde_json::to_vec(&login).expect("json"))
    );
    // Made up from scratch, with a signature of the right shape.
    let forged = format!("{version}.{payload}.{}", b64.encode([7u8; 32]));
    for (what, value) in [("altered", altered), ("forged", forged)] {
        b.cookies.insert("latch-oidc".into(), value);
        let p = b.get(&callback).await;
        assert_eq!(p.location(), "/login?failed=forged", "{what}");
        assert!(!b.cookies.contains_key("latch-session"), "{what}");
        assert!(
            !b.cookies.contains_key("latch-oidc"),
            "{what}: the cookie is dropped"
        );
    }
    let page = b.get("/login?failed=forged").await;
    assert!(
        page.body
            .contains("its cookie was altered or not issued by this console"),
        "{}",
        page.body
    );

    // Signed with central's key, for this very answer, but past its time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    b.cookies
        .insert("latch-oidc".into(), sealed_login(&env, &state, now - 1));
    assert_eq!(b.get(&callback).await.location(), "/login?failed=stale");
    assert!(!b.cookies.contains_key("latch-session"));
    let page = b.get("/login?failed=stale").await;
    assert!(page.body.contains("That sign-in expired"), "{}", page.body);
    // The same, still in time: the answer is good, so only the expiry refused it above.
    b.cookies.insert(
        "latch-oidc".into(),
        sealed_login(&env, &state, now + 60_000),
    );
    let p = b.get(&callback).await;
    assert_eq!(p.location(), "/hosts", "{}", p.body);
    assert!(b.cookies.contains_key("latch-session"));
    server.shutdown().await;
    idp.stop().await;
}

#[tokio::test]
async fn a_provider_session_ends_with_its_id_token() {
    let (_env, server, idp) = with_provider().await;
    idp.set_token_lifetime(Duration::from_secs(2));
    let mut b = Browser::new(&server);
    let callback = sign_in_at_provider(&mut b, "/requests", "alice").await;
    let p = b.get(&callback).await;
    let cookie = p
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("latch-session="))
        .expect("session cookie");
    let max_age: u64 = cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok())
        .expect("Max-Age");
    assert!(max_age <= 2, "the cookie outlives the ID token: {cookie}");
    assert_eq!(b.get("/requests").await.status, StatusCode::OK);
    let mut stream = b
        .http
        .get(format!("{}/events/requests", b.base))
        .header(header::COOKIE, b.cookie_header())
        .send()
        .await
        .expect("event stream");
    let mut buf = String::new();
    next_event(&mut stream, &mut buf, "snapshot", "").await;
    let ended = tokio::time::timeout(HANG, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the session");
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let p = b.get("/requests").await;
        if p.status == StatusCode::SEE_OTHER {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
    idp.stop().await;
}

#[tokio::test]
async fn sessions_and_logins_work_on_postgresql() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let (_env, server, idp) = provider_on(env).await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(agent.request("r-pg", "prod-db")).await;
    let path = format!("/requests/{}", accepted.approval_id);

    // A provider sign-in (its login row is taken once), then a decision.
    let mut b = Browser::new(&server);
    let callback = sign_in_at_provider(&mut b, "/requests", "alice").await;
    assert_eq!(b.get(&callback).await.location(), "/requests");
    let mut replay = Browser::new(&server);
    replay.cookies = b.cookies.clone();
    assert_eq!(
        replay.get(&callback).await.location(),
        "/login?failed=stale"
    );
    let page = b.get(&path).await;
    let p = b
        .post(
            &format!("{path}/decide"),
            &[
                ("csrf", &page.csrf()),
                ("decision", "deny"),
                ("reason", "not now"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let d = agent.next_decision().await;
    assert_eq!(d.decided_by, idp.subject_of("alice"));

    // A token sign-in and its sign-out.
    let mut t = Browser::new(&server);
    t.sign_in(ALICE).await;
    let q = t.get("/requests?state=all").await;
    assert!(q.body.contains(&accepted.approval_id));
    let p = t.post("/logout", &[("csrf", &q.csrf())]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(t.get("/requests").await.status, StatusCode::SEE_OTHER);
    server.shutdown().await;
    idp.stop().await;
}

#[tokio::test]
async fn two_person_rules_need_two_approvers_in_the_console_too() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let accepted = agent.submit(agent.request("r-two", "two-person")).await;
    let path = format!("/requests/{}", accepted.approval_id);
    // Outside the approver groups: no buttons, and refused.
    let mut carol = Browser::new(&server);
    carol.sign_in(CAROL).await;
    let page = carol.get(&path).await;
    assert!(!page.body.contains("id=\"decide\""));
    assert!(
        page.body.contains("Only members of dba-oncall"),
        "{}",
        page.body
    );
    let p = carol.approve(&path, &page.csrf()).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    let mut alice = Browser::new(&server);
    alice.sign_in(ALICE).await;
    let page = alice.get(&path).await;
    assert!(page.body.contains("approvals 0/2"), "{}", page.body);
    let p = alice.approve(&path, &page.csrf()).await;
    assert_eq!(p.location(), format!("{path}?done=voted"));
    let page = alice.get(p.location()).await;
    assert!(page.body.contains("another approver is needed"));
    assert!(page.body.contains("data-state=\"pending\""));
    assert!(page.body.contains("approvals 1/2"));
    assert!(!page.body.contains("id=\"decide\""), "one vote per person");
    let p = alice.approve(&path, &page.csrf()).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);

    let mut bob = Browser::new(&server);
    bob.sign_in(BOB).await;
    let page = bob.get(&path).await;
    let p = bob.approve(&path, &page.csrf()).await;
    assert_eq!(p.location(), format!("{path}?done=decided"));
    let d = agent.next_decision().await;
    assert_eq!(d.request_id, "r-two");
    assert_eq!(d.decided_by, "bob");
    server.shutdown().await;
}

#[tokio::test]
async fn identical_requests_show_as_one_row_with_a_count_and_are_decided_together() {
    let (_env, server) = started(None).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let first = agent
        .submit(agent.request("m-1", "prod-db"))
        .await
        .approval_id;
    let second = agent
        .submit(agent.request("m-2", "prod-db"))
        .await
        .approval_id;
    let mut bob = Browser::new(&server);
    bob.sign_in(BOB).await;

    let queue = bob.get("/requests").await;
    assert!(
        queue
            .body
            .contains(&format!("data-approval-id=\"{first}\"")),
        "{}",
        queue.body
    );
    assert!(
        !queue
            .body
            .contains(&format!("data-approval-id=\"{second}\"")),
        "the request waiting with the first has no row: {}",
        queue.body
    );
    assert!(
        queue.body.contains("<td class=\"count\">2</td>"),
        "{}",
        queue.body
    );

    let path = format!("/requests/{first}");
    let page = bob.get(&path).await;
    assert!(page.body.contains("data-count=\"2\""), "{}", page.body);
    assert!(
        page.body.contains("A decision here decides all 2."),
        "{}",
        page.body
    );
    let member = bob.get(&format!("/requests/{second}")).await;
    assert!(
        member.body.contains("id=\"merged-into\""),
        "{}",
        member.body
    );
    assert!(member.body.contains(&format!("href=\"/requests/{first}\"")));
    assert!(
        !member.body.contains("id=\"decide\""),
        "decided only with the first"
    );

    let p = bob.approve(&path, &page.csrf()).await;
    assert_eq!(p.location(), format!("{path}?done=decided"));
    let mut decided = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let d = agent.next_decision().await;
        decided.insert(d.request_id.clone(), d.decided_by.clone());
    }
    assert_eq!(
        decided.into_iter().collect::<Vec<_>>(),
        [
            ("m-1".to_string(), "bob".to_string()),
            ("m-2".to_string(), "bob".to_string())
        ]
    );
    let page = bob.get(&path).await;
    assert!(
        page.body
            .contains("1 identical requests were resolved with this one."),
        "{}",
        page.body
    );
    server.shutdown().await;
}
