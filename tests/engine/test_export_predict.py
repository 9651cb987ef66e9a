"""Export bundles (safetensors + manifest.json) and the CPU Predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import cast

import pytest
import torch
from PIL import Image

from core.engine.errors import BundleError
from core.engine.export import export_bundle, read_manifest
from core.engine.inference import Predictor
from core.engine.learner import Learner
from core.engine.pretrained import load_body
from core.engine.tasks.classification import ClassPrediction
from tests.engine.test_learner import make_learner


@pytest.fixture(scope="module")
def trained(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Learner, Path]:
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(2, 5e-3)
    bundle = export_bundle(learn, tmp_path_factory.mktemp("bundle") / "export")
    return learn, bundle


def test_bundle_holds_no_pickle_and_a_complete_manifest(trained: tuple[Learner, Path]) -> None:
    _, bundle = trained
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", "weights.safetensors"]
    manifest = read_manifest(bundle)
    assert manifest["arch"] == "resnet18" and manifest["classes"] == ["bag", "dress", "sneaker", "trouser"]
    assert manifest["input_size"] == 32 and manifest["task"] == "classification"
    assert {"torch", "torchvision", "fitcycle"} <= set(manifest["versions"])
    assert [t["name"] for t in manifest["inference_transforms"]] == [
        "to_rgb",
        "resize",
        "to_float",
        "normalize",
    ]


def test_predictor_matches_the_learner_on_cpu(trained: tuple[Learner, Path], fashion_folder: Path) -> None:
    learn, bundle = trained
    predictor = Predictor(bundle)
    logits, _ = learn.get_preds()
    ds = learn.dls.valid.dataset
    paths = [ds.items.root / ds.key(i) for i in range(5)]
    preds = predictor.predict_batch(paths)
    assert all(isinstance(p, ClassPrediction) for p in preds)
    for i, p in enumerate(cast(list[ClassPrediction], preds)):
        assert p.probs == pytest.approx(logits[i].softmax(0).tolist(), abs=1e-5)
        assert p.label == predictor.classes[p.index] and abs(sum(p.probs) - 1) < 1e-5
    # A path, bytes and a PIL image give the same answer.
    one = predictor.predict(paths[0])
    assert isinstance(one, ClassPrediction)
    for same in (paths[0].read_bytes(), Image.open(paths[0])):
        other = predictor.predict(same)
        assert isinstance(other, ClassPrediction) and other.probs == pytest.approx(one.probs)
    assert one.ranked()[0] == (one.label, max(one.probs)) == one.public()["top"]


def test_a_bundle_can_be_the_next_pretrained_body(trained: tuple[Learner, Path]) -> None:
    learn, bundle = trained
    assert learn.arch is not None
    loaded = load_body(learn.arch, bundle)
    assert loaded.source.startswith("fitcycle bundle")
    assert loaded.stats == learn.dls.stats  # the normalization it was trained with
    assert torch.equal(loaded.body.get_parameter("0.weight"), learn.model.get_parameter("0.0.weight"))


def _broken(bundle: Path, tmp_path: Path, edit: dict[str, object] | None = None, drop: str | None = None) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(bundle, copy)
    if edit is not None:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest.update(edit)
        (copy / "manifest.json").write_text(json.dumps(manifest))
    if drop:
        (copy / drop).unlink()
    return copy


@pytest.mark.parametrize(
    ("edit", "drop", "message"),
    [
        (None, "manifest.json", "no manifest.json"),
        (None, "weights.safetensors", "weights file 'weights.safetensors' is missing"),
        ({"classes": ["a", "b"]}, None, "2 class names for 4 outputs"),
        ({"arch": "vgg16"}, None, "unknown architecture 'vgg16'"),
        ({"format_version": 99}, None, "newer than this fitcycle reads"),
        ({"arch": "resnet34"}, None, "do not fit the manifest's model"),
        ({"weights_sha256": "0" * 64}, None, "checksum does not match"),
    ],
)
def test_inconsistent_bundles_are_refused(
    trained: tuple[Learner, Path],
    tmp_path: Path,
    edit: dict[str, object] | None,
    drop: str | None,
    message: str,
) -> None:
    _, bundle = trained
    with pytest.raises(BundleError, match=message):
        Predictor(_broken(bundle, tmp_path, edit, drop))
