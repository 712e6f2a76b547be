//! The `rule_sets` table: every rules version ever applied, kept. Which host receives which
//! version, and what a rule means, is `crate::rules`'.

use std::collections::BTreeMap;

use sqlx::{any::AnyRow, Row};

use super::{QueryContext, Store, StoreError, Tx};

/// A stored rules version.
#[derive(Clone, Debug)]
pub struct RulesVersion {
    /// Number, increasing.
    pub version: i64,
    /// File name it was applied from.
    pub source_name: String,
    /// The file.
    pub yaml: String,
    /// Hex SHA-256 of `yaml`.
    pub sha256: String,
    /// Hosts whose labels include these receive it.
    pub selector: BTreeMap<String, String>,
    /// Who.
    pub applied_by: String,
    /// When.
    pub applied_at_ms: i64,
    /// Why.
    pub comment: String,
    /// The version a rollback copied (0 otherwise).
    pub rollback_of: i64,
}

/// A rules version to store; the store numbers it.
pub struct NewRulesVersion<'a> {
    /// File name it was applied from.
    pub source_name: &'a str,
    /// The file.
    pub yaml: &'a str,
    /// Hex SHA-256 of `yaml`.
    pub sha256: &'a str,
    /// The label selector (JSON object).
    pub selector_json: &'a str,
    /// Who.
    pub applied_by: &'a str,
    /// When (Unix ms).
    pub applied_at_ms: i64,
    /// Why.
    pub comment: &'a str,
    /// The version a rollback copies (0 otherwise).
    pub rollback_of: i64,
}

const VERSION_COLUMNS: &str =
    "version, source_name, yaml, sha256, selector_json, applied_by, applied_at_ms, comment, rollback_of";

fn version_row(r: &AnyRow) -> Result<RulesVersion, sqlx::Error> {
    let sel: String = r.try_get("selector_json")?;
    Ok(RulesVersion {
        version: r.try_get("version")?,
        source_name: r.try_get("source_name")?,
        yaml: r.try_get("yaml")?,
        sha256: r.try_get("sha256")?,
        selector: serde_json::from_str(&sel)
            .map_err(|e| sqlx::Error::Decode(format!("selector '{sel}': {e}").into()))?,
        applied_by: r.try_get("applied_by")?,
        applied_at_ms: r.try_get("applied_at_ms")?,
        comment: r.try_get("comment")?,
        rollback_of: r.try_get("rollback_of")?,
    })
}

impl Store {
    /// Every rules version, newest first.
    pub async fn rule_versions(&self) -> Result<Vec<RulesVersion>, StoreError> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM rule_sets ORDER BY version DESC");
        let rows = sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .ctx("listing rules versions")?;
        rows.iter()
            .map(version_row)
            .collect::<Result<_, _>>()
            .ctx("decoding rules versions")
    }

    /// One rules version (0: the newest), if it exists.
    pub async fn rule_version(&self, version: i64) -> Result<Option<RulesVersion>, StoreError> {
        let sql = if version == 0 {
            format!("SELECT {VERSION_COLUMNS} FROM rule_sets WHERE $1 = 0 ORDER BY version DESC LIMIT 1")
        } else {
            format!("SELECT {VERSION_COLUMNS} FROM rule_sets WHERE version = $1")
        };
        let row = sqlx::query(&sql)
            .bind(version)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("reading rules version {version}"))?;
        row.as_ref()
            .map(version_row)
            .transpose()
            .ctx(format!("decoding rules version {version}"))
    }

    /// Stores a rules version and returns its number.
    pub async fn insert_rule_version(
        tx: &mut Tx,
        v: &NewRulesVersion<'_>,
    ) -> Result<i64, StoreError> {
        sqlx::query(
            "INSERT INTO rule_sets (source_name, yaml, sha256, selector_json, applied_by, applied_at_ms,
                comment, rollback_of)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING version",
        )
        .bind(v.source_name)
        .bind(v.yaml)
        .bind(v.sha256)
        .bind(v.selector_json)
        .bind(v.applied_by)
        .bind(v.applied_at_ms)
        .bind(v.comment)
        .bind(v.rollback_of)
        .fetch_one(&mut **tx)
        .await
        .ctx("storing rules version")?
        .try_get("version")
        .ctx("storing rules version")
    }
}
