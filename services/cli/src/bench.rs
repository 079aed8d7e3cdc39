//! What the benchmark binaries share: an all-in-one server on the embedded backends, in a
//! temporary data dir, whose model answers instantly; demos; a training run driven to its end.

use std::sync::Arc;
use std::time::Duration;

use agent_learning_config::{Settings, Sources};
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::coordinator_client::CoordinatorClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::all::serve_all_with;

/// A served all-in-one process on loopback; its data dir goes with it.
pub struct BenchServer {
    pub url: String,
    stop: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
    overrides: Vec<(String, String)>,
}

impl BenchServer {
    /// Serves every service on a free loopback port, with settings `overrides` over the
    /// defaults, and returns once it answers health checks.
    pub async fn start(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let overrides = overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_in(tempfile::tempdir()?, overrides).await
    }

    /// Stops serving and serves again on the same data dir and settings, as a process
    /// restarted on its record would.
    pub async fn restart(self) -> anyhow::Result<Self> {
        self.stop.cancel();
        self.server.await??;
        Self::start_in(self.dir, self.overrides).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        overrides: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            ("data_dir".to_owned(), dir.path().display().to_string()),
            ("telemetry.log_filter".to_owned(), "error".to_owned()),
        ];
        all.extend(overrides.iter().cloned());
        let settings = Settings::load(&Sources {
            file: None,
            overrides: all,
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let server = tokio::spawn(async move {
            serve_all_with(
                &settings,
                listener,
                token.cancelled_owned(),
                None,
                Arc::new(InstantModel),
            )
            .await
        });
        crate::health::wait_serving(&url, "", Duration::from_secs(300)).await?;
        Ok(Self {
            url,
            stop,
            server,
            dir,
            overrides,
        })
    }

    /// Trains `ns` on `demos_jsonl` and waits for the run's end: its summary when it
    /// succeeded, an error with the run's otherwise.
    pub async fn train(
        &self,
        ns: &str,
        env: &str,
        demos_jsonl: String,
        config_json: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let mut c = CoordinatorClient::connect(self.url.clone())
            .await?
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let run = c
            .start_training(pb::StartTrainingRequest {
                namespace: ns.to_owned(),
                demos_jsonl,
                env: env.to_owned(),
                config_json: config_json.to_owned(),
            })
            .await?
            .into_inner();
        let run = loop {
            let r = c
                .get_run(pb::GetRunRequest {
                    run_id: run.id.clone(),
                })
                .await?
                .into_inner();
            if r.state != pb::RunState::Running as i32 && r.state != pb::RunState::Pending as i32 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        anyhow::ensure!(
            run.state == pb::RunState::Succeeded as i32,
            "training failed: {}",
            run.error
        );
        Ok(serde_json::from_str(&run.summary_json)?)
    }

    /// Stops serving and returns how the server ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await?
    }
}

/// `n` expert demos of a built-in environment, as demo file text.
pub fn demo_text(env: &str, n: usize, seed: u64) -> anyhow::Result<String> {
    let demos = agent_learning_envs::generate_demos(env, n, seed)?;
    let mut buf = Vec::new();
    agent_learning_envs::write_demos(&mut buf, &demos)?;
    Ok(String::from_utf8(buf)?)
}
