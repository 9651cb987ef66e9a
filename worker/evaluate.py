"""After a model-making job: its model joins its registry name (the first of a name becomes the champion);
after a retrain, the evaluate step scores challenger and champion on the same validation items of the new
dataset version, records the gate's decision, and promotes the challenger when the gate and the policy
allow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.db import domain, repos
from core.db.session import session_scope
from core.engine.items import LabelledItems
from core.jobs.gate import Policy, decide, score_bundle

log = logging.getLogger("fitcycle.worker")


def name_of(s: Any, job: domain.Job) -> str:
    """The registry name a job's model joins: the one the job names, else its dataset's name."""
    name = job.spec.get("name")
    if name:
        return str(name)
    version = repos.get_version(s, job.dataset_version_id)
    dataset = repos.get_dataset(s, job.project_id, version.dataset_id) if version else None
    return dataset.name if dataset else "default"


def evaluate_retrain(
    sessions: Any,
    job: domain.Job,
    challenger: domain.Model,
    challenger_bundle: Path,
    champion_bundle: Path | None,
    champion: domain.Model | None,
    items: LabelledItems,
) -> dict[str, Any]:
    """Score both on the items' validation split, decide, record; returns the decision for the job's result."""
    assert challenger.name is not None
    challenger_scores = score_bundle(challenger_bundle, items)
    champion_scores = score_bundle(champion_bundle, items) if champion_bundle is not None else None
    with session_scope(sessions) as s:
        entry = repos.model_name(s, job.project_id, challenger.name)
        policy = Policy.of(entry.policy if entry else {})
    verdict = decide(challenger_scores, champion_scores, policy)
    scores = {
        "challenger": challenger_scores.as_dict(),
        "champion": champion_scores.as_dict() if champion_scores else None,
        "policy": policy.as_dict(),
    }
    with session_scope(sessions) as s:
        if verdict.promote and policy.auto_promote:
            decision = repos.set_champion(
                s,
                job.project_id,
                challenger.name,
                challenger.id,
                {"action": "promoted", "scores": scores, "reason": verdict.reason, "actor": "gate", "job_id": job.id},
            )
        else:
            action = "approved" if verdict.promote else "rejected"
            reason = verdict.reason + ("; auto_promote is off: promote it by hand" if verdict.promote else "")
            decision = repos.record_decision(
                s,
                job.project_id,
                challenger.name,
                action=action,
                model_id=challenger.id,
                champion_id=champion.id if champion else None,
                scores=scores,
                reason=reason,
                actor="gate",
                job_id=job.id,
            )
        event = "model.promoted" if decision.action == "promoted" else "retrain.rejected"
        if decision.action != "approved":
            repos.emit(s, job.project_id, event, decision.event())
    log.info("job %s: %s %s (%s)", job.id, decision.action, challenger.id, decision.reason)
    return {"action": decision.action, "reason": decision.reason, "scores": scores, "decision_id": decision.id}
