"""`adopt`: the parent job's model, as it is, made a version of a registry name (`name`), where the gate judges it
as any challenger. Nothing trains: the parent's export bundle is copied as this job's own. A hyperparameter
search's best trial goes to `register_as` this way (api/services/searches.py): its trials make models that join no
name, so the gate judges one model, not every trial."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import Built


def _copy_bundle(spec: TrainSpec, ctx: JobContext) -> dict[str, Any]:
    from core.engine.export import add_onnx, read_manifest

    assert spec.init_bundle is not None  # the kind starts from a model: its parent's bundle
    target = ctx.artifact_path("export")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(spec.init_bundle), target)
    onnx = add_onnx(target)  # a search's trial skipped model.onnx: the model it becomes here is served
    ctx.artifact_written("export")
    manifest = read_manifest(target)
    return {
        "task": manifest["task"],
        "adopted_bundle_of": "parent",
        **({"onnx_added": bool(onnx.get("file"))} if onnx else {}),
    }


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The parent's bundle as this job's export (the worker registers it under the job's name)."""
    return _copy_bundle(spec, ctx)


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """The same for a text model's bundle."""
    return _copy_bundle(spec, ctx)


KIND = JobKind(
    name="adopt",
    summary="the parent's model as it is, made a version of `name`: the gate judges it (a search's best trial)",
    run=run,
    text=run_text,
    makes_model=True,
    lr=None,
    parent="a job that produced a model",
    starts_from_model=True,
    adopts_parent_result=True,
    form_fields=(),
)
