//! Insert once, then publish once. A record that is also sent to a stream carries a
//! `published` flag: the row is written first, the stream entry next, the flag last. A process
//! killed between the two publishes again on its next attempt, so delivery is at least once and
//! consumers are idempotent by the entry's key; nothing is ever published that was not stored.

use std::future::Future;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::entity::{live_episode, reflection, rollout};
use crate::{Result, Store, StoreError};

/// A stored thing that is published to a stream once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox<'a> {
    /// The rollouts of one branch point, by group id.
    RolloutGroup(&'a str),
    /// One reflection, by id.
    Reflection(&'a str),
    /// One live-loop episode, by id.
    Episode(&'a str),
}

impl Store {
    pub async fn is_published(&self, item: Outbox<'_>) -> Result<bool> {
        let db = self.connection();
        Ok(match item {
            Outbox::RolloutGroup(id) => rollout::Entity::find()
                .filter(rollout::Column::GroupId.eq(id))
                .filter(rollout::Column::Published.eq(true))
                .one(db)
                .await?
                .is_some(),
            Outbox::Reflection(id) => reflection::Entity::find_by_id(id.to_owned())
                .one(db)
                .await?
                .is_some_and(|r| r.published),
            Outbox::Episode(id) => live_episode::Entity::find_by_id(id.to_owned())
                .one(db)
                .await?
                .is_some_and(|e| e.published),
        })
    }

    pub async fn mark_published(&self, item: Outbox<'_>) -> Result<()> {
        let db = self.connection();
        match item {
            Outbox::RolloutGroup(id) => {
                rollout::Entity::update_many()
                    .col_expr(rollout::Column::Published, Expr::value(true))
                    .filter(rollout::Column::GroupId.eq(id))
                    .exec(db)
                    .await?;
            }
            Outbox::Reflection(id) => {
                reflection::Entity::update_many()
                    .col_expr(reflection::Column::Published, Expr::value(true))
                    .filter(reflection::Column::Id.eq(id))
                    .exec(db)
                    .await?;
            }
            Outbox::Episode(id) => {
                live_episode::Entity::update_many()
                    .col_expr(live_episode::Column::Published, Expr::value(true))
                    .filter(live_episode::Column::Id.eq(id))
                    .exec(db)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs `publish` unless `item` was published before, then marks it published. Returns
    /// whether `publish` ran. `item` must already be stored.
    pub async fn publish_once<E, F, Fut>(&self, item: Outbox<'_>, publish: F) -> Result<bool, E>
    where
        E: From<StoreError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if self.is_published(item).await? {
            return Ok(false);
        }
        publish().await?;
        self.mark_published(item).await?;
        Ok(true)
    }
}
