//! Rules: validation on apply (with the `policy` crate), versions (every one kept), diff,
//! rollback, and which version each host receives (newest whose label selector it matches).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use latch_proto::v1::{agent_message::Body, AgentMessage, RuleSetPush};
use policy::RuleSet;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    auth::{Identity, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::Event,
    store::{AuditFact, NewRulesVersion, QueryContext, Store},
};

/// Largest rules file accepted.
pub const MAX_RULES_BYTES: usize = 1 << 20;

pub use crate::store::RulesVersion as Version;

/// What changed between two versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesDiff {
    /// Unified diff of the files.
    pub unified: String,
    /// Rules only in the newer.
    pub added: Vec<String>,
    /// Rules only in the older.
    pub removed: Vec<String>,
    /// Rules in both that differ.
    pub changed: Vec<String>,
}

/// Whether `labels` include every pair of `selector`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two versions' files and rules.
pub fn diff(
    old_name: &str,
    old_yaml: &str,
    old: Option<&RuleSet>,
    new_name: &str,
    new_yaml: &str,
    new: &RuleSet,
) -> RulesDiff {
    let unified = similar::TextDiff::from_lines(old_yaml, new_yaml)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string();
    let strip = |r: &policy::Rule| {
        let mut r = r.clone();
        r.line = None;
        r
    };
    let old_rules: BTreeMap<&str, policy::Rule> = old
        .map(|o| {
            o.rules
                .iter()
                .map(|r| (r.name.as_str(), strip(r)))
                .collect()
        })
        .unwrap_or_default();
    let new_rules: BTreeMap<&str, policy::Rule> = new
        .rules
        .iter()
        .map(|r| (r.name.as_str(), strip(r)))
        .collect();
    let mut d = RulesDiff {
        unified,
        ..Default::default()
    };
    for (name, r) in &new_rules {
        match old_rules.get(name) {
            None => d.added.push(name.to_string()),
            Some(o) if o != r => d.changed.push(name.to_string()),
            Some(_) => {}
        }
    }
    for name in old_rules.keys() {
        if !new_rules.contains_key(name) {
            d.removed.push(name.to_string());
        }
    }
    d
}

impl Central {
    /// Every version, newest first.
    pub async fn rule_versions(&self) -> Result<Vec<Version>> {
        Ok(self.store.rule_versions().await?)
    }

    /// One version; 0 means the newest.
    pub async fn rule_version(&self, version: i64) -> Result<Version> {
        self.store.rule_version(version).await?.ok_or_else(|| {
            Error::NotFound(if version == 0 {
                "no rules version has been applied".to_string()
            } else {
                format!("rules version {version}")
            })
        })
    }

    /// The parsed rules of a version.
    pub async fn rule_set(&self, version: i64) -> Result<Arc<RuleSet>> {
        if let Some(s) = self
            .rules
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&version)
        {
            return Ok(s.clone());
        }
        let v = self.rule_version(version).await?;
        let set = Arc::new(RuleSet::parse(&v.source_name, &v.yaml)?);
        self.rules
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version, set.clone());
        Ok(set)
    }

    /// The newest version whose selector the labels match.
    pub async fn desired_version(
        &self,
        labels: &HashMap<String, String>,
    ) -> Result<Option<Version>> {
        Ok(self
            .rule_versions()
            .await?
            .into_iter()
            .find(|v| selector_matches(&v.selector, labels)))
    }

    /// Validates and (unless `dry_run`) stores a new version, then pushes it to matching hosts.
    /// Returns the version (None for a dry run), the parsed rules and the diff against the
    /// previous version for the same selector.
    pub async fn apply_rules(
        &self,
        who: &Identity,
        source_name: &str,
        yaml: &str,
        selector: BTreeMap<String, String>,
        dry_run: bool,
        comment: &str,
    ) -> Result<(Option<i64>, RuleSet, RulesDiff)> {
        if !dry_run && !who.has(Role::Admin) {
            return Err(Error::PermissionDenied(format!(
                "'{}' is not an admin",
                who.subject
            )));
        }
        let set = RuleSet::parse(source_name, yaml)?;
        self.check_auto_reviewers(source_name, &set)?;
        let previous = self
            .rule_versions()
            .await?
            .into_iter()
            .find(|v| v.selector == selector);
        let prev_set = match &previous {
            Some(p) => Some(self.rule_set(p.version).await?),
            None => None,
        };
        let d = diff(
            previous
                .as_ref()
                .map(|p| p.source_name.as_str())
                .unwrap_or("(none)"),
            previous.as_ref().map(|p| p.yaml.as_str()).unwrap_or(""),
            prev_set.as_deref(),
            source_name,
            yaml,
            &set,
        );
        if dry_run {
            return Ok((None, set, d));
        }
        let v = self
            .store_version(
                who,
                source_name,
                yaml,
                &selector,
                comment,
                0,
                set.rules.len(),
            )
            .await?;
        Ok((Some(v), set, d))
    }

    /// Refuses a rule set whose `auto` steps name a reviewer this central does not have, each
    /// problem naming the rule and its line.
    fn check_auto_reviewers(&self, source_name: &str, set: &RuleSet) -> Result<()> {
        let problems: Vec<policy::Problem> = set
            .rules
            .iter()
            .filter_map(|r| {
                let a = r.auto.as_ref()?;
                (!self.breakers.knows(&a.reviewer)).then(|| policy::Problem {
                    line: r.line,
                    column: None,
                    subject: Some(format!("rule '{}'", r.name)),
                    message: format!(
                        "`auto.reviewer` '{}' is not one of central's [[auto_reviewers]] ({})",
                        a.reviewer,
                        match self.breakers.names().join(", ") {
                            n if n.is_empty() => "none is configured".to_string(),
                            n => format!("configured: {n}"),
                        }
                    ),
                })
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        Err(policy::PolicyError {
            source_name: source_name.to_string(),
            problems,
        }
        .into())
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_version(
        &self,
        who: &Identity,
        source_name: &str,
        yaml: &str,
        selector: &BTreeMap<String, String>,
        comment: &str,
        rollback_of: i64,
        rules: usize,
    ) -> Result<i64> {
        let now = now_ms();
        let sha = sha256_hex(yaml);
        let selector_json = serde_json::to_string(selector).unwrap_or_else(|_| "{}".into());
        let mut tx = self.store.begin().await?;
        let version = Store::insert_rule_version(
            &mut tx,
            &NewRulesVersion {
                source_name,
                yaml,
                sha256: &sha,
                selector_json: &selector_json,
                applied_by: &who.subject,
                applied_at_ms: now,
                comment,
                rollback_of,
            },
        )
        .await?;
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: if rollback_of > 0 {
                    "rules.rollback".into()
                } else {
                    "rules.applied".into()
                },
                actor: who.subject.clone(),
                payload: json!({"version": version, "source_name": source_name, "sha256": sha,
                    "selector": selector, "rules": rules, "comment": comment, "rollback_of": rollback_of}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing rules version")?;
        self.publish(Event::Rules { version }).await;
        tracing::info!(version, source_name, by = %who.subject, "rules version stored");
        Ok(version)
    }

    /// Makes an old version current again, as a new version with the old file and selector.
    pub async fn rollback_rules(
        &self,
        who: &Identity,
        version: i64,
        reason: &str,
    ) -> Result<(i64, RuleSet, RulesDiff)> {
        if !who.has(Role::Admin) {
            return Err(Error::PermissionDenied(format!(
                "'{}' is not an admin",
                who.subject
            )));
        }
        let old = self.rule_version(version).await?;
        let set = (*self.rule_set(version).await?).clone();
        let current = self
            .rule_versions()
            .await?
            .into_iter()
            .find(|v| v.selector == old.selector);
        let d = match &current {
            Some(c) => {
                let cs = self.rule_set(c.version).await?;
                diff(
                    &c.source_name,
                    &c.yaml,
                    Some(&cs),
                    &old.source_name,
                    &old.yaml,
                    &set,
                )
            }
            None => diff("(none)", "", None, &old.source_name, &old.yaml, &set),
        };
        let comment = format!("rollback to version {version}: {reason}");
        let v = self
            .store_version(
                who,
                &old.source_name,
                &old.yaml,
                &old.selector,
                &comment,
                version,
                set.rules.len(),
            )
            .await?;
        Ok((v, set, d))
    }

    /// Diff between two versions.
    pub async fn diff_versions(&self, from: i64, to: i64) -> Result<RulesDiff> {
        let a = self.rule_version(from).await?;
        let b = self.rule_version(to).await?;
        let sa = self.rule_set(a.version).await?;
        let sb = self.rule_set(b.version).await?;
        Ok(diff(
            &format!("v{}:{}", a.version, a.source_name),
            &a.yaml,
            Some(&sa),
            &format!("v{}:{}", b.version, b.source_name),
            &b.yaml,
            &sb,
        ))
    }
}

/// The message pushing a rules version.
pub fn rules_push(v: &Version) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Rules(RuleSetPush {
            version: v.version as u64,
            yaml: v.yaml.clone(),
            source_name: v.source_name.clone(),
            sha256: v.sha256.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = HashMap::from([
            ("env".to_string(), "prod".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]);
        assert!(selector_matches(&BTreeMap::new(), &labels));
        assert!(selector_matches(
            &BTreeMap::from([("env".to_string(), "prod".to_string())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("env".to_string(), "dev".to_string())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("team".to_string(), "x".to_string())]),
            &labels
        ));
    }

    #[test]
    fn diff_names_rules() {
        let a = "rules:\n  - name: r1\n    workload: w\n    on: exec\n    paths: [\"/bin/a\"]\n    action: deny\nworkloads:\n  - name: w\n    cgroups: [\"/w\"]\n";
        let b = a.replace("/bin/a", "/bin/b") + "";
        let sa = RuleSet::parse("a", a).expect("a");
        let sb = RuleSet::parse("b", &b).expect("b");
        let d = diff("a", a, Some(&sa), "b", &b, &sb);
        assert_eq!(d.changed, vec!["r1".to_string()]);
        assert!(d.added.is_empty() && d.removed.is_empty());
        assert!(
            d.unified.contains("-    paths: [\"/bin/a\"]"),
            "{}",
            d.unified
        );
        let d = diff("(none)", "", None, "b", &b, &sb);
        assert_eq!(d.added, vec!["r1".to_string()]);
    }
}
