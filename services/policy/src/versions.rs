//! The policy versions Decide uses, kept in memory so that a decision does not read the record
//! for them. A numbered version never changes: it is read once. A namespace's latest is read
//! again once it is [`LATEST_TTL`] old, so a version another replica compiles is picked up
//! within that; one this replica compiles, at once. A namespace with no policy is never
//! remembered: it is asked again on each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_learning_domain::PolicyVersion;

/// How long a namespace's latest version is used before the record is read again.
pub(crate) const LATEST_TTL: Duration = Duration::from_secs(1);
/// Namespaces kept; past it, all are forgotten and read again as needed.
const MAX_NAMESPACES: usize = 4096;

#[derive(Default)]
struct Kept {
    latest: Option<(Instant, Arc<PolicyVersion>)>,
    numbered: HashMap<i64, Arc<PolicyVersion>>,
}

#[derive(Default)]
pub(crate) struct Versions {
    by_ns: Mutex<HashMap<String, Kept>>,
}

impl Versions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Kept>> {
        self.by_ns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept version (`None`: the latest), if it is still good.
    pub(crate) fn get(&self, ns: &str, version: Option<i64>) -> Option<Arc<PolicyVersion>> {
        let by_ns = self.lock();
        let kept = by_ns.get(ns)?;
        match version {
            Some(v) => kept.numbered.get(&v).cloned(),
            None => kept
                .latest
                .as_ref()
                .filter(|(at, _)| at.elapsed() < LATEST_TTL)
                .map(|(_, p)| p.clone()),
        }
    }

    /// Keeps what the record answered for `(ns, version)` and returns it.
    pub(crate) fn read(
        &self,
        ns: &str,
        version: Option<i64>,
        p: PolicyVersion,
    ) -> Arc<PolicyVersion> {
        let p = Arc::new(p);
        let mut by_ns = self.lock();
        if by_ns.len() >= MAX_NAMESPACES && !by_ns.contains_key(ns) {
            by_ns.clear();
        }
        let kept = by_ns.entry(ns.to_owned()).or_default();
        kept.numbered.insert(p.version, p.clone());
        if version.is_none() {
            kept.latest = Some((Instant::now(), p.clone()));
        }
        p
    }

    /// A version this replica just compiled: the namespace's latest from now on.
    pub(crate) fn compiled(&self, p: &PolicyVersion) {
        let mut by_ns = self.lock();
        let Some(kept) = by_ns.get_mut(&p.namespace) else {
            return; // nothing kept to replace: the next Decide reads it
        };
        let p = Arc::new(p.clone());
        kept.numbered.insert(p.version, p.clone());
        if kept
            .latest
            .as_ref()
            .is_none_or(|(_, l)| l.version < p.version)
        {
            kept.latest = Some((Instant::now(), p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_learning_domain::Stage;

    fn version(ns: &str, v: i64) -> PolicyVersion {
        PolicyVersion {
            namespace: ns.into(),
            version: v,
            instructions_template: format!("template {v}"),
            exemplars_k: 3,
            min_stage: Stage::Staging,
            token_budget: 100,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn numbered_versions_stay_and_the_latest_expires() {
        let kept = Versions::default();
        assert!(kept.get("ns", None).is_none(), "nothing read yet");
        kept.read("ns", None, version("ns", 2));
        assert_eq!(kept.get("ns", None).map(|p| p.version), Some(2));
        assert_eq!(kept.get("ns", Some(2)).map(|p| p.version), Some(2));
        assert!(kept.get("ns", Some(1)).is_none());
        assert!(kept.get("other", None).is_none());
        // Compiled here: the latest at once.
        kept.compiled(&version("ns", 3));
        assert_eq!(kept.get("ns", None).map(|p| p.version), Some(3));
        // An older version compiled late does not replace it.
        kept.compiled(&version("ns", 1));
        assert_eq!(kept.get("ns", None).map(|p| p.version), Some(3));
        assert_eq!(kept.get("ns", Some(1)).map(|p| p.version), Some(1));
        // The latest is asked for again once it is old; a numbered one is not.
        kept.lock()
            .get_mut("ns")
            .unwrap()
            .latest
            .as_mut()
            .unwrap()
            .0 -= LATEST_TTL;
        assert!(kept.get("ns", None).is_none());
        assert_eq!(kept.get("ns", Some(3)).map(|p| p.version), Some(3));
    }
}
