//! The embedded queue: streams, consumer groups and pending lists as tables of the relational
//! store, so a crash loses nothing that was published or delivered and not acknowledged.
//! Writers in this process are serialised by a lock; on PostgreSQL the group row is also
//! locked, so several processes may share one database.

use std::collections::HashMap;
use std::time::Duration;

use agent_learning_store::Store;
use agent_learning_store::entity::{queue_entry, queue_group, queue_pending};
use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use tokio::sync::{Mutex, Notify};

use crate::{
    Delivery, Lag, Queue, QueueError, QueueOptions, Result, check_names, dead_letter_stream,
};

pub struct EmbeddedQueue {
    store: Store,
    opts: QueueOptions,
    write: Mutex<()>,
    published: Notify,
}

impl EmbeddedQueue {
    pub fn new(store: Store, opts: QueueOptions) -> Self {
        Self {
            store,
            opts,
            write: Mutex::new(()),
            published: Notify::new(),
        }
    }

    async fn group(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        stream: &str,
        group: &str,
    ) -> Result<queue_group::Model> {
        queue_group::Entity::find_by_id((stream.to_owned(), group.to_owned()))
            .one(txn)
            .await?
            .ok_or_else(|| QueueError::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            })
    }

    /// Takes the group's write lock as the transaction's first statement: a no-op update. On
    /// SQLite the transaction then holds the write lock before reading (a read-then-write
    /// transaction could not upgrade after another writer committed); on PostgreSQL it locks
    /// the group's row against other processes.
    async fn lock_group(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        stream: &str,
        group: &str,
    ) -> Result<queue_group::Model> {
        queue_group::Entity::update_many()
            .col_expr(
                queue_group::Column::LastSeq,
                Expr::col(queue_group::Column::LastSeq),
            )
            .filter(queue_group::Column::Stream.eq(stream))
            .filter(queue_group::Column::GroupName.eq(group))
            .exec(txn)
            .await?;
        self.group(txn, stream, group).await
    }

    async fn try_read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let _w = self.write.lock().await;
        let txn = self.store.connection().begin().await?;
        let g = self.lock_group(&txn, stream, group).await?;
        let entries = queue_entry::Entity::find()
            .filter(queue_entry::Column::Stream.eq(stream))
            .filter(queue_entry::Column::Seq.gt(g.last_seq))
            .order_by_asc(queue_entry::Column::Seq)
            .limit(count as u64)
            .all(&txn)
            .await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        let now = Utc::now();
        for e in &entries {
            queue_pending::ActiveModel {
                stream: Set(stream.to_owned()),
                group_name: Set(group.to_owned()),
                seq: Set(e.seq),
                consumer: Set(consumer.to_owned()),
                deliveries: Set(1),
                delivered_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
        queue_group::ActiveModel {
            stream: Set(stream.to_owned()),
            group_name: Set(group.to_owned()),
            last_seq: Set(last),
        }
        .update(&txn)
        .await?;
        txn.commit().await?;
        Ok(entries
            .into_iter()
            .map(|e| Delivery {
                id: e.seq.to_string(),
                key: e.key,
                payload: e.payload,
                deliveries: 1,
            })
            .collect())
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<i64>> {
    ids.iter()
        .map(|id| {
            id.parse::<i64>().map_err(|_| QueueError::Invalid {
                field: "id",
                reason: format!("{id:?} is not an entry id of the embedded queue"),
            })
        })
        .collect()
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn options(&self) -> &QueueOptions {
        &self.opts
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        check_names(stream, group)?;
        let _w = self.write.lock().await;
        let exists = queue_group::Entity::find_by_id((stream.to_owned(), group.to_owned()))
            .one(self.store.connection())
            .await?
            .is_some();
        if !exists {
            queue_group::Entity::insert(queue_group::ActiveModel {
                stream: Set(stream.to_owned()),
                group_name: Set(group.to_owned()),
                last_seq: Set(0),
            })
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    queue_group::Column::Stream,
                    queue_group::Column::GroupName,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(self.store.connection())
            .await?;
        }
        Ok(())
    }

    async fn publish(&self, stream: &str, key: &str, payload: &[u8]) -> Result<String> {
        check_names(stream, "-")?;
        let entry = {
            let _w = self.write.lock().await;
            queue_entry::ActiveModel {
                stream: Set(stream.to_owned()),
                key: Set(key.to_owned()),
                payload: Set(payload.to_vec()),
                created_at: Set(Utc::now()),
                ..Default::default()
            }
            .insert(self.store.connection())
            .await?
        };
        self.published.notify_waiters();
        Ok(entry.seq.to_string())
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
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.published.notified();
            let got = self.try_read(stream, group, consumer, count.max(1)).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            // Publishers in other processes (a shared PostgreSQL) do not notify: poll as well.
            let poll = Duration::from_millis(200).min(deadline - tokio::time::Instant::now());
            let _ = tokio::time::timeout(poll, notified).await;
        }
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        check_names(stream, group)?;
        let _w = self.write.lock().await;
        let txn = self.store.connection().begin().await?;
        self.lock_group(&txn, stream, group).await?;
        let now = Utc::now();
        let visibility = chrono::Duration::from_std(self.opts.visibility_timeout)
            .unwrap_or(chrono::Duration::MAX);
        let stale = queue_pending::Entity::find()
            .filter(queue_pending::Column::Stream.eq(stream))
            .filter(queue_pending::Column::GroupName.eq(group))
            .filter(queue_pending::Column::DeliveredAt.lt(now - visibility))
            .order_by_asc(queue_pending::Column::Seq)
            .limit(count.max(1) as u64)
            .all(&txn)
            .await?;
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = stale.iter().map(|p| p.seq).collect();
        let entries: HashMap<i64, queue_entry::Model> = queue_entry::Entity::find()
            .filter(queue_entry::Column::Seq.is_in(seqs))
            .all(&txn)
            .await?
            .into_iter()
            .map(|e| (e.seq, e))
            .collect();
        let dead = dead_letter_stream(stream);
        let mut claimed = Vec::new();
        for p in stale {
            let entry = entries.get(&p.seq);
            let exhausted = p.deliveries >= i64::from(self.opts.max_deliveries);
            if exhausted || entry.is_none() {
                if let Some(e) = entry.filter(|_| exhausted) {
                    queue_entry::ActiveModel {
                        stream: Set(dead.clone()),
                        key: Set(e.key.clone()),
                        payload: Set(e.payload.clone()),
                        created_at: Set(now),
                        ..Default::default()
                    }
                    .insert(&txn)
                    .await?;
                    tracing::warn!(%stream, %group, seq = p.seq, key = %e.key, deliveries = p.deliveries, "dead-lettered");
                }
                queue_pending::Entity::delete_by_id((stream.to_owned(), group.to_owned(), p.seq))
                    .exec(&txn)
                    .await?;
                continue;
            }
            let Some(e) = entry else { continue };
            let deliveries = p.deliveries + 1;
            queue_pending::ActiveModel {
                stream: Set(stream.to_owned()),
                group_name: Set(group.to_owned()),
                seq: Set(p.seq),
                consumer: Set(consumer.to_owned()),
                deliveries: Set(deliveries),
                delivered_at: Set(now),
            }
            .update(&txn)
            .await?;
            claimed.push(Delivery {
                id: e.seq.to_string(),
                key: e.key.clone(),
                payload: e.payload.clone(),
                deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
            });
        }
        txn.commit().await?;
        Ok(claimed)
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<()> {
        check_names(stream, group)?;
        let seqs = parse_ids(ids)?;
        if seqs.is_empty() {
            return Ok(());
        }
        let _w = self.write.lock().await;
        queue_pending::Entity::delete_many()
            .filter(queue_pending::Column::Stream.eq(stream))
            .filter(queue_pending::Column::GroupName.eq(group))
            .filter(queue_pending::Column::Seq.is_in(seqs))
            .exec(self.store.connection())
            .await?;
        Ok(())
    }

    async fn lag(&self, stream: &str, group: &str) -> Result<Lag> {
        check_names(stream, group)?;
        let db = self.store.connection();
        let g = self.group(db, stream, group).await?;
        let undelivered = queue_entry::Entity::find()
            .filter(queue_entry::Column::Stream.eq(stream))
            .filter(queue_entry::Column::Seq.gt(g.last_seq))
            .count(db)
            .await?;
        let pending = queue_pending::Entity::find()
            .filter(queue_pending::Column::Stream.eq(stream))
            .filter(queue_pending::Column::GroupName.eq(group))
            .count(db)
            .await?;
        let dead = queue_entry::Entity::find()
            .filter(queue_entry::Column::Stream.eq(dead_letter_stream(stream)))
            .count(db)
            .await?;
        Ok(Lag {
            undelivered,
            pending,
            dead,
        })
    }

    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<Delivery>> {
        check_names(stream, "-")?;
        let rows = queue_entry::Entity::find()
            .filter(queue_entry::Column::Stream.eq(dead_letter_stream(stream)))
            .order_by_asc(queue_entry::Column::Seq)
            .limit(limit as u64)
            .all(self.store.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|e| Delivery {
                id: e.seq.to_string(),
                key: e.key,
                payload: e.payload,
                deliveries: 0,
            })
            .collect())
    }
}
