"""One job, start to end: claim the row, hold the lease, fetch the data (and, from the fleet's weights store, the
pretrained weights it needs), run the engine through a DbJobContext, record the outcome. A message for a job that
is not claimable (running elsewhere, already finished) is dropped."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.datasets.materialize import content_hash, materialize
from core.db import domain, repos
from core.db.outage import is_outage, retrying
from core.db.session import session_scope
from core.engine.callbacks import TrainingStopped
from core.engine.errors import FitcycleError
from core.engine.export import read_manifest
from core.engine.items import LabelledItems, stored_items
from core.engine.rules import TEXT_RULES
from core.engine.splits import SEED, VALID_PCT
from core.engine.text.manifest import LANGUAGE_MODEL
from core.jobs.fleet_weights import fetch_pretrained
from core.jobs.kinds import get_kind
from core.jobs.rates import AutoRateHints
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec
from core.logs import JOB_ID
from core.storage.base import ObjectStore, StoreUnavailable, download_prefix
from core.storage.layout import attempt_prefix
from worker import metrics
from worker.context import DbJobContext, new_work_dir
from worker.evaluate import GoldSet, evaluate_challenger, name_of
from worker.memory import release_memory
from worker.trials import reporter_for

log = logging.getLogger("fitcycle.worker")


@dataclass
class Runtime:
    """What every job of one worker process shares."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    owner: str
    shutdown: threading.Event = field(default_factory=threading.Event)  # SIGTERM: hand the running job back
    send: Callable[[str, str], None] | None = None  # (job id, queue): put a job's message on the broker again


def fetch_bundle(rt: Runtime, model: domain.Model) -> Path:
    """A local copy of a model's export bundle (cached: bundles never change)."""
    return download_prefix(rt.store, model.bundle_prefix, rt.settings.cache_dir / "bundles" / model.id)


def resolve_spec(rt: Runtime, job: domain.Job, data: Path) -> TrainSpec:
    """The engine's spec: the job's fields plus local paths for the data, a pretrained model and the parent."""
    fields: dict[str, Any] = {k: v for k, v in job.spec.items() if k in TrainSpec.model_fields}
    # Each job draws its own data order, augmentations and initial head (a child must not replay its parent's
    # batches); derived from the job id, so a resumed run draws the same ones again. The split keeps `seed`.
    fields.update(
        kind=job.kind,
        data=str(data),
        data_seed=job.spec.get("data_seed", _data_seed(rt, job)),
        checkpoint_every_n_steps=rt.settings.checkpoint_every_n_steps,
        checkpoint_every_seconds=rt.settings.checkpoint_every_seconds,
        report_every_n_batches=rt.settings.report_every_n_batches,
        memory_ceiling_mb=rt.settings.cpu_memory_ceiling_mb,
        onnx=job.search_id is None,  # a search's trial: its bundle gets model.onnx if it is adopted (kind adopt)
    )
    with session_scope(rt.sessions) as s:
        pretrained_model = job.spec.get("pretrained_model_id")
        if pretrained_model:
            model = repos.get_model(s, pretrained_model, job.project_id)
            if model is None:
                raise FitcycleError(f"pretrained model {pretrained_model} no longer exists")
            fields["pretrained"] = str(fetch_bundle(rt, model))
        if job.parent_job_id:
            parent = repos.get_job(s, job.parent_job_id, job.project_id)
            if parent is None or parent.model_id is None:
                raise FitcycleError(f"parent job {job.parent_job_id} has no model to continue from")
            model = repos.get_model(s, parent.model_id, job.project_id)
            assert model is not None
            fields["init_bundle"] = str(fetch_bundle(rt, model))
            fields.setdefault("arch", model.arch)
            auto_from = get_kind(job.kind).auto_from
            if auto_from is not None and fields.get("lr", get_kind(job.kind).lr) == "auto":
                sweeps = repos.child_jobs(s, parent.id, auto_from)
                sweep = sweeps[0] if sweeps else None
                hints = AutoRateHints.from_results(
                    parent.result, sweep.id if sweep else None, sweep.result if sweep else None
                )
                fields.update(hints.spec_fields())
        from_model = job.spec.get("from_model_id")
        if from_model:  # a retrain: the full weights of the model it starts from
            model = repos.get_model(s, from_model, job.project_id)
            if model is None:
                raise FitcycleError(f"model {from_model} (the retrain's starting point) no longer exists")
            fields["init_bundle"] = str(fetch_bundle(rt, model))
    return TrainSpec(**fields)  # a stored [low, high] becomes the spec's (low, high)


def _data_seed(rt: Runtime, job: domain.Job) -> int:
    """A job queued before its spec carried its data seed (api/services/jobs.create sets it now): the job's own
    draws, or, for a search's trial, its search's (common random numbers: every trial sees the same
    batches, augmentations and initial weights, so trials differ by their fields, not their luck; a seeded search
    draws from its seed, so two searches with one seed compare on the same draws too)."""
    source = job.id
    if job.search_id is not None:
        with session_scope(rt.sessions) as s:
            search = repos.get_search(s, job.search_id)
        if search is not None:
            source = f"{search.seed:08x}" if search.seed is not None else search.id
    return int(source.replace("-", "")[:8], 16)


def _renew_until(rt: Runtime, ctx: DbJobContext, job_id: str, done: threading.Event) -> None:
    period = max(0.5, rt.settings.lease_seconds / 3)
    while not done.wait(period):
        try:
            with session_scope(rt.sessions) as s:
                if not repos.renew_lease(s, job_id, rt.owner, rt.settings.lease_seconds, ctx.token):
                    ctx.lease_lost.set()
                    return
            metrics.beat()
        except Exception as exc:  # a database blip: try again next period; the lease covers it
            if is_outage(exc):
                log.warning("lease renewal of job %s: the database is not answering; trying again", job_id)
            else:
                log.exception("lease renewal of job %s failed", job_id)


def execute_job(rt: Runtime, job_id: str) -> str:
    """Run one job if this worker can claim it; returns what happened. Every log line meanwhile names the job."""
    token = JOB_ID.set(job_id)
    try:
        return _execute_job(rt, job_id)
    finally:
        JOB_ID.reset(token)
        release_memory()


def _execute_job(rt: Runtime, job_id: str) -> str:

    def claim() -> tuple[domain.Job | None, str, domain.DatasetVersion | None]:
        with session_scope(rt.sessions) as s:
            job = repos.claim(s, job_id, rt.owner, rt.settings.lease_seconds)
            if job is None:
                current = repos.get_job(s, job_id)
                return None, current.state if current else "missing", None
            return job, job.state, repos.get_version(s, job.dataset_version_id)

    job, state, version = retrying(claim, f"claiming job {job_id}", rt.settings.db_retry_seconds)
    if job is None:
        log.info("dropped message for job %s: it is %s", job_id, state)
        return f"dropped ({state})"
    assert version is not None
    log.info("job %s (%s) claimed by %s, attempt %d", job.id, job.kind, rt.owner, job.attempts)
    claimed_at = time.monotonic()

    work = new_work_dir(rt.settings.cache_dir / "work", job.id)
    ctx = DbJobContext(
        job.id,
        job.project_id,
        rt.owner,
        rt.sessions,
        rt.store,
        work,
        rt.shutdown,
        token=job.attempts,  # the fencing token of every write this run makes
        db_retry_seconds=rt.settings.db_retry_seconds,
    )
    done = threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(rt, ctx, job.id, done), daemon=True)
    renewer.start()
    try:
        ctx.trial = reporter_for(rt.sessions, job, rt.settings.sqlalchemy_url)
        folder, manifest = materialize(rt.store, version.prefix, rt.settings.cache_dir / "datasets")
        spec = resolve_spec(rt, job, folder / "files")
        if version.labels.get("kind") in TEXT_RULES:  # texts: the ULMFiT flow's learners (core/jobs/text_training.py)
            spec = spec.model_copy(update={"labels": version.labels["kind"]})
        fetch_pretrained(rt.store, spec)  # the fleet's weights store: what the spec needs and this machine lacks
        items = stored_items(folder / "files", manifest, spec.valid_pct, spec.seed)
        ctx.n_train = len(items.indices(False))
        kind = get_kind(job.kind)
        ctx.planned_epochs = sum(int(getattr(spec, f)) for f in kind.trains)
        ctx.estimated_phases = _estimated_phases(rt, job)
        result = run_spec(spec, ctx, items)
        if "provenance" in result:
            dataset = {"version_id": version.id, "sha256": content_hash(folder, manifest)}
            result["provenance"] = {**result["provenance"], "dataset": dataset}
        if get_kind(job.kind).adopts_parent_result:
            result = {**_parent_result(rt, job), **result}
        model_id = _register_model(rt, job, ctx, result, items) if get_kind(job.kind).makes_model else None
        if model_id is not None and rt.settings.drop_finished_checkpoints:
            result["checkpoint_bytes_freed"] = _drop_checkpoints(rt, job)
        outcome, error = "succeeded", None
    except repos.LeaseLost:
        log.warning("job %s: attempt %d lost its lease to another worker; it writes nothing more", job.id, job.attempts)
        return "lease lost"
    except TrainingStopped:
        if ctx.lease_lost.is_set():
            log.warning(
                "job %s: attempt %d lost its lease to another worker; stopping, recording nothing", job.id, job.attempts
            )
            return "lease lost"
        if ctx.pruned:
            outcome, error, result, model_id = "pruned", None, _pruned_result(ctx), None
        elif rt.shutdown.is_set() and not _cancel_requested(rt, job.id):
            return _hand_back(rt, job, ctx.token)
        else:
            outcome, error, result, model_id = "cancelled", None, {}, None
    except (FitcycleError, ValidationError, ValueError, StoreUnavailable) as exc:
        outcome, error, result, model_id = "failed", one_line(str(exc)), {}, None
    except Exception as exc:
        log.exception("job %s failed", job.id)
        outcome, result, model_id = "failed", {}, None
        # Its text can name server paths and hosts: the user reads the kind of error, the operator the rest.
        error = f"the worker hit an internal error ({type(exc).__name__})" + _keep_traceback(ctx)
    finally:
        done.set()
        renewer.join(timeout=5)
        shutil.rmtree(work, ignore_errors=True)

    def finish() -> bool:
        with session_scope(rt.sessions) as s:
            done = repos.finish(
                s, job.id, rt.owner, outcome, error=error, result=_jsonable(result), model_id=model_id, token=ctx.token
            )
            if done and outcome in ("succeeded", "failed"):
                event = {"job_id": job.id, "kind": job.kind, "state": outcome, "model_id": model_id, "error": error}
                repos.emit(s, job.project_id, f"job.{outcome}", event)
            return done

    recorded = retrying(finish, f"recording the end of job {job.id}", rt.settings.db_retry_seconds)
    if recorded:
        metrics.JOB_SECONDS.labels(job.kind, outcome).observe(time.monotonic() - claimed_at)
        metrics.JOBS_DONE.labels(outcome).inc()
    log.info(
        "job %s %s%s%s",
        job.id,
        outcome,
        f": {error}" if error else "",
        "" if recorded else " (not recorded: no longer the owner)",
    )
    return outcome


def _estimated_phases(rt: Runtime, job: domain.Job) -> dict[str, float]:
    """The phases' seconds of the dry run this job follows (its live ETA covers the whole job), else none."""
    probe_id = job.spec.get("estimate_job_id")
    if not probe_id:
        return {}
    with session_scope(rt.sessions) as s:
        probe = repos.get_job(s, str(probe_id), job.project_id)
    phases = (probe.result.get("estimate") or {}).get("phases") if probe is not None else None
    return {str(k): float(v) for k, v in phases.items()} if isinstance(phases, dict) else {}


def _pruned_result(ctx: DbJobContext) -> dict[str, Any]:
    """A pruned trial's result: where it stopped and its objective there (its epoch rows stay)."""
    assert ctx.trial is not None
    metric = ctx.trial.search.metric
    return {"pruned_after_epoch": ctx.trial.step, "main_metric": metric, metric: ctx.trial.last_value}


def _parent_result(rt: Runtime, job: domain.Job) -> dict[str, Any]:
    """The parent's result, for a kind that passes its parent's model on as it is (its metrics and rates)."""
    with session_scope(rt.sessions) as s:
        parent = repos.get_job(s, job.parent_job_id or "", job.project_id)
    return {k: v for k, v in (parent.result if parent else {}).items() if k not in ("decision", "name", "version")}


def _cancel_requested(rt: Runtime, job_id: str) -> bool:
    with session_scope(rt.sessions) as s:
        return repos.job_control(s, job_id, rt.owner)[0]


def _hand_back(rt: Runtime, job: domain.Job, token: int) -> str:
    """The worker is shutting down: the job, checkpointed at the batch it stopped before, goes back to the
    queue (not failed, not cancelled) and its message back to the broker; another worker resumes it."""
    with session_scope(rt.sessions) as s:
        released = repos.release(s, job.id, rt.owner, token)
    if released and rt.send is not None:
        try:
            rt.send(job.id, job.queue)
        except Exception:  # the broker is gone too: the reaper re-sends queued jobs whose message was lost
            log.exception("job %s: could not re-send its message; the reaper will", job.id)
    log.info("job %s: the worker is shutting down; checkpointed and handed back to the queue", job.id)
    return "handed back"


def one_line(text: str, limit: int = 1000) -> str:
    """An error as one line a user reads: lines joined, length capped."""
    flat = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _keep_traceback(ctx: DbJobContext) -> str:
    """Store the traceback as the job's error.txt artifact (it names server paths: not for the error field)."""
    try:
        ctx.artifact_path("error.txt").write_text(traceback.format_exc())
        ctx.artifact_written("error.txt")
    except Exception:
        log.exception("could not store the traceback artifact")
        return "; the traceback is in the worker log"
    return "; the traceback is the job's error.txt artifact and in the worker log"


def _drop_checkpoints(rt: Runtime, job: domain.Job) -> int:
    """A succeeded job's checkpoints are dead weight once its export bundle is stored (nothing resumes a
    finished job): delete them, and say how much that freed. Failed and cancelled jobs keep theirs."""
    with session_scope(rt.sessions) as s:
        freed = repos.delete_artifacts(s, job.id, "checkpoints/")
    for attempt in range(1, job.attempts + 1):  # earlier attempts' checkpoints too (one of them may be the last)
        rt.store.delete_prefix(f"{attempt_prefix(job.project_id, job.id, attempt)}/checkpoints/")
    log.info("job %s: its export is stored; dropped its checkpoints (%.1f MB freed)", job.id, freed / 1024**2)
    return freed


def _register_model(
    rt: Runtime, job: domain.Job, ctx: DbJobContext, result: dict[str, Any], items: LabelledItems
) -> str:
    """The model row, in the registry under its name: the first of a name becomes its champion (recorded as a
    decision), every later one is a challenger the gate judges against the champion."""
    manifest = read_manifest(ctx.artifact_path("export"))
    keep = {k: v for k, v in result.items() if isinstance(v, int | float) or k in ("lrs", "task", "main_metric")}
    with session_scope(rt.sessions) as s:
        repos.fence(s, job.id, rt.owner, ctx.token)
        model = repos.create_model(
            s,
            project_id=job.project_id,
            job_id=job.id,
            arch=manifest["arch"],
            classes=manifest["classes"],
            metrics=keep,
            bundle_prefix=f"{ctx.prefix}/export",
            dataset_version_id=job.dataset_version_id,
        )
        if job.search_id is not None:  # a search's trial: no name, so no gate (its best can be adopted into one)
            result["search_id"] = job.search_id
            return model.id
        name = name_of(s, job)
        entry = repos.model_name(s, job.project_id, name)
        champion = repos.get_model(s, entry.champion_id, job.project_id) if entry and entry.champion_id else None
        model = repos.register_model(s, model.id, name, as_challenger=champion is not None)
        if champion is None:
            first = repos.first_champion_decision(s, job.project_id, name, model.id, job.id)
            result["decision"] = {"action": first.action, "reason": first.reason, "decision_id": first.id}
    result["name"], result["version"] = model.name, model.version
    if champion is not None and manifest["task"] == LANGUAGE_MODEL:
        # A language model is judged by what a classifier on its encoder does: it stays a version of its name.
        result["decision"] = {
            "action": "kept",
            "reason": "a language model is not judged by the gate; promote it by hand",
        }
    elif champion is not None:  # every model of a name is judged against its champion: stage 2 against stage 1 too
        result["decision"] = evaluate_challenger(
            rt.sessions,
            job,
            model,
            ctx.artifact_path("export"),
            fetch_bundle(rt, champion),
            champion,
            items,
            gold_set(rt, job),
        )
    return model.id


def gold_set(rt: Runtime, job: domain.Job) -> GoldSet | None:
    """The project's gold set (the dataset version it names, fetched), or None when the project has none."""
    with session_scope(rt.sessions) as s:
        project = repos.get_project(s, job.project_id)
        gold = project.gold if project else None
        version = repos.get_version(s, gold["version_id"]) if gold else None
    if gold is None:
        return None
    if version is None:
        return GoldSet(gold, None, "the gold dataset version no longer exists")
    folder, manifest = materialize(rt.store, version.prefix, rt.settings.cache_dir / "datasets")
    return GoldSet(gold, stored_items(folder / "files", manifest, VALID_PCT, SEED))  # every item counts: no split


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(result, default=str))


REAPER_LEASE = "reaper"


def reap_if_holder(rt: Runtime, send: Any) -> list[str] | None:
    """One reaper pass if this worker holds (or takes) the fleet's reaper lease; None when another does."""
    with session_scope(rt.sessions) as s:
        holder = repos.hold_fleet_lease(s, REAPER_LEASE, rt.owner, rt.settings.reaper_interval_seconds * 3)
    return reap_once(rt, send) if holder else None


def reap_once(rt: Runtime, send: Any) -> list[str]:
    """Re-queue expired and lost jobs, and send their messages again."""
    with session_scope(rt.sessions) as s:
        ids = repos.reap(s, rt.settings.requeue_after_seconds)
        queues = {i: j.queue for i in ids if (j := repos.get_job(s, i)) is not None}
    for job_id, queue in queues.items():
        log.info("reaper: re-sending job %s to %s", job_id, queue)
        send(job_id, queue)
    return ids
