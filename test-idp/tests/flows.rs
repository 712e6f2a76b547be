//! The provider's protocols over real HTTP, as a browser and a device client drive them.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
use latch_test_idp::{TestIdp, DEVICE_CODE_GRANT};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const VERIFIER: &str = "a-long-enough-code-verifier-of-at-least-43-characters-0123456789";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

async fn idp() -> TestIdp {
    let idp = TestIdp::start().await.expect("start");
    idp.add_user("alice", "alice@example.com", &["sre-oncall"]);
    idp.add_client("console", None, &[REDIRECT]);
    idp.add_client("latchctl", None, &[]);
    idp
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn query(location: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(location)
        .expect("location is a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The login form's hidden request id.
fn request_id(html: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = html.find(marker).expect("hidden request field") + marker.len();
    html[start..].split('"').next().expect("value").to_string()
}

async fn authorize(idp: &TestIdp, extra: &[(&str, &str)]) -> reqwest::Response {
    let c = challenge(VERIFIER);
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", "console"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email profile"),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", c.as_str()),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    http()
        .get(format!("{}/authorize", idp.issuer()))
        .query(&params)
        .send()
        .await
        .expect("authorize")
}

async fn sign_in(idp: &TestIdp, request: &str, user: &str) -> reqwest::Response {
    http()
        .post(format!("{}/authorize", idp.issuer()))
        .form(&[("request", request), ("username", user)])
        .send()
        .await
        .expect("sign in")
}

async fn token(idp: &TestIdp, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(format!("{}/token", idp.issuer()))
        .form(form)
        .send()
        .await
        .expect("token");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

async fn verify(idp: &TestIdp, jwt: &str, audience: &str) -> Value {
    let set: JwkSet = http()
        .get(format!("{}/jwks", idp.issuer()))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let header = jsonwebtoken::decode_header(jwt).expect("header");
    let jwk = set
        .find(header.kid.as_deref().expect("kid"))
        .expect("published key");
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[audience]);
    v.set_issuer(&[idp.issuer()]);
    jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(jwk).expect("key"), &v)
        .expect("a valid token")
        .claims
}

#[tokio::test]
async fn discovery_names_every_endpoint() {
    let idp = idp().await;
    let d: Value = http()
        .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(d["issuer"], idp.issuer());
    for k in [
        "authorization_endpoint",
        "token_endpoint",
        "device_authorization_endpoint",
        "jwks_uri",
    ] {
        assert!(
            d[k].as_str().is_some_and(|u| u.starts_with(idp.issuer())),
            "{k}"
        );
    }
    let set: JwkSet = http()
        .get(d["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    assert_eq!(set.keys.len(), 2, "one RS256 and one ES256 key");
}

#[tokio::test]
async fn authorization_code_with_pkce() {
    let idp = idp().await;
    let page = authorize(&idp, &[]).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("name=\"username\"") && html.contains(">Sign in</button>"));
    let request = request_id(&html);

    let refused = sign_in(&idp, &request, "mallory").await;
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.expect("html").contains("No such user"));

    let done = sign_in(&idp, &request, "alice").await;
    assert_eq!(done.status(), 303);
    let location = done.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(location.starts_with(REDIRECT), "{location}");
    let q = query(&location);
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["iss"], idp.issuer());
    let code = q["code"].clone();

    let (status, body) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", "console"),
            (
                "code_verifier",
                "the-wrong-verifier-which-is-also-43-characters-long",
            ),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The failed attempt used the code up: start again.
    let request = request_id(&authorize(&idp, &[]).await.text().await.expect("html"));
    let location = sign_in(&idp, &request, "alice").await.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let code = query(&location)["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", "console"),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&idp, &form).await;
    assert_eq!(status, 200, "{body}");
    let id = verify(
        &idp,
        body["id_token"].as_str().expect("id_token"),
        "console",
    )
    .await;
    assert_eq!(id["nonce"], "n-1");
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["sub"], idp.subject_of("alice"));
    assert_eq!(id["groups"], serde_json::json!(["sre-oncall"]));
    let access = verify(
        &idp,
        body["access_token"].as_str().expect("access_token"),
        &idp.api_audience(),
    )
    .await;
    assert_eq!(access["preferred_username"], "alice");

    let (status, again) = token(&idp, &form).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant")),
        "codes are single-use"
    );

    let (status, refreshed) = token(
        &idp,
        &[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                body["refresh_token"].as_str().expect("refresh"),
            ),
            ("client_id", "console"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["access_token"].is_string());
}

#[tokio::test]
async fn authorization_requests_are_checked() {
    let idp = idp().await;
    // No PKCE, or not S256: back to the client with an error.
    for extra in [
        vec![("code_challenge", "")],
        vec![("code_challenge_method", "plain")],
        vec![("response_type", "token")],
    ] {
        let r = authorize(&idp, &extra).await;
        assert_eq!(r.status(), 303, "{extra:?}");
        let q = query(r.headers()["location"].to_str().expect("location"));
        assert!(
            q.contains_key("error") && q["state"] == "st-1",
            "{extra:?}: {q:?}"
        );
    }
    // A redirect URI that is not registered, or an unknown client: no redirect at all.
    for extra in [
        vec![("redirect_uri", "http://127.0.0.1:9/elsewhere")],
        vec![("client_id", "nobody")],
    ] {
        let r = authorize(&idp, &extra).await;
        assert_eq!(r.status(), 400, "{extra:?}");
        assert!(r.headers().get("location").is_none());
    }
}

#[tokio::test]
async fn device_authorization_grant() {
    let idp = idp().await;
    let start: Value = http()
        .post(format!("{}/device_authorization", idp.issuer()))
        .form(&[("client_id", "latchctl"), ("scope", "openid email")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("json");
    let device_code = start["device_code"].as_str().expect("device_code");
    let user_code = start["user_code"].as_str().expect("user_code");
    assert_eq!(
        start["verification_uri"],
        format!("{}/device", idp.issuer())
    );
    assert_eq!(idp.pending_user_codes(), vec![user_code.to_string()]);
    let poll = [
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
        ("client_id", "latchctl"),
    ];
    let (status, body) = token(&idp, &poll).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending"))
    );

    // The person's page, then their approval through it.
    let page = http()
        .get(format!("{}/device", idp.issuer()))
        .query(&[("user_code", user_code)])
        .send()
        .await
        .expect("device page")
        .text()
        .await
        .expect("html");
    assert!(page.contains(user_code) && page.contains(">Approve</button>"));
    let approved = http()
        .post(format!("{}/device", idp.issuer()))
        .form(&[
            ("user_code", user_code.to_lowercase().as_str()),
            ("username", "alice"),
            ("action", "approve"),
        ])
        .send()
        .await
        .expect("approve");
    assert_eq!(approved.status(), 200);

    let (status, body) = token(&idp, &poll).await;
    assert_eq!(status, 200, "{body}");
    let id = verify(
        &idp,
        body["id_token"].as_str().expect("id_token"),
        "latchctl",
    )
    .await;
    assert_eq!(id["preferred_username"], "alice");
    let (status, _) = token(&idp, &poll).await;
    assert_eq!(status, 400, "a device code is used once");
    assert!(idp.approve_device(user_code, "alice").is_err());
}

#[tokio::test]
async fn email_verified_is_said_per_user() {
    let idp = idp().await;
    idp.add_user("mallory", "alice@example.com", &["sre-oncall"]);
    idp.set_email_verified("mallory", false)
        .expect("a registered user");
    let alice = verify(&idp, &idp.token("alice").expect("token"), "latch").await;
    assert_eq!(alice["email_verified"], Value::Bool(true));
    let mallory = verify(&idp, &idp.token("mallory").expect("token"), "latch").await;
    assert_eq!(mallory["email"], "alice@example.com");
    assert_eq!(mallory["email_verified"], Value::Bool(false));
    idp.set_email_verified("mallory", true)
        .expect("a registered user");
    let mallory = verify(&idp, &idp.token("mallory").expect("token"), "latch").await;
    assert_eq!(mallory["email_verified"], Value::Bool(true));
    assert!(matches!(
        idp.set_email_verified("nobody", false),
        Err(latch_test_idp::IdpError::UnknownUser(n)) if n == "nobody"
    ));
}
