"""The job kinds registry (core/jobs/kinds/): one declaration per kind that every edge reads. Each kind's
default lr is the same in the registry, over REST (tests/platform/test_bad_input.py), in the CLI and in the
README; [low, high] trains with that range on every kind that trains a model; an lr a kind cannot use is
refused, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from cli.main import build_parser, train_spec
from core.jobs.context import LocalJobContext
from core.jobs.kind_names import KIND_NAMES, KindName
from core.jobs.kinds import FINE_TUNE, KINDS, MODEL_KINDS, KindProblem, get_kind
from core.jobs.kinds.base import LR_FORM_TEXT
from core.jobs.runner import run_spec, run_train
from core.jobs.spec import TrainSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_LR: dict[str, float | tuple[float, float] | str] = {
    "number": 1e-3,
    "range": (1e-4, 1e-2),
    "find": "find",
    "auto": "auto",
}


def test_every_name_has_its_kind_and_every_kind_its_name() -> None:
    assert tuple(KINDS) == KIND_NAMES == get_args(KindName)
    assert all(k.name == name for name, k in KINDS.items())
    with pytest.raises(ValueError, match="unknown job kind 'dance'; choose one of: fine_tune"):
        get_kind("dance")


def kinds_table() -> str:
    """The README's table of job kinds, as the registry declares them."""
    rows = [
        "| kind | what it does | parent job | default `lr` | `lr` it takes | data |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in KINDS.values():
        parent = k.parent or (
            "optional"
            if k.takes_parent
            else "none (`from_model`, default: the champion)"
            if k.starts_from_model
            else "none"
        )
        default = "none" if k.lr is None else f"`{k.lr}`" + (f": {k.lr_note}" if k.lr_note else "")
        if k.text_lr is not None:
            default += f"; on texts `{k.text_lr}`"
        takes = ", ".join(text for form, text in LR_FORM_TEXT.items() if form in k.lr_forms) or "none"
        data = " and ".join(d for d, ok in (("images", k.images), ("texts", k.text is not None)) if ok)
        rows.append(f"| `{k.name}` | {k.summary} | {parent} | {default} | {takes} | {data} |")
    return "\n".join(rows)


def test_the_readme_table_of_kinds_is_the_registry() -> None:
    assert kinds_table() in (ROOT / "README.md").read_text(), (
        "README.md's table of job kinds should be:\n" + kinds_table()
    )


def test_the_cli_trains_at_the_fine_tune_kinds_default(tmp_path: Path) -> None:
    args = build_parser().parse_args(["train", str(tmp_path), "--out", str(tmp_path / "out")])
    spec = train_spec(args)
    assert spec.lr is None  # the CLI names no rate of its own ...
    assert FINE_TUNE.check(spec).lr == FINE_TUNE.lr == 2e-3  # ... the kind's is the one it trains at
    ranged = train_spec(build_parser().parse_args(["train", str(tmp_path), "--lr", "1e-5,1e-3"]))
    assert ranged.lr == (1e-5, 1e-3)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_an_lr_a_kind_cannot_use_is_refused_naming_the_field(name: str, tmp_path: Path) -> None:
    kind = get_kind(name)
    for form, lr in EXAMPLE_LR.items():
        spec = TrainSpec(kind=name, data=str(tmp_path), lr=lr, init_bundle="parent")
        problems = kind.problems(spec, from_model=True)
        if form in kind.lr_forms:
            assert not [p for p in problems if p[0] == "lr"], (form, problems)
        else:
            assert [m for f, m in problems if f == "lr" and f"a {name} job takes" in m], (form, problems)
            with pytest.raises(KindProblem, match=r"^lr: "):
                kind.check(spec)


@pytest.fixture(scope="module")
def parent_bundle(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model to continue from (stage 2, retrain) or start a body from (fine_tune, stage 1)."""
    out = tmp_path_factory.mktemp("parent")
    spec = TrainSpec(
        data=str(fashion_folder), arch="resnet18", pretrained="none", size=32, bs=16, freeze_epochs=0, epochs=1, lr=5e-3
    )
    run_train(spec, LocalJobContext(out, show_progress=False))
    return out / "export"


@pytest.mark.parametrize("name", [n for n in MODEL_KINDS if get_kind(n).images and get_kind(n).trains])
def test_a_range_trains_every_model_kind_with_that_range(
    name: str, fashion_folder: Path, parent_bundle: Path, tmp_path: Path
) -> None:
    low, high = 1e-4, 1e-2
    kind = get_kind(name)
    weights = {"init_bundle": str(parent_bundle)} if kind.starts_from_model else {"pretrained": str(parent_bundle)}
    spec = TrainSpec(
        kind=name,
        data=str(fashion_folder),
        arch="resnet18",
        size=32,
        bs=32,
        freeze_epochs=1 if "freeze_epochs" in kind.trains else 0,
        epochs=1,
        lr=(low, high),
        metrics=["accuracy"],
        **weights,
    )
    result = run_spec(spec, LocalJobContext(tmp_path, show_progress=False))
    last = result["lrs"]["last"]
    assert (last["low"], last["high"]) == pytest.approx((low, high)), result["lrs"]
    trained = [rates for tag, rates in result["lrs"].items() if isinstance(rates, list) and len(rates) > 1]
    assert trained and all(r[-1] == pytest.approx(high) for r in trained), result["lrs"]  # the head: `high`
    assert any(r[0] == pytest.approx(low) for r in trained), result["lrs"]  # the first group: `low`
