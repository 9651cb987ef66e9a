"""`estimate`: the probe behind `POST /jobs` with `"dry_run": true` — a tiny job on a worker of the job's queue that
builds the job's real model at its real size, times a few batches (core/jobs/estimate.py) and answers with the job's
expected seconds per phase and in all, its peak memory and the bytes it will store. It is queued by the service for
a dry run, never by name (its spec carries the kind it estimates: `estimate_of`)."""

from __future__ import annotations

import json
from typing import Any

from core.engine.errors import DataError
from core.engine.items import LabelledItems
from core.jobs.context import JobContext
from core.jobs.estimate import estimate, probe, probe_answers
from core.jobs.kinds.base import JobKind, no_learner
from core.jobs.spec import TrainSpec


def run_probe(spec: TrainSpec, ctx: JobContext, items: LabelledItems) -> dict[str, Any]:
    """Probe the job `spec` describes (its kind: `estimate_of`) and estimate it; estimate.json holds the answer."""
    from core.jobs.kinds import get_kind

    if spec.estimate_of is None:
        raise DataError("an estimate job estimates another kind of job: queue it with dry_run: true")
    target = get_kind(spec.estimate_of)
    if target.estimate is None:
        raise DataError(f"a {target.name} job has no estimate yet")
    job = spec.model_copy(update={"kind": target.name, "estimate_of": None})
    found, counts = probe_answers(job, items) if target.answers is not None else probe(job, items)
    answer = estimate(job, target.estimate, found, counts, target.makes_model).as_dict()
    ctx.artifact_path("estimate.json").write_text(json.dumps(answer, indent=1))
    ctx.artifact_written("estimate.json")
    return {"estimate_of": target.name, "estimate": answer}


KIND = JobKind(
    name="estimate",
    summary="a dry run's probe: a few timed batches of a job's model at its size, and the job's estimate",
    run=no_learner,
    answers=run_probe,
    makes_model=False,
    lr=None,
    lr_forms=frozenset({"number", "range", "find", "auto"}),  # whatever the job it estimates takes
    inherits=(),
    plan=True,
    page="estimate",
    internal=True,
)
