"""Batch prediction as a job (issue 27, part 2), in the engine: a model answers every item in chunks written as JSON
Lines and CSV; a crash resumes after the last written chunk with no item twice and none missing; a cancel stops
between chunks; the answers are the Predictor's own."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from core.engine.callbacks import TrainingStopped
from core.engine.inference import Predictor
from core.jobs.context import LocalJobContext
from core.jobs.kinds.predict import part_names
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec


@pytest.fixture(scope="module")
def bundle(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    spec = TrainSpec(
        kind="fine_tune", data=str(fashion_folder), arch="resnet18", pretrained="none", size=32, bs=16,
        freeze_epochs=0, epochs=2, lr=3e-3,
    )  # fmt: skip
    run_spec(spec, LocalJobContext(out, show_progress=False))
    return out / "export"


def _predict(data: Path, bundle: Path, ctx: LocalJobContext) -> dict[str, Any]:
    spec = TrainSpec(kind="batch_predict", data=str(data), init_bundle=str(bundle), predict_chunk=16, arch="resnet18")
    return run_spec(spec, ctx)


def _rows(ctx: LocalJobContext, result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[str]]]:
    lines = "".join(ctx.artifact_path(n).read_text() for n in result["parts"]["jsonl"]).splitlines()
    table = "".join(ctx.artifact_path(n).read_text() for n in result["parts"]["csv"])
    return [json.loads(line) for line in lines], list(csv.reader(io.StringIO(table)))


def test_predict_job_answers_every_item_in_chunks(fashion_folder: Path, bundle: Path, tmp_path: Path) -> None:
    ctx = LocalJobContext(tmp_path / "job", show_progress=False)
    result = _predict(fashion_folder, bundle, ctx)
    rows, table = _rows(ctx, result)
    keys = sorted(str(p.relative_to(fashion_folder)) for p in fashion_folder.rglob("*.png"))
    assert result["items"] == len(keys) == 160 and result["chunks"] == 10 and result["resumed_at_chunk"] == 0
    assert sorted(r["key"] for r in rows) == keys and len({r["key"] for r in rows}) == len(rows)
    assert table[0] == ["key", "answer", "uncertainty"] and len(table) == len(keys) + 1
    assert [t[0] for t in table[1:]] == [r["key"] for r in rows]
    # The answers are the Predictor's own, and the labels the version's.
    predictor = Predictor(bundle)
    for row in rows[:20]:
        answer = predictor.predict(fashion_folder / row["key"])
        assert row["answer"] == json.loads(json.dumps(answer.public()))
        assert row["uncertainty"] == pytest.approx(answer.uncertainty)
        assert row["label"] == row["key"].split("/")[0]
    hits = sum(r["answer"]["top"][0] == r["label"] for r in rows)
    assert result["accuracy"] == pytest.approx(hits / len(rows))


def test_a_crash_resumes_after_the_last_written_chunk(
    fashion_folder: Path, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = LocalJobContext(tmp_path / "job", show_progress=False)
    calls = {"n": 0}
    real = Predictor.predict_batch

    def crashing(self: Predictor, images: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth chunk: chunks 0-3 are written and counted
            raise MemoryError("the worker died")
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_batch", crashing)
    with pytest.raises(MemoryError):
        _predict(fashion_folder, bundle, ctx)
    assert ctx.latest_checkpoint()["chunks_done"] == 4  # type: ignore[index]
    monkeypatch.setattr(Predictor, "predict_batch", real)
    result = _predict(fashion_folder, bundle, ctx)
    assert result["resumed_at_chunk"] == 4 and result["answered_this_attempt"] == 160 - 4 * 16
    rows, table = _rows(ctx, result)
    assert len(rows) == 160 and len({r["key"] for r in rows}) == 160  # none twice, none missing
    assert len(table) == 161

    stopped = LocalJobContext(tmp_path / "cancelled", show_progress=False)
    stopped.stop_requested = True
    with pytest.raises(TrainingStopped):
        _predict(fashion_folder, bundle, stopped)
    assert not any(stopped.artifact_path(n).is_file() for n in part_names(10, "jsonl"))
