//! A Qdrant server through `qdrant-client` (gRPC).

use std::collections::BTreeMap;

use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter as QFilter, PointStruct, PointsIdsList,
    ScoredPoint, ScrollPointsBuilder, SearchBatchPointsBuilder, SearchParamsBuilder,
    SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, point_id::PointIdOptions,
    value::Kind,
};
use uuid::Uuid;

use crate::{Filter, Hit, Point, Result, Search, VectorError, VectorIndex};

fn request(
    collection: &str,
    vector: Vec<f32>,
    limit: usize,
    filter: &Filter,
    hnsw_ef: Option<usize>,
) -> SearchPointsBuilder {
    let mut req = SearchPointsBuilder::new(collection, vector, limit as u64);
    if let Some(f) = to_filter(filter) {
        req = req.filter(f);
    }
    if let Some(ef) = hnsw_ef {
        req = req.params(SearchParamsBuilder::default().hnsw_ef(ef as u64));
    }
    req
}

fn hits(found: Vec<ScoredPoint>) -> Result<Vec<Hit>> {
    found
        .into_iter()
        .map(|p| {
            Ok(Hit {
                id: uuid_of(p.id)?,
                score: p.score,
            })
        })
        .collect()
}

pub struct RemoteIndex {
    client: Qdrant,
    hnsw_ef: Option<usize>,
}

fn engine(e: impl std::fmt::Display) -> VectorError {
    VectorError::Engine(e.to_string())
}

fn uuid_of(id: Option<qdrant_client::qdrant::PointId>) -> Result<Uuid> {
    match id.and_then(|p| p.point_id_options) {
        Some(PointIdOptions::Uuid(s)) => Uuid::parse_str(&s).map_err(engine),
        other => Err(VectorError::Engine(format!(
            "unexpected point id {other:?}"
        ))),
    }
}

fn to_filter(filter: &Filter) -> Option<QFilter> {
    if filter.must.is_empty() {
        return None;
    }
    Some(QFilter::must(filter.must.iter().map(
        |(field, values)| match values.as_slice() {
            [one] => Condition::matches(field.clone(), one.clone()),
            many => Condition::matches(field.clone(), many.to_vec()),
        },
    )))
}

fn already_exists(e: &qdrant_client::QdrantError) -> bool {
    e.to_string().contains("already exists")
}

impl RemoteIndex {
    pub fn connect(url: &str, api_key: Option<String>) -> Result<Self> {
        // The client's version check prints to standard output (where a server announces its
        // address); the contract suite runs against the server in CI instead.
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .skip_compatibility_check()
            .build()
            .map_err(engine)?;
        Ok(Self {
            client,
            hnsw_ef: None,
        })
    }

    /// Searches walk the server's graph with this beam width (`None`: the collection's own,
    /// its `ef_construct`).
    pub fn with_hnsw_ef(mut self, hnsw_ef: Option<usize>) -> Self {
        self.hnsw_ef = hnsw_ef;
        self
    }
}

#[async_trait]
impl VectorIndex for RemoteIndex {
    async fn ping(&self) -> Result<()> {
        self.client.health_check().await.map_err(engine)?;
        Ok(())
    }

    async fn ensure_collection(
        &self,
        collection: &str,
        dim: usize,
        keyword_fields: &[&str],
    ) -> Result<()> {
        // Several processes start at once and each ensures the collections it uses: the
        // loser of a creation race finds the collection there, which is what it wanted.
        if !self
            .client
            .collection_exists(collection)
            .await
            .map_err(engine)?
        {
            let created = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(collection)
                        .vectors_config(VectorParamsBuilder::new(dim as u64, Distance::Cosine)),
                )
                .await;
            match created {
                Ok(_) => {}
                Err(e) if already_exists(&e) => {}
                Err(e) => return Err(engine(e)),
            }
        }
        // Always: a process that created the collection may have died before its indexes.
        for field in keyword_fields {
            let indexed = self
                .client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(collection, *field, FieldType::Keyword)
                        .wait(true),
                )
                .await;
            match indexed {
                Ok(_) => {}
                Err(e) if already_exists(&e) => {}
                Err(e) => return Err(engine(e)),
            }
        }
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let mut payload = qdrant_client::Payload::new();
                for (k, v) in p.payload {
                    payload.insert(k, v);
                }
                PointStruct::new(p.id.to_string(), p.vector, payload)
            })
            .collect();
        self.client
            .upsert_points(UpsertPointsBuilder::new(collection, points).wait(true))
            .await
            .map_err(engine)?;
        Ok(())
    }

    async fn delete(&self, collection: &str, ids: Vec<Uuid>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(collection)
                    .points(PointsIdsList {
                        ids: ids.into_iter().map(|u| u.to_string().into()).collect(),
                    })
                    .wait(true),
            )
            .await
            .map_err(engine)?;
        Ok(())
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        limit: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>> {
        let res = self
            .client
            .search_points(request(collection, vector, limit, &filter, self.hnsw_ef))
            .await
            .map_err(engine)?;
        hits(res.result)
    }

    async fn search_batch(&self, collection: &str, searches: Vec<Search>) -> Result<Vec<Vec<Hit>>> {
        if searches.is_empty() {
            return Ok(Vec::new());
        }
        let asked = searches.len();
        let requests: Vec<_> = searches
            .into_iter()
            .map(|s| request(collection, s.vector, s.limit, &s.filter, self.hnsw_ef).build())
            .collect();
        let res = self
            .client
            .search_batch_points(SearchBatchPointsBuilder::new(collection, requests))
            .await
            .map_err(engine)?;
        if res.result.len() != asked {
            return Err(VectorError::Engine(format!(
                "{} answers to {asked} searches",
                res.result.len()
            )));
        }
        res.result.into_iter().map(|r| hits(r.result)).collect()
    }

    async fn scroll(
        &self,
        collection: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, BTreeMap<String, String>)>> {
        let mut req = ScrollPointsBuilder::new(collection)
            .limit(u32::try_from(limit + 1).unwrap_or(u32::MAX))
            .with_payload(true);
        if let Some(after) = after {
            req = req.offset(after.to_string());
        }
        let res = self.client.scroll(req).await.map_err(engine)?;
        let mut out = Vec::with_capacity(res.result.len());
        for r in res.result {
            let id = uuid_of(r.id)?;
            if Some(id) == after {
                continue;
            }
            let payload = r
                .payload
                .into_iter()
                .filter_map(|(k, v)| match v.kind {
                    Some(Kind::StringValue(s)) => Some((k, s)),
                    _ => None,
                })
                .collect();
            out.push((id, payload));
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn count(&self, collection: &str) -> Result<u64> {
        let res = self
            .client
            .count(CountPointsBuilder::new(collection).exact(true))
            .await
            .map_err(engine)?;
        Ok(res.result.map_or(0, |r| r.count))
    }

    async fn optimize(&self, _collection: &str) -> Result<()> {
        // The server indexes in the background by itself.
        Ok(())
    }
}
