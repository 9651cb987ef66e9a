"""`predict`: batch prediction as a job. A model (from_model, default: its name's champion) answers every image of a
dataset version; the answers go to the job's artifacts in chunks, each as JSON Lines (key, the task's answer,
uncertainty) and CSV (key, answer in a few words, uncertainty): `predictions/part-NNNNN.jsonl` and `.csv`, a chunk
written whole before the checkpoint counts it. A job that crashed resumes after its last counted chunk (a chunk
answered again replaces its own files: no item twice, none missing); a cancelled one stops between chunks. Where the
version has labels the model's classes know, the job also reports its accuracy on them.

GET /jobs/{id}/predictions streams the chunks in order as one JSON Lines or CSV file."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from typing import Any

from core.engine.callbacks import TrainingStopped
from core.engine.errors import DataError
from core.engine.inference import Predictor
from core.engine.items import LabelItems, LabelledItems
from core.jobs.context import JobContext
from core.jobs.estimate import answer_phases
from core.jobs.kinds.base import JobKind, no_learner
from core.jobs.spec import TrainSpec

CHECKPOINT_FORMAT = "fitcycle-predict"
PART = "predictions/part-{:05d}.{}"
FORWARD_ITEMS = 64  # images in one forward pass; a chunk is `predict_chunk` of them (the job's spec)
CSV_HEADER = ["key", "answer", "uncertainty"]


def part_names(n_parts: int, suffix: str) -> list[str]:
    """The artifact names of a predict job's chunks, in order."""
    return [PART.format(i, suffix) for i in range(n_parts)]


def _resume_point(ctx: JobContext, n_items: int, chunk: int) -> tuple[int, int]:
    """Chunks already written by an earlier attempt of this job, and how many of their answers were right (0, 0:
    none, or another make-up of the job: then everything is answered again and the parts are rewritten)."""
    state = ctx.latest_checkpoint()
    if not state or state.get("format") != CHECKPOINT_FORMAT:
        return 0, 0
    if state.get("n_items") != n_items or state.get("chunk") != chunk:
        return 0, 0
    return int(state.get("chunks_done", 0)), int(state.get("hits", 0))


def _labels(items: LabelledItems) -> list[list[str]] | None:
    """Each item's classes as the version has them, when every item has some (classification, multi-label)."""
    if not isinstance(items, LabelItems) or not all(items.labels):
        return None
    return [items.label_set(i) for i in range(len(items))]


def run_predict(spec: TrainSpec, ctx: JobContext, items: LabelledItems) -> dict[str, Any]:
    """Answer every item of `items` with the model in spec.init_bundle; the result counts them (and, with labels,
    the accuracy)."""
    if not spec.init_bundle:
        raise DataError("a predict job answers with a model: give from_model (or a name with a champion)")
    predictor = Predictor(spec.init_bundle)
    n, chunk = len(items), spec.predict_chunk
    if n == 0:
        raise DataError("the dataset version has no items to answer")
    n_parts = math.ceil(n / chunk)
    start, hits = _resume_point(ctx, n, chunk)
    labels = _labels(items)
    scored = labels is not None and {c for classes in labels for c in classes} <= set(predictor.classes)
    t0, answered = time.perf_counter(), 0
    for part in range(start, n_parts):
        if ctx.should_stop():
            raise TrainingStopped("stop requested")
        lo, hi = part * chunk, min(n, (part + 1) * chunk)
        rows, table = io.StringIO(), io.StringIO()
        writer = csv.writer(table)
        if part == 0:
            writer.writerow(CSV_HEADER)
        for first in range(lo, hi, FORWARD_ITEMS):
            last = min(hi, first + FORWARD_ITEMS)
            answers = predictor.predict_batch([items.path(i) for i in range(first, last)])
            for i, answer in zip(range(first, last), answers, strict=True):
                row: dict[str, Any] = {
                    "key": items.keys[i],
                    "answer": answer.public(),
                    "uncertainty": answer.uncertainty,
                }
                if labels is not None and isinstance(items, LabelItems):
                    row["label"] = items.labels[i]
                    said = predictor.task.mix_labels(answer.answer())  # its class (multi-label: its classes)
                    hits += scored and said is not None and sorted(said) == sorted(labels[i])
                rows.write(json.dumps(row) + "\n")
                writer.writerow([items.keys[i], answer.text(), f"{answer.uncertainty:.6f}"])
        for suffix, text in (("jsonl", rows.getvalue()), ("csv", table.getvalue())):
            name = PART.format(part, suffix)
            ctx.artifact_path(name).write_text(text)
            ctx.artifact_written(name)
        ctx.save_checkpoint(
            {"format": CHECKPOINT_FORMAT, "chunks_done": part + 1, "n_items": n, "chunk": chunk, "hits": hits}
        )
        answered += hi - lo
        report = getattr(ctx, "on_progress", None)
        if report is not None:
            seconds = time.perf_counter() - t0
            done = {"done": hi, "total": n, "started": start * chunk, "seconds": seconds}
            report({"stage": "predict", "chunk": part, "n_chunks": n_parts, **done})
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "items": n,
        "chunks": n_parts,
        "chunk": chunk,
        "resumed_at_chunk": start,
        "answered_this_attempt": answered,
        "seconds": seconds,
        "items_per_second": answered / seconds if seconds > 0 and answered else None,
        "backend": predictor.backend,
        "task": predictor.task.name,
        "parts": {"jsonl": part_names(n_parts, "jsonl"), "csv": part_names(n_parts, "csv")},
    }
    if scored:  # the share of items whose top answer is their label, over every attempt's chunks
        result["accuracy"] = hits / n
    return result


KIND = JobKind(
    name="batch_predict",
    summary="batch prediction: a model answers every image of a dataset version (JSON Lines and CSV)",
    run=no_learner,
    answers=run_predict,
    makes_model=False,
    lr=None,
    takes_parent=False,
    starts_from_model=True,
    answers_with_model=True,
    inherits=(),
    form_fields=(),
    page="predictions",
    estimate=answer_phases,
)
