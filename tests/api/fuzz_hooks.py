"""Schemathesis hooks for the fuzz run (loaded by SCHEMATHESIS_HOOKS=tests.api.fuzz_hooks in
tests/api/openapi_fuzz.py): about half of the generated requests name the seeded dataset, job, model, prediction,
item, artifact and registry name instead of a random id, and about half of the generated jobs the seeded dataset,
so that the fuzzing gets past 404 into each route's own checks (a split, a seed, a size, a file). A DELETE keeps its
random ids: the seeds must last the run."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

IDS: dict[str, Any] = json.loads(os.environ.get("FITCYCLE_FUZZ_IDS", "{}"))  # a path parameter's name -> a real one


def _heads(value: object) -> bool:
    """A coin tossed by the generated value itself, so that a case replays the same (Hypothesis needs it)."""
    return zlib.crc32(repr(value).encode()) % 2 == 0


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    operation = context.operation
    if operation is None or operation.method.upper() == "DELETE" or not _heads(path_parameters):
        return path_parameters
    mapped = dict(path_parameters)
    for name in mapped:
        known = "registry_name" if name == "name" and "/registry/" in operation.path else name  # else an artifact's
        if known in IDS:
            mapped[name] = IDS[known]
    return mapped


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    operation = context.operation
    is_job = operation is not None and operation.method.upper() == "POST" and operation.path.endswith("/jobs")
    if is_job and isinstance(body, dict) and _heads(body):
        return {**body, "dataset_id": IDS["dataset_id"]}
    return body
