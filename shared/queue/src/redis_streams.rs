//! Redis Streams: XADD, XREADGROUP/XACK, XPENDING + XAUTOCLAIM for entries a crashed consumer
//! left pending, and a `<stream>:dead` stream for entries delivered too many times.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{Client, Value};
use tokio::sync::Mutex;

use crate::{
    Delivery, Lag, Queue, QueueError, QueueOptions, Result, check_names, dead_letter_stream,
};

const KEY: &str = "key";
const PAYLOAD: &str = "payload";

pub struct RedisQueue {
    client: Client,
    /// Non-blocking commands share one auto-reconnecting connection.
    conn: ConnectionManager,
    /// Blocking reads hold a connection for their duration; kept here for reuse.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    opts: QueueOptions,
}

/// PEM files for a `rediss://` connection.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CAs trusted for the server; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key presented to a server that asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How long a blocking read may take beyond its block time before it counts as failed.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);
const BLOCKING_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisQueue {
    pub async fn connect(url: &str, opts: QueueOptions) -> Result<Self> {
        Self::connect_tls(url, opts, &RedisTls::default()).await
    }

    /// As [`RedisQueue::connect`]; a `rediss://` URL trusts `tls.ca` (else the system's roots)
    /// and presents `tls.identity` when set.
    pub async fn connect_tls(url: &str, opts: QueueOptions, tls: &RedisTls) -> Result<Self> {
        let client = if url.starts_with("rediss://") {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            if tls.ca.is_some() || tls.identity.is_some() {
                Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: tls.identity.as_ref().map(|(cert, key)| {
                            redis::ClientTlsConfig {
                                client_cert: cert.clone(),
                                client_key: key.clone(),
                            }
                        }),
                        root_cert: tls.ca.clone(),
                    },
                )?
            } else {
                Client::open(url)?
            }
        } else {
            Client::open(url)?
        };
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            opts,
        })
    }

    /// Deletes the stream and its dead-letter stream. For tests.
    pub async fn delete_stream(&self, stream: &str) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("DEL")
            .arg(stream)
            .arg(dead_letter_stream(stream))
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Result<String> {
    bytes(v)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| QueueError::Protocol(format!("expected a string, got {v:?}")))
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => string(other)?
            .parse()
            .map_err(|_| QueueError::Protocol(format!("expected an integer, got {other:?}"))),
    }
}

fn array(v: &Value) -> Result<&[Value]> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(&[]),
        other => Err(QueueError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// `[id, [field, value, ...]]` entries; deleted entries (nil fields) are skipped.
fn entries(v: &Value, deliveries: &HashMap<String, u32>) -> Result<Vec<Delivery>> {
    let mut out = Vec::new();
    for e in array(v)? {
        let pair = array(e)?;
        let [id, fields] = pair else {
            return Err(QueueError::Protocol(format!("stream entry {e:?}")));
        };
        let id = string(id)?;
        if matches!(fields, Value::Nil) {
            continue;
        }
        let fields = array(fields)?;
        let mut key = None;
        let mut payload = None;
        for kv in fields.chunks_exact(2) {
            match string(&kv[0])?.as_str() {
                KEY => key = Some(string(&kv[1])?),
                PAYLOAD => payload = bytes(&kv[1]),
                _ => {}
            }
        }
        let (Some(key), Some(payload)) = (key, payload) else {
            return Err(QueueError::Protocol(format!(
                "entry {id} lacks the {KEY:?} or {PAYLOAD:?} field"
            )));
        };
        out.push(Delivery {
            deliveries: deliveries.get(&id).copied().unwrap_or(1),
            id,
            key,
            payload,
        });
    }
    Ok(out)
}

fn is_busygroup(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

fn map_nogroup(e: redis::RedisError, stream: &str, group: &str) -> QueueError {
    if e.code() == Some("NOGROUP") {
        QueueError::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        }
    } else {
        e.into()
    }
}

#[async_trait]
impl Queue for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut c).await?;
        Ok(())
    }

    fn options(&self) -> &QueueOptions {
        &self.opts
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        check_names(stream, group)?;
        let mut c = self.conn.clone();
        match redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut c)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_busygroup(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish(&self, stream: &str, key: &str, payload: &[u8]) -> Result<String> {
        check_names(stream, "-")?;
        let mut c = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(KEY)
            .arg(key)
            .arg(PAYLOAD)
            .arg(payload)
            .query_async(&mut c)
            .await?;
        Ok(id)
    }

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        check_names(stream, group)?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        let blocking = !block.is_zero();
        if blocking {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        let reply: Value = if blocking {
            // A blocked command holds its connection: never block the shared one. These
            // connections have no response timeout of their own (the client's default, 500 ms,
            // cut every idle BLOCK longer than that into an error); the wait is bounded here,
            // by the block time and a margin for the round trip.
            let pooled = self.blocking.lock().await.pop();
            let mut c = match pooled {
                Some(c) => c,
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_response_timeout(None)
                        .set_connection_timeout(Some(BLOCKING_CONNECT_TIMEOUT));
                    self.client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?
                }
            };
            let reply = tokio::time::timeout(block + BLOCKING_MARGIN, cmd.query_async(&mut c))
                .await
                .map_err(|_| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "XREADGROUP BLOCK: no reply within the block time and its margin",
                    ))
                })?
                .map_err(|e| map_nogroup(e, stream, group))?;
            // Only a connection that answered goes back to the pool.
            self.blocking.lock().await.push(c);
            reply
        } else {
            let mut c = self.conn.clone();
            cmd.query_async(&mut c)
                .await
                .map_err(|e| map_nogroup(e, stream, group))?
        };
        // [[stream, [entries...]]] or nil on timeout.
        let mut out = Vec::new();
        for s in array(&reply)? {
            if let [_, es] = array(s)? {
                out.extend(entries(es, &HashMap::new())?);
            }
        }
        Ok(out)
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        check_names(stream, group)?;
        let mut c = self.conn.clone();
        let idle_ms = self.opts.visibility_timeout.as_millis() as u64;
        // Delivery counts first: XAUTOCLAIM does not report them.
        let pending: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(count.max(1))
            .query_async(&mut c)
            .await
            .map_err(|e| map_nogroup(e, stream, group))?;
        let mut counts = HashMap::new();
        let mut exhausted = Vec::new();
        for p in array(&pending)? {
            let [id, _consumer, _idle, times] = array(p)? else {
                return Err(QueueError::Protocol(format!("XPENDING entry {p:?}")));
            };
            let id = string(id)?;
            let times = u32::try_from(int(times)?).unwrap_or(u32::MAX);
            if times >= self.opts.max_deliveries {
                exhausted.push(id);
            } else {
                counts.insert(id, times + 1);
            }
        }
        let dead = dead_letter_stream(stream);
        for id in exhausted {
            let range: Value = redis::cmd("XRANGE")
                .arg(stream)
                .arg(&id)
                .arg(&id)
                .query_async(&mut c)
                .await?;
            for e in entries(&range, &HashMap::new())? {
                redis::cmd("XADD")
                    .arg(&dead)
                    .arg("*")
                    .arg(KEY)
                    .arg(&e.key)
                    .arg(PAYLOAD)
                    .arg(&e.payload)
                    .query_async::<String>(&mut c)
                    .await?;
                tracing::warn!(%stream, %group, %id, key = %e.key, "dead-lettered");
            }
            redis::cmd("XACK")
                .arg(stream)
                .arg(group)
                .arg(&id)
                .query_async::<i64>(&mut c)
                .await?;
        }
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut c)
            .await
            .map_err(|e| map_nogroup(e, stream, group))?;
        // [next-cursor, [entries...], [deleted ids...]]
        let parts = array(&reply)?;
        let Some(claimed) = parts.get(1) else {
            return Err(QueueError::Protocol(format!("XAUTOCLAIM reply {reply:?}")));
        };
        let mut got = entries(claimed, &counts)?;
        // An entry that went idle between XPENDING and XAUTOCLAIM has its count unknown here:
        // it was delivered at least twice.
        for d in &mut got {
            if !counts.contains_key(&d.id) {
                d.deliveries = d.deliveries.max(2);
            }
        }
        Ok(got)
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<()> {
        check_names(stream, group)?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(ids)
            .query_async::<i64>(&mut c)
            .await
            .map_err(|e| map_nogroup(e, stream, group))?;
        Ok(())
    }

    async fn lag(&self, stream: &str, group: &str) -> Result<Lag> {
        check_names(stream, group)?;
        let mut c = self.conn.clone();
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut c)
            .await?;
        let mut found = None;
        for g in array(&groups)? {
            let fields = array(g)?;
            let mut map = HashMap::new();
            for kv in fields.chunks_exact(2) {
                map.insert(string(&kv[0])?, kv[1].clone());
            }
            if map.get("name").map(string).transpose()?.as_deref() == Some(group) {
                found = Some(map);
                break;
            }
        }
        let Some(info) = found else {
            return Err(QueueError::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            });
        };
        let pending = info.get("pending").map(int).transpose()?.unwrap_or(0);
        // Redis >= 7 reports the lag; nil when it cannot tell (after deletions).
        let undelivered = match info.get("lag") {
            Some(Value::Nil) | None => {
                let last = info.get("last-delivered-id").map(string).transpose()?;
                let after = last.map(|l| format!("({l}")).unwrap_or_else(|| "-".into());
                let rest: Value = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(after)
                    .arg("+")
                    .query_async(&mut c)
                    .await?;
                array(&rest)?.len() as i64
            }
            Some(v) => int(v)?,
        };
        let dead: i64 = redis::cmd("XLEN")
            .arg(dead_letter_stream(stream))
            .query_async(&mut c)
            .await?;
        Ok(Lag {
            undelivered: undelivered.max(0) as u64,
            pending: pending.max(0) as u64,
            dead: dead.max(0) as u64,
        })
    }

    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<Delivery>> {
        check_names(stream, "-")?;
        let mut c = self.conn.clone();
        let range: Value = redis::cmd("XRANGE")
            .arg(dead_letter_stream(stream))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut c)
            .await?;
        let mut out = entries(&range, &HashMap::new())?;
        for d in &mut out {
            d.deliveries = 0;
        }
        Ok(out)
    }
}
