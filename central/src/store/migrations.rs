//! Every table central keeps, as the migrations that made it: (version, SQLite statements,
//! PostgreSQL statements), applied in order when the store opens (which also keeps the
//! `schema_migrations` table of versions applied). No module outside the store writes DDL; a
//! module that needs a table or a column adds a version here.

/// Schema versions: (version, SQLite statements, PostgreSQL statements).
pub const MIGRATIONS: &[(i64, &[&str], &[&str])] = &[
    (1, SQLITE_V1, POSTGRES_V1),
    (2, SQLITE_V2, POSTGRES_V2),
    (3, IDENTITIES, IDENTITIES),
    (4, NOTIFICATIONS, NOTIFICATIONS),
    (5, WEB_SESSIONS, WEB_SESSIONS),
    (6, GRANT_CLOSE_CONNECTIONS, GRANT_CLOSE_CONNECTIONS),
    (7, VOTE_TERMS, VOTE_TERMS),
    (8, REVIEWER_LOGINS, REVIEWER_LOGINS),
    (9, DROP_WEB_LOGINS, DROP_WEB_LOGINS),
    (10, EMAIL_VERIFIED, EMAIL_VERIFIED),
    (11, RECOMMENDATION, RECOMMENDATION),
    (12, MERGED_REQUESTS, MERGED_REQUESTS),
    (13, GRANT_HOST_NAME, GRANT_HOST_NAME),
    (14, KNOWN_NAMES, KNOWN_NAMES),
];

/// Statements run after a migration's Rust step (version 2: hashing the records stored before
/// the chain existed), in the same transaction.
pub(super) const MIGRATIONS_AFTER: &[(i64, &[&str], &[&str])] =
    &[(2, SQLITE_V2_AFTER, POSTGRES_V2_AFTER)];

const CHAIN_TABLES: &[&str] = &[
    "CREATE TABLE audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000')",
    "CREATE TABLE audit_checkpoints (seq BIGINT NOT NULL, kind TEXT NOT NULL, hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL, replica TEXT NOT NULL,
        PRIMARY KEY (seq, kind))",
    "CREATE TABLE audit_retention (boundary_seq BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL,
        cutoff_ms BIGINT NOT NULL, replica TEXT NOT NULL)",
    "ALTER TABLE audit ADD COLUMN host_seq BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE audit ADD COLUMN hash TEXT",
    "CREATE INDEX audit_time ON audit (time_ms)",
];

const SQLITE_V2: &[&str] = &[
    "DROP TRIGGER audit_no_update",
    "DROP TRIGGER audit_no_delete",
    CHAIN_TABLES[0],
    CHAIN_TABLES[1],
    CHAIN_TABLES[2],
    CHAIN_TABLES[3],
    CHAIN_TABLES[4],
    CHAIN_TABLES[5],
    CHAIN_TABLES[6],
];

const SQLITE_V2_AFTER: &[&str] = &[
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        WHEN OLD.seq > (SELECT COALESCE(MAX(boundary_seq), 0) FROM audit_retention)
        BEGIN SELECT RAISE(ABORT, 'audit is append-only (only records below a retention boundary may be deleted)'); END",
    "CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END",
    "CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END",
];

const POSTGRES_V2: &[&str] = &[
    "DROP TRIGGER audit_append_only ON audit",
    CHAIN_TABLES[0],
    CHAIN_TABLES[1],
    CHAIN_TABLES[2],
    CHAIN_TABLES[3],
    CHAIN_TABLES[4],
    CHAIN_TABLES[5],
    CHAIN_TABLES[6],
];

const POSTGRES_V2_AFTER: &[&str] = &[
    "CREATE OR REPLACE FUNCTION latch_audit_append_only() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit'
               AND OLD.seq <= (SELECT COALESCE(MAX(boundary_seq), 0) FROM audit_retention) THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
        END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION latch_audit_append_only()",
    "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
        FOR EACH ROW EXECUTE FUNCTION latch_audit_append_only()",
];

const SQLITE_V1: &[&str] = &[
    "CREATE TABLE hosts (host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, labels_json TEXT NOT NULL,
        agent_version TEXT NOT NULL, capabilities BLOB NOT NULL, registered_at_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL, connected_replica TEXT NOT NULL DEFAULT '',
        rules_version_acked BIGINT NOT NULL DEFAULT 0, rules_error TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE host_rule_status (host_id TEXT NOT NULL, version BIGINT NOT NULL, rule_id BIGINT NOT NULL,
        rule_name TEXT NOT NULL, enforcement TEXT NOT NULL, message TEXT NOT NULL,
        PRIMARY KEY (host_id, rule_id))",
    "CREATE TABLE rule_sets (version INTEGER PRIMARY KEY AUTOINCREMENT, source_name TEXT NOT NULL,
        yaml TEXT NOT NULL, sha256 TEXT NOT NULL, selector_json TEXT NOT NULL, applied_by TEXT NOT NULL,
        applied_at_ms BIGINT NOT NULL, comment TEXT NOT NULL, rollback_of BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE requests (approval_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, request_id TEXT NOT NULL,
        state TEXT NOT NULL, requester TEXT NOT NULL, rule_id BIGINT NOT NULL, rule_name TEXT NOT NULL,
        workload TEXT NOT NULL, tgid BIGINT NOT NULL, context BLOB NOT NULL, received_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL, on_timeout TEXT NOT NULL, approvers_needed BIGINT NOT NULL,
        approver_groups_json TEXT NOT NULL, updated_at_ms BIGINT NOT NULL,
        decided_at_ms BIGINT NOT NULL DEFAULT 0, decided_by TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', grant_id TEXT NOT NULL DEFAULT '',
        UNIQUE (host_id, request_id))",
    "CREATE INDEX requests_state ON requests (state, expires_at_ms)",
    "CREATE TABLE votes (approval_id TEXT NOT NULL, approver TEXT NOT NULL, outcome TEXT NOT NULL,
        reason TEXT NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (approval_id, approver))",
    "CREATE TABLE transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, approval_id TEXT NOT NULL,
        from_state TEXT NOT NULL, to_state TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "CREATE INDEX transitions_request ON transitions (approval_id)",
    "CREATE TABLE grants (grant_id TEXT PRIMARY KEY, approval_id TEXT NOT NULL, host_id TEXT NOT NULL,
        rule_id BIGINT NOT NULL, rule_name TEXT NOT NULL, workload TEXT NOT NULL, scope TEXT NOT NULL,
        tgid BIGINT NOT NULL, granted_by TEXT NOT NULL, created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL, revoked_at_ms BIGINT NOT NULL DEFAULT 0,
        revoked_by TEXT NOT NULL DEFAULT '', revoke_reason TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms BIGINT NOT NULL, kind TEXT NOT NULL,
        actor TEXT NOT NULL, host_id TEXT NOT NULL, request_id TEXT NOT NULL, grant_id TEXT NOT NULL,
        rule_name TEXT NOT NULL, workload TEXT NOT NULL, action TEXT NOT NULL, record_id TEXT,
        payload TEXT NOT NULL)",
    "CREATE UNIQUE INDEX audit_record ON audit (host_id, record_id)",
    "CREATE INDEX audit_shadow ON audit (action, time_ms)",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
];

const POSTGRES_V1: &[&str] = &[
    "CREATE TABLE hosts (host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, labels_json TEXT NOT NULL,
        agent_version TEXT NOT NULL, capabilities BYTEA NOT NULL, registered_at_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL, connected_replica TEXT NOT NULL DEFAULT '',
        rules_version_acked BIGINT NOT NULL DEFAULT 0, rules_error TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE host_rule_status (host_id TEXT NOT NULL, version BIGINT NOT NULL, rule_id BIGINT NOT NULL,
        rule_name TEXT NOT NULL, enforcement TEXT NOT NULL, message TEXT NOT NULL,
        PRIMARY KEY (host_id, rule_id))",
    "CREATE TABLE rule_sets (version BIGSERIAL PRIMARY KEY, source_name TEXT NOT NULL,
        yaml TEXT NOT NULL, sha256 TEXT NOT NULL, selector_json TEXT NOT NULL, applied_by TEXT NOT NULL,
        applied_at_ms BIGINT NOT NULL, comment TEXT NOT NULL, rollback_of BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE requests (approval_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, request_id TEXT NOT NULL,
        state TEXT NOT NULL, requester TEXT NOT NULL, rule_id BIGINT NOT NULL, rule_name TEXT NOT NULL,
        workload TEXT NOT NULL, tgid BIGINT NOT NULL, context BYTEA NOT NULL, received_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL, on_timeout TEXT NOT NULL, approvers_needed BIGINT NOT NULL,
        approver_groups_json TEXT NOT NULL, updated_at_ms BIGINT NOT NULL,
        decided_at_ms BIGINT NOT NULL DEFAULT 0, decided_by TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', grant_id TEXT NOT NULL DEFAULT '',
        UNIQUE (host_id, request_id))",
    "CREATE INDEX requests_state ON requests (state, expires_at_ms)",
    "CREATE TABLE votes (approval_id TEXT NOT NULL, approver TEXT NOT NULL, outcome TEXT NOT NULL,
        reason TEXT NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (approval_id, approver))",
    "CREATE TABLE transitions (id BIGSERIAL PRIMARY KEY, approval_id TEXT NOT NULL,
        from_state TEXT NOT NULL, to_state TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "CREATE INDEX transitions_request ON transitions (approval_id)",
    "CREATE TABLE grants (grant_id TEXT PRIMARY KEY, approval_id TEXT NOT NULL, host_id TEXT NOT NULL,
        rule_id BIGINT NOT NULL, rule_name TEXT NOT NULL, workload TEXT NOT NULL, scope TEXT NOT NULL,
        tgid BIGINT NOT NULL, granted_by TEXT NOT NULL, created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL, revoked_at_ms BIGINT NOT NULL DEFAULT 0,
        revoked_by TEXT NOT NULL DEFAULT '', revoke_reason TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, kind TEXT NOT NULL,
        actor TEXT NOT NULL, host_id TEXT NOT NULL, request_id TEXT NOT NULL, grant_id TEXT NOT NULL,
        rule_name TEXT NOT NULL, workload TEXT NOT NULL, action TEXT NOT NULL, record_id TEXT,
        payload TEXT NOT NULL)",
    "CREATE UNIQUE INDEX audit_record ON audit (host_id, record_id)",
    "CREATE INDEX audit_shadow ON audit (action, time_ms)",
    "CREATE FUNCTION latch_audit_append_only() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'audit is append-only'; END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION latch_audit_append_only()",
];

/// Schema of the `identities` table (the same DDL on SQLite and PostgreSQL).
const IDENTITIES: &[&str] = &[
    "CREATE TABLE identities (issuer TEXT NOT NULL, subject TEXT NOT NULL, email TEXT NOT NULL,
        email_lower TEXT NOT NULL, groups_json TEXT NOT NULL, roles_json TEXT NOT NULL,
        aliases_json TEXT NOT NULL, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (issuer, subject))",
    "CREATE INDEX identities_email ON identities (email_lower, last_seen_ms)",
];

/// Schema of the delivery bookkeeping (the same DDL on SQLite and PostgreSQL).
///
/// `notifications`: one row per (surface, request): where the message went (`channel`,
/// `message_ref`: Slack's channel id and message `ts`), which state it shows (`revision`),
/// whether it needs no more work (`settled`), and the lease of whoever is working on it.
/// `slack_callbacks`: signatures of accepted Slack callbacks, so that a replayed callback is
/// refused by every replica.
const NOTIFICATIONS: &[&str] = &[
    "CREATE TABLE notifications (kind TEXT NOT NULL, approval_id TEXT NOT NULL,
        channel TEXT NOT NULL DEFAULT '', message_ref TEXT NOT NULL DEFAULT '',
        revision TEXT NOT NULL DEFAULT '', settled BIGINT NOT NULL DEFAULT 0,
        lease_owner TEXT NOT NULL DEFAULT '', lease_until_ms BIGINT NOT NULL DEFAULT 0,
        attempts BIGINT NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
        created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (kind, approval_id))",
    "CREATE INDEX notifications_open ON notifications (settled, lease_until_ms)",
    "CREATE TABLE slack_callbacks (signature TEXT PRIMARY KEY, request_ts BIGINT NOT NULL,
        seen_at_ms BIGINT NOT NULL)",
    "CREATE INDEX slack_callbacks_seen ON slack_callbacks (seen_at_ms)",
];

/// Schema of the console's tables (the same DDL on SQLite and PostgreSQL).
const WEB_SESSIONS: &[&str] = &[
    "CREATE TABLE web_sessions (id_hash TEXT PRIMARY KEY, subject TEXT NOT NULL,
        identity_json TEXT NOT NULL, via TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL)",
    "CREATE INDEX web_sessions_expiry ON web_sessions (expires_at_ms)",
    "CREATE TABLE web_logins (state_hash TEXT PRIMARY KEY, browser_hash TEXT NOT NULL,
        nonce TEXT NOT NULL, verifier TEXT NOT NULL, return_to TEXT NOT NULL,
        expires_at_ms BIGINT NOT NULL)",
    "CREATE INDEX web_logins_expiry ON web_logins (expires_at_ms)",
];

/// Schema version 6: whether a revocation also closed the grant's connections (kept so that a
/// revocation replayed to a reconnecting agent asks for the same).
const GRANT_CLOSE_CONNECTIONS: &[&str] =
    &["ALTER TABLE grants ADD COLUMN close_connections BIGINT NOT NULL DEFAULT 0"];

/// Schema version 7: the terms each vote agreed to, so that an approval grants only what every
/// counted approver accepted, and whether the voter was the requester. Votes stored before carry
/// no terms and are read as "approve once", the narrowest.
const VOTE_TERMS: &[&str] = &[
    "ALTER TABLE votes ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE votes ADD COLUMN scope TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE votes ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE votes ADD COLUMN by_requester BIGINT NOT NULL DEFAULT 0",
];

/// Schema version 8: the reviewer tokens whose login is recorded, so that each is recorded once
/// (`crate::identity`).
const REVIEWER_LOGINS: &[&str] = &[
    "CREATE TABLE reviewer_logins (token_hash TEXT PRIMARY KEY, subject TEXT NOT NULL,
        recorded_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL)",
    "CREATE INDEX reviewer_logins_expiry ON reviewer_logins (expires_at_ms)",
];

/// Schema version 9: logins in progress moved to the browser (`crate::web::pending`).
const DROP_WEB_LOGINS: &[&str] = &["DROP TABLE web_logins"];

/// Schema version 10: whether the provider vouched for each remembered address. Rows from
/// before it count as unverified until the person logs in again.
const EMAIL_VERIFIED: &[&str] =
    &["ALTER TABLE identities ADD COLUMN email_verified BIGINT NOT NULL DEFAULT 0"];

/// Schema version 11: what a request's automatic reviewer said (JSON; empty until it answered).
const RECOMMENDATION: &[&str] =
    &["ALTER TABLE requests ADD COLUMN recommendation TEXT NOT NULL DEFAULT ''"];

/// Schema version 12: identical pending requests merged into one that reviewers see
/// (`crate::merge`): the digest of what makes requests identical, and the request a merged one
/// waits with (empty for a request reviewers see).
const MERGED_REQUESTS: &[&str] = &[
    "ALTER TABLE requests ADD COLUMN merge_key TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE requests ADD COLUMN merged_into TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX requests_merge_key ON requests (merge_key, state)",
    "CREATE INDEX requests_merged_into ON requests (merged_into, state)",
];

/// Schema version 13: the host name a grant covers (empty: the request's address alone).
const GRANT_HOST_NAME: &[&str] =
    &["ALTER TABLE grants ADD COLUMN host_name TEXT NOT NULL DEFAULT ''"];

/// Schema version 14: the host names each workload has reached with an approval of a rule of
/// new names (`crate::known_names`).
const KNOWN_NAMES: &[&str] = &[
    "CREATE TABLE known_names (workload TEXT NOT NULL, name TEXT NOT NULL,
        approval_id TEXT NOT NULL, approved_by TEXT NOT NULL, at_ms BIGINT NOT NULL,
        PRIMARY KEY (workload, name))",
];
