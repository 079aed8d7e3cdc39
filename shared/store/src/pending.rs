//! Insights waiting for their run's curation batch (`curate_every`). The curator adds one per
//! valid reflection, curates a run's batch once it is full or the run has ended, then removes
//! what it curated; curating an insight id twice changes nothing, so a crash between the two
//! steps only repeats a no-op.

use agent_learning_domain::Insight;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::entity::pending_insight;
use crate::{Result, Store};

/// A run with insights waiting, and how long the oldest has waited.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRun {
    pub run_id: String,
    pub count: u64,
    pub oldest: DateTime<Utc>,
}

impl Store {
    /// Keeps `insight` for the run's next batch; keeping the same id again changes nothing.
    /// Returns whether this call kept it.
    pub async fn add_pending_insight(&self, run_id: &str, ns: &str, i: &Insight) -> Result<bool> {
        let model = pending_insight::ActiveModel {
            id: Set(i.id.clone()),
            run_id: Set(run_id.to_owned()),
            namespace: Set(ns.to_owned()),
            section: Set(i.section.clone()),
            content: Set(i.content.clone()),
            source: Set(i.source.clone()),
            created_at: Set(Utc::now()),
        };
        let n = pending_insight::Entity::insert(model)
            .on_conflict(
                OnConflict::column(pending_insight::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?;
        Ok(n > 0)
    }

    /// The run's waiting insights with their namespaces, oldest first.
    pub async fn pending_insights(&self, run_id: &str) -> Result<Vec<(String, Insight)>> {
        let rows = pending_insight::Entity::find()
            .filter(pending_insight::Column::RunId.eq(run_id))
            .order_by_asc(pending_insight::Column::CreatedAt)
            .order_by_asc(pending_insight::Column::Id)
            .all(self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.namespace,
                    Insight {
                        id: r.id,
                        section: r.section,
                        content: r.content,
                        source: r.source,
                    },
                )
            })
            .collect())
    }

    /// How many insights of the run are waiting.
    pub async fn pending_insight_count(&self, run_id: &str) -> Result<u64> {
        Ok(pending_insight::Entity::find()
            .filter(pending_insight::Column::RunId.eq(run_id))
            .count(self.connection())
            .await?)
    }

    /// Every run with insights waiting.
    pub async fn pending_runs(&self) -> Result<Vec<PendingRun>> {
        let rows: Vec<(String, i64, DateTime<Utc>)> = pending_insight::Entity::find()
            .select_only()
            .column(pending_insight::Column::RunId)
            .column_as(pending_insight::Column::Id.count(), "n")
            .column_as(pending_insight::Column::CreatedAt.min(), "oldest")
            .group_by(pending_insight::Column::RunId)
            .into_tuple()
            .all(self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, n, oldest)| PendingRun {
                run_id,
                count: n.max(0) as u64,
                oldest,
            })
            .collect())
    }

    /// Removes the waiting insights with these ids (curated, or dropped with their run).
    pub async fn remove_pending_insights(&self, ids: &[String]) -> Result<u64> {
        let mut removed = 0;
        for chunk in ids.chunks(500) {
            removed += pending_insight::Entity::delete_many()
                .filter(pending_insight::Column::Id.is_in(chunk.iter().cloned()))
                .exec(self.connection())
                .await?
                .rows_affected;
        }
        Ok(removed)
    }
}
