//! Live-loop episodes: what each finished episode did, and whether it has been published to
//! the reflectors and voted on.

use chrono::Utc;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use crate::entity::{live_episode, run};
use crate::{Result, Store};

/// A finished episode as the live driver records it.
pub struct NewLiveEpisode<'a> {
    pub id: &'a str,
    pub run_id: &'a str,
    pub namespace: &'a str,
    pub index: u32,
    pub seed: u64,
    pub steps: u32,
    pub decisions: u32,
    pub outcome_known: bool,
    pub success: bool,
    pub truncated: bool,
    /// The encoded `LiveEpisode`.
    pub payload: &'a [u8],
}

/// A recorded episode, without its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEpisodeRecord {
    pub id: String,
    pub index: u32,
    pub seed: u64,
    pub steps: u32,
    pub decisions: u32,
    pub outcome_known: bool,
    pub success: bool,
    pub truncated: bool,
    pub published: bool,
    pub voted: bool,
    pub created_at: chrono::DateTime<Utc>,
}

impl Store {
    /// Records a finished episode; recording the same id again changes nothing. Returns
    /// whether this call recorded it.
    pub async fn insert_live_episode(&self, e: NewLiveEpisode<'_>) -> Result<bool> {
        let model = live_episode::ActiveModel {
            id: Set(e.id.to_owned()),
            run_id: Set(e.run_id.to_owned()),
            namespace: Set(e.namespace.to_owned()),
            idx: Set(e.index as i32),
            seed: Set(e.seed as i64),
            steps: Set(e.steps as i32),
            decisions: Set(e.decisions as i32),
            outcome_known: Set(e.outcome_known),
            success: Set(e.success),
            truncated: Set(e.truncated),
            payload: Set(e.payload.to_vec()),
            published: Set(false),
            voted: Set(false),
            created_at: Set(Utc::now()),
        };
        let n = live_episode::Entity::insert(model)
            .on_conflict(
                OnConflict::column(live_episode::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?;
        Ok(n > 0)
    }

    /// The run's recorded episodes in index order.
    pub async fn live_episodes(&self, run_id: &str) -> Result<Vec<LiveEpisodeRecord>> {
        let rows = live_episode::Entity::find()
            .filter(live_episode::Column::RunId.eq(run_id))
            .order_by_asc(live_episode::Column::Idx)
            .all(self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| LiveEpisodeRecord {
                id: r.id,
                index: r.idx.max(0) as u32,
                seed: r.seed as u64,
                steps: r.steps.max(0) as u32,
                decisions: r.decisions.max(0) as u32,
                outcome_known: r.outcome_known,
                success: r.success,
                truncated: r.truncated,
                published: r.published,
                voted: r.voted,
                created_at: r.created_at,
            })
            .collect())
    }

    /// The encoded `LiveEpisode` of a recorded episode.
    pub async fn live_episode_payload(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(live_episode::Entity::find_by_id(id.to_owned())
            .one(self.connection())
            .await?
            .map(|m| m.payload))
    }

    /// Marks the episode's votes given.
    pub async fn mark_episode_voted(&self, id: &str) -> Result<()> {
        live_episode::Entity::update_many()
            .col_expr(live_episode::Column::Voted, Expr::value(true))
            .filter(live_episode::Column::Id.eq(id))
            .exec(self.connection())
            .await?;
        Ok(())
    }

    /// The demos of the namespace's training runs (JSONL each), oldest first.
    pub async fn training_demos(&self, ns: &str) -> Result<Vec<String>> {
        let rows: Vec<String> = run::Entity::find()
            .filter(run::Column::Namespace.eq(ns))
            .filter(run::Column::Kind.eq(agent_learning_domain::run_kind::TRAINING))
            .select_only()
            .column(run::Column::Demos)
            .order_by_asc(run::Column::CreatedAt)
            .into_tuple()
            .all(self.connection())
            .await?;
        Ok(rows)
    }
}
