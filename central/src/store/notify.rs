//! PostgreSQL's `NOTIFY`/`LISTEN`, by which replicas sharing one database tell each other what
//! changed. What an event means is `crate::events`'.

use super::{QueryContext, Store, StoreError};

/// A connection listening on one channel.
pub struct Listener(sqlx::postgres::PgListener);

impl Store {
    /// Sends `payload` to every replica listening on `channel` (PostgreSQL only).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 AS ok FROM pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(self.pool())
            .await
            .ctx("notifying replicas")?;
        Ok(())
    }

    /// Listens on `channel` over a connection of its own (PostgreSQL only).
    pub async fn listen(&self, channel: &str) -> Result<Listener, StoreError> {
        let mut l = sqlx::postgres::PgListener::connect(self.url())
            .await
            .ctx(format!("connecting to listen on {channel}"))?;
        l.listen(channel)
            .await
            .ctx(format!("listening on {channel}"))?;
        Ok(Listener(l))
    }
}

impl Listener {
    /// The next notification's payload; `None` when the connection was lost (the next call
    /// reconnects, and what was sent meanwhile is lost).
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .try_recv()
            .await
            .ctx("receiving a notification")?
            .map(|n| n.payload().to_string()))
    }
}
