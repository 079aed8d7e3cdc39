//! The curator's side of the reflections stream: each valid reflection becomes one insight,
//! curated under the reflection's id, so a redelivered reflection changes nothing. A live run
//! with `curate_every` above 1 has its insights curated in batches of that many.

use std::sync::Arc;
use std::time::Duration;

use agent_learning_domain::Insight;
use agent_learning_proto::v1::Reflection;
use agent_learning_queue::{ConsumerOptions, Queue, consume, streams};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Curator, CuratorError, unless_refused};

/// Words that mark a conclusion as a mistake to avoid rather than a strategy to follow.
const AVOID: [&str; 6] = [
    "avoid",
    "never",
    "do not",
    "don't",
    "must not",
    "instead of",
];

/// The insight a reflection teaches: its conclusion, filed under "mistakes" when it warns
/// against something and that section exists, else under the first configured section.
pub fn insight_from_reflection(
    r: &Reflection,
    sections: &[String],
    max_bytes: usize,
) -> Option<Insight> {
    if !r.valid || r.conclusion.trim().is_empty() {
        return None;
    }
    let lower = r.conclusion.to_lowercase();
    let warns = AVOID.iter().any(|w| lower.contains(w));
    let section = sections
        .iter()
        .find(|s| warns && s.as_str() == "mistakes")
        .or_else(|| sections.first())?
        .clone();
    let content = agent_learning_domain::clip_bytes(r.conclusion.trim(), max_bytes).to_owned();
    Some(Insight {
        id: r.id.clone(),
        section,
        content,
        source: format!("run:{} reflection:{}", r.run_id, r.id),
    })
}

/// Consumes the reflections stream until `shutdown`.
pub async fn consume_reflections(
    curator: Arc<Curator>,
    queue: Arc<dyn Queue>,
    consumer: String,
    block: Duration,
    shutdown: CancellationToken,
) {
    let opts = ConsumerOptions {
        stream: streams::REFLECTIONS.into(),
        group: streams::CURATORS.into(),
        consumer,
        batch: 16,
        block,
    };
    consume(queue, opts, shutdown, move |d| {
        let curator = curator.clone();
        async move {
            let r = match Reflection::decode(d.payload.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    // Undecodable forever: acknowledged so it does not block the stream.
                    warn!(key = %d.key, error = %e, "reflection entry is not a Reflection; skipped");
                    return Ok(());
                }
            };
            // A cancelled run's reflections are dropped, not curated.
            if !r.run_id.is_empty() && curator.run_cancelled(&r.run_id).await? {
                info!(reflection = %r.id, run = %r.run_id, "run cancelled; reflection skipped");
                return Ok(());
            }
            let o = curator.options();
            let Some(insight) = insight_from_reflection(&r, &o.sections, o.max_content_bytes)
            else {
                return Ok(());
            };
            let taken = curator
                .curate_reflection(&r.run_id, &r.namespace, insight)
                .await;
            if let Some(ops) = unless_refused(taken, "reflection", &r.id)? {
                info!(reflection = %r.id, namespace = %r.namespace, ops, "taken");
            }
            Ok::<(), CuratorError>(())
        }
    })
    .await;
}

/// Until `shutdown`, every `every`: curates the batches that should not wait longer (their
/// run ended, or their oldest insight waited `max_wait`), and drops a cancelled run's.
pub async fn flush_stale_batches(
    curator: Arc<Curator>,
    every: Duration,
    max_wait: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = curator.flush_stale(max_wait).await {
            warn!(error = %e, "curating waiting batches; retried at the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reflection(conclusion: &str, valid: bool) -> Reflection {
        Reflection {
            id: "r1".into(),
            namespace: "ns".into(),
            conclusion: conclusion.into(),
            valid,
            run_id: "run".into(),
            ..Default::default()
        }
    }

    #[test]
    fn conclusions_become_insights_in_the_right_section() {
        let sections = vec!["strategy".to_owned(), "mistakes".to_owned()];
        let i = insight_from_reflection(
            &reflection("Brake early near a red light.", true),
            &sections,
            100,
        )
        .expect("valid reflection");
        assert_eq!((i.id.as_str(), i.section.as_str()), ("r1", "strategy"));
        let i = insight_from_reflection(
            &reflection("Never accelerate at a red light.", true),
            &sections,
            100,
        )
        .expect("valid reflection");
        assert_eq!(i.section, "mistakes");
        assert!(insight_from_reflection(&reflection("x", false), &sections, 100).is_none());
        let long = "é".repeat(100);
        let i = insight_from_reflection(&reflection(&long, true), &sections, 51).expect("valid");
        assert_eq!(i.content.len(), 50, "cut on a character boundary");
    }
}
