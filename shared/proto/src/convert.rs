//! Conversions between the contract's messages and the domain types, written once: stages,
//! timestamps, token usage, and the pipeline's records. Conversions from the wire that can
//! fail name the field that is wrong.

use agent_learning_domain::{
    Bullet, BulletEvent, DeltaKind, DeltaOp, InvalidInput, PolicyVersion, Reflection, Rollout,
    RolloutGroup, RolloutSource, RunStage, RunState, Stage, TokenUsage, Transition,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::v1 as pb;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn timestamp_from_pb(t: Option<prost_types::Timestamp>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_default()
}

/// A wire message that does not hold what its contract promises: a peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct Malformed {
    pub what: &'static str,
    pub reason: String,
}

fn malformed(what: &'static str, reason: impl Into<String>) -> Malformed {
    Malformed {
        what,
        reason: reason.into(),
    }
}

fn uuid(what: &'static str, s: &str) -> Result<Uuid, Malformed> {
    Uuid::parse_str(s).map_err(|_| malformed(what, format!("{s:?} is not a UUID")))
}

pub fn stage_to_pb(s: Stage) -> pb::Stage {
    match s {
        Stage::Shadow => pb::Stage::Shadow,
        Stage::Staging => pb::Stage::Staging,
        Stage::Production => pb::Stage::Production,
        Stage::Quarantined => pb::Stage::Quarantined,
    }
}

/// `None` for STAGE_UNSPECIFIED; an error naming `field` for a number outside the enum.
pub fn stage_from_pb(field: &str, v: i32) -> Result<Option<Stage>, InvalidInput> {
    match pb::Stage::try_from(v) {
        Ok(pb::Stage::Unspecified) => Ok(None),
        Ok(pb::Stage::Shadow) => Ok(Some(Stage::Shadow)),
        Ok(pb::Stage::Staging) => Ok(Some(Stage::Staging)),
        Ok(pb::Stage::Production) => Ok(Some(Stage::Production)),
        Ok(pb::Stage::Quarantined) => Ok(Some(Stage::Quarantined)),
        Err(_) => Err(InvalidInput::new(field, format!("unknown stage {v}"))),
    }
}

pub fn usage_to_pb(u: TokenUsage) -> pb::TokenUsage {
    pb::TokenUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    }
}

pub fn usage_from_pb(u: Option<pb::TokenUsage>) -> TokenUsage {
    u.map(|u| TokenUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    })
    .unwrap_or_default()
}

pub fn transition_to_pb(t: Transition) -> pb::Transition {
    pb::Transition {
        state: t.state,
        action: t.action,
        next_state: t.next_state,
        done: t.done,
    }
}

pub fn transition_from_pb(t: pb::Transition) -> Transition {
    Transition {
        state: t.state,
        action: t.action,
        next_state: t.next_state,
        done: t.done,
    }
}

pub fn source_to_pb(s: RolloutSource) -> pb::RolloutSource {
    match s {
        RolloutSource::Expert => pb::RolloutSource::Expert,
        RolloutSource::Env => pb::RolloutSource::Env,
        RolloutSource::WorldModel => pb::RolloutSource::WorldModel,
    }
}

pub fn source_from_pb(field: &str, v: i32) -> Result<RolloutSource, InvalidInput> {
    match pb::RolloutSource::try_from(v) {
        Ok(pb::RolloutSource::Expert) => Ok(RolloutSource::Expert),
        Ok(pb::RolloutSource::Env) => Ok(RolloutSource::Env),
        Ok(pb::RolloutSource::WorldModel) => Ok(RolloutSource::WorldModel),
        _ => Err(InvalidInput::new(
            field,
            format!("rollout source {v} is not expert, env or world_model"),
        )),
    }
}

pub fn rollout_to_pb(r: Rollout) -> pb::Rollout {
    pb::Rollout {
        id: r.id,
        run_id: r.run_id,
        demo_id: r.demo_id,
        step_index: r.step_index,
        state: r.state,
        expert_action: r.expert_action,
        action: r.action,
        next_state: r.next_state,
        done: r.done,
        source: source_to_pb(r.source) as i32,
        group_id: r.group_id,
    }
}

pub fn rollout_from_pb(field: &str, r: pb::Rollout) -> Result<Rollout, InvalidInput> {
    Ok(Rollout {
        source: source_from_pb(&format!("{field}.source"), r.source)?,
        id: r.id,
        run_id: r.run_id,
        demo_id: r.demo_id,
        step_index: r.step_index,
        state: r.state,
        expert_action: r.expert_action,
        action: r.action,
        next_state: r.next_state,
        done: r.done,
        group_id: r.group_id,
    })
}

pub fn group_to_pb(g: RolloutGroup) -> pb::RolloutGroup {
    pb::RolloutGroup {
        id: g.id,
        namespace: g.namespace,
        run_id: g.run_id,
        demo_id: g.demo_id,
        step_index: g.step_index,
        state: g.state,
        expert_action: g.expert_action,
        expert_next_state: g.expert_next_state,
        rollouts: g.rollouts.into_iter().map(rollout_to_pb).collect(),
    }
}

pub fn group_from_pb(g: pb::RolloutGroup) -> Result<RolloutGroup, InvalidInput> {
    Ok(RolloutGroup {
        rollouts: g
            .rollouts
            .into_iter()
            .enumerate()
            .map(|(i, r)| rollout_from_pb(&format!("rollouts[{i}]"), r))
            .collect::<Result<_, _>>()?,
        id: g.id,
        namespace: g.namespace,
        run_id: g.run_id,
        demo_id: g.demo_id,
        step_index: g.step_index,
        state: g.state,
        expert_action: g.expert_action,
        expert_next_state: g.expert_next_state,
    })
}

pub fn reflection_to_pb(r: Reflection) -> pb::Reflection {
    pb::Reflection {
        id: r.id,
        namespace: r.namespace,
        situation: r.situation,
        evaluation: r.evaluation,
        alternatives: r.alternatives,
        conclusion: r.conclusion,
        valid: r.valid,
        rollout_ids: r.rollout_ids,
        usage: Some(usage_to_pb(r.usage)),
        run_id: r.run_id,
        problem: r.problem,
    }
}

pub fn reflection_from_pb(r: pb::Reflection) -> Reflection {
    Reflection {
        usage: usage_from_pb(r.usage),
        id: r.id,
        namespace: r.namespace,
        run_id: r.run_id,
        situation: r.situation,
        evaluation: r.evaluation,
        alternatives: r.alternatives,
        conclusion: r.conclusion,
        valid: r.valid,
        problem: r.problem,
        rollout_ids: r.rollout_ids,
    }
}

pub fn policy_to_pb(p: PolicyVersion) -> pb::PolicyVersion {
    pb::PolicyVersion {
        namespace: p.namespace,
        version: p.version.to_string(),
        instructions_template: p.instructions_template,
        exemplars_k: p.exemplars_k,
        min_stage: stage_to_pb(p.min_stage) as i32,
        token_budget: p.token_budget,
        created_at: Some(timestamp(p.created_at)),
    }
}

pub fn policy_from_pb(p: pb::PolicyVersion) -> Result<PolicyVersion, InvalidInput> {
    let version = p.version.parse().map_err(|_| {
        InvalidInput::new(
            "version",
            format!("{:?} is not a version number", p.version),
        )
    })?;
    let min_stage = stage_from_pb("min_stage", p.min_stage)?
        .ok_or_else(|| InvalidInput::new("min_stage", "unspecified"))?;
    let created_at = timestamp_from_pb(p.created_at);
    Ok(PolicyVersion {
        namespace: p.namespace,
        version,
        instructions_template: p.instructions_template,
        exemplars_k: p.exemplars_k,
        min_stage,
        token_budget: p.token_budget,
        created_at,
    })
}

pub fn run_state_to_pb(s: RunState) -> pb::RunState {
    match s {
        RunState::Pending => pb::RunState::Pending,
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
    }
}

pub fn run_state_from_pb(v: i32) -> Result<RunState, Malformed> {
    match pb::RunState::try_from(v) {
        Ok(pb::RunState::Pending) => Ok(RunState::Pending),
        Ok(pb::RunState::Running) => Ok(RunState::Running),
        Ok(pb::RunState::Succeeded) => Ok(RunState::Succeeded),
        Ok(pb::RunState::Failed) => Ok(RunState::Failed),
        Ok(pb::RunState::Cancelled) => Ok(RunState::Cancelled),
        _ => Err(malformed("run state", v.to_string())),
    }
}

/// `None` for an empty stage name (a run that has not started a stage).
pub fn run_stage_from_pb(s: &str) -> Result<Option<RunStage>, Malformed> {
    if s.is_empty() {
        return Ok(None);
    }
    RunStage::parse(s)
        .map(Some)
        .map_err(|e| malformed("run stage", e.to_string()))
}

pub fn delta_kind_to_pb(k: DeltaKind) -> pb::DeltaKind {
    match k {
        DeltaKind::Add => pb::DeltaKind::Add,
        DeltaKind::Merge => pb::DeltaKind::Merge,
        DeltaKind::Update => pb::DeltaKind::Update,
        DeltaKind::Delete => pb::DeltaKind::Delete,
    }
}

pub fn op_to_pb(op: DeltaOp) -> pb::DeltaOp {
    pb::DeltaOp {
        kind: delta_kind_to_pb(op.kind) as i32,
        bullet_id: op.bullet_id.to_string(),
        insight_id: op.insight_id,
        similarity: op.similarity,
        replayed: op.replayed,
        merged_bullet_id: op
            .merged_bullet_id
            .map(|u| u.to_string())
            .unwrap_or_default(),
    }
}

pub fn op_from_pb(op: pb::DeltaOp) -> Result<DeltaOp, Malformed> {
    let kind = match pb::DeltaKind::try_from(op.kind) {
        Ok(pb::DeltaKind::Add) => DeltaKind::Add,
        Ok(pb::DeltaKind::Merge) => DeltaKind::Merge,
        Ok(pb::DeltaKind::Update) => DeltaKind::Update,
        Ok(pb::DeltaKind::Delete) => DeltaKind::Delete,
        _ => return Err(malformed("delta kind", op.kind.to_string())),
    };
    Ok(DeltaOp {
        kind,
        bullet_id: uuid("bullet id", &op.bullet_id)?,
        insight_id: op.insight_id,
        similarity: op.similarity,
        replayed: op.replayed,
        merged_bullet_id: match op.merged_bullet_id.as_str() {
            "" => None,
            s => Some(uuid("merged bullet id", s)?),
        },
    })
}

pub fn bullet_to_pb(b: Bullet) -> pb::Bullet {
    pb::Bullet {
        id: b.id.to_string(),
        section: b.section,
        content: b.content,
        helpful: b.helpful,
        harmful: b.harmful,
        evidence: b.evidence,
        stage: stage_to_pb(b.stage) as i32,
        namespace: b.namespace,
        sources: b.sources,
        created_at: Some(timestamp(b.created_at)),
        updated_at: Some(timestamp(b.updated_at)),
        deleted: b.deleted,
    }
}

pub fn bullet_from_pb(b: pb::Bullet) -> Result<Bullet, Malformed> {
    Ok(Bullet {
        id: uuid("bullet id", &b.id)?,
        stage: stage_from_pb("stage", b.stage)
            .ok()
            .flatten()
            .ok_or_else(|| malformed("bullet stage", b.stage.to_string()))?,
        namespace: b.namespace,
        section: b.section,
        content: b.content,
        helpful: b.helpful,
        harmful: b.harmful,
        evidence: b.evidence,
        sources: b.sources,
        deleted: b.deleted,
        created_at: timestamp_from_pb(b.created_at),
        updated_at: timestamp_from_pb(b.updated_at),
    })
}

pub fn event_to_pb(e: BulletEvent) -> pb::BulletEvent {
    let stage = |s: Option<Stage>| s.map_or(pb::Stage::Unspecified, stage_to_pb) as i32;
    pb::BulletEvent {
        seq: e.seq,
        bullet_id: e.bullet_id.to_string(),
        kind: e.kind,
        insight_id: e.insight_id.unwrap_or_default(),
        from_stage: stage(e.from_stage),
        to_stage: stage(e.to_stage),
        detail: e.detail.to_string(),
        at: Some(timestamp(e.at)),
    }
}

pub fn event_from_pb(e: pb::BulletEvent) -> Result<BulletEvent, Malformed> {
    let stage =
        |v: i32| stage_from_pb("stage", v).map_err(|_| malformed("event stage", v.to_string()));
    Ok(BulletEvent {
        seq: e.seq,
        bullet_id: uuid("bullet id", &e.bullet_id)?,
        from_stage: stage(e.from_stage)?,
        to_stage: stage(e.to_stage)?,
        detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail)),
        kind: e.kind,
        insight_id: Some(e.insight_id).filter(|s| !s.is_empty()),
        at: timestamp_from_pb(e.at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_and_unknown_numbers_name_the_field() {
        for s in [
            Stage::Shadow,
            Stage::Staging,
            Stage::Production,
            Stage::Quarantined,
        ] {
            assert_eq!(stage_from_pb("f", stage_to_pb(s) as i32), Ok(Some(s)));
        }
        assert_eq!(stage_from_pb("f", 0), Ok(None));
        assert_eq!(
            stage_from_pb("min_stage", 9).unwrap_err().field,
            "min_stage"
        );
        for s in [
            RolloutSource::Expert,
            RolloutSource::Env,
            RolloutSource::WorldModel,
        ] {
            assert_eq!(source_from_pb("f", source_to_pb(s) as i32), Ok(s));
        }
        assert!(
            source_from_pb("f", 0).is_err(),
            "unspecified is not a source"
        );
    }
}
