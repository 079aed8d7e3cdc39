//! Vectors of embedded texts by content hash (the embedding model's id and the text), so a
//! text is embedded once across stages, processes and restarts: a training run again on the
//! same demos, a state the policy met yesterday, the states every replica of a service sees.
//! A cache: whatever is missing is embedded again, so a lost write costs time, not data.

use std::collections::HashMap;

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};

use crate::entity::embedding_cache;
use crate::{Result, Store, decode_embedding, encode_embedding};

/// Rows read or written per statement (SQLite binds at most 32,766 values in one).
const CHUNK: usize = 500;

/// The record's key of `text` embedded by `model`: SHA-256 of both, NUL-separated, in hex.
pub fn embedding_key(model: &str, text: &str) -> String {
    sha256_hex(&[model.as_bytes(), &[0u8], text.as_bytes()])
}

/// SHA-256 of `parts` one after the other, in hex: the record's content keys.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// The kept vectors of these keys; a key with none is absent from the answer.
    pub async fn cached_embeddings(&self, keys: &[String]) -> Result<HashMap<String, Vec<f32>>> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            let rows = embedding_cache::Entity::find()
                .filter(embedding_cache::Column::Key.is_in(chunk.iter().cloned()))
                .all(self.connection())
                .await?;
            for r in rows {
                found.insert(r.key, decode_embedding(&r.embedding)?);
            }
        }
        Ok(found)
    }

    /// Keeps each `(key, vector)` of `model`; a key kept already gets the new vector (the
    /// same text and model give the same one, and a damaged row is mended).
    pub async fn keep_embeddings(&self, model: &str, entries: &[(String, Vec<f32>)]) -> Result<()> {
        let now = Utc::now();
        for chunk in entries.chunks(CHUNK) {
            let rows = chunk.iter().map(|(key, v)| embedding_cache::ActiveModel {
                key: Set(key.clone()),
                model: Set(model.to_owned()),
                embedding: Set(encode_embedding(v)),
                created_at: Set(now),
            });
            embedding_cache::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(embedding_cache::Column::Key)
                        .update_column(embedding_cache::Column::Embedding)
                        .to_owned(),
                )
                .exec_without_returning(self.connection())
                .await?;
        }
        Ok(())
    }
}
