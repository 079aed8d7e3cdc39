//! The serving plumbing every service shares: health starts NOT_SERVING, flips to SERVING once
//! dependencies answer, returns to NOT_SERVING on shutdown, and the server drains and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent_learning_server::{GrpcServer, ServerLimits};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test]
async fn health_follows_readiness_and_shutdown() {
    let mut server = GrpcServer::new(ServerLimits {
        max_message_bytes: 1 << 20,
        concurrency_limit_per_connection: 8,
        max_in_flight: 0,
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(2),
    })
    .unwrap();
    server.track(agent_learning_proto::service_names::CURATOR);
    let ready = Arc::new(AtomicBool::new(false));
    let readiness = server.readiness();
    let flag = ready.clone();
    tokio::spawn(readiness.serve_when_ready(move || {
        let flag = flag.clone();
        async move {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("store not reachable yet")
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let curator = "agent_learning.v1.Curator";
    assert_eq!(
        status(&mut health, curator).await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        status(&mut health, "").await,
        ServingStatus::NotServing as i32
    );

    ready.store(true, Ordering::SeqCst);
    let mut flipped = false;
    for _ in 0..100 {
        if status(&mut health, curator).await == ServingStatus::Serving as i32 {
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flipped, "health never flipped to SERVING");
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving as i32);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("server exits after the grace period")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
