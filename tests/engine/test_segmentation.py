"""Segmentation on real images (Animal-MNIST silhouettes on scikit-image textures): pairs found by a naming
rule or a CSV and checked up front, masks that move with the augmentation, the dynamic U-Net, metrics that
ignore the void code, and training through the CLI that beats the majority-class baseline, with a predicted
mask in the original image's pixels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.datasets.samples import SEGMENTATION_CODES, write_silhouette_masks
from core.engine.architectures import get_architecture
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.errors import DataError
from core.engine.export import read_manifest
from core.engine.inference import Predictor
from core.engine.items import IGNORE_INDEX
from core.engine.learner import NORM_TYPES, Learner
from core.engine.masks import from_mask_csv, from_mask_rule
from core.engine.metrics import dice, mean_iou, pixel_accuracy
from core.engine.model import layer_groups
from core.engine.tasks import task_of
from core.engine.tasks.segmentation import MaskPrediction
from core.engine.transforms import AugmentConfig, BatchAugment, get_transforms
from core.engine.unet import DynamicUnet
from core.engine.vision import cnn_learner
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_train
from core.jobs.spec import TrainSpec

FITCYCLE = str(Path(sys.executable).parent / "fitcycle")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_silhouette_masks(tmp_path_factory.mktemp("seg") / "data", count=240, side=48, seed=4)


def test_pairs_by_rule_and_by_csv(scenes: Path) -> None:
    items = from_mask_rule(scenes, void="void", valid_pct=0.25, seed=1)
    assert task_of(items).name == "segmentation" and items.codes == list(SEGMENTATION_CODES)
    assert items.classes == ["brick", "grass", "gravel", "animal"] and items.void_code == 0
    assert len(items) == 240 and items.masks is not None and items.masks[0] == "masks/00000.png"
    by_csv = from_mask_csv(scenes, "pairs.csv", void="void", valid_pct=0.25, seed=1)
    assert by_csv.keys == items.keys and by_csv.masks == items.masks and by_csv.is_valid == items.is_valid


def test_bad_pairs_are_found_up_front(scenes: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(scenes, root)
    (root / "masks" / "00000.png").unlink()
    Image.new("RGB", (48, 48)).save(root / "masks" / "00001.png")  # a colour mask
    Image.new("L", (40, 48)).save(root / "masks" / "00002.png")  # wrong size
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(root / "masks" / "00003.png")  # value 9 has no code
    items = from_mask_rule(root, void="void")
    reasons = {r.key: r.reason for r in items.rejected}
    assert reasons["images/00000.png"].startswith("no mask file")
    assert "single-channel" in reasons["images/00001.png"]
    assert "mask is 40x48 but the image is 48x48" in reasons["images/00002.png"]
    assert "mask value 9 has no code" in reasons["images/00003.png"]
    assert len(items) == 236
    (root / "codes.txt").unlink()
    with pytest.raises(DataError, match=r"codes\.txt"):
        from_mask_rule(root)
    with pytest.raises(DataError, match="void code 'sky' is not one of the codes"):
        from_mask_rule(root, codes=list(SEGMENTATION_CODES), void="sky")
    with pytest.raises(DataError, match="no 'pictures' folder"):
        from_mask_rule(root, codes=list(SEGMENTATION_CODES), images="pictures")


def test_masks_move_with_the_image() -> None:
    # The mask is "this pixel is bright": after flips, rotation, zoom and warp it must still say so.
    gen = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.avg_pool2d(torch.rand(8, 1, 40, 40, generator=gen), 9, 1, 4)
    bright = blobs > blobs.median()
    x = bright.float().expand(8, 3, 40, 40).clone()
    masks = bright[:, 0].long()
    masks[:, :2] = IGNORE_INDEX  # void stays void, wherever it goes
    cfg = AugmentConfig(max_rotate=30, max_zoom=1.3, max_warp=0.2, max_lighting=0, p_affine=1.0)
    out, _, moved = BatchAugment(cfg).apply(x, torch.Generator().manual_seed(1), masks=masks)
    assert moved is not None and moved.dtype == torch.long and moved.shape == masks.shape
    assert set(moved.unique().tolist()) <= {IGNORE_INDEX, 0, 1}
    known = moved != IGNORE_INDEX
    agree = ((out[:, 0] > 0.5).long() == moved)[known].float().mean()
    assert agree > 0.97, float(agree)
    assert not torch.equal(moved, masks)  # it did move


def test_loader_gives_class_indices_with_void_ignored(scenes: Path) -> None:
    items = from_mask_rule(scenes, void="void")
    dls = ImageDataLoaders(items, DataConfig(size=32, bs=8, augment=get_transforms()))
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8, 32, 32) and dls.n_out == 4
    assert set(yb.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2, 3} and (yb == IGNORE_INDEX).any()


def test_metrics_skip_void_pixels() -> None:
    targs = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    preds = torch.tensor([[[0, 1], [1, 0]]])
    assert pixel_accuracy(preds, targs) == pytest.approx(2 / 3)
    assert mean_iou(preds, targs) == pytest.approx((1 + 0.5 + 0) / 3)
    assert dice(preds, targs) == pytest.approx((1 + 2 / 3 + 0) / 3)
    logits = torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float()
    assert mean_iou(logits, targs) == pytest.approx(mean_iou(preds, targs))


def test_unet_shapes_groups_and_freezing() -> None:
    arch = get_architecture("resnet18")
    model = DynamicUnet(arch.body(arch.build()), 5)
    assert model.skip_idxs == [6, 5, 4, 2]  # layer3, layer2, layer1 and the stem's ReLU feed the decoder
    for side in (32, 48, 70):
        assert model(torch.randn(2, 3, side, side)).shape == (2, 5, side, side)
    groups = layer_groups(model, arch)
    assert len(groups) == 3
    dls = type("D", (), {"device": torch.device("cpu")})()
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), arch=arch)
    learn.freeze()
    for module in model.encoder.modules():
        for p in module.parameters(recurse=False):
            assert p.requires_grad == isinstance(module, NORM_TYPES)
    assert all(p.requires_grad for p in model.out.parameters())


def test_train_and_predict_masks_through_the_cli(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--arch", "resnet18", "--pretrained", "none", "--size", "32", "--bs", "16", "--seed", "1"]
    recipe = ["--freeze-epochs", "0", "--epochs", "6", "--lr", "3e-3"]
    res = subprocess.run(
        [FITCYCLE, "train", str(scenes), "--from-masks", "--void", "void", *args, *recipe, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    interp = json.loads((out / "interpretation.json").read_text())
    base = interp["baseline_majority_class"]
    print(
        f"pixel_accuracy {metrics['pixel_accuracy']:.3f} (majority {base['pixel_accuracy']:.3f}), "
        f"mean_iou {metrics['mean_iou']:.3f} (majority {base['mean_iou']:.3f}), dice {metrics['dice']:.3f}"
    )
    assert metrics["task"] == "segmentation" and metrics["main_metric"] == "mean_iou"
    assert metrics["pixel_accuracy"] > base["pixel_accuracy"] + 0.15
    assert metrics["mean_iou"] > 3 * base["mean_iou"]
    assert interp["per_class"]["animal"]["iou"] > 0.6  # bright silhouettes: the easy class
    assert set(interp["per_class"]) == {"brick", "grass", "gravel", "animal"}
    assert {"per_class_iou.png", "top_losses.png", "show_batch.png"} <= {p.name for p in (out / "plots").iterdir()}
    manifest = read_manifest(out / "export")
    assert manifest["task"] == "segmentation" and manifest["codes"] == list(SEGMENTATION_CODES)

    # A bigger, non-square image than any trained on: the mask comes back at its own size, in code values.
    big = Image.open(scenes / "images" / "00000.png").resize((96, 72))
    big.save(tmp_path / "big.png")
    mask_dir = ["--mask-dir", str(tmp_path / "masks")]
    line = json.loads(
        subprocess.run(
            [FITCYCLE, "predict", str(out / "export"), str(tmp_path / "big.png"), "--json", *mask_dir],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    mask = np.asarray(Image.open(line["mask"]))
    assert mask.shape == (72, 96) and set(np.unique(mask).tolist()) <= {1, 2, 3, 4}
    assert sum(line["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    truth = np.asarray(Image.open(scenes / "masks" / "00000.png").resize((96, 72), Image.Resampling.NEAREST))
    # Letterboxed ("pad") and stretched ("squish") inputs come back at the image's size too.
    for method in ("pad", "squish"):
        shutil.copytree(out / "export", tmp_path / method)
        manifest_path = tmp_path / method / "manifest.json"
        manifest_path.write_text(json.dumps({**manifest, "resize_method": method}))
        other = Predictor(tmp_path / method).predict(tmp_path / "big.png")
        assert isinstance(other, MaskPrediction) and other.mask.size == (96, 72)
        assert (np.asarray(other.mask) == mask).mean() > 0.6, method  # the same scene, seen another way
    predicted = Predictor(out / "export").predict(scenes / "images" / "00000.png")
    assert isinstance(predicted, MaskPrediction) and predicted.mask.size == (48, 48)
    known = truth != 0
    assert (mask == truth)[known].mean() > base["pixel_accuracy"]


def test_pretrained_body_trains_frozen_then_unfrozen_across_a_plan(
    scenes: Path, fashion_folder: Path, tmp_path: Path
) -> None:
    # A "pretrained" body: a classifier trained on Fashion-MNIST, exported as a bundle.
    common: dict[str, Any] = {"arch": "resnet18", "bs": 16, "seed": 1}
    run_train(
        TrainSpec(data=str(fashion_folder), pretrained="none", size=32, freeze_epochs=0, epochs=1, lr=3e-3, **common),
        LocalJobContext(tmp_path / "body", show_progress=False),
    )
    bundle = tmp_path / "body" / "export"
    stem_conv = load_file(str(bundle / "weights.safetensors"))["0.0.weight"]  # the body's first convolution

    # Stage 1 leaves the encoder's convolutions as the body had them; stage 2 moves them.
    items = from_mask_rule(scenes, void="void")
    config = DataConfig(size=32, bs=16, augment=get_transforms(), seed=1)
    learn, source = cnn_learner(items, "resnet18", config, bundle, [mean_iou])
    assert str(bundle) in source and learn.frozen_to == 2
    learn.fit_one_cycle(1, slice(3e-3))
    stem = cast(torch.nn.Conv2d, cast(DynamicUnet, learn.model).encoder[0])
    assert torch.equal(stem.weight, stem_conv)
    learn.unfreeze()
    learn.fit_one_cycle(1, slice(3e-5, 3e-4))
    assert not torch.equal(stem.weight, stem_conv)

    # The job recipe: frozen then unfrozen at each size of a progressive-resizing plan.
    spec = TrainSpec(
        data=str(scenes),
        labels="masks",
        void="void",
        pretrained=str(bundle),
        freeze_epochs=1,
        epochs=1,
        lr=3e-3,
        plan=[{"size": 24}, {"size": 32}],
        **common,
    )
    metrics = run_train(spec, LocalJobContext(tmp_path / "seg", show_progress=False))
    assert [e["tag"] for e in metrics["epochs"]] == ["24px-stage1", "24px-stage2", "32px-stage1", "32px-stage2"]
    assert read_manifest(tmp_path / "seg" / "export")["input_size"] == 32
