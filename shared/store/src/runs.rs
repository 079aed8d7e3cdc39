//! Training runs and their stage progress.

use std::time::Duration;

use agent_learning_domain::{RunCounts, RunStage, RunState, StageProgress};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait as _, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use crate::entity::{applied_insight, bullet, reflection, rollout, run, run_lease, run_stage};
use crate::{Result, Store, StoreError};

pub use agent_learning_domain::Run;

/// What `create_run` records.
pub struct NewRun<'a> {
    pub id: &'a str,
    /// [`agent_learning_domain::run_kind`]: training or live.
    pub kind: &'a str,
    /// The stages it goes through, in order.
    pub stages: &'a [RunStage],
    pub namespace: &'a str,
    pub env: &'a str,
    pub config: &'a str,
    pub demos: &'a str,
}

/// A stage's progress as the driver reports it.
pub struct StageUpdate<'a> {
    pub done: u64,
    pub total: u64,
    pub seconds: f64,
    pub finished: bool,
    pub detail: Option<&'a serde_json::Value>,
}

fn corrupt(e: agent_learning_domain::UnknownValue) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn run_from(m: run::Model) -> Result<Run> {
    Ok(Run {
        state: RunState::parse(&m.state).map_err(corrupt)?,
        current_stage: match m.current_stage.as_str() {
            "" => None,
            s => Some(RunStage::parse(s).map_err(corrupt)?),
        },
        id: m.id,
        namespace: m.namespace,
        kind: m.kind,
        error: m.error,
        env: m.env,
        config: m.config,
        demos: m.demos,
        summary: m.summary,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

fn stage_from(m: run_stage::Model) -> Result<StageProgress> {
    Ok(StageProgress {
        stage: RunStage::parse(&m.stage).map_err(corrupt)?,
        done: m.done.max(0) as u64,
        total: m.total.max(0) as u64,
        seconds: m.seconds,
        finished: m.finished,
        detail: m.detail,
    })
}

impl Store {
    /// The run and a row for each of its stages, in one transaction.
    pub async fn create_run(&self, r: NewRun<'_>) -> Result<()> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        run::ActiveModel {
            id: Set(r.id.to_owned()),
            namespace: Set(r.namespace.to_owned()),
            kind: Set(r.kind.to_owned()),
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
        for stage in r.stages {
            run_stage::ActiveModel {
                run_id: Set(r.id.to_owned()),
                stage: Set(stage.as_str().into()),
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

    /// The run and its stages in stage order.
    pub async fn load_run(&self, id: &str) -> Result<(Run, Vec<StageProgress>)> {
        let r = run::Entity::find_by_id(id.to_owned())
            .one(self.connection())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "run",
                id: id.to_owned(),
            })?;
        let mut stages = run_stage::Entity::find()
            .filter(run_stage::Column::RunId.eq(id))
            .all(self.connection())
            .await?
            .into_iter()
            .map(stage_from)
            .collect::<Result<Vec<_>>>()?;
        stages.sort_by_key(|s| s.stage);
        Ok((run_from(r)?, stages))
    }

    pub async fn set_run_state(
        &self,
        id: &str,
        state: RunState,
        stage: Option<RunStage>,
        error: Option<&str>,
    ) -> Result<()> {
        let mut m = run::ActiveModel {
            id: Set(id.to_owned()),
            state: Set(state.as_str().into()),
            updated_at: Set(Utc::now()),
            ..Default::default()
        };
        if let Some(s) = stage {
            m.current_stage = Set(s.as_str().to_owned());
        }
        if let Some(e) = error {
            m.error = Set(e.to_owned());
        }
        m.update(self.connection()).await?;
        Ok(())
    }

    /// Moves a run that has not ended to `state`; false when it had ended (cancelled by
    /// someone else, or finished), so a driver never overwrites an end it did not make.
    pub async fn advance_run(
        &self,
        id: &str,
        state: RunState,
        stage: Option<RunStage>,
        error: Option<&str>,
    ) -> Result<bool> {
        let mut q = run::Entity::update_many()
            .col_expr(run::Column::State, Expr::value(state.as_str()))
            .col_expr(run::Column::UpdatedAt, Expr::value(Utc::now()));
        if let Some(s) = stage {
            q = q.col_expr(run::Column::CurrentStage, Expr::value(s.as_str()));
        }
        if let Some(e) = error {
            q = q.col_expr(run::Column::Error, Expr::value(e));
        }
        let done = q
            .filter(run::Column::Id.eq(id))
            .filter(
                run::Column::State.is_in([RunState::Pending.as_str(), RunState::Running.as_str()]),
            )
            .exec(self.connection())
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// The run's state, `None` when there is no such run.
    pub async fn run_state(&self, id: &str) -> Result<Option<RunState>> {
        let state: Option<String> = run::Entity::find_by_id(id.to_owned())
            .select_only()
            .column(run::Column::State)
            .into_tuple()
            .one(self.connection())
            .await?;
        state
            .map(|s| RunState::parse(&s).map_err(corrupt))
            .transpose()
    }

    /// Takes the lease on `run_id` for `holder` until `ttl` from now, or renews it: true when
    /// `holder` now holds it, false while another holder's lease has not expired. One
    /// statement (an upsert whose update is conditional), so two coordinators racing for the
    /// same run cannot both win.
    pub async fn claim_run(&self, run_id: &str, holder: &str, ttl: Duration) -> Result<bool> {
        // Scoped here: its `max` would shadow `Ord::max` on integers elsewhere in this module.
        use sea_orm::sea_query::ExprTrait as _;
        let now = Utc::now();
        let until = now
            + chrono::Duration::from_std(ttl)
                .map_err(|e| StoreError::Rejected(format!("lease of {ttl:?}: {e}")))?;
        let stmt = Query::insert()
            .into_table(run_lease::Entity)
            .columns([
                run_lease::Column::RunId,
                run_lease::Column::Holder,
                run_lease::Column::ExpiresAt,
            ])
            .values_panic([run_id.into(), holder.into(), until.into()])
            .on_conflict(
                OnConflict::column(run_lease::Column::RunId)
                    .update_columns([run_lease::Column::Holder, run_lease::Column::ExpiresAt])
                    .action_and_where(
                        Expr::col((run_lease::Entity, run_lease::Column::ExpiresAt))
                            .lt(now)
                            .or(Expr::col((run_lease::Entity, run_lease::Column::Holder))
                                .eq(holder)),
                    )
                    .to_owned(),
            )
            .to_owned();
        Ok(self.connection().execute(&stmt).await?.rows_affected() > 0)
    }

    /// Gives the lease up, if `holder` holds it.
    pub async fn release_run(&self, run_id: &str, holder: &str) -> Result<()> {
        run_lease::Entity::delete_many()
            .filter(run_lease::Column::RunId.eq(run_id))
            .filter(run_lease::Column::Holder.eq(holder))
            .exec(self.connection())
            .await?;
        Ok(())
    }

    /// Who holds the lease on `run_id`, until when.
    pub async fn run_lease(&self, run_id: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        Ok(run_lease::Entity::find_by_id(run_id.to_owned())
            .one(self.connection())
            .await?
            .map(|l| (l.holder, l.expires_at)))
    }

    pub async fn set_run_summary(&self, id: &str, summary: &str) -> Result<()> {
        run::ActiveModel {
            id: Set(id.to_owned()),
            summary: Set(summary.to_owned()),
            updated_at: Set(Utc::now()),
            ..Default::default()
        }
        .update(self.connection())
        .await?;
        Ok(())
    }

    pub async fn update_stage(&self, id: &str, stage: RunStage, u: StageUpdate<'_>) -> Result<()> {
        let mut m = run_stage::ActiveModel {
            run_id: Set(id.to_owned()),
            stage: Set(stage.as_str().to_owned()),
            done: Set(u.done as i64),
            total: Set(u.total as i64),
            seconds: Set(u.seconds),
            finished: Set(u.finished),
            ..Default::default()
        };
        if let Some(d) = u.detail {
            m.detail = Set(d.to_string());
        }
        m.update(self.connection()).await?;
        Ok(())
    }

    /// Ids of the runs left pending or running, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<String>> {
        Ok(run::Entity::find()
            .filter(
                run::Column::State.is_in([RunState::Pending.as_str(), RunState::Running.as_str()]),
            )
            .order_by_asc(run::Column::CreatedAt)
            .select_only()
            .column(run::Column::Id)
            .into_tuple()
            .all(self.connection())
            .await?)
    }

    /// A page of runs, newest first (all namespaces when `ns` is empty), and whether more follow.
    pub async fn list_runs(
        &self,
        ns: &str,
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<(Run, Vec<StageProgress>)>, bool)> {
        let mut q = run::Entity::find();
        if !ns.is_empty() {
            q = q.filter(run::Column::Namespace.eq(ns));
        }
        let rows = q
            .order_by_desc(run::Column::CreatedAt)
            .order_by_desc(run::Column::Id)
            .offset(offset)
            .limit(limit + 1)
            .all(self.connection())
            .await?;
        let more = rows.len() as u64 > limit;
        let mut out = Vec::new();
        for r in rows.into_iter().take(limit as usize) {
            out.push(self.load_run(&r.id).await?);
        }
        Ok((out, more))
    }

    /// What a run has produced so far.
    pub async fn run_counts(&self, ns: &str, run_id: &str) -> Result<RunCounts> {
        let db = self.connection();
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
        Ok(RunCounts {
            groups,
            rollouts: by_source.iter().map(|(_, n)| *n as u64).sum(),
            rollouts_by_source: by_source.into_iter().map(|(s, n)| (s, n as u64)).collect(),
            reflections: reflections.len() as u64,
            reflections_valid: valid_ids.len() as u64,
            curated,
            pending_insights: self.pending_insight_count(run_id).await?,
            prompt_tokens: reflections.iter().map(|r| r.2.max(0) as u64).sum(),
            completion_tokens: reflections.iter().map(|r| r.3.max(0) as u64).sum(),
        })
    }

    /// Live bullets of the namespace's playbook.
    pub async fn live_bullet_count(&self, ns: &str) -> Result<u64> {
        Ok(bullet::Entity::find()
            .filter(bullet::Column::Namespace.eq(ns))
            .filter(bullet::Column::Deleted.eq(false))
            .count(self.connection())
            .await?)
    }
}
