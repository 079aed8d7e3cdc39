//! Playbook persistence: bullets, their append-only history, and the idempotency records of
//! curation and feedback. Every public operation is one transaction.

use std::collections::HashMap;

use agent_learning_domain::{Bullet, BulletEvent, DeltaKind, EventKind, PromotionGates, Stage};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::entity::{applied_insight, bullet, bullet_event, feedback_request, namespace};
use crate::{Result, Store, StoreError};

/// Provenance entries kept on a bullet; the full provenance stays in its history.
const MAX_SOURCES: usize = 100;

/// The key under which a bullet's content is found again: SHA-256 of the text, in hex.
pub fn content_hash(content: &str) -> String {
    crate::embeddings::sha256_hex(&[content.as_bytes()])
}

/// How an insight id was applied, for idempotent replays.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedInsight {
    pub bullet_id: Uuid,
    pub kind: DeltaKind,
    pub similarity: f32,
}

#[derive(Debug, Clone)]
pub struct NewBullet {
    pub id: Uuid,
    pub section: String,
    pub content: String,
    pub source: String,
    pub embedding: Vec<f32>,
}

/// One decided curation step, applied inside the batch's transaction.
#[derive(Debug, Clone)]
pub enum CurationChange {
    Add {
        insight_id: String,
        bullet: NewBullet,
        similarity: f32,
    },
    Merge {
        insight_id: String,
        bullet_id: Uuid,
        source: String,
        similarity: f32,
    },
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub stage: Option<Stage>,
    pub section: Option<String>,
    pub include_deleted: bool,
}

#[derive(Debug, Clone)]
pub struct BulletPage {
    pub bullets: Vec<Bullet>,
    pub total: u64,
    pub next_offset: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthCounts {
    pub total: u64,
    pub by_stage: HashMap<Stage, u64>,
    pub deleted: u64,
    pub by_section: Vec<(String, u64)>,
    pub insights_applied: u64,
    pub merges: u64,
    pub added_last_24h: u64,
}

/// A live bullet as the vector index holds it.
#[derive(Debug, Clone)]
pub struct IndexedBullet {
    pub id: Uuid,
    pub namespace: String,
    pub section: String,
    pub stage: Stage,
    pub embedding: Vec<f32>,
}

pub fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn decode_embedding(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "embedding of {} bytes is not a whole number of f32s",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn counter(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn to_domain(m: bullet::Model) -> Result<Bullet> {
    let id = Uuid::parse_str(&m.id).map_err(|e| StoreError::Corrupt(format!("bullet id: {e}")))?;
    let stage = Stage::parse(&m.stage)
        .ok_or_else(|| StoreError::Corrupt(format!("bullet {id}: stage {:?}", m.stage)))?;
    let sources: Vec<String> = serde_json::from_str(&m.sources)
        .map_err(|e| StoreError::Corrupt(format!("bullet {id}: sources: {e}")))?;
    Ok(Bullet {
        id,
        namespace: m.namespace,
        section: m.section,
        content: m.content,
        helpful: counter(m.helpful),
        harmful: counter(m.harmful),
        evidence: counter(m.evidence),
        stage,
        sources,
        deleted: m.deleted,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

fn to_indexed(m: bullet::Model) -> Result<IndexedBullet> {
    Ok(IndexedBullet {
        id: Uuid::parse_str(&m.id).map_err(|e| StoreError::Corrupt(format!("bullet id: {e}")))?,
        stage: Stage::parse(&m.stage)
            .ok_or_else(|| StoreError::Corrupt(format!("bullet {}: stage {:?}", m.id, m.stage)))?,
        embedding: decode_embedding(&m.embedding)?,
        namespace: m.namespace,
        section: m.section,
    })
}

fn push_source(sources_json: &str, source: &str) -> Result<String> {
    let mut sources: Vec<String> = serde_json::from_str(sources_json)
        .map_err(|e| StoreError::Corrupt(format!("sources: {e}")))?;
    if !source.is_empty() && !sources.iter().any(|s| s == source) {
        sources.push(source.to_owned());
        if sources.len() > MAX_SOURCES {
            sources.drain(..sources.len() - MAX_SOURCES);
        }
    }
    Ok(serde_json::to_string(&sources).unwrap_or_else(|_| "[]".into()))
}

struct Event<'a> {
    namespace: &'a str,
    bullet_id: Uuid,
    kind: EventKind,
    insight_id: Option<&'a str>,
    from_stage: Option<Stage>,
    to_stage: Option<Stage>,
    detail: serde_json::Value,
    at: DateTime<Utc>,
}

async fn append_event(txn: &DatabaseTransaction, e: Event<'_>) -> Result<()> {
    bullet_event::ActiveModel {
        namespace: Set(e.namespace.to_owned()),
        bullet_id: Set(e.bullet_id.to_string()),
        kind: Set(e.kind.as_str().to_owned()),
        insight_id: Set(e.insight_id.map(str::to_owned)),
        from_stage: Set(e.from_stage.map(|s| s.as_str().to_owned())),
        to_stage: Set(e.to_stage.map(|s| s.as_str().to_owned())),
        detail: Set(e.detail.to_string()),
        at: Set(e.at),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// Creates the namespace's row unless it exists; two processes creating it at once both
/// succeed (`ON CONFLICT DO NOTHING`).
async fn ensure_namespace(txn: &DatabaseTransaction, ns: &str) -> Result<()> {
    namespace::Entity::insert(namespace::ActiveModel {
        name: Set(ns.to_owned()),
        created_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing_on([namespace::Column::Name])
    .exec(txn)
    .await?;
    Ok(())
}

async fn load_live(txn: &impl ConnectionTrait, ns: &str, id: Uuid) -> Result<bullet::Model> {
    // By primary key alone (see `bullets_by_ids`), then the namespace check. Locked for the
    // transaction (FOR UPDATE on PostgreSQL; SQLite's write transactions already hold the
    // database's lock): writers in other processes wait, so no counter update is lost.
    match bullet::Entity::find_by_id(id.to_string())
        .lock_exclusive()
        .one(txn)
        .await?
    {
        Some(m) if !m.deleted && m.namespace == ns => Ok(m),
        _ => Err(StoreError::NotFound {
            what: "bullet",
            id: id.to_string(),
        }),
    }
}

/// Moves a bullet to the stage its counters earn, one stage at a time so the history shows the
/// path it took.
async fn restage(
    txn: &DatabaseTransaction,
    ns: &str,
    m: &mut bullet::Model,
    gates: &PromotionGates,
    now: DateTime<Utc>,
) -> Result<()> {
    let current = Stage::parse(&m.stage)
        .ok_or_else(|| StoreError::Corrupt(format!("bullet {}: stage {:?}", m.id, m.stage)))?;
    let earned = gates.earned(counter(m.helpful), counter(m.harmful));
    if earned == current {
        return Ok(());
    }
    // A stage set by hand stays until set by hand again; the one exception is harmful
    // evidence, which quarantines a pinned bullet too (and a quarantine stays).
    if m.stage_pinned && earned != Stage::Quarantined {
        return Ok(());
    }
    let id = Uuid::parse_str(&m.id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let path: Vec<Stage> = match (current.rank(), earned.rank()) {
        (Some(from), Some(to)) if to > from => [Stage::Staging, Stage::Production]
            .into_iter()
            .filter(|s| s.rank().is_some_and(|r| r > from && r <= to))
            .collect(),
        _ => vec![earned],
    };
    let mut from = current;
    for to in path {
        append_event(
            txn,
            Event {
                namespace: ns,
                bullet_id: id,
                kind: EventKind::StageChanged,
                insight_id: None,
                from_stage: Some(from),
                to_stage: Some(to),
                detail: json!({"reason": "gates", "helpful": m.helpful, "harmful": m.harmful}),
                at: now,
            },
        )
        .await?;
        from = to;
    }
    m.stage = earned.as_str().to_owned();
    Ok(())
}

impl Store {
    /// Which of `insight_ids` were already applied in `ns`, and how.
    pub async fn applied_insights(
        &self,
        ns: &str,
        insight_ids: &[String],
    ) -> Result<HashMap<String, AppliedInsight>> {
        let mut out = HashMap::new();
        for chunk in insight_ids.chunks(500) {
            let rows = applied_insight::Entity::find()
                .filter(applied_insight::Column::Namespace.eq(ns))
                .filter(applied_insight::Column::InsightId.is_in(chunk.iter().cloned()))
                .all(&self.db)
                .await?;
            for r in rows {
                let bullet_id = Uuid::parse_str(&r.bullet_id)
                    .map_err(|e| StoreError::Corrupt(format!("applied insight: {e}")))?;
                let kind = DeltaKind::parse(&r.kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("applied kind {:?}", r.kind)))?;
                out.insert(
                    r.insight_id,
                    AppliedInsight {
                        bullet_id,
                        kind,
                        similarity: r.similarity as f32,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Applies a curated batch atomically: every change, or none.
    pub async fn apply_curation(&self, ns: &str, changes: &[CurationChange]) -> Result<()> {
        let txn = self.begin_write().await?;
        ensure_namespace(&txn, ns).await?;
        let now = Utc::now();
        for change in changes {
            match change {
                CurationChange::Add {
                    insight_id,
                    bullet: b,
                    similarity,
                } => {
                    let sources = serde_json::to_string(&[&b.source]).unwrap_or_default();
                    bullet::ActiveModel {
                        id: Set(b.id.to_string()),
                        namespace: Set(ns.to_owned()),
                        section: Set(b.section.clone()),
                        content: Set(b.content.clone()),
                        helpful: Set(0),
                        harmful: Set(0),
                        evidence: Set(1),
                        stage: Set(Stage::Shadow.as_str().to_owned()),
                        sources: Set(sources),
                        deleted: Set(false),
                        stage_pinned: Set(false),
                        embedding: Set(encode_embedding(&b.embedding)),
                        content_hash: Set(Some(content_hash(&b.content))),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(&txn)
                    .await?;
                    append_event(
                        &txn,
                        Event {
                            namespace: ns,
                            bullet_id: b.id,
                            kind: EventKind::Added,
                            insight_id: Some(insight_id),
                            from_stage: None,
                            to_stage: Some(Stage::Shadow),
                            detail: json!({"content": b.content, "section": b.section,
                                           "source": b.source, "nearest_similarity": similarity}),
                            at: now,
                        },
                    )
                    .await?;
                    record_applied(&txn, ns, insight_id, b.id, DeltaKind::Add, *similarity, now)
                        .await?;
                }
                CurationChange::Merge {
                    insight_id,
                    bullet_id,
                    source,
                    similarity,
                } => {
                    let m = load_live(&txn, ns, *bullet_id).await?;
                    let evidence = m.evidence + 1;
                    let sources = push_source(&m.sources, source)?;
                    let mut am: bullet::ActiveModel = m.into();
                    am.evidence = Set(evidence);
                    am.sources = Set(sources);
                    am.updated_at = Set(now);
                    am.update(&txn).await?;
                    append_event(
                        &txn,
                        Event {
                            namespace: ns,
                            bullet_id: *bullet_id,
                            kind: EventKind::Merged,
                            insight_id: Some(insight_id),
                            from_stage: None,
                            to_stage: None,
                            detail: json!({"similarity": similarity, "source": source,
                                           "evidence": evidence}),
                            at: now,
                        },
                    )
                    .await?;
                    record_applied(
                        &txn,
                        ns,
                        insight_id,
                        *bullet_id,
                        DeltaKind::Merge,
                        *similarity,
                        now,
                    )
                    .await?;
                }
            }
        }
        txn.commit().await?;
        Ok(())
    }

    pub async fn get_bullet(&self, ns: &str, id: Uuid) -> Result<Option<Bullet>> {
        bullet::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?
            .filter(|m| m.namespace == ns)
            .map(to_domain)
            .transpose()
    }

    /// Bullets of `ns` with these ids, in no particular order; unknown ids are skipped.
    pub async fn bullets_by_ids(&self, ns: &str, ids: &[Uuid]) -> Result<Vec<Bullet>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            // By primary key only: with the namespace in the WHERE clause SQLite's planner may
            // walk the namespace index instead, which costs the size of the playbook.
            let rows = bullet::Entity::find()
                .filter(bullet::Column::Id.is_in(chunk.iter().map(Uuid::to_string)))
                .all(&self.db)
                .await?;
            for r in rows.into_iter().filter(|r| r.namespace == ns) {
                out.push(to_domain(r)?);
            }
        }
        Ok(out)
    }

    /// Live bullets of `ns` whose content is exactly one of `contents` (as stored: trimmed),
    /// by section and content; where several hold the same text, the oldest.
    pub async fn live_bullets_with_content(
        &self,
        ns: &str,
        contents: &[&str],
    ) -> Result<HashMap<(String, String), Uuid>> {
        let mut found: HashMap<(String, String), (DateTime<Utc>, Uuid)> = HashMap::new();
        for chunk in contents.chunks(500) {
            // By the hash only, as bullets_by_ids goes by the primary key only.
            let rows = bullet::Entity::find()
                .filter(bullet::Column::ContentHash.is_in(chunk.iter().map(|c| content_hash(c))))
                .all(&self.db)
                .await?;
            for r in rows {
                if r.namespace != ns || r.deleted || !chunk.contains(&r.content.as_str()) {
                    continue;
                }
                let id = Uuid::parse_str(&r.id)
                    .map_err(|e| StoreError::Corrupt(format!("bullet id: {e}")))?;
                let key = (r.section, r.content);
                match found.get(&key) {
                    Some((at, _)) if *at <= r.created_at => {}
                    _ => {
                        found.insert(key, (r.created_at, id));
                    }
                }
            }
        }
        Ok(found.into_iter().map(|(k, (_, id))| (k, id)).collect())
    }

    pub async fn list_bullets(
        &self,
        ns: &str,
        filter: &ListFilter,
        offset: u64,
        limit: u64,
    ) -> Result<BulletPage> {
        let mut q = bullet::Entity::find().filter(bullet::Column::Namespace.eq(ns));
        if let Some(stage) = filter.stage {
            q = q.filter(bullet::Column::Stage.eq(stage.as_str()));
        }
        if let Some(section) = &filter.section {
            q = q.filter(bullet::Column::Section.eq(section.as_str()));
        }
        if !filter.include_deleted {
            q = q.filter(bullet::Column::Deleted.eq(false));
        }
        let total = q.clone().count(&self.db).await?;
        let rows = q
            .order_by_asc(bullet::Column::CreatedAt)
            .order_by_asc(bullet::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&self.db)
            .await?;
        let bullets = rows
            .into_iter()
            .map(to_domain)
            .collect::<Result<Vec<_>>>()?;
        let next = offset + bullets.len() as u64;
        Ok(BulletPage {
            next_offset: (next < total && !bullets.is_empty()).then_some(next),
            bullets,
            total,
        })
    }

    /// Replaces a live bullet's content (and its embedding); the old content stays in history.
    pub async fn update_bullet(
        &self,
        ns: &str,
        id: Uuid,
        content: &str,
        embedding: &[f32],
    ) -> Result<Bullet> {
        let txn = self.begin_write().await?;
        let m = load_live(&txn, ns, id).await?;
        let now = Utc::now();
        let before = m.content.clone();
        let mut am: bullet::ActiveModel = m.into();
        am.content = Set(content.to_owned());
        am.content_hash = Set(Some(content_hash(content)));
        am.embedding = Set(encode_embedding(embedding));
        am.updated_at = Set(now);
        let m = am.update(&txn).await?;
        append_event(
            &txn,
            Event {
                namespace: ns,
                bullet_id: id,
                kind: EventKind::Updated,
                insight_id: None,
                from_stage: None,
                to_stage: None,
                detail: json!({"before": before, "after": content}),
                at: now,
            },
        )
        .await?;
        txn.commit().await?;
        to_domain(m)
    }

    /// Tombstones a live bullet; its row and history stay.
    pub async fn delete_bullet(&self, ns: &str, id: Uuid, reason: &str) -> Result<Bullet> {
        let txn = self.begin_write().await?;
        let m = load_live(&txn, ns, id).await?;
        let m = tombstone(&txn, ns, m, json!({"reason": reason})).await?;
        txn.commit().await?;
        to_domain(m)
    }

    /// Folds `from` into `into`: counters and provenance add up, `from` is tombstoned.
    pub async fn merge_bullets(
        &self,
        ns: &str,
        into: Uuid,
        from: Uuid,
        gates: &PromotionGates,
    ) -> Result<Bullet> {
        if into == from {
            return Err(StoreError::Rejected(
                "a bullet cannot be merged into itself".into(),
            ));
        }
        let txn = self.begin_write().await?;
        let target = load_live(&txn, ns, into).await?;
        let source = load_live(&txn, ns, from).await?;
        let now = Utc::now();
        let mut sources: Vec<String> = serde_json::from_str(&target.sources)
            .map_err(|e| StoreError::Corrupt(format!("sources: {e}")))?;
        let theirs: Vec<String> = serde_json::from_str(&source.sources)
            .map_err(|e| StoreError::Corrupt(format!("sources: {e}")))?;
        for s in theirs {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        if sources.len() > MAX_SOURCES {
            sources.drain(..sources.len() - MAX_SOURCES);
        }
        let (helpful, harmful, evidence) = (
            target.helpful + source.helpful,
            target.harmful + source.harmful,
            target.evidence + source.evidence,
        );
        let mut m = target;
        m.helpful = helpful;
        m.harmful = harmful;
        m.evidence = evidence;
        append_event(
            &txn,
            Event {
                namespace: ns,
                bullet_id: into,
                kind: EventKind::Merged,
                insight_id: None,
                from_stage: None,
                to_stage: None,
                detail: json!({"merged_bullet_id": from, "helpful": helpful,
                               "harmful": harmful, "evidence": evidence}),
                at: now,
            },
        )
        .await?;
        // Counters added up: the survivor may have earned another stage.
        restage(&txn, ns, &mut m, gates, now).await?;
        let stage = m.stage.clone();
        let mut am: bullet::ActiveModel = m.into();
        am.helpful = Set(helpful);
        am.harmful = Set(harmful);
        am.evidence = Set(evidence);
        am.stage = Set(stage);
        am.sources = Set(serde_json::to_string(&sources).unwrap_or_else(|_| "[]".into()));
        am.updated_at = Set(now);
        let m = am.update(&txn).await?;
        tombstone(&txn, ns, source, json!({"reason": "merged", "into": into})).await?;
        txn.commit().await?;
        to_domain(m)
    }

    /// Adds helpful/harmful votes and moves each bullet to the stage its counters earn. With a
    /// `feedback_id`, a repeated request changes nothing and reports `replayed`.
    pub async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: Option<&str>,
        items: &[(Uuid, u32, u32)],
        gates: &PromotionGates,
    ) -> Result<(Vec<Bullet>, bool)> {
        let txn = self.begin_write().await?;
        if let Some(fid) = feedback_id {
            let seen = feedback_request::Entity::find_by_id((ns.to_owned(), fid.to_owned()))
                .one(&txn)
                .await?
                .is_some();
            if seen {
                txn.rollback().await?;
                let ids: Vec<Uuid> = items.iter().map(|(id, _, _)| *id).collect();
                return Ok((self.bullets_by_ids(ns, &ids).await?, true));
            }
            feedback_request::ActiveModel {
                namespace: Set(ns.to_owned()),
                feedback_id: Set(fid.to_owned()),
                applied_at: Set(Utc::now()),
            }
            .insert(&txn)
            .await?;
        }
        let now = Utc::now();
        let mut out = Vec::with_capacity(items.len());
        for (id, helpful, harmful) in items {
            let mut m = load_live(&txn, ns, *id).await?;
            let before = (m.helpful, m.harmful);
            m.helpful += i64::from(*helpful);
            m.harmful += i64::from(*harmful);
            append_event(
                &txn,
                Event {
                    namespace: ns,
                    bullet_id: *id,
                    kind: EventKind::CountersChanged,
                    insight_id: feedback_id,
                    from_stage: None,
                    to_stage: None,
                    detail: json!({"helpful": [before.0, m.helpful],
                                   "harmful": [before.1, m.harmful]}),
                    at: now,
                },
            )
            .await?;
            restage(&txn, ns, &mut m, gates, now).await?;
            let (h, x, stage) = (m.helpful, m.harmful, m.stage.clone());
            let mut am: bullet::ActiveModel = m.into();
            am.helpful = Set(h);
            am.harmful = Set(x);
            am.stage = Set(stage);
            am.updated_at = Set(now);
            out.push(to_domain(am.update(&txn).await?)?);
        }
        txn.commit().await?;
        Ok((out, false))
    }

    /// Moves a bullet by hand: down the order (demotion, rollback) or to quarantine at any
    /// time; up only as far as its counters have earned, so no bullet skips its gates. The
    /// stage is pinned: votes no longer move it, but harmful evidence still quarantines it.
    pub async fn set_stage(
        &self,
        ns: &str,
        id: Uuid,
        stage: Stage,
        reason: &str,
        gates: &PromotionGates,
    ) -> Result<Bullet> {
        let txn = self.begin_write().await?;
        let m = load_live(&txn, ns, id).await?;
        let current = Stage::parse(&m.stage)
            .ok_or_else(|| StoreError::Corrupt(format!("bullet {id}: stage {:?}", m.stage)))?;
        if current == stage {
            if m.stage_pinned {
                txn.rollback().await?;
                return to_domain(m);
            }
            // Set by hand to the stage it has: from now on it stays there.
            let mut am: bullet::ActiveModel = m.into();
            am.stage_pinned = Set(true);
            let m = am.update(&txn).await?;
            txn.commit().await?;
            return to_domain(m);
        }
        let earned = gates.earned(counter(m.helpful), counter(m.harmful));
        let allowed = match (stage.rank(), earned.rank()) {
            (None, _) => true,
            (Some(want), Some(got)) => want <= got,
            (Some(want), None) => want == 0,
        };
        if !allowed {
            return Err(StoreError::Rejected(format!(
                "bullet {id} has not earned {stage} (helpful {}, harmful {}): it would skip its \
                 promotion gates",
                m.helpful, m.harmful
            )));
        }
        let now = Utc::now();
        append_event(
            &txn,
            Event {
                namespace: ns,
                bullet_id: id,
                kind: EventKind::StageChanged,
                insight_id: None,
                from_stage: Some(current),
                to_stage: Some(stage),
                detail: json!({"reason": reason, "manual": true, "pinned": true}),
                at: now,
            },
        )
        .await?;
        let mut am: bullet::ActiveModel = m.into();
        am.stage = Set(stage.as_str().to_owned());
        am.stage_pinned = Set(true);
        am.updated_at = Set(now);
        let m = am.update(&txn).await?;
        txn.commit().await?;
        to_domain(m)
    }

    pub async fn history(&self, ns: &str, id: Uuid) -> Result<Vec<BulletEvent>> {
        let rows = bullet_event::Entity::find()
            .filter(bullet_event::Column::Namespace.eq(ns))
            .filter(bullet_event::Column::BulletId.eq(id.to_string()))
            .order_by_asc(bullet_event::Column::Seq)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|r| {
                let stage = |s: Option<String>| s.as_deref().and_then(Stage::parse);
                Ok(BulletEvent {
                    seq: r.seq,
                    bullet_id: id,
                    kind: r.kind,
                    insight_id: r.insight_id,
                    from_stage: stage(r.from_stage),
                    to_stage: stage(r.to_stage),
                    detail: serde_json::from_str(&r.detail)
                        .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", r.seq)))?,
                    at: r.at,
                })
            })
            .collect()
    }

    pub async fn health(&self, ns: &str) -> Result<HealthCounts> {
        let live = || {
            bullet::Entity::find()
                .filter(bullet::Column::Namespace.eq(ns))
                .filter(bullet::Column::Deleted.eq(false))
        };
        let mut h = HealthCounts {
            total: live().count(&self.db).await?,
            ..Default::default()
        };
        for stage in [
            Stage::Shadow,
            Stage::Staging,
            Stage::Production,
            Stage::Quarantined,
        ] {
            let n = live()
                .filter(bullet::Column::Stage.eq(stage.as_str()))
                .count(&self.db)
                .await?;
            h.by_stage.insert(stage, n);
        }
        h.deleted = bullet::Entity::find()
            .filter(bullet::Column::Namespace.eq(ns))
            .filter(bullet::Column::Deleted.eq(true))
            .count(&self.db)
            .await?;
        let sections: Vec<(String, i64)> = live()
            .select_only()
            .column(bullet::Column::Section)
            .column_as(bullet::Column::Id.count(), "n")
            .group_by(bullet::Column::Section)
            .order_by_asc(bullet::Column::Section)
            .into_tuple()
            .all(&self.db)
            .await?;
        h.by_section = sections
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect();
        let applied =
            || applied_insight::Entity::find().filter(applied_insight::Column::Namespace.eq(ns));
        h.insights_applied = applied().count(&self.db).await?;
        h.merges = applied()
            .filter(applied_insight::Column::Kind.eq(DeltaKind::Merge.as_str()))
            .count(&self.db)
            .await?;
        h.added_last_24h = live()
            .filter(bullet::Column::CreatedAt.gte(Utc::now() - chrono::Duration::hours(24)))
            .count(&self.db)
            .await?;
        Ok(h)
    }

    /// Live bullets of every namespace in id order, after `after` (exclusive); for rebuilding
    /// the vector index from the record.
    pub async fn live_bullets_page(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<IndexedBullet>> {
        let mut q = bullet::Entity::find().filter(bullet::Column::Deleted.eq(false));
        if let Some(after) = after {
            q = q.filter(bullet::Column::Id.gt(after.to_string()));
        }
        let rows = q
            .order_by_asc(bullet::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(to_indexed).collect()
    }

    /// Live or not, for the index reconciler: which of these ids are live, with their data.
    pub async fn indexed_bullets(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, IndexedBullet>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let rows = bullet::Entity::find()
                .filter(bullet::Column::Id.is_in(chunk.iter().map(Uuid::to_string)))
                .filter(bullet::Column::Deleted.eq(false))
                .all(&self.db)
                .await?;
            for r in rows {
                let b = to_indexed(r)?;
                out.insert(b.id, b);
            }
        }
        Ok(out)
    }
}

async fn record_applied(
    txn: &DatabaseTransaction,
    ns: &str,
    insight_id: &str,
    bullet_id: Uuid,
    kind: DeltaKind,
    similarity: f32,
    now: DateTime<Utc>,
) -> Result<()> {
    applied_insight::ActiveModel {
        namespace: Set(ns.to_owned()),
        insight_id: Set(insight_id.to_owned()),
        bullet_id: Set(bullet_id.to_string()),
        kind: Set(kind.as_str().to_owned()),
        similarity: Set(f64::from(similarity)),
        applied_at: Set(now),
    }
    .insert(txn)
    .await?;
    Ok(())
}

async fn tombstone(
    txn: &DatabaseTransaction,
    ns: &str,
    m: bullet::Model,
    detail: serde_json::Value,
) -> Result<bullet::Model> {
    let id = Uuid::parse_str(&m.id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = Utc::now();
    let stage = Stage::parse(&m.stage);
    let mut am: bullet::ActiveModel = m.into();
    am.deleted = Set(true);
    am.updated_at = Set(now);
    let m = am.update(txn).await?;
    append_event(
        txn,
        Event {
            namespace: ns,
            bullet_id: id,
            kind: EventKind::Deleted,
            insight_id: None,
            from_stage: stage,
            to_stage: None,
            detail,
            at: now,
        },
    )
    .await?;
    Ok(m)
}
