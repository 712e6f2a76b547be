//! `latchctl login`: storing a reviewer's credential for later calls.
//!
//! Two ways in: a token file (`--token-file`, e.g. a static token for a first start), or the
//! company's identity provider through the OAuth 2.0 device authorization grant (RFC 8628,
//! `--oidc --issuer URL --client-id ID`): latchctl prints a URL and a code, the person approves
//! in a browser, latchctl polls the provider and receives the tokens. Either way the token is
//! checked with central (`WhoAmI`) before it is stored in `~/.config/latch/token` (0600); a
//! provider login also stores `login.json` (0600) beside it with who it is and when the token
//! expires, so later calls can say "log in again" instead of failing obscurely.
//!
//! This module never verifies tokens itself: central does.

use std::{io::Write, path::Path, time::Duration};

use latch_proto::v1::WhoAmIRequest;
use oauth2::{
    basic::{
        BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
    AuthType, ClientId, DeviceAuthorizationUrl, EndpointNotSet, EndpointSet, ExtraTokenFields,
    Scope, StandardDeviceAuthorizationResponse, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    client::{error_chain, io, CliError, Client},
    out::{relative, time, Out},
    token, Ctx,
};

/// Scopes asked for when none are given: an ID token with the person's e-mail and name.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

/// `latchctl login` flags.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Log in through the identity provider (device authorization grant) instead of storing
    /// the token of --token-file.
    #[arg(long, requires_all = ["issuer", "client_id"])]
    pub oidc: bool,
    /// The provider's issuer URL (as in central's `[oidc] issuer`).
    #[arg(long, requires = "oidc")]
    pub issuer: Option<String>,
    /// The OAuth client id registered for latchctl at the provider (a public client with the
    /// device authorization grant).
    #[arg(long, requires = "oidc")]
    pub client_id: Option<String>,
    /// Scopes to ask for, repeatable [default: openid email profile].
    #[arg(long = "scope", requires = "oidc")]
    pub scopes: Vec<String>,
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// Runs `latchctl login`.
pub async fn run(ctx: &Ctx, out: Out, args: LoginArgs) -> Result<(), CliError> {
    if args.oidc {
        let issuer = args.issuer.unwrap_or_default();
        let client_id = args.client_id.unwrap_or_default();
        let scopes = if args.scopes.is_empty() {
            DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()
        } else {
            args.scopes
        };
        return device_login(ctx, out, &issuer, &client_id, &scopes).await;
    }
    let file = ctx.token_file.clone().ok_or_else(|| {
        CliError::Usage(
            "login needs --token-file FILE (the token to store) or --oidc --issuer URL --client-id ID"
                .into(),
        )
    })?;
    let token = token::read_token(&file)?;
    let who = whoami(ctx, &token).await?;
    let path = token::store_token(&token)?;
    // A provider session describes another token now.
    if let Some(p) = token::session_path() {
        let _ = std::fs::remove_file(p);
    }
    if out.json {
        out.json_line(&json!({"subject": who.subject, "role": who.role, "stored": path}));
    } else {
        println!(
            "logged in to {} as {} ({}); token stored in {}",
            ctx.server,
            latch_central::text::term_safe(&who.subject),
            who.role,
            path.display()
        );
    }
    Ok(())
}

async fn whoami(ctx: &Ctx, token: &str) -> Result<latch_proto::v1::WhoAmIResponse, CliError> {
    let mut c = Client::connect_with(&ctx.server, token, &ctx.tls).await?;
    Ok(c.inner
        .who_am_i(c.req(WhoAmIRequest {}))
        .await?
        .into_inner())
}

/// The part of a discovery document a device login needs.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

/// The ID token that OpenID providers return next to the access token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct IdToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdToken {}

type Tokens = StandardTokenResponse<IdToken, BasicTokenType>;

type DeviceClient = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

fn provider_error(issuer: &str, what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Provider(format!("{issuer}: {what}: {e}"))
}

/// The `exp` of a JWT, for display and the expiry check; the signature is central's business.
fn jwt_expiry_ms(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Exp>(token)
        .ok()
        .map(|c| c.exp * 1000)
}

async fn device_login(
    ctx: &Ctx,
    out: Out,
    issuer: &str,
    client_id: &str,
    scopes: &[String],
) -> Result<(), CliError> {
    let issuer_url = latch_central::oidc::check_url("--issuer", issuer).map_err(CliError::Usage)?;
    if client_id.trim().is_empty() {
        return Err(CliError::Usage("--client-id is empty".into()));
    }
    let http = reqwest::Client::builder()
        // Following redirects would let a provider's answer send the device code elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| provider_error(issuer, "HTTP client", e))?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer_url.as_str().trim_end_matches('/')
    );
    let resp = http
        .get(&discovery_url)
        .send()
        .await
        .map_err(|e| provider_error(issuer, "discovery", e))?;
    if !resp.status().is_success() {
        return Err(provider_error(
            issuer,
            "discovery",
            format!("{discovery_url} answered HTTP {}", resp.status()),
        ));
    }
    let d: Discovery = resp
        .json()
        .await
        .map_err(|e| provider_error(issuer, "discovery document", e))?;
    if d.issuer != issuer {
        return Err(provider_error(
            issuer,
            "discovery",
            format!("the document names issuer '{}'", d.issuer),
        ));
    }
    let device_url = d.device_authorization_endpoint.ok_or_else(|| {
        provider_error(
            issuer,
            "discovery",
            "the provider offers no device authorization endpoint (RFC 8628)",
        )
    })?;
    for (key, u) in [
        ("device_authorization_endpoint", &device_url),
        ("token_endpoint", &d.token_endpoint),
    ] {
        latch_central::oidc::check_url(key, u)
            .map_err(|e| provider_error(issuer, "discovery", e))?;
    }
    let client: DeviceClient = oauth2::Client::new(ClientId::new(client_id.to_string()))
        .set_auth_type(AuthType::RequestBody)
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(device_url)
                .map_err(|e| provider_error(issuer, "device_authorization_endpoint", e))?,
        )
        .set_token_uri(
            TokenUrl::new(d.token_endpoint)
                .map_err(|e| provider_error(issuer, "token_endpoint", e))?,
        );
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(scopes.iter().map(|s| Scope::new(s.clone())))
        .request_async(&http)
        .await
        .map_err(|e| provider_error(issuer, "device authorization", error_chain(&e)))?;

    let uri = details.verification_uri().to_string();
    let code = details.user_code().secret().clone();
    // On standard error, so that --json output stays one JSON document.
    eprintln!(
        "To log in, open {}\nand enter the code {}",
        latch_central::text::term_safe(&uri),
        latch_central::text::term_safe(&code)
    );
    if let Some(complete) = details.verification_uri_complete() {
        eprintln!(
            "(or open {})",
            latch_central::text::term_safe(complete.secret())
        );
    }
    eprintln!("Waiting for the login to be approved...");

    let tokens: Tokens = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map_err(|e| match e {
            // The provider answered: the person denied, the code expired, the client is unknown.
            oauth2::RequestTokenError::ServerResponse(r) => CliError::LoginRefused(format!(
                "{issuer}: {}",
                latch_central::text::term_safe(&r.to_string())
            )),
            other => provider_error(issuer, "device login", error_chain(&other)),
        })?;
    // Central takes a JWT: the access token when the provider issues JWT access tokens for
    // central's audience, else the ID token.
    let access = tokens.access_token().secret().clone();
    let token = if latch_central::oidc::looks_like_jwt(&access) {
        access
    } else {
        tokens.extra_fields().id_token.clone().ok_or_else(|| {
            provider_error(
                issuer,
                "device login",
                "neither a JWT access token nor an ID token came back (is 'openid' among the scopes?)",
            )
        })?
    };
    let expires_at_unix_ms = jwt_expiry_ms(&token)
        .or_else(|| {
            tokens
                .expires_in()
                .map(|d| latch_central::clock::now_ms() + d.as_millis() as i64)
        })
        .unwrap_or(0);

    let who = whoami(ctx, &token).await?;
    let path = token::store_token(&token)?;
    let session = token::Session {
        issuer: issuer.to_string(),
        client_id: client_id.to_string(),
        server: ctx.server.clone(),
        subject: who.subject.clone(),
        email: who.email.clone(),
        expires_at_unix_ms,
        token_sha256: token::fingerprint(&token),
    };
    let session_file = token::session_path()
        .ok_or_else(|| CliError::Usage("neither XDG_CONFIG_HOME nor HOME is set".into()))?;
    write_private(
        &session_file,
        &serde_json::to_string_pretty(&session).unwrap_or_default(),
    )?;
    if out.json {
        out.json_line(
            &json!({"subject": who.subject, "email": who.email, "role": who.role,
            "groups": who.groups, "expires_at": time(expires_at_unix_ms), "stored": path}),
        );
    } else {
        println!(
            "logged in to {} as {} <{}> ({}); token stored in {}, expires {} ({})",
            ctx.server,
            latch_central::text::term_safe(&who.subject),
            latch_central::text::term_safe(&who.email),
            who.role,
            path.display(),
            time(expires_at_unix_ms),
            relative(expires_at_unix_ms)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_comes_from_the_token() {
        // {"alg":"RS256"}.{"exp":1700000000}.sig
        let t = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln";
        assert_eq!(jwt_expiry_ms(t), Some(1_700_000_000_000));
        assert_eq!(jwt_expiry_ms("not-a-jwt"), None);
    }

    #[test]
    fn sessions_describe_one_token() {
        use crate::token::fingerprint;
        assert_ne!(fingerprint("a"), fingerprint("b"));
        assert_eq!(fingerprint("a").len(), 64);
    }
}
