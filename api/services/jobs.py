"""Jobs: validate the spec, write the row, commit, THEN enqueue (the row is the truth, the message
only carries its id); list and read them, their metrics, live events and artifacts; cancel and delete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import Problem, not_found
from api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    Deleted,
    FactDifference,
    JobCreate,
    JobPublic,
    JobRerun,
    JobsPublic,
    MetricsPublic,
    RerunComparison,
    Suspect,
    SuspectsPublic,
)
from api.services.datasets import find_version
from api.services.weights import imagenet_available, wt103_available
from api.state import AppState
from core.broker import enqueue
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.architectures import get_architecture, imagenet_weights
from core.engine.items import split_problem
from core.engine.pretrained import WT103
from core.engine.rules import TEXT_RULES
from core.engine.splits import SEED, VALID_PCT
from core.engine.text.awd_lstm import ARCH as TEXT_ARCH
from core.jobs.kinds import ESTIMATE, SAME_DATA, JobKind, get_kind
from core.jobs.provenance import data_seed_for, differences
from core.jobs.rates import retrain_defaults
from core.jobs.spec import DEFAULT_ARCH, JobSettings
from core.storage.layout import job_prefix


def _check_settings(kind: JobKind, fields: dict[str, Any], from_model: bool) -> None:
    """The job's settings once resolved (the request's, its parent's, its kind's defaults), checked as the
    engine will check them, so a bad spec is a 422 instead of a failed job."""
    try:
        settings = JobSettings.model_validate({k: v for k, v in fields.items() if k in JobSettings.model_fields})
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "spec", "message": e["msg"]} for e in exc.errors()]
        raise Problem(
            422, "Invalid job", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from exc
    problems = kind.problems(settings, from_model)
    if problems:
        errors = [{"field": field, "message": message} for field, message in problems]
        raise Problem(422, "Invalid job", "; ".join(f"{f}: {m}" for f, m in problems), errors=errors)


def _check_split(state: AppState, version: domain.DatasetVersion, fields: dict[str, Any]) -> None:
    """A random split drawn with the job's valid_pct and seed must leave a training item in every class and
    some validation: a 422 naming valid_pct now, not a job that fails in its first batch."""
    if version.split != "random":  # a fixed split is the data's own, checked when the version was made
        return
    manifest = json.loads(state.store.get_bytes(f"{version.prefix}/manifest.json"))
    problem = split_problem(manifest, fields.get("valid_pct", VALID_PCT), fields.get("seed", SEED))
    if problem is not None:
        raise Problem(
            422,
            "Invalid job",
            f"valid_pct: {problem}",
            field="valid_pct",
            errors=[{"field": "valid_pct", "message": problem}],
        )


def _parent(s: Session, project: domain.Project, body: JobCreate, kind: JobKind) -> domain.Job | None:
    """The parent job, checked: it exists in this project, made a model, and has succeeded."""
    if not body.parent_job_id:
        if kind.parent is not None:
            raise Problem(
                422,
                "Invalid job",
                f"parent_job_id: a {kind.name} job continues from {kind.parent}; give its id",
                field="parent_job_id",
            )
        return None
    if not kind.takes_parent:
        raise Problem(
            422,
            "Invalid job",
            f"parent_job_id: a {kind.name} job starts from a model, not a job: leave parent_job_id out "
            "(from_model names the model; the default is its name's champion)",
            field="parent_job_id",
        )
    parent = repos.get_job(s, body.parent_job_id, project.id)
    if parent is None:
        raise not_found("job", body.parent_job_id)
    if not get_kind(parent.kind).makes_model:
        raise Problem(
            422, "Invalid job", f"parent_job_id: job {parent.id} is a {parent.kind} job, which makes no model"
        )
    if parent.state != "succeeded":
        raise Problem(
            409,
            "Parent not finished",
            f"parent job {parent.id} is {parent.state}; queue this job once it has succeeded",
        )
    return parent


def _inherit(
    s: Session, project: domain.Project, body: JobCreate, kind: JobKind, parent: domain.Job, fields: dict[str, Any]
) -> None:
    """Take the parent's architecture (always: its weights fit no other) and the fields the kind inherits."""
    model = repos.get_model(s, parent.model_id or "", project.id)
    parent_arch = model.arch if model is not None else parent.spec.get("arch")
    if body.arch is not None and parent_arch is not None and body.arch != parent_arch:
        raise Problem(
            422,
            "Invalid job",
            f"arch: the parent job's model is a {parent_arch}; a job continuing from it trains the same "
            "architecture (leave arch out)",
        )
    if parent_arch is not None:
        fields["arch"] = parent_arch
    for name in kind.inherits:
        if name not in body.model_fields_set and name in parent.spec:
            fields[name] = parent.spec[name]
    if kind.inherits_weights_source and "pretrained" not in body.model_fields_set:
        # The cleaner's fold models start where the parent's did (its body, or its pretrained model).
        for name in ("pretrained", "pretrained_model_id"):
            if name in parent.spec:
                fields[name] = parent.spec[name]


def _text_fields(state: AppState, body: JobCreate, fields: dict[str, Any]) -> None:
    """A job on texts: an AWD-LSTM, from no pretrained weights unless it names a language model (a model id) or
    WikiText-103's (`wt103`, which the fleet's weights store must hold)."""
    if body.arch is not None and body.arch != TEXT_ARCH:
        raise Problem(422, "Invalid job", f"arch: a job on texts trains an {TEXT_ARCH}; leave arch out", field="arch")
    if "pretrained" not in body.model_fields_set:
        fields["pretrained"] = "none"
    elif body.pretrained == "imagenet":
        raise Problem(
            422,
            "Invalid job",
            "pretrained: ImageNet weights are for images; a job on texts takes 'none', 'wt103' or a language "
            "model's id",
            field="pretrained",
        )
    elif body.pretrained == WT103 and not wt103_available(state):
        raise Problem(
            422,
            "Invalid job",
            "pretrained: the fleet's weights store has no WikiText-103 language model; an admin uploads fastai's "
            "lstm_fwd.pth and itos_wt103.pkl (POST /api/v1/weights), or use 'none'",
            field="pretrained",
        )
    fields["arch"] = TEXT_ARCH


def _require_imagenet_weights(state: AppState, arch_name: str) -> None:
    """422 at submit, not a failed job a moment later, when neither this server nor the fleet's weights store has
    ImageNet weights for arch (a worker fetches them from the store)."""
    arch = get_architecture(arch_name)
    if imagenet_weights(arch) is not None:
        return
    available = imagenet_available(state)
    if available[arch.name]:
        return
    here = [name for name, present in available.items() if present]
    raise Problem(
        422,
        "Invalid job",
        f"pretrained: this fleet has no ImageNet weights for '{arch_name}', neither on this server nor in its weights "
        "store (nothing is downloaded from the internet). "
        f"Architectures with ImageNet weights: {', '.join(here) or 'none'} (see GET /api/v1/architectures); "
        'set "arch" to one of them, or "pretrained": "none" to train from scratch, or "pretrained": the id of '
        "one of your models; or an admin uploads torchvision's file for it (POST /api/v1/weights, 'fitcycle weights "
        "upload FILE')",
        field="pretrained",
        options=here,
    )


def _from_model(s: Session, project: domain.Project, body: JobCreate, fields: dict[str, Any]) -> domain.Model:
    """The model a retrain starts from, or a predict job answers with: `from_model`, else the name's champion."""
    name = fields["name"]
    model_id = body.from_model
    if model_id is None:
        entry = repos.model_name(s, project.id, name)
        model_id = entry.champion_id if entry else None
        if model_id is None:
            raise Problem(
                422,
                "Invalid job",
                f"name: '{name}' has no champion to retrain; train a model under that name first (or give from_model)",
                field="name",
            )
    model = repos.get_model(s, model_id, project.id)
    if model is None:
        raise Problem(422, "Invalid job", f"from_model: no model {model_id} in this project", field="from_model")
    if body.arch is not None and body.arch != model.arch:
        raise Problem(422, "Invalid job", f"arch: the job keeps its model's architecture ({model.arch})")
    fields["arch"] = model.arch
    fields["from_model_id"] = model.id
    return model


def _retrain_from(s: Session, project: domain.Project, body: JobCreate, fields: dict[str, Any]) -> None:
    """A retrain starts from `from_model`, else the name's champion: its architecture, its pictures (size,
    resize, augmentation) and its split settings, unless the request sets them; smaller defaults."""
    model = _from_model(s, project, body, fields)
    made_by = repos.get_job(s, model.job_id, project.id)
    for key in SAME_DATA:
        if key not in body.model_fields_set and made_by is not None and key in made_by.spec:
            fields[key] = made_by.spec[key]
    defaults, how = retrain_defaults((model.metrics.get("lrs") or {}).get("last"))
    chosen = [key for key in defaults if key not in body.model_fields_set]
    for key in chosen:
        fields[key] = defaults[key]
    if chosen:
        fields["retrain_defaults"] = {"fields": chosen, "from": how}


def create(
    state: AppState,
    project: domain.Project,
    body: JobCreate,
    by_admin: bool = True,
    trial: tuple[str, int] | None = None,
) -> JobPublic:
    """Queue a job; `by_admin` is False for a member key's job, whose model the gate never promotes on its own;
    `trial`: (search id, trial number) for a search's trial."""
    state.stored.check(project.id, 0, fresh=False)  # a project at its storage quota makes no more artifacts
    with session_scope(state.sessions) as s:
        _check_capacity(state, s, project)
        kind, fields, version, parent, queue = _resolve(s, state, project, body)
        fields["data_seed"] = _data_seed(s, kind, fields, parent, trial)
        if body.estimate_job_id is not None:
            _check_estimate(s, project, body.estimate_job_id, kind)
        if body.dry_run:
            kind = _dry_run(kind, fields)
        job = repos.create_job(
            s,
            project_id=project.id,
            kind=kind.name,
            spec=fields,
            dataset_version_id=version.id,
            parent_job_id=parent.id if parent else None,
            queue=queue,
            by_admin=by_admin,
            search_id=trial[0] if trial else None,
            trial_number=trial[1] if trial else None,
        )
    return _send(state, job.id, queue)


def _dry_run(kind: JobKind, fields: dict[str, Any]) -> JobKind:
    """A dry run: the probe job (core/jobs/kinds/probe.py) that estimates a job of `kind` with these settings, on
    one device."""
    if kind.estimate is None:
        raise Problem(422, "Invalid job", f"dry_run: a {kind.name} job has no estimate yet", field="dry_run")
    fields["estimate_of"] = kind.name
    fields.pop("estimate_job_id", None)
    fields["gpus"] = 1
    return ESTIMATE


def _check_estimate(s: Session, project: domain.Project, estimate_job_id: str, kind: JobKind) -> None:
    """The dry run a job names: this project's, and of a job of its kind."""
    found = repos.get_job(s, estimate_job_id, project.id)
    if found is None or not get_kind(found.kind).internal or found.spec.get("estimate_of") != kind.name:
        raise Problem(
            422,
            "Invalid job",
            f"estimate_job_id: no dry run of a {kind.name} job {estimate_job_id} in this project",
            field="estimate_job_id",
        )


def _send(state: AppState, job_id: str, queue: str) -> JobPublic:
    """The committed job's message. If sending fails, the reaper re-sends it later."""
    try:
        enqueue(state.celery, job_id, queue)
        with session_scope(state.sessions) as s:
            repos.mark_enqueued(s, job_id)
    except Exception:  # the broker is down: the row stays queued and the reaper will send it
        pass
    with session_scope(state.sessions) as s:
        fresh = repos.get_job(s, job_id)
    assert fresh is not None
    return JobPublic.of(fresh)


def _check_capacity(state: AppState, s: Session, project: domain.Project) -> None:
    active = repos.active_jobs(s, project.id)
    if active >= state.settings.max_active_jobs:
        raise Problem(
            429,
            "Too many active jobs",
            f"this project has {active} queued or running jobs, its limit (FITCYCLE_MAX_ACTIVE_JOBS); "
            "wait for some to finish or cancel them",
        )


def rerun(state: AppState, project: domain.Project, job_id: str, body: JobRerun, by_admin: bool = True) -> JobPublic:
    """Queue a finished job again: its kind, resolved spec, data seed, dataset version and parent, with the changes
    `body` asks for. Its page (GET /jobs/{id}) then says whether the weights came out bit-identical."""
    if body.queue is not None and body.queue not in state.settings.queues:
        raise Problem(
            422,
            "Invalid rerun",
            f"queue: not one of this server's queues; choose one of {', '.join(state.settings.queues)}",
            field="queue",
        )
    state.stored.check(project.id, 0, fresh=False)
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        if not job.is_terminal:
            raise Problem(409, "Job not finished", f"job {job_id} is {job.state}; rerun it once it has ended")
        kind = get_kind(job.kind)
        if kind.adopts_parent_result:
            raise Problem(
                422, "Invalid rerun", f"a {kind.name} job trains nothing: rerun the job that trained its model"
            )
        parent = repos.get_job(s, job.parent_job_id, project.id) if job.parent_job_id else None
        if job.parent_job_id and (parent is None or parent.model_id is None):
            raise Problem(
                409, "Parent gone", f"job {job_id} continued from job {job.parent_job_id}, whose model is gone"
            )
        for field in ("from_model_id", "pretrained_model_id"):
            model_id = job.spec.get(field)
            if model_id and repos.get_model(s, model_id, project.id) is None:
                raise Problem(409, "Model gone", f"job {job_id} started from model {model_id}, which is deleted")
        if repos.get_version(s, job.dataset_version_id) is None:
            raise Problem(409, "Data gone", f"the dataset version job {job_id} trained on is deleted")
        _check_capacity(state, s, project)
        spec = {k: v for k, v in job.spec.items() if k != "rerun_of"}
        spec["rerun_of"] = job.id
        changes = body.model_dump(exclude={"queue"}, exclude_none=True)
        spec.update(changes)
        if "seed" in changes:  # its draws follow its seed, as a new job's would
            lineage = job.parent_job_id or str(spec.get("from_model_id", ""))
            spec["data_seed"] = data_seed_for(int(spec["seed"]), kind.name, lineage)
        _check_settings(kind, spec, from_model=parent is not None or "from_model_id" in spec)
        queue = body.queue or job.queue
        new = repos.create_job(
            s,
            project_id=project.id,
            kind=kind.name,
            spec=spec,
            dataset_version_id=job.dataset_version_id,
            parent_job_id=job.parent_job_id,
            queue=queue,
            by_admin=by_admin,
        )
    return _send(state, new.id, queue)


def rerun_comparison(job: domain.Job, original: domain.Job | None) -> RerunComparison:
    """A rerun against the job it reran (core.jobs.provenance.differences over their recorded facts)."""
    of = str(job.spec["rerun_of"])
    mine = job.result.get("weights_sha256")
    theirs = original.result.get("weights_sha256") if original is not None else None
    identical = mine == theirs if mine and theirs else None
    mine_facts, their_facts = job.result.get("provenance"), original.result.get("provenance") if original else None
    found = differences(their_facts, mine_facts) if mine_facts and their_facts else []
    diffs = [FactDifference(**d) for d in found]
    if original is None:
        note = f"job {of} is deleted: nothing to compare with"
    elif not job.is_terminal or not original.is_terminal:
        note = "the comparison comes when both jobs have ended"
    elif mine_facts is None or their_facts is None:
        which = "this job" if mine_facts is None else f"job {of}"
        note = f"{which} recorded no provenance (it failed, or ran before jobs recorded it): nothing to compare"
    elif identical is None:
        note = "the recorded facts compare below; the weights do not: one of the jobs exported no model"
    elif identical:
        note = "bit-identical weights: the same sha256 of every tensor"
    elif diffs:
        note = f"the weights differ; {len(diffs)} recorded fact(s) differ: " + ", ".join(d.fact for d in diffs[:5])
    else:
        note = "the weights differ, yet no recorded fact does: a source of randomness fitcycle does not record"
    return RerunComparison(
        of=of,
        identical=identical,
        weights_sha256=mine,
        original_weights_sha256=theirs,
        differences=diffs,
        note=note,
    )


def _data_seed(
    s: Session, kind: JobKind, fields: dict[str, Any], parent: domain.Job | None, trial: tuple[str, int] | None
) -> int:
    """The seed of the job's draws (initial weights, data order, augmentations), kept in its spec so a rerun draws
    the same: from its seed, kind and what it continues from (core.jobs.provenance.data_seed_for); a search's trial
    draws its search's (common random numbers: every trial sees the same batches, augmentations and initial weights,
    so trials differ by their fields, not their luck; a seeded search draws from its seed)."""
    if trial is not None:
        search = repos.get_search(s, trial[0])
        if search is not None:
            source = f"{search.seed:08x}" if search.seed is not None else search.id
            return int(source.replace("-", "")[:8], 16)
    lineage = parent.id if parent is not None else str(fields.get("from_model_id", ""))
    return data_seed_for(int(fields.get("seed", SEED)), kind.name, lineage)


def check(state: AppState, project: domain.Project, body: JobCreate, split: bool = True) -> dict[str, Any]:
    """The settings a job of `body` would run with, checked as create() checks them (`split`: the split it draws
    too, which reads the version's manifest); nothing is written."""
    with session_scope(state.sessions) as s:
        return _resolve(s, state, project, body, split)[1]


def _resolve(
    s: Session, state: AppState, project: domain.Project, body: JobCreate, split: bool = True
) -> tuple[JobKind, dict[str, Any], domain.DatasetVersion, domain.Job | None, str]:
    """A job body resolved (its parent's and its kind's defaults) and checked: its kind, its settings, its dataset
    version, its parent and its queue; a Problem says what is wrong."""
    settings = state.settings
    if body.queue is not None and body.queue not in settings.queues:
        raise Problem(
            422,
            "Invalid job",
            f"queue: not one of this server's queues; choose one of {', '.join(settings.queues)} (FITCYCLE_QUEUES)",
        )
    dataset, version, _ = find_version(s, project, body.dataset_id, body.dataset_version)
    kind = get_kind(body.kind)
    if kind.internal:
        raise Problem(
            422,
            "Invalid job",
            f"kind: an {kind.name} job is a dry run's probe: queue the job you want estimated with dry_run: true",
            field="kind",
        )
    fields = body.model_dump(
        mode="json",
        exclude={"dataset_id", "dataset_version", "parent_job_id", "queue", "kind", "from_model", "dry_run"},
        exclude_none=True,
    )
    fields["name"] = body.name or dataset.name + kind.name_suffix
    is_text = version.labels.get("kind") in TEXT_RULES
    data_problem = kind.data_problem(is_text, body.gpus, body.compile)
    if data_problem is not None:
        raise Problem(422, "Invalid job", f"kind: {data_problem}", field="kind")
    if is_text:
        _text_fields(state, body, fields)
    elif body.pretrained == WT103:
        raise Problem(
            422, "Invalid job", "pretrained: wt103 is a language model's start: for texts", field="pretrained"
        )
    if kind.valid_pct is not None and "valid_pct" not in body.model_fields_set:
        fields["valid_pct"] = kind.valid_pct
    if kind.defaults_from_champion:
        _retrain_from(s, project, body, fields)
    elif kind.answers_with_model:
        _from_model(s, project, body, fields)
    if "lr" not in fields and kind.default_lr(is_text) is not None:
        fields["lr"] = kind.default_lr(is_text)
    parent = _parent(s, project, body, kind)
    if parent is not None:
        _inherit(s, project, body, kind, parent, fields)
    if parent is not None and kind.adopts_parent_result and version.id != parent.dataset_version_id:
        # Its model is judged on the data it learnt from: a newer version would pass as newer data at the gate.
        theirs = repos.get_version(s, parent.dataset_version_id)
        if body.dataset_version is not None or theirs is None or theirs.dataset_id != version.dataset_id:
            where = f"version {theirs.version} of dataset {theirs.dataset_id}" if theirs else "a deleted version"
            raise Problem(
                422,
                "Invalid job",
                f"dataset_version: a {kind.name} job keeps its parent's data ({where}); leave dataset_version out",
                field="dataset_version",
            )
        version = theirs
    if body.pretrained not in ("imagenet", "none", WT103):
        model = repos.get_model(s, body.pretrained, project.id)
        if model is None:
            raise Problem(
                422,
                "Invalid job",
                f"pretrained: '{body.pretrained}' is neither 'imagenet', 'none' nor the id of a model in this project",
            )
        fields["pretrained"] = "model"
        fields["pretrained_model_id"] = model.id
        fields.setdefault("arch", model.arch)
    fields.setdefault("arch", TEXT_ARCH if is_text else DEFAULT_ARCH)
    if not is_text and parent is None and fields.get("pretrained") == "imagenet" and not kind.starts_from_model:
        _require_imagenet_weights(state, fields["arch"])
    _check_settings(kind, fields, from_model=parent is not None or "from_model_id" in fields)
    if split:
        _check_split(state, version, fields)
    return kind, fields, version, parent, body.queue or settings.default_queue


def _job(s: Session, project: domain.Project, job_id: str) -> domain.Job:
    job = repos.get_job(s, job_id, project.id)
    if job is None:
        raise not_found("job", job_id)
    return job


def find(state: AppState, project: domain.Project, job_id: str) -> domain.Job:
    """The job, or 404 when this project has none by that id."""
    with session_scope(state.sessions) as s:
        return _job(s, project, job_id)


def list_all(state: AppState, project: domain.Project, offset: int, limit: int) -> JobsPublic:
    with session_scope(state.sessions) as s:
        jobs, count = repos.list_jobs(s, project.id, limit, offset)
    return JobsPublic(data=[JobPublic.of(j) for j in jobs], count=count)


def get(state: AppState, project: domain.Project, job_id: str) -> JobPublic:
    """The job; a rerun with its comparison against the job it reran."""
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        of = job.spec.get("rerun_of")
        original = repos.get_job(s, str(of), project.id) if of else None
    public = JobPublic.of(job)
    if of:
        public.rerun = rerun_comparison(job, original)
    return public


def metrics(state: AppState, project: domain.Project, job_id: str) -> MetricsPublic:
    with session_scope(state.sessions) as s:
        _job(s, project, job_id)
        epochs = repos.epoch_metrics(s, job_id)
        batches = [b for _, b in repos.batch_metrics(s, job_id)]
    return MetricsPublic(epochs=epochs, batches=batches)


def artifacts(state: AppState, project: domain.Project, job_id: str, url: Callable[[str], str]) -> ArtifactsPublic:
    """The job's artifacts, each with its download `url(name)`."""
    with session_scope(state.sessions) as s:
        _job(s, project, job_id)
        data = [ArtifactPublic.of(a, url=url(a.name)) for a in repos.artifacts(s, job_id)]
    return ArtifactsPublic(data=data, count=len(data))


def open_artifact(
    state: AppState, project: domain.Project, job_id: str, name: str
) -> tuple[domain.Artifact, Iterator[bytes]]:
    """One artifact's record and its bytes, streamed from the store."""
    with session_scope(state.sessions) as s:
        _job(s, project, job_id)
        artifact = repos.get_artifact(s, job_id, name)
    if artifact is None:
        raise not_found("artifact", name)
    return artifact, state.store.open(artifact.key)


def prediction_parts(state: AppState, project: domain.Project, job_id: str, fmt: str) -> Iterator[bytes]:
    """A predict job's answers as one file: its chunks (core/jobs/kinds/predict.py) streamed in order."""
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        names = set(job.result.get("parts", {}).get(fmt, [])) if job.state == "succeeded" else set()
        found = [a for a in repos.artifacts(s, job_id) if a.name in names]
    if get_kind(job.kind).answers is None:
        raise Problem(404, "No predictions", f"job {job_id} is a {job.kind} job; predictions come from a predict job")
    if job.state != "succeeded" or len(found) != len(names):
        raise Problem(
            409, "Predictions not ready", f"job {job_id} is {job.state}: its answers are whole once it has succeeded"
        )
    keys = [a.key for a in sorted(found, key=lambda a: a.name)]

    def chunks() -> Iterator[bytes]:
        for key in keys:
            yield from state.store.open(key)

    return chunks()


def suspects(
    state: AppState, project: domain.Project, job_id: str, limit: int, image_url: Callable[[str, str, int], str]
) -> SuspectsPublic:
    """An interpret job's suspects, most doubted first, each with the URL of its image."""
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        artifact = repos.get_artifact(s, job_id, "suspects.json")
        version = repos.get_version(s, job.dataset_version_id)
    if artifact is None or version is None:
        raise Problem(
            404,
            "No suspects",
            f"job {job_id} has no suspects: they come from an interpret job with folds >= 2",
        )
    rows = json.loads(state.store.get_bytes(artifact.key))
    data = [Suspect(**r, image_url=image_url(version.dataset_id, r["item"], version.version)) for r in rows[:limit]]
    return SuspectsPublic(data=data, count=len(rows), dataset_id=version.dataset_id, version=version.version)


def _snapshot(
    state: AppState, credential: tuple[str, str], job_id: str, after_batch: int
) -> tuple[domain.Job | None, list[domain.EpochMetric], list[tuple[int, domain.BatchMetric]]]:
    with session_scope(state.sessions) as s:
        if repos.caller_for(s, credential) is None:  # revoked, expired or signed out while the stream was open
            return None, [], []
        return repos.get_job(s, job_id), repos.epoch_metrics(s, job_id), repos.batch_metrics(s, job_id, after_batch)


async def events(
    state: AppState, credential: tuple[str, str], job_id: str, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """Server-sent events until the job is over, the client left or its key stopped working: `state` on
    every change, `epoch` and `batch` rows as they arrive, and `end`."""
    last_batch, sent_epochs, last_state = 0, 0, None
    while not await disconnected():
        job, epochs, batches = await run_in_threadpool(_snapshot, state, credential, job_id, last_batch)
        if job is None:
            return
        for row_id, b in batches:
            last_batch = row_id
            yield f"event: batch\ndata: {json.dumps(b.__dict__)}\n\n"
        for e in epochs[sent_epochs:]:
            yield f"event: epoch\ndata: {json.dumps(e.__dict__)}\n\n"
        sent_epochs = len(epochs)
        public = JobPublic.of(job)
        current = (public.state, public.epoch, public.batch)
        if current != last_state:
            last_state = current
            yield f"event: state\ndata: {public.model_dump_json()}\n\n"
        if job.is_terminal:
            yield f"event: end\ndata: {json.dumps({'state': job.state})}\n\n"
            return
        await asyncio.sleep(0.5)


def cancel(state: AppState, project: domain.Project, job_id: str) -> JobPublic:
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        if job.is_terminal:
            raise Problem(409, "Already finished", f"job {job_id} is {job.state}; nothing to cancel")
        updated = repos.request_cancel(s, job_id)
    assert updated is not None
    return JobPublic.of(updated)


def delete(state: AppState, project: domain.Project, job_id: str) -> Deleted:
    """Delete a finished job with its metrics and stored artifacts; 409 while it runs, while it has a model,
    or while other jobs continue from it."""
    with session_scope(state.sessions) as s:
        job = _job(s, project, job_id)
        if not job.is_terminal:
            raise Problem(409, "Job not finished", f"job {job_id} is {job.state}; cancel it, then delete it")
        search = repos.get_search(s, job.search_id) if job.search_id else None
        if search is not None and not search.is_terminal:
            raise Problem(
                409,
                "Trial of a running search",
                f"job {job_id} is trial {job.trial_number} of search {search.id}, which is running; "
                "delete it once the search has ended (or cancel the search)",
            )
        if job.model_id is not None:
            raise Problem(
                409,
                "Job has a model",
                f"job {job_id} made model {job.model_id}; delete the model first (DELETE /models/{job.model_id})",
            )
        children = repos.children_of(s, job_id)
        if children:
            listed = ", ".join(f"{c.id} ({c.kind}, {c.state})" for c in children[:5])
            raise Problem(409, "Job has children", f"jobs continue from job {job_id}: {listed}; delete them first")
        freed = repos.stored_bytes_of_job(s, job_id)
        repos.delete_job(s, job_id)
    objects = state.store.delete_prefix(job_prefix(project.id, job_id) + "/")
    return Deleted(deleted=f"{job.kind} job {job_id} ({job.state})", objects=objects, bytes=freed)
