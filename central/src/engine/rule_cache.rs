//! Parsed rule sets by version, so that a version is parsed once per replica.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use policy::RuleSet;

/// Parsed rule sets by version.
#[derive(Default)]
pub struct RuleCache(pub(crate) Mutex<HashMap<i64, Arc<RuleSet>>>);
