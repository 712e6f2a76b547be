//! The layout check for maps pinned by an earlier agent: a build whose maps differ in key size,
//! value size or capacity must not attach programs to old maps (they would read garbage), so the
//! agent refuses to start and says what to do.

use std::path::Path;

use aya::maps::MapInfo;

use super::EngineError;

/// Shape of a map: what must match between a pin and the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Key size in bytes.
    pub key: u32,
    /// Value size in bytes.
    pub value: u32,
    /// Capacity.
    pub entries: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {} B, value {} B, {} entries",
            self.key, self.value, self.entries
        )
    }
}

/// Compares every map pinned in `map_dir` with the same-named map of `object`.
pub fn check(object: &[u8], map_dir: &Path) -> Result<(), EngineError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| EngineError::Map {
        name: "object",
        reason: format!("cannot read the map definitions: {e}"),
    })?;
    for &name in agent_common::maps::PINNED {
        let pin = map_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let Some(def) = obj.maps.get(name) else {
            continue;
        };
        let wants = Shape {
            key: def.key_size(),
            value: def.value_size(),
            entries: def.max_entries(),
        };
        let info = MapInfo::from_pin(&pin).map_err(|e| EngineError::Pin {
            path: pin.clone(),
            reason: format!("cannot read the pinned map: {e}"),
        })?;
        let pinned = Shape {
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
        };
        if pinned != wants && statistics_only(name) {
            // Nothing is lost but counts, which start again from zero (Prometheus sees a
            // counter reset); the old programs keep the old map until they are replaced.
            tracing::info!(map = name, was = %pinned, now = %wants, "kernel counters resized; they start from zero");
            std::fs::remove_file(&pin).map_err(|e| EngineError::Pin {
                path: pin.clone(),
                reason: format!("cannot remove the old counters: {e}"),
            })?;
            continue;
        }
        compare(name, &pin, pinned, wants)?;
    }
    Ok(())
}

/// Whether a pinned map holds statistics only, so that a build whose map differs replaces it
/// rather than refusing to start (a new counter is not worth an operator's intervention).
pub fn statistics_only(name: &str) -> bool {
    name == agent_common::maps::COUNTERS
}

/// The decision for one map, apart from the kernel so it can be tested without one.
pub fn compare(
    name: &'static str,
    pin: &Path,
    pinned: Shape,
    wants: Shape,
) -> Result<(), EngineError> {
    if pinned == wants {
        return Ok(());
    }
    Err(EngineError::Layout {
        name,
        pin: pin.to_path_buf(),
        pinned: pinned.to_string(),
        wants: wants.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_counters_are_replaced_when_their_shape_changes() {
        assert!(statistics_only(agent_common::maps::COUNTERS));
        for &name in agent_common::maps::PINNED {
            if name != agent_common::maps::COUNTERS {
                assert!(!statistics_only(name), "{name} holds state");
            }
        }
    }

    #[test]
    fn a_changed_shape_is_refused_with_what_to_do() {
        let a = Shape {
            key: 4,
            value: 40,
            entries: 16_384,
        };
        let b = Shape { value: 64, ..a };
        assert!(compare("PENDING", Path::new("/x/PENDING"), a, a).is_ok());
        let e = compare("PENDING", Path::new("/x/PENDING"), a, b)
            .expect_err("different value size")
            .to_string();
        assert!(e.contains("PENDING"), "{e}");
        assert!(e.contains("value 40 B") && e.contains("value 64 B"), "{e}");
        assert!(
            e.contains("latch-agent release") && e.contains("/x/PENDING"),
            "{e}"
        );
    }
}
