//! Microsoft Teams: an Adaptive Card per request, posted to the configured incoming webhook, with
//! the redacted context and a button that opens the request in the web console. Deciding needs
//! the reviewer's console login, so the card has no decide buttons. An incoming webhook cannot
//! update what it posted, so a request gets its card once, and one more card for what arrives
//! after the first was posted: the workload's explanation, the automatic reviewer's answer.
//!
//! Workload-controlled text goes into `TextRun`s of `RichTextBlock`s, which Teams renders
//! without Markdown, so argv cannot bring links or formatting into the card; `{{` is broken up
//! so that nothing is read as a date/time function either.

use std::time::Duration;

use backon::Retryable;
use serde_json::{json, Value};

use super::{backoff, shown, Applied, Delivery, NotifyError, Surface, View};
use crate::{config::TeamsConfig, engine::Central};

/// `kind` of Teams rows in `notifications`.
pub const KIND: &str = "teams";

/// A failed webhook post.
#[derive(Debug, thiserror::Error)]
pub enum TeamsError {
    /// The post did not complete.
    #[error("posting to the Teams webhook: {0}")]
    Http(reqwest::Error),
    /// The webhook refused it.
    #[error("the Teams webhook answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// Start of the body.
        body: String,
    },
}

impl TeamsError {
    fn is_transient(&self) -> bool {
        match self {
            TeamsError::Http(e) => e.is_timeout() || e.is_connect() || e.is_request(),
            TeamsError::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            TeamsError::Status { retry_after, .. } => *retry_after,
            TeamsError::Http(_) => None,
        }
    }
}

/// Text for a `TextRun`: visible-safe, cut, and with `{{` broken by a zero-width space so that
/// it is never taken for a `{{DATE(...)}}` function.
pub fn inert(s: &str, max: usize) -> String {
    shown(s, max).replace("{{", "{\u{200b}{")
}

/// The Teams surface.
pub struct Teams {
    http: reqwest::Client,
    webhook: String,
    public_url: String,
}

impl Teams {
    /// From `[teams]` and the console's public URL (reading the webhook file).
    pub(crate) fn new(
        c: &TeamsConfig,
        public_url: &str,
        http: reqwest::Client,
    ) -> Result<Teams, NotifyError> {
        let webhook = match (&c.webhook_url_file, &c.webhook_url) {
            (Some(path), _) => {
                let url = super::read_secret("teams.webhook_url_file", path)?;
                crate::config::check_webhook_url(
                    &format!("teams.webhook_url_file '{}'", path.display()),
                    &url,
                )
                .map_err(NotifyError::Invalid)?;
                url
            }
            (None, Some(url)) => url.trim().to_string(),
            (None, None) => {
                return Err(NotifyError::Invalid(
                    "teams: webhook_url_file (or webhook_url) is required".into(),
                ))
            }
        };
        Ok(Teams {
            http,
            webhook,
            public_url: public_url.trim_end_matches('/').to_string(),
        })
    }

    async fn post(&self, card: &Value) -> Result<(), TeamsError> {
        let resp = self
            .http
            .post(&self.webhook)
            .json(card)
            .send()
            .await
            .map_err(TeamsError::Http)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        // Older connector webhooks answer 200 with an explanation when they drop a card.
        if !status.is_success() || body.contains("delivery failed") {
            return Err(TeamsError::Status {
                status: status.as_u16(),
                retry_after,
                body: shown(&body, 300),
            });
        }
        Ok(())
    }
}

/// What a path segment may hold unencoded (RFC 3986 unreserved characters).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The console page of a request.
pub fn request_link(public_url: &str, approval_id: &str) -> String {
    format!(
        "{}/requests/{}",
        public_url.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(approval_id, SEGMENT)
    )
}

fn run(text: String) -> Value {
    json!({"type": "TextRun", "text": text})
}

fn labelled(label: &str, value: String) -> Value {
    json!({
        "type": "RichTextBlock",
        "inlines": [
            {"type": "TextRun", "text": format!("{label}: "), "weight": "Bolder"},
            run(value),
        ],
    })
}

/// The webhook message for a request: one Adaptive Card.
pub(crate) fn card(view: &View, public_url: &str) -> Value {
    let mut body = vec![title(&view.headline())];
    for (label, value) in view.facts() {
        body.push(labelled(label, inert(&value, 400)));
    }
    for (label, value) in [("Process", view.process()), ("Process tree", view.tree())] {
        body.push(json!({
            "type": "RichTextBlock",
            "inlines": [
                {"type": "TextRun", "text": format!("{label}\n"), "weight": "Bolder"},
                {"type": "TextRun", "text": inert(&value, 3000), "fontType": "Monospace"},
            ],
        }));
    }
    message(body, public_url, &view.row.approval_id)
}

/// The card that brings what arrived after the request's card was posted: the workload's
/// justification (as its own claim) and the automatic reviewer's answer, each when new, under
/// the request's headline and deadline, with the same console link.
pub(crate) fn update_card(view: &View, public_url: &str, news: Shown) -> Value {
    let heading = match (news.justified, news.reviewed) {
        (true, false) => "The workload explained request",
        (false, true) => "The automatic reviewer answered on request",
        _ => "The workload explained, and the automatic reviewer answered on, request",
    };
    let mut body = vec![
        title(&format!("{heading} {}", view.row.approval_id)),
        labelled("Request", inert(&view.headline(), 200)),
        labelled("Deadline", view.deadline()),
    ];
    if news.justified {
        body.push(labelled(
            "Workload says (unverified)",
            inert(&shown(&view.req.justification, 2000), 2000),
        ));
    }
    if news.reviewed {
        if let Some(said) = view.recommendation() {
            body.push(labelled("Automatic reviewer", inert(&said, 2000)));
        }
    }
    message(body, public_url, &view.row.approval_id)
}

/// What of a pending request a Teams card has shown, beyond its first card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    /// The workload's justification.
    pub justified: bool,
    /// The automatic reviewer's answer.
    pub reviewed: bool,
}

impl Shown {
    /// What `view` has to show.
    fn of(view: &View) -> Shown {
        Shown {
            justified: !view.req.justification.is_empty(),
            // What cannot be shown is not news.
            reviewed: view.recommendation().is_some(),
        }
    }

    /// As stored in `message_ref` (`posted`, then `+justified`, `+reviewed`).
    fn parse(message_ref: &str) -> Shown {
        let mut parts = message_ref.split('+');
        let posted = parts.next() == Some(POSTED);
        let rest: Vec<&str> = parts.collect();
        Shown {
            justified: posted && rest.contains(&"justified"),
            reviewed: posted && rest.contains(&"reviewed"),
        }
    }

    fn message_ref(self) -> String {
        let mut s = POSTED.to_string();
        if self.justified {
            s.push_str("+justified");
        }
        if self.reviewed {
            s.push_str("+reviewed");
        }
        s
    }

    /// What `self` has that `before` did not.
    fn beyond(self, before: Shown) -> Shown {
        Shown {
            justified: self.justified && !before.justified,
            reviewed: self.reviewed && !before.reviewed,
        }
    }

    fn any(self) -> bool {
        self.justified || self.reviewed
    }
}

fn title(text: &str) -> Value {
    json!({
        "type": "RichTextBlock",
        "inlines": [{
            "type": "TextRun", "text": inert(text, 200),
            "weight": "Bolder", "size": "Medium",
        }],
    })
}

fn message(mut body: Vec<Value>, public_url: &str, id: &str) -> Value {
    body.push(json!({
        "type": "TextBlock",
        "text": "Approve or deny in the Latch console (your login is needed).",
        "wrap": true,
        "isSubtle": true,
    }));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": body,
                "actions": [{
                    "type": "Action.OpenUrl",
                    "title": "Open in Latch",
                    "url": request_link(public_url, id),
                }],
            },
        }],
    })
}

/// `message_ref` of a request whose card is posted (followed by what later cards added).
const POSTED: &str = "posted";

impl Surface for Teams {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn revision(&self, view: &View, _now_ms: i64) -> String {
        if view.is_final() {
            return "final".into();
        }
        let has = Shown::of(view);
        format!(
            "pending{}{}",
            if has.justified { ":justified" } else { "" },
            if has.reviewed { ":reviewed" } else { "" }
        )
    }

    async fn apply(
        &self,
        _central: &Central,
        view: &View,
        _revision: &str,
        delivery: &Delivery,
    ) -> Result<Applied, String> {
        let posted = delivery.message_ref.as_str();
        let before = Shown::parse(posted);
        let everything = Shown {
            justified: true,
            reviewed: true,
        };
        // Resolved before it could be announced, or nothing more can come: a webhook card
        // cannot be changed, so the decision is seen in the console.
        if view.is_final() || before == everything {
            return Ok(Applied {
                channel: String::new(),
                message_ref: posted.to_string(),
                settled: true,
            });
        }
        let has = Shown::of(view);
        let news = has.beyond(before);
        let message = if posted.is_empty() {
            card(view, &self.public_url)
        } else if news.any() {
            update_card(view, &self.public_url, news)
        } else {
            return Ok(Applied {
                channel: String::new(),
                message_ref: posted.to_string(),
                settled: false,
            });
        };
        let now_shown = Shown {
            justified: before.justified || has.justified,
            reviewed: before.reviewed || has.reviewed,
        };
        let id = view.row.approval_id.as_str();
        (|| self.post(&message))
            .retry(backoff())
            .when(TeamsError::is_transient)
            .adjust(|e, d| d.map(|d| e.retry_after().unwrap_or(d)))
            .notify(|e, d| {
                tracing::warn!(approval_id = id, error = %e, retry_in = ?d, "Teams post failed; retrying")
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            approval_id = id,
            justification = news.justified,
            recommendation = news.reviewed,
            "posted to Teams"
        );
        Ok(Applied {
            channel: String::new(),
            message_ref: now_shown.message_ref(),
            // Once both have been shown, nothing more is posted for this request.
            settled: now_shown == everything,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inert_text() {
        assert_eq!(
            inert("{{DATE(2017-02-14T06:08:39Z, SHORT)}}", 100),
            "{\u{200b}{DATE(2017-02-14T06:08:39Z, SHORT)}}"
        );
        assert_eq!(inert("a\x1b[2Jb", 100), "a\\x1b[2Jb");
    }

    #[test]
    fn what_a_card_showed_survives_its_message_ref() {
        for justified in [false, true] {
            for reviewed in [false, true] {
                let s = Shown {
                    justified,
                    reviewed,
                };
                assert_eq!(Shown::parse(&s.message_ref()), s);
            }
        }
        // Stored before recommendations were shown.
        assert_eq!(
            Shown::parse("posted+justified"),
            Shown {
                justified: true,
                reviewed: false
            }
        );
        // Nothing posted yet, or something that is not ours.
        assert_eq!(Shown::parse(""), Shown::default());
        assert_eq!(Shown::parse("x+justified"), Shown::default());
    }

    #[test]
    fn links() {
        assert_eq!(
            request_link("https://latch.example.com/", "0b6c-1/../x"),
            "https://latch.example.com/requests/0b6c-1%2F..%2Fx"
        );
    }
}
