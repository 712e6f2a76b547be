//! The live pending queue: Server-Sent Events fed by the watcher hub that also feeds gRPC
//! `WatchRequests`, so the console and `latchctl pending --watch` see the same changes.
//!
//! A stream starts with a `snapshot` event (every pending request), then sends a `request`
//! event for every change. A browser that falls too far behind gets a `resync` event and the
//! stream ends; `EventSource` reconnects on its own and receives a fresh snapshot.
//!
//! A stream lives no longer than its session: it ends when the session expires, when it is
//! signed out on this replica (at once), and, for a sign-out on another replica or a static
//! token removed from the configuration, before the next change it would send: the session is
//! looked up again for every change.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};

use crate::approval::State as RequestState;

use super::{pages::is_pending, views::summarize, Console, Signed, WebError};

/// How long a browser waits before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_secs(1);

fn json_event(name: &str, value: &impl serde::Serialize) -> Option<Event> {
    match serde_json::to_string(value) {
        Ok(text) => Some(Event::default().event(name).data(text)),
        Err(e) => {
            tracing::warn!(error = %e, "encoding a console event failed");
            None
        }
    }
}

/// `GET /events/requests`.
pub(crate) async fn requests(
    State(c): State<Console>,
    signed: Signed,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let central = c.central.clone();
    // Subscribe before reading the snapshot, so that nothing falls between the two.
    let mut events = central.hub.watch();
    let snapshot = central
        .list_requests(Some(RequestState::Pending), "", 1000)
        .await?;
    let mut stopping = central.stopping.subscribe();
    let mut closed = c.closed.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    let subject = signed.identity().subject.clone();
    let session_id = signed.id.clone();
    let id_hash = signed.session.id_hash.clone();
    // The stream ends with the session; the browser's reconnection then meets the login page.
    let session_left =
        Duration::from_millis((signed.expires_at_ms() - crate::clock::now_ms()).max(0) as u64);
    tokio::spawn(async move {
        let session_end = tokio::time::sleep(session_left);
        tokio::pin!(session_end);
        let rows: Vec<_> = snapshot.iter().map(summarize).collect();
        let Some(first) = json_event("snapshot", &rows) else {
            return;
        };
        if tx.send(Ok(first.retry(RETRY))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        let Some(rec) = ev.request else { continue };
                        if !rec.merged_into.is_empty() && is_pending(rec.state) {
                            // Counted in the row of the request it waits with.
                            continue;
                        }
                        match central.session(&session_id).await {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                tracing::info!(subject, "console queue ends: its session ended");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(subject, error = %e, "console queue ends: its session could not be checked");
                                return;
                            }
                        }
                        let mut row = summarize(&rec);
                        if !is_pending(rec.state) && row.state == "unknown" {
                            row.state = "resolved".into();
                        }
                        if let Some(e) = json_event("request", &row) {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(subject, missed = n, "console queue fell behind; it reconnects");
                        let _ = tx.send(Ok(Event::default().event("resync").data(n.to_string()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                gone = closed.recv() => match gone {
                    Ok(h) if h == id_hash => return,
                    Ok(_) => {}
                    // Sign-outs missed: whether this one was among them is checked before the
                    // next change is sent.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut session_end => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
