//! Automatic reviewer services, the channel: each request of a rule whose review has `auto` is
//! posted, signed, to the reviewer the rule names (`[[auto_reviewers]]`), and the answer, once
//! its signature and its request id verify, goes to the engine
//! ([`Central::take_auto_answer`]). A timeout, an HTTP error, an answer whose signature does not
//! verify, that does not parse, or that names another request is a failure: it escalates, and
//! counts towards the reviewer's circuit breaker. The wire format is [`crate::auto_protocol`].
//!
//! Must not decide anything itself, speak SQL, or import another channel.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, Semaphore};

use crate::{
    approval::{RequestRow, State},
    auto::Answer,
    auto_protocol::{self as protocol, ReviewAnswer, ReviewRequest},
    config::Config,
    engine::Central,
};

/// Reviews in flight at once.
const CONCURRENT: usize = 32;

/// A reviewer's settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AutoReviewError {
    /// Its secret file.
    #[error("auto_reviewers '{name}': reading the secret file {path}: {source}")]
    Secret {
        /// The reviewer.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its secret is too short to sign with.
    #[error(
        "auto_reviewers '{name}': the secret in {path} is {len} bytes; at least {} are needed",
        protocol::MIN_SECRET
    )]
    ShortSecret {
        /// The reviewer.
        name: String,
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The HTTP client.
    #[error("auto_reviewers: building the HTTP client: {0}")]
    Client(reqwest::Error),
    /// Its settings.
    #[error("{0}")]
    Invalid(String),
}

struct Reviewer {
    name: String,
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
}

/// The configured reviewers.
pub struct AutoReviewers {
    by_name: HashMap<String, Reviewer>,
    http: reqwest::Client,
}

/// The queue of requests to post, for [`run`].
pub struct Jobs(mpsc::UnboundedReceiver<String>);

impl AutoReviewers {
    /// Reads the reviewers' secrets. Returns the queue's sender (for the engine) and its
    /// receiver (for [`run`]) when any reviewer is configured.
    #[allow(clippy::type_complexity)]
    pub fn start(
        config: &Config,
    ) -> Result<(AutoReviewers, Option<(mpsc::UnboundedSender<String>, Jobs)>), AutoReviewError>
    {
        let mut by_name = HashMap::new();
        for c in &config.auto_reviewers {
            let text = std::fs::read(&c.secret_file).map_err(|source| AutoReviewError::Secret {
                name: c.name.clone(),
                path: c.secret_file.clone(),
                source,
            })?;
            let secret = text.trim_ascii().to_vec();
            if let Some(other) = by_name.values().find(|o: &&Reviewer| o.secret == secret) {
                // A shared secret would let one reviewer's answer pass for another's.
                return Err(AutoReviewError::Invalid(format!(
                    "auto_reviewers '{}' and '{}' have the same secret; each reviewer needs its own",
                    other.name, c.name
                )));
            }
            if secret.len() < protocol::MIN_SECRET {
                return Err(AutoReviewError::ShortSecret {
                    name: c.name.clone(),
                    path: c.secret_file.clone(),
                    len: secret.len(),
                });
            }
            by_name.insert(
                c.name.clone(),
                Reviewer {
                    name: c.name.clone(),
                    url: c.url.trim().to_string(),
                    secret,
                    timeout: c.timeout().map_err(AutoReviewError::Invalid)?,
                },
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("latch-central/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            // The reviewer answers itself; a redirect would send the request elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(AutoReviewError::Client)?;
        let queue = (!by_name.is_empty()).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Jobs(rx))
        });
        Ok((AutoReviewers { by_name, http }, queue))
    }
}

/// Posts queued requests to their reviewers until the queue closes.
pub async fn run(central: Arc<Central>, reviewers: Arc<AutoReviewers>, jobs: Jobs) {
    let Jobs(mut rx) = jobs;
    let permits = Arc::new(Semaphore::new(CONCURRENT));
    let mut running = tokio::task::JoinSet::new();
    // What waited for a reviewer when central last stopped is asked about again (a request
    // whose rule has no `auto` step is passed over by `review`). The first answer taken on a
    // request is its only one, so two replicas starting together do not decide twice.
    let mut backlog = match central.unreviewed_pending().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "finding requests that wait for an automatic review failed; they go on without one");
            Vec::new()
        }
    };
    if !backlog.is_empty() {
        tracing::info!(
            requests = backlog.len(),
            "asking automatic reviewers again about requests that waited for them"
        );
    }
    backlog.reverse();
    loop {
        let id = match backlog.pop() {
            Some(id) => id,
            None => match rx.recv().await {
                Some(id) => id,
                None => return,
            },
        };
        while running.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let c = central.clone();
        let r = reviewers.clone();
        running.spawn(async move {
            review(&c, &r, &id).await;
            drop(permit);
        });
    }
}

/// Asks the request's reviewer and hands its answer (or the failure) to the engine.
async fn review(central: &Central, reviewers: &AutoReviewers, approval_id: &str) {
    // Read once: what the reviewer is asked and which reviewer come from the same row.
    let row = match central.request_row(approval_id).await {
        // Past its deadline it is the expiry's: asking would only count against the reviewer.
        Ok(Some(row))
            if row.state == State::Pending && row.expires_at_ms > crate::clock::now_ms() =>
        {
            row
        }
        Ok(_) => return,
        Err(e) => {
            tracing::error!(approval_id, error = %e, "reading a request for its automatic reviewer failed; it goes on without the reviewer");
            return;
        }
    };
    let step = match central.auto_step(&row).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(approval_id, error = %e, "reading a request for its automatic reviewer failed; it goes on without the reviewer");
            return;
        }
    };
    let name = step.auto.reviewer.clone();
    let answer = match reviewers.by_name.get(&name) {
        Some(r) => {
            let started = std::time::Instant::now();
            let (answer, posted) = ask(reviewers, r, &row).await;
            central
                .metrics
                .auto_review_seconds
                .get_or_create(&crate::metrics::ReviewerLabel {
                    reviewer: name.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            (answer, posted)
        }
        None => (
            Answer::Failed(format!(
                "central has no automatic reviewer named '{name}' in [[auto_reviewers]]"
            )),
            String::new(),
        ),
    };
    let (answer, posted) = answer;
    if let Answer::Failed(why) = &answer {
        tracing::warn!(approval_id, reviewer = %name, error = %why, "automatic review failed; it decides nothing");
    }
    if let Err(e) = central
        .take_auto_answer(approval_id, &name, answer, &posted)
        .await
    {
        tracing::error!(approval_id, reviewer = %name, error = %e, "taking an automatic review failed; the request goes on without it");
    }
}

/// One signed round trip: the answer, and the SHA-256 (hex) of the body posted, which is what
/// the reviewer judged (empty when nothing was posted).
async fn ask(reviewers: &AutoReviewers, r: &Reviewer, row: &RequestRow) -> (Answer, String) {
    let approval_id = row.approval_id.as_str();
    // What a failure says is shown to reviewers and audited: central's own errors are logged
    // here and named only in general terms there.
    let body = match Central::review_request(row, &r.name) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(approval_id, reviewer = %r.name, error = %e, "reading a request for its automatic reviewer failed");
            return (
                Answer::Failed("central could not read the request (see its log)".into()),
                String::new(),
            );
        }
    };
    let body = match serde_json::to_vec::<ReviewRequest>(&body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(approval_id, reviewer = %r.name, error = %e, "encoding a request for its automatic reviewer failed");
            return (
                Answer::Failed("central could not encode the request (see its log)".into()),
                String::new(),
            );
        }
    };
    let posted = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let now_s = crate::clock::now_ms() / 1000;
    let call = async {
        let resp = reviewers
            .http
            .post(&r.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(protocol::TIMESTAMP_HEADER, now_s.to_string())
            .header(
                protocol::SIGNATURE_HEADER,
                protocol::sign(&r.secret, now_s, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(approval_id, reviewer = %r.name, error = %e, "posting to the automatic reviewer failed");
                "the reviewer could not be reached (see central's log)".to_string()
            })?;
        let status = resp.status();
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (ts, sig) = (
            header(protocol::TIMESTAMP_HEADER),
            header(protocol::SIGNATURE_HEADER),
        );
        let mut resp = resp;
        let mut text = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            tracing::warn!(approval_id, reviewer = %r.name, error = %e, "reading the automatic reviewer's answer failed");
            "the answer could not be read (see central's log)".to_string()
        })? {
            text.extend_from_slice(&chunk);
            if text.len() > protocol::MAX_ANSWER {
                return Err(format!("the answer is over {} bytes", protocol::MAX_ANSWER));
            }
        }
        if !status.is_success() {
            return Err(format!("the reviewer answered HTTP {}", status.as_u16()));
        }
        protocol::verify(
            &r.secret,
            ts.as_deref(),
            sig.as_deref(),
            &text,
            crate::clock::now_ms() / 1000,
        )
        .map_err(|e| format!("the answer's signature: {e}"))?;
        let answer: ReviewAnswer = serde_json::from_slice(&text).map_err(|e| {
            // The parser quotes what the reviewer sent: shown cut and escaped.
            let said: String = e.to_string().chars().take(160).collect();
            format!("the answer is not a verdict: {}", said.escape_debug())
        })?;
        protocol::check_answer(&answer, approval_id, &r.name)?;
        Ok(answer)
    };
    let answer = match tokio::time::timeout(r.timeout, call).await {
        Ok(Ok(a)) => Answer::Verdict {
            verdict: a.verdict,
            rationale: a.rationale,
            confidence: a.confidence,
        },
        Ok(Err(why)) => Answer::Failed(why),
        Err(_) => Answer::Failed(format!("no answer within {:?}", r.timeout)),
    };
    (answer, posted)
}
