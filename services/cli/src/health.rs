//! `agent-learning health`: the gRPC health of a running server, as an exit code for
//! container healthchecks and scripts (0 when SERVING).

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The status `service` (a full gRPC service name; empty for the whole server) reports at
/// `url`.
pub async fn status(url: &str, service: &str, timeout: Duration) -> anyhow::Result<ServingStatus> {
    let channel = agent_learning_api::endpoint(url)
        .with_context(|| format!("server url {url:?}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health of {:?} at {url}", service))?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown))
}

/// Waits until `service` at `url` reports SERVING (a server answers NOT_SERVING while it loads
/// models and opens its backends), for at most `within`.
pub async fn wait_serving(url: &str, service: &str, within: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let last = match status(url, service, Duration::from_secs(5)).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(other) => other.as_str_name().to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > within {
            anyhow::bail!(
                "{service} at {url} did not report SERVING within {}s (last: {last})",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
