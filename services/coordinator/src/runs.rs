//! Runs and their stage progress in the record.

use std::collections::BTreeMap;

use agent_learning_proto::v1 as pb;
use agent_learning_runtime::ServiceError;
use agent_learning_store::Store;
use agent_learning_store::entity::{applied_insight, bullet, reflection, rollout, run, run_stage};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

/// The offline stages, in order.
pub const STAGES: [&str; 5] = ["fit", "explore", "reflect", "curate", "compile"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Pending,
        }
    }

    pub fn terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn to_pb(self) -> pb::RunState {
        match self {
            Self::Pending => pb::RunState::Pending,
            Self::Running => pb::RunState::Running,
            Self::Succeeded => pb::RunState::Succeeded,
            Self::Failed => pb::RunState::Failed,
            Self::Cancelled => pb::RunState::Cancelled,
        }
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub struct NewRun<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub env: &'a str,
    pub config: &'a str,
    pub demos: &'a str,
}

/// The run and its stages, in one transaction.
pub async fn create(store: &Store, r: NewRun<'_>) -> Result<(), ServiceError> {
    let now = Utc::now();
    let txn = store.begin_write().await?;
    run::ActiveModel {
        id: Set(r.id.to_owned()),
        namespace: Set(r.namespace.to_owned()),
        kind: Set("training".into()),
        state: Set(RunState::Pending.as_str().into()),
        current_stage: Set(String::new()),
        error: Set(String::new()),
        env: Set(r.env.to_owned()),
        config: Set(r.config.to_owned()),
        demos: Set(r.demos.to_owned()),
        summary: Set(String::new()),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    for stage in STAGES {
        run_stage::ActiveModel {
            run_id: Set(r.id.to_owned()),
            stage: Set(stage.into()),
            done: Set(0),
            total: Set(0),
            seconds: Set(0.0),
            finished: Set(false),
            detail: Set("{}".into()),
        }
        .insert(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

pub async fn load(
    store: &Store,
    id: &str,
) -> Result<(run::Model, Vec<run_stage::Model>), ServiceError> {
    let r = run::Entity::find_by_id(id.to_owned())
        .one(store.connection())
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("run {id} not found")))?;
    let mut stages = run_stage::Entity::find()
        .filter(run_stage::Column::RunId.eq(id))
        .all(store.connection())
        .await?;
    stages.sort_by_key(|s| {
        STAGES
            .iter()
            .position(|n| *n == s.stage)
            .unwrap_or(usize::MAX)
    });
    Ok((r, stages))
}

pub fn to_pb(r: &run::Model, stages: &[run_stage::Model]) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        kind: r.kind.clone(),
        state: RunState::parse(&r.state).to_pb() as i32,
        current_stage: r.current_stage.clone(),
        stages: stages
            .iter()
            .map(|s| pb::StageProgress {
                stage: s.stage.clone(),
                done: s.done.max(0) as u64,
                total: s.total.max(0) as u64,
                seconds: s.seconds,
            })
            .collect(),
        error: r.error.clone(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        summary_json: r.summary.clone(),
    }
}

pub async fn set_state(
    store: &Store,
    id: &str,
    state: RunState,
    stage: Option<&str>,
    error: Option<&str>,
) -> Result<(), ServiceError> {
    let mut m = run::ActiveModel {
        id: Set(id.to_owned()),
        state: Set(state.as_str().into()),
        updated_at: Set(Utc::now()),
        ..Default::default()
    };
    if let Some(s) = stage {
        m.current_stage = Set(s.to_owned());
    }
    if let Some(e) = error {
        m.error = Set(e.to_owned());
    }
    m.update(store.connection()).await?;
    Ok(())
}

pub async fn set_summary(store: &Store, id: &str, summary: &str) -> Result<(), ServiceError> {
    run::ActiveModel {
        id: Set(id.to_owned()),
        summary: Set(summary.to_owned()),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(store.connection())
    .await?;
    Ok(())
}

pub struct StageUpdate<'a> {
    pub done: u64,
    pub total: u64,
    pub seconds: f64,
    pub finished: bool,
    pub detail: Option<&'a serde_json::Value>,
}

pub async fn update_stage(
    store: &Store,
    id: &str,
    stage: &str,
    u: StageUpdate<'_>,
) -> Result<(), ServiceError> {
    let mut m = run_stage::ActiveModel {
        run_id: Set(id.to_owned()),
        stage: Set(stage.to_owned()),
        done: Set(u.done as i64),
        total: Set(u.total as i64),
        seconds: Set(u.seconds),
        finished: Set(u.finished),
        ..Default::default()
    };
    if let Some(d) = u.detail {
        m.detail = Set(d.to_string());
    }
    m.update(store.connection()).await?;
    Ok(())
}

pub async fn unfinished(store: &Store) -> Result<Vec<String>, ServiceError> {
    Ok(run::Entity::find()
        .filter(run::Column::State.is_in(["pending", "running"]))
        .order_by_asc(run::Column::CreatedAt)
        .select_only()
        .column(run::Column::Id)
        .into_tuple()
        .all(store.connection())
        .await?)
}

pub async fn list(
    store: &Store,
    ns: &str,
    limit: u64,
    offset: u64,
) -> Result<(Vec<pb::Run>, bool), ServiceError> {
    let mut q = run::Entity::find();
    if !ns.is_empty() {
        q = q.filter(run::Column::Namespace.eq(ns));
    }
    let rows = q
        .order_by_desc(run::Column::CreatedAt)
        .order_by_desc(run::Column::Id)
        .offset(offset)
        .limit(limit + 1)
        .all(store.connection())
        .await?;
    let more = rows.len() as u64 > limit;
    let mut out = Vec::new();
    for r in rows.into_iter().take(limit as usize) {
        let (r, stages) = load(store, &r.id).await?;
        out.push(to_pb(&r, &stages));
    }
    Ok((out, more))
}

/// What a run has produced so far, counted in the record.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Counts {
    pub groups: u64,
    pub rollouts: u64,
    pub rollouts_by_source: BTreeMap<String, u64>,
    pub reflections: u64,
    pub reflections_valid: u64,
    pub curated: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub async fn counts(store: &Store, ns: &str, run_id: &str) -> Result<Counts, ServiceError> {
    let db = store.connection();
    let by_source: Vec<(String, i64)> = rollout::Entity::find()
        .filter(rollout::Column::RunId.eq(run_id))
        .select_only()
        .column(rollout::Column::Source)
        .column_as(rollout::Column::Id.count(), "n")
        .group_by(rollout::Column::Source)
        .into_tuple()
        .all(db)
        .await?;
    let groups = rollout::Entity::find()
        .filter(rollout::Column::RunId.eq(run_id))
        .select_only()
        .column(rollout::Column::GroupId)
        .distinct()
        .count(db)
        .await?;
    let reflections: Vec<(String, bool, i64, i64)> = reflection::Entity::find()
        .filter(reflection::Column::RunId.eq(run_id))
        .select_only()
        .column(reflection::Column::Id)
        .column(reflection::Column::Valid)
        .column(reflection::Column::PromptTokens)
        .column(reflection::Column::CompletionTokens)
        .into_tuple()
        .all(db)
        .await?;
    let valid_ids: Vec<String> = reflections
        .iter()
        .filter(|r| r.1)
        .map(|r| r.0.clone())
        .collect();
    let mut curated = 0;
    for chunk in valid_ids.chunks(500) {
        curated += applied_insight::Entity::find()
            .filter(applied_insight::Column::Namespace.eq(ns))
            .filter(applied_insight::Column::InsightId.is_in(chunk.to_vec()))
            .count(db)
            .await?;
    }
    Ok(Counts {
        groups,
        rollouts: by_source.iter().map(|(_, n)| *n as u64).sum(),
        rollouts_by_source: by_source.into_iter().map(|(s, n)| (s, n as u64)).collect(),
        reflections: reflections.len() as u64,
        reflections_valid: valid_ids.len() as u64,
        curated,
        prompt_tokens: reflections.iter().map(|r| r.2.max(0) as u64).sum(),
        completion_tokens: reflections.iter().map(|r| r.3.max(0) as u64).sum(),
    })
}

/// Live bullets of the namespace's playbook.
pub async fn bullets(store: &Store, ns: &str) -> Result<u64, ServiceError> {
    Ok(bullet::Entity::find()
        .filter(bullet::Column::Namespace.eq(ns))
        .filter(bullet::Column::Deleted.eq(false))
        .count(store.connection())
        .await?)
}
