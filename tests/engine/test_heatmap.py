"""Grad-CAM heatmaps (core/engine/heatmap.py) on a set made so the answer is known: the class is a red or a blue
square somewhere in the top-left quarter of grey noise. A model that learnt the task puts its heatmap there; the
same model trained on shuffled labels does not (the check can fail). Then what the Predictor serves: the answer of
an explained call is the plain call's, the heatmap is the image's size, and a class can be asked for."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets.samples import MARK_REGION, write_marks
from core.engine.errors import BundleError
from core.engine.export import read_manifest
from core.engine.heatmap import MAX_SIDE, heatmap_layer, mass_inside, on_image, overlay
from core.engine.inference import Predictor
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec

# A ResNet-18 from random init at 256 px (the 64 px images scaled 4x): its last block is 8 x 8 cells, fine enough
# to tell a quarter of the image from the rest. At 128 px (4 x 4 cells) the same model's heatmaps spread over
# half the image. Three squares of other colours outside the region: without them the mark is the only thing that
# stands out, and a model of shuffled labels looks at it too.
DISTRACTORS = 3
# fp32: bf16's kernels follow the CPU, and on an AMX machine the shuffled model's bf16 heatmap put 0.40 in the region.
RECIPE = {"arch": "resnet18", "pretrained": "none", "size": 256, "bs": 32, "freeze_epochs": 0, "epochs": 4}
RECIPE["precision"] = "fp32"


def _train(tmp: Path, shuffle_labels: bool) -> Predictor:
    data = write_marks(tmp / "data", per_class=200, seed=0, shuffle_labels=shuffle_labels, distractors=DISTRACTORS)
    spec = TrainSpec(data=str(data), lr=3e-3, seed=0, report_every_n_batches=1000, **RECIPE)
    run_spec(spec, LocalJobContext(tmp / "out", show_progress=False))
    return Predictor(tmp / "out" / "export")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images neither model saw, 40 of each class."""
    folder = write_marks(tmp_path_factory.mktemp("held"), per_class=40, seed=99, distractors=DISTRACTORS)
    return sorted(folder.rglob("*.png"))


@pytest.fixture(scope="module")
def learnt(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return _train(tmp_path_factory.mktemp("learnt"), shuffle_labels=False)


def test_the_heatmap_sits_on_the_region_that_decides_and_not_for_a_model_of_shuffled_labels(
    learnt: Predictor, held_out: list[Path], tmp_path: Path
) -> None:
    shuffled = _train(tmp_path, shuffle_labels=True)
    mass: dict[str, float] = {}
    for name, predictor in (("learnt", learnt), ("shuffled", shuffled)):
        explained = [predictor.explain(p) for p in held_out]
        said = [answer.answer()["top"][0] for answer, _ in explained]
        hits = np.mean([label == p.parent.name for label, p in zip(said, held_out, strict=True)])
        mass[name] = float(np.mean([mass_inside(heat.heat, MARK_REGION) for _, heat in explained]))
        print(f"{name}: held-out accuracy {hits:.3f}, heatmap mass inside the region {mass[name]:.3f}")
        if name == "learnt":
            assert hits >= 0.95
    # The region is a quarter of the image: an even heatmap puts 0.25 of its mass there.
    # Measured: 0.60 (bf16 fit) and 0.76 (fp32) learnt, 0.20 and 0.21 shuffled (docs/performance.md); on an AMX
    # machine, fp32: 0.765 learnt, 0.263 shuffled (bf16 there: 0.67 and 0.40).
    assert mass["learnt"] >= 0.5, mass
    assert mass["shuffled"] <= 0.3, mass
    assert mass["learnt"] >= mass["shuffled"] + 0.25, mass


def test_an_explained_answer_is_the_plain_one_with_a_heatmap_of_the_images_size(
    learnt: Predictor, held_out: list[Path]
) -> None:
    assert learnt.backend == "onnx"  # plain calls: ONNX Runtime; explained ones: PyTorch, built on the first
    image = Image.open(held_out[0]).convert("RGB").resize((96, 80))  # not square: the squish maps it back
    plain = learnt.predict(image).answer()
    explained, heat = learnt.explain(image)
    answer = explained.answer()
    assert answer["top"][0] == plain["top"][0]
    assert np.allclose([p for _, p in answer["predictions"]], [p for _, p in plain["predictions"]], atol=1e-4)
    assert heat.label == plain["top"][0] and heat.heat.shape == (80, 96) and heat.heat.dtype == np.uint8
    assert heat.heat.max() >= 200  # the hottest cell, read between pixel centres
    png = heat.png()
    assert Image.open(io.BytesIO(png)).size == (96, 80)
    other = next(c for c in learnt.classes if c != plain["top"][0])
    _, for_other = learnt.explain(image, other)
    assert for_other.label == other and not np.array_equal(for_other.heat, heat.heat)
    with pytest.raises(ValueError, match="heatmap_class"):
        learnt.explain(image, "green")
    shown = overlay(image, heat.heat)
    assert shown.size == image.size and shown.mode == "RGB"


def test_the_bundle_names_its_heatmap_layer_and_a_wrong_one_is_refused(learnt: Predictor) -> None:
    manifest = read_manifest(learnt.bundle)
    assert manifest["heatmap_layer"] == "0"  # the body of nn.Sequential(body, head)
    model = learnt._pytorch_model()
    assert heatmap_layer(model, {}) is next(model.children())  # bundles from before the field: the body
    with pytest.raises(BundleError, match="heatmap_layer"):
        heatmap_layer(model, {"heatmap_layer": "9.nothing"})


def test_a_cropped_resize_leaves_the_cropped_pixels_cold() -> None:
    """A 'crop' resize keeps the centred square of a wide image: the heatmap covers it, and the sides it cut
    away are 0."""
    heat = on_image(torch.ones(4, 4), width=200, height=100, size=64, method="crop")
    assert heat.shape == (100, 200)
    assert (heat[:, :50] == 0).all() and (heat[:, 150:] == 0).all() and (heat[:, 50:150] == 255).all()
    padded = on_image(torch.ones(4, 4), width=200, height=100, size=64, method="pad")
    assert (padded == 255).all()  # padding adds pixels to the model's input, none of the image's are lost
    # A very long image's heatmap is scaled down to MAX_SIDE (its arrays are per pixel), its shape kept.
    assert on_image(torch.ones(4, 4), width=5000, height=100, size=64, method="squish").shape == (41, MAX_SIDE)


def test_explained_calls_run_a_model_of_their_own(learnt: Predictor, held_out: list[Path]) -> None:
    """Served by PyTorch, plain calls and explained ones still use two models: the explained call's hook on a model
    the plain calls share would fire on their threads."""
    eager = Predictor(learnt.bundle, backend="torch")
    eager.explain(held_out[0])
    assert eager._pytorch_model() is not eager.model


def test_the_interpretation_draws_each_top_loss_heatmap(learnt: Predictor) -> None:
    out = learnt.bundle.parent
    tops = json.loads((out / "interpretation.json").read_text())["top_losses"]
    assert tops and [t["heatmap"] for t in tops] == [f"heatmaps/top_loss_{i}.png" for i in range(len(tops))]
    assert all(t["heatmap_class"] == t["predicted"] for t in tops)
    first = Image.open(out / tops[0]["heatmap"])
    assert first.mode == "RGBA" and first.size == (64, 64)  # the item's own size, to lay over it
    alpha = np.asarray(first)[..., 3]
    assert alpha.max() > 100 and alpha.min() == 0  # opaque where it is hot, clear where it is not


def test_fitcycle_predict_explain_writes_overlays(learnt: Predictor, held_out: list[Path], tmp_path: Path) -> None:
    images = [str(held_out[0]), str(held_out[-1])]
    cmd = [sys.executable, "-m", "cli.main", "predict", str(learnt.bundle), *images, "--json"]
    done = subprocess.run([*cmd, "--explain", str(tmp_path / "hm")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["heatmap_class"] for a in answers] == [a["top"][0] for a in answers]
    for a, image in zip(answers, images, strict=True):
        assert Path(a["heatmap"]).parent == tmp_path / "hm" and Image.open(a["heatmap"]).size == Image.open(image).size
    other = subprocess.run([*cmd, "--heatmap-class", "green"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "--heatmap-class: 'green' is not one of blue, red" in other.stderr
    # Two images of the same name write two overlays; an image taken for the folder is refused.
    twin = tmp_path / "twin" / held_out[0].name
    twin.parent.mkdir()
    twin.write_bytes(held_out[0].read_bytes())
    again = [sys.executable, "-m", "cli.main", "predict", str(learnt.bundle), str(held_out[0]), str(twin), "--json"]
    done = subprocess.run([*again, "--explain", str(tmp_path / "hm2")], capture_output=True, text=True, timeout=120)
    assert len({json.loads(line)["heatmap"] for line in done.stdout.splitlines()}) == 2, done.stdout
    swallowed = subprocess.run([*cmd[:-1], "--explain", images[0]], capture_output=True, text=True, timeout=120)
    assert swallowed.returncode != 0 and "that is a file" in swallowed.stderr
