"""After a model-making job: its model joins its registry name (the first of a name becomes the champion);
every later one — stage 2 after its stage 1, a fine-tune, a retrain — is a challenger: the evaluate step scores
challenger and champion on the same validation items of the job's dataset version (and on every item of the
project's gold set, when it has one of the same task), records the gate's decision, and promotes the challenger
when the gate and the policy allow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.db import domain, repos
from core.db.session import session_scope
from core.engine.items import LabelledItems
from core.engine.tasks import task_of
from core.jobs.gate import Policy, decide_with_gold, score_bundle

log = logging.getLogger("fitcycle.worker")


def name_of(s: Any, job: domain.Job) -> str:
    """The registry name a job's model joins: the one the job names, else its dataset's name."""
    name = job.spec.get("name")
    if name:
        return str(name)
    version = repos.get_version(s, job.dataset_version_id)
    dataset = repos.get_dataset(s, job.project_id, version.dataset_id) if version else None
    return dataset.name if dataset else "default"


@dataclass(frozen=True)
class GoldSet:
    """The project's gold set as the evaluate step found it: what the project names, and its items (None, and
    why, when it cannot be scored)."""

    ref: dict[str, Any]
    items: LabelledItems | None
    missing: str = ""


def _gold_scores(
    gold: GoldSet | None, items: LabelledItems, challenger_bundle: Path, champion_bundle: Path | None
) -> dict[str, Any] | None:
    """Both models' scores on every gold item, or the reason the gold set was skipped."""
    if gold is None:
        return None
    shown = {k: gold.ref.get(k) for k in ("dataset_id", "dataset", "version")}
    skipped = gold.missing
    if gold.items is not None and task_of(gold.items) is not task_of(items):
        skipped = f"a {task_of(gold.items).name} gold set cannot score a {task_of(items).name} model"
    if gold.items is None or skipped:
        return shown | {"challenger": None, "champion": None, "skipped": skipped}
    return shown | {
        "challenger": score_bundle(challenger_bundle, gold.items, "all"),
        "champion": score_bundle(champion_bundle, gold.items, "all") if champion_bundle is not None else None,
        "skipped": None,
    }


def evaluate_challenger(
    sessions: Any,
    job: domain.Job,
    challenger: domain.Model,
    challenger_bundle: Path,
    champion_bundle: Path,
    champion: domain.Model,
    items: LabelledItems,
    gold: GoldSet | None = None,
) -> dict[str, Any]:
    """Score both on the items' validation split (and the gold set), decide, record; returns the decision for
    the job's result. A champion of another task cannot be weighed against: the challenger stays a version."""
    assert challenger.name is not None
    challenger_scores = score_bundle(challenger_bundle, items)
    try:
        champion_scores = score_bundle(champion_bundle, items)
    except ValueError as exc:  # the name's champion answers another task: there is no common score
        with session_scope(sessions) as s:
            decision = repos.record_decision(
                s,
                job.project_id,
                challenger.name,
                action="rejected",
                model_id=challenger.id,
                champion_id=champion.id,
                scores={"challenger": challenger_scores.as_dict(), "champion": None},
                reason=f"not comparable with the champion ({exc}); kept as a version: promote it by hand",
                actor="gate",
                job_id=job.id,
            )
        return _decision_result(decision)
    on_gold = _gold_scores(gold, items, challenger_bundle, champion_bundle)
    with session_scope(sessions) as s:
        entry = repos.model_name(s, job.project_id, challenger.name)
        policy = Policy.of(entry.policy if entry else {})
    verdict = decide_with_gold(
        challenger_scores,
        champion_scores,
        policy,
        on_gold["challenger"] if on_gold else None,
        on_gold["champion"] if on_gold else None,
        newer_data=challenger.dataset_version_id != champion.dataset_version_id,
    )
    scores: dict[str, Any] = {
        "challenger": challenger_scores.as_dict(),
        "champion": champion_scores.as_dict(),
        "policy": policy.as_dict(),
        "tests": verdict.tests,
    }
    if on_gold is not None:
        scores["gold"] = on_gold | {
            side: on_gold[side].as_dict() if on_gold[side] is not None else None for side in ("challenger", "champion")
        }
    with session_scope(sessions) as s:
        if verdict.promote and policy.auto_promote and job.by_admin:
            decision = repos.set_champion(
                s,
                job.project_id,
                challenger.name,
                challenger.id,
                {"action": "promoted", "scores": scores, "reason": verdict.reason, "actor": "gate", "job_id": job.id},
            )
        else:
            action = "approved" if verdict.promote else "rejected"
            waits = "auto_promote is off" if not policy.auto_promote else "a member key queued this job"
            reason = verdict.reason + (f"; {waits}: an admin promotes it by hand" if verdict.promote else "")
            decision = repos.record_decision(
                s,
                job.project_id,
                challenger.name,
                action=action,
                model_id=challenger.id,
                champion_id=champion.id,
                scores=scores,
                reason=reason,
                actor="gate",
                job_id=job.id,
            )
        event = "model.promoted" if decision.action == "promoted" else "retrain.rejected"
        if decision.action != "approved":
            repos.emit(s, job.project_id, event, decision.event())
    log.info("job %s: %s %s (%s)", job.id, decision.action, challenger.id, decision.reason)
    return _decision_result(decision)


def _decision_result(decision: domain.Decision) -> dict[str, Any]:
    """A decision as the job's result carries it."""
    return {"action": decision.action, "reason": decision.reason, "scores": decision.scores, "decision_id": decision.id}
