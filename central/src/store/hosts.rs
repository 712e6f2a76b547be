//! The hosts' tables: `hosts`, one row per registered agent host (its labels, capabilities,
//! connection and the rules version it acknowledged), and `host_rule_status`, how it enforces
//! each rule of that version. What a host's state means is `crate::hosts`'.

use sqlx::{any::AnyRow, Row};

use super::{QueryContext, Store, StoreError, Tx};

/// A host as an agent registers it.
pub struct NewHost<'a> {
    /// The host's id.
    pub host_id: &'a str,
    /// Its name.
    pub hostname: &'a str,
    /// Its labels (JSON object).
    pub labels_json: &'a str,
    /// The agent's version.
    pub agent_version: &'a str,
    /// Its capabilities (encoded `Capabilities` message).
    pub capabilities: Vec<u8>,
    /// Now (Unix ms).
    pub now_ms: i64,
}

/// A stored host.
pub struct HostRow {
    /// The host's id.
    pub host_id: String,
    /// Its name.
    pub hostname: String,
    /// Its labels (JSON object).
    pub labels_json: String,
    /// The agent's version.
    pub agent_version: String,
    /// Its capabilities (encoded `Capabilities` message).
    pub capabilities: Vec<u8>,
    /// When it was last heard from (Unix ms).
    pub last_seen_ms: i64,
    /// The replica its agent's stream is open on; empty when none is.
    pub connected_replica: String,
    /// The rules version it enforces (0: none, or its last version failed).
    pub rules_version_acked: i64,
    /// Why its last rules version failed to apply.
    pub rules_error: String,
}

/// How one host enforces one rule.
pub struct RuleStatusRow {
    /// The host's id.
    pub host_id: String,
    /// The rule's id.
    pub rule_id: i64,
    /// The rule's name.
    pub rule_name: String,
    /// `enforced`, `degraded`, `unsupported` or `unspecified`.
    pub enforcement: String,
    /// Why, in the agent's words.
    pub message: String,
}

fn host_row(r: &AnyRow) -> Result<HostRow, sqlx::Error> {
    Ok(HostRow {
        host_id: r.try_get("host_id")?,
        hostname: r.try_get("hostname")?,
        labels_json: r.try_get("labels_json")?,
        agent_version: r.try_get("agent_version")?,
        capabilities: r.try_get("capabilities")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        connected_replica: r.try_get("connected_replica")?,
        rules_version_acked: r.try_get("rules_version_acked")?,
        rules_error: r.try_get("rules_error")?,
    })
}

fn status_row(r: &AnyRow) -> Result<RuleStatusRow, sqlx::Error> {
    Ok(RuleStatusRow {
        host_id: r.try_get("host_id")?,
        rule_id: r.try_get("rule_id")?,
        rule_name: r.try_get("rule_name")?,
        enforcement: r.try_get("enforcement")?,
        message: r.try_get("message")?,
    })
}

impl Store {
    /// Registers a host, or updates what it says of itself.
    pub async fn upsert_host(tx: &mut Tx, h: &NewHost<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (host_id, hostname, labels_json, agent_version, capabilities, registered_at_ms, last_seen_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (host_id) DO UPDATE SET hostname = excluded.hostname, labels_json = excluded.labels_json,
                agent_version = excluded.agent_version, capabilities = excluded.capabilities,
                last_seen_ms = excluded.last_seen_ms",
        )
        .bind(h.host_id)
        .bind(h.hostname)
        .bind(h.labels_json)
        .bind(h.agent_version)
        .bind(h.capabilities.as_slice())
        .bind(h.now_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("registering host {}", h.host_id))?;
        Ok(())
    }

    /// A registered host's labels (JSON object); `None` for a host never registered.
    pub async fn host_labels_json(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT labels_json FROM hosts WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("reading host {host_id}"))?;
        row.map(|r| r.try_get("labels_json"))
            .transpose()
            .ctx("reading host labels")
    }

    /// Records that `replica` holds the host's agent stream (`connected`), or that it no longer
    /// does (a stream another replica took over since is left alone).
    pub async fn set_host_connection(
        tx: &mut Tx,
        host_id: &str,
        replica: &str,
        connected: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = if connected {
            "UPDATE hosts SET connected_replica = $2, last_seen_ms = $3 WHERE host_id = $1"
        } else {
            "UPDATE hosts SET connected_replica = '', last_seen_ms = $3 WHERE host_id = $1 AND connected_replica = $2"
        };
        sqlx::query(sql)
            .bind(host_id)
            .bind(replica)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .ctx(format!("updating connection of host {host_id}"))?;
        Ok(())
    }

    /// Records the rules version a host acknowledged (0 with the error when it failed);
    /// `false` for a host never registered.
    pub async fn ack_host_rules(
        tx: &mut Tx,
        host_id: &str,
        version: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE hosts SET rules_version_acked = $2, rules_error = $3, last_seen_ms = $4 WHERE host_id = $1",
        )
        .bind(host_id)
        .bind(version)
        .bind(error)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("recording rules ack of host {host_id}"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Replaces how a host enforces each rule with `rules` (of rules version `version`).
    pub async fn replace_host_rule_status(
        tx: &mut Tx,
        host_id: &str,
        version: i64,
        rules: &[RuleStatusRow],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM host_rule_status WHERE host_id = $1")
            .bind(host_id)
            .execute(&mut **tx)
            .await
            .ctx("clearing rule status")?;
        for s in rules {
            sqlx::query(
                "INSERT INTO host_rule_status (host_id, version, rule_id, rule_name, enforcement, message)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (host_id, rule_id) DO UPDATE SET version = excluded.version,
                    rule_name = excluded.rule_name, enforcement = excluded.enforcement, message = excluded.message",
            )
            .bind(host_id)
            .bind(version)
            .bind(s.rule_id)
            .bind(&s.rule_name)
            .bind(&s.enforcement)
            .bind(&s.message)
            .execute(&mut **tx)
            .await
            .ctx("recording rule status")?;
        }
        Ok(())
    }

    /// Every host, by id.
    pub async fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, hostname, labels_json, agent_version, capabilities, last_seen_ms, connected_replica,
                rules_version_acked, rules_error FROM hosts ORDER BY host_id",
        )
        .fetch_all(self.pool())
        .await
        .ctx("listing hosts")?;
        rows.iter()
            .map(host_row)
            .collect::<Result<_, _>>()
            .ctx("decoding host")
    }

    /// How every host enforces each rule, by host and rule name.
    pub async fn host_rule_statuses(&self) -> Result<Vec<RuleStatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, rule_id, rule_name, enforcement, message FROM host_rule_status ORDER BY host_id, rule_name",
        )
        .fetch_all(self.pool())
        .await
        .ctx("listing rule status")?;
        rows.iter()
            .map(status_row)
            .collect::<Result<_, _>>()
            .ctx("decoding rule status")
    }
}
