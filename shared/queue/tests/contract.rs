//! One contract, two implementations: every test runs against the embedded (SQLite-backed)
//! queue and against Redis on 127.0.0.1:6379 (`REDIS_URL` to change).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_learning_queue::{
    ConsumerOptions, EmbeddedQueue, Queue, QueueError, QueueOptions, RedisQueue, consume,
};
use agent_learning_store::Store;
use tokio_util::sync::CancellationToken;

type Opened = Pin<Box<dyn Future<Output = Arc<dyn Queue>> + Send>>;

/// Opens a queue over the same durable state each time it is called.
trait Opener: Fn(QueueOptions) -> Opened + Send + Sync {}
impl<T: Fn(QueueOptions) -> Opened + Send + Sync> Opener for T {}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn embedded(path: PathBuf) -> impl Opener {
    move |opts| {
        let path = path.clone();
        Box::pin(async move {
            let store = Store::open_sqlite(&path, 2).await.expect("sqlite store");
            Arc::new(EmbeddedQueue::new(store, opts)) as Arc<dyn Queue>
        })
    }
}

fn redis() -> impl Opener {
    move |opts| {
        Box::pin(async move {
            Arc::new(
                RedisQueue::connect(&redis_url(), opts)
                    .await
                    .expect("Redis on 127.0.0.1:6379 (start it, or set REDIS_URL)"),
            ) as Arc<dyn Queue>
        })
    }
}

fn stream() -> String {
    format!("test:{}", uuid::Uuid::new_v4())
}

fn fast(max_deliveries: u32) -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_millis(150),
        max_deliveries,
    }
}

const NO_WAIT: Duration = Duration::ZERO;

async fn delivers_once_per_group_and_acks(open: impl Opener) {
    let q = open(QueueOptions::default()).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    q.ensure_group(&s, "g").await.unwrap(); // idempotent
    for i in 0..5 {
        q.publish(&s, &format!("k{i}"), format!("p{i}").as_bytes())
            .await
            .unwrap();
    }
    // A group created after publication still sees everything from the start.
    q.ensure_group(&s, "other").await.unwrap();
    let a = q.read(&s, "g", "a", 3, NO_WAIT).await.unwrap();
    let b = q.read(&s, "g", "b", 10, NO_WAIT).await.unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(
        b.len(),
        2,
        "the second consumer gets the rest, not the same entries"
    );
    let keys: Vec<_> = a.iter().chain(&b).map(|d| d.key.clone()).collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    assert_eq!(a[1].payload, b"p1");
    assert!(a.iter().chain(&b).all(|d| d.deliveries == 1));
    let other = q.read(&s, "other", "x", 10, NO_WAIT).await.unwrap();
    assert_eq!(other.len(), 5, "each group gets every entry");

    let lag = q.lag(&s, "g").await.unwrap();
    assert_eq!((lag.undelivered, lag.pending), (0, 5));
    let ids: Vec<String> = a.iter().chain(&b).map(|d| d.id.clone()).collect();
    q.ack(&s, "g", &ids).await.unwrap();
    q.ack(&s, "g", &ids).await.unwrap(); // acking twice is harmless
    assert!(q.lag(&s, "g").await.unwrap().drained());
    assert!(q.read(&s, "g", "a", 10, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(q.lag(&s, "other").await.unwrap().pending, 5);
}

async fn blocking_read_wakes_on_publish(open: impl Opener) {
    let q = open(QueueOptions::default()).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    let reader = {
        let q = q.clone();
        let s = s.clone();
        tokio::spawn(async move { q.read(&s, "g", "a", 1, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.publish(&s, "late", b"x").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(9), reader)
        .await
        .expect("the blocked read returns once an entry arrives")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "late");
    // And a read with nothing to deliver gives up after its block time.
    let empty = q
        .read(&s, "g", "a", 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(empty.is_empty());
}

async fn an_idle_blocking_read_waits_its_block_time_without_error(open: impl Opener) {
    // Longer than any client-side response timeout a connection may carry by default (the
    // redis crate's is 500 ms): an idle consumer's read must end empty, not in an error.
    let q = open(QueueOptions::default()).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    for _ in 0..2 {
        let empty = q
            .read(&s, "g", "a", 1, Duration::from_millis(1500))
            .await
            .unwrap();
        assert!(empty.is_empty());
    }
    // The connection that waited still works.
    q.publish(&s, "after", b"x").await.unwrap();
    let got = q
        .read(&s, "g", "a", 1, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "after");
}

async fn stale_entries_are_claimed_by_another_consumer(open: impl Opener) {
    let q = open(fast(5)).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    q.publish(&s, "job", b"work").await.unwrap();
    let first = q.read(&s, "g", "crashed", 1, NO_WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        q.claim_stale(&s, "g", "rescuer", 10)
            .await
            .unwrap()
            .is_empty(),
        "not claimable before the visibility timeout"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claimed = q.claim_stale(&s, "g", "rescuer", 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, first[0].id);
    assert_eq!(claimed[0].key, "job");
    assert_eq!(claimed[0].payload, b"work");
    assert_eq!(claimed[0].deliveries, 2);
    q.ack(&s, "g", &[claimed[0].id.clone()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        q.claim_stale(&s, "g", "rescuer", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(q.lag(&s, "g").await.unwrap().drained());
}

async fn dead_letters_after_max_deliveries(open: impl Opener) {
    let q = open(fast(2)).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    q.publish(&s, "poison", b"bad").await.unwrap();
    q.publish(&s, "fine", b"ok").await.unwrap();
    let got = q.read(&s, "g", "a", 2, NO_WAIT).await.unwrap();
    q.ack(&s, "g", &[got[1].id.clone()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = q.claim_stale(&s, "g", "b", 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].deliveries, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = q.claim_stale(&s, "g", "c", 10).await.unwrap();
    assert!(
        third.is_empty(),
        "delivered twice already: dead-lettered, not delivered"
    );
    let dead = q.dead_letters(&s, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "poison");
    assert_eq!(dead[0].payload, b"bad");
    let lag = q.lag(&s, "g").await.unwrap();
    assert_eq!((lag.undelivered, lag.pending, lag.dead), (0, 0, 1));
}

async fn survives_reopening(open: impl Opener) {
    let s = stream();
    {
        let q = open(fast(5)).await;
        q.ensure_group(&s, "g").await.unwrap();
        for k in ["a", "b", "c"] {
            q.publish(&s, k, k.as_bytes()).await.unwrap();
        }
        let got = q.read(&s, "g", "dies", 2, NO_WAIT).await.unwrap();
        q.ack(&s, "g", &[got[0].id.clone()]).await.unwrap();
        // Dropped here with "b" pending and "c" never delivered, as a crash would leave it.
    }
    let q = open(fast(5)).await;
    let fresh = q.read(&s, "g", "new", 10, NO_WAIT).await.unwrap();
    assert_eq!(
        fresh.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    q.ack(&s, "g", &[fresh[0].id.clone()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claimed = q.claim_stale(&s, "g", "new", 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
}

async fn unknown_group_is_an_error(open: impl Opener) {
    let q = open(QueueOptions::default()).await;
    let s = stream();
    q.publish(&s, "k", b"p").await.unwrap();
    let err = q.read(&s, "nobody", "a", 1, NO_WAIT).await.unwrap_err();
    assert!(matches!(err, QueueError::NoGroup { .. }), "{err}");
    let err = q.ensure_group(&s, " ").await.unwrap_err();
    assert!(err.to_string().contains("group"), "{err}");
}

async fn consumer_loop_retries_failures(open: impl Opener) {
    let q = open(fast(5)).await;
    let s = stream();
    q.ensure_group(&s, "g").await.unwrap();
    for i in 0..4 {
        q.publish(&s, &format!("k{i}"), b"x").await.unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let flaky = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = {
        let (calls, handled, flaky) = (calls.clone(), handled.clone(), flaky.clone());
        tokio::spawn(consume(
            q.clone(),
            ConsumerOptions {
                stream: s.clone(),
                group: "g".into(),
                consumer: "loop".into(),
                batch: 2,
                block: Duration::from_millis(50),
            },
            stop.clone(),
            move |d| {
                let (calls, handled, flaky) = (calls.clone(), handled.clone(), flaky.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // k1 fails on every attempt of its first delivery (a handler whose model
                    // is down): left pending, then delivered again after the timeout.
                    if d.key == "k1" && d.deliveries == 1 {
                        anyhow::bail!("model down");
                    }
                    // k2 fails once (a busy database): retried in place, same delivery.
                    if d.key == "k2" && !flaky.swap(true, Ordering::SeqCst) {
                        anyhow::bail!("busy");
                    }
                    handled.lock().unwrap().push(d.key);
                    Ok(())
                }
            },
        ))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.lock().unwrap().len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let mut got = handled.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["k0", "k1", "k2", "k3"]);
    // k1: 3 attempts on its first delivery, 1 on its second; k2: 2 attempts; k0, k3: 1 each.
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert!(q.lag(&s, "g").await.unwrap().drained());
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded_queue {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::embedded(dir.path().join("q.db"))).await;
                }
            )*
        }
        mod redis_queue {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis()).await;
                }
            )*
        }
    };
}

contract!(
    delivers_once_per_group_and_acks,
    blocking_read_wakes_on_publish,
    an_idle_blocking_read_waits_its_block_time_without_error,
    stale_entries_are_claimed_by_another_consumer,
    dead_letters_after_max_deliveries,
    survives_reopening,
    unknown_group_is_an_error,
    consumer_loop_retries_failures,
);

/// The embedded queue where several processes share PostgreSQL: two queue instances with their
/// own pools (as two processes have), two consumers each, reading one group at once. Every
/// entry is delivered exactly once: a read locks the group's row for its transaction.
#[tokio::test]
async fn embedded_queue_on_postgres_delivers_each_entry_once_across_processes() {
    let db = agent_learning_store::testsuite::TestDatabase::create("queue").await;
    let url = db.url.clone();
    let opts = QueueOptions {
        visibility_timeout: Duration::from_secs(300),
        max_deliveries: 5,
    };
    let a: Arc<dyn Queue> = Arc::new(EmbeddedQueue::new(
        Store::connect(&url, 4).await.unwrap(),
        opts,
    ));
    let b: Arc<dyn Queue> = Arc::new(EmbeddedQueue::new(
        Store::connect(&url, 4).await.unwrap(),
        opts,
    ));
    let s = stream();
    a.ensure_group(&s, "g").await.unwrap();
    const N: usize = 200;
    for i in 0..N {
        a.publish(&s, &format!("k{i}"), b"x").await.unwrap();
    }
    let consumers = [(&a, "a1"), (&a, "a2"), (&b, "b1"), (&b, "b2")].map(|(q, name)| {
        let (q, s) = (q.clone(), s.clone());
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let batch = q.read(&s, "g", name, 5, NO_WAIT).await.unwrap();
                if batch.is_empty() {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                empty = 0;
                let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                q.ack(&s, "g", &ids).await.unwrap();
                got.extend(batch.into_iter().map(|d| d.key));
            }
            got
        })
    });
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for c in consumers {
        let got = c.await.unwrap();
        per_consumer.push(got.len());
        all.extend(got);
    }
    let unique: std::collections::BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), N, "no entry delivered twice: {per_consumer:?}");
    assert_eq!(unique.len(), N, "every entry delivered");
    assert!(a.lag(&s, "g").await.unwrap().drained());
    drop((a, b));
    db.drop_database().await;
}
