"""Serving on CPU with ONNX Runtime: every task's bundle carries model.onnx, and the Predictor answers from it as
it answers from PyTorch (probabilities, multi-label sets, points, values, masks), at any batch size and image
shape; a bundle without it (an older one, or a model that did not export) is served by PyTorch."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest
from PIL import Image

from api.services.predictors import PredictorCache
from core.config import Settings
from core.datasets.samples import write_mosaics, write_silhouette_masks, write_silhouette_points
from core.db import domain
from core.engine.data import DataConfig
from core.engine.errors import BundleError
from core.engine.export import export_bundle, read_manifest
from core.engine.inference import Predictor
from core.engine.items import LabelledItems
from core.engine.labelling import from_csv, from_folder, from_targets_csv
from core.engine.masks import from_mask_rule
from core.engine.onnx_export import ONNX_FILE
from core.engine.onnx_runtime import OnnxModel
from core.engine.tasks import Prediction
from core.engine.tasks.classification import ClassPrediction
from core.engine.tasks.multilabel import MultiLabelPrediction
from core.engine.tasks.points import PointsPrediction
from core.engine.tasks.segmentation import MaskPrediction
from core.engine.tasks.values import ValuesPrediction
from core.engine.vision import cnn_learner
from core.storage.local import LocalStore
from tests.engine.test_values import write_values

TASKS = ["classification", "multilabel", "points", "values", "segmentation"]


def _items(task: str, root: Path, fashion_folder: Path) -> tuple[LabelledItems, list[Path]]:
    """A small real-image dataset of the task, and images to answer."""
    if task == "classification":
        return from_folder(fashion_folder, valid_pct=0.25, seed=3), sorted(fashion_folder.rglob("*.png"))[::10]
    if task == "multilabel":
        data = write_mosaics(root, count=48, seed=1)
        return from_csv(data, "labels.csv", label_col="tags", label_delim=" "), sorted(data.rglob("*.png"))[:12]
    if task == "points":
        data = write_silhouette_points(root, count=48, seed=4)
        return from_targets_csv(data, "points.csv", "points"), sorted(data.rglob("*.png"))[:12]
    if task == "values":
        data = write_values(write_silhouette_masks(root, count=48, side=40, seed=9))
        return from_targets_csv(data, "values.csv", "values"), sorted((data / "images").glob("*.png"))[:12]
    data = write_silhouette_masks(root, count=48, side=48, seed=4)
    return from_mask_rule(data, void="void"), sorted((data / "images").glob("*.png"))[:12]


def _inputs(paths: list[Path]) -> list[bytes]:
    """The images as files, and as others of other sizes, shapes and modes (each is resized for the model)."""
    out = []
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            size, mode = [(None, None), ((50, 40), "RGB"), ((17, 64), "L"), ((96, 70), "RGBA")][i % 4]
            changed = img.convert(mode or img.mode).resize(size) if size else img
            buf = io.BytesIO()
            changed.save(buf, "PNG")
            out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module", params=TASKS)
def exported(
    request: pytest.FixtureRequest, fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, list[bytes]]:
    """A resnet18 of the task at 32 px, trained one short epoch (so BatchNorm's statistics are not the initial
    ones; parity does not need a good model), exported; and images to answer."""
    task = cast(str, request.param)
    root = tmp_path_factory.mktemp(task)
    items, paths = _items(task, root / "data", fashion_folder)
    learn, _ = cnn_learner(items, "resnet18", DataConfig(size=32, bs=16, seed=1), pretrained="none")
    learn.fit_one_cycle(1, 3e-3)
    return task, export_bundle(learn, root / "export"), _inputs(paths)


def _probs_diff(a: Prediction, b: Prediction) -> float:
    assert isinstance(a, ClassPrediction) and isinstance(b, ClassPrediction)
    return float(np.abs(np.array(a.probs) - np.array(b.probs)).max())


def _check_parity(task: str, onnx_answers: list[Prediction], torch_answers: list[Prediction]) -> str:
    """Assert the issue's tolerances for one task; the figures, as a line."""
    pairs = list(zip(onnx_answers, torch_answers, strict=True))
    if task in ("classification", "multilabel"):
        diff = max(_probs_diff(a, b) for a, b in pairs)
        assert diff < 1e-4
        if task == "multilabel":  # the same sets, unless a probability sits on its threshold
            for a, b in pairs:
                assert isinstance(a, MultiLabelPrediction) and isinstance(b, MultiLabelPrediction)
                close = any(abs(p - t) < 1e-4 for p, t in zip(b.probs, b.thresholds, strict=True))
                assert a.labels == b.labels or close
        return f"max abs probability difference {diff:.2e}"
    if task == "points":
        diffs = []
        for a, b in pairs:
            assert isinstance(a, PointsPrediction) and isinstance(b, PointsPrediction)
            diffs.append(float(np.abs(np.array(a.points) - np.array(b.points)).max()))
        assert max(diffs) < 0.01
        return f"max point error {max(diffs):.2e} px"
    if task == "values":
        rel = []
        for a, b in pairs:
            assert isinstance(a, ValuesPrediction) and isinstance(b, ValuesPrediction)
            va, vb = np.array(a.values), np.array(b.values)
            rel.append(float((np.abs(va - vb) / np.maximum(np.abs(vb), 1e-3)).max()))
        assert max(rel) < 1e-4
        return f"max relative value difference {max(rel):.2e}"
    agree = []
    for a, b in pairs:
        assert isinstance(a, MaskPrediction) and isinstance(b, MaskPrediction)
        ma, mb = np.asarray(a.mask), np.asarray(b.mask)
        assert ma.shape == mb.shape
        agree.append(float((ma == mb).mean()))
    assert min(agree) >= 0.999
    return f"mask pixel agreement min {min(agree):.5f}, mean {np.mean(agree):.5f}"


def test_every_task_answers_the_same_from_onnx_and_pytorch(exported: tuple[str, Path, list[bytes]]) -> None:
    task, bundle, images = exported
    manifest = read_manifest(bundle)
    assert manifest["onnx"]["file"] == ONNX_FILE and manifest["onnx"]["opset"] >= 17
    assert (bundle / ONNX_FILE).is_file()
    onnx_predictor, torch_predictor = Predictor(bundle), Predictor(bundle, backend="torch")
    assert (onnx_predictor.backend, torch_predictor.backend) == ("onnx", "torch")
    together = onnx_predictor.predict_batch(images)
    line = _check_parity(task, together, torch_predictor.predict_batch(images))
    print(f"\n{task} (resnet18, 32 px, {len(images)} images): {line}")
    # The batch dimension is dynamic: one image alone gets the answer it gets in a batch of twelve.
    _check_parity(task, [onnx_predictor.predict(images[1])], [together[1]])


def test_the_graph_takes_any_batch_and_a_segmentation_graph_any_shape(exported: tuple[str, Path, list[bytes]]) -> None:
    task, bundle, _ = exported
    graph = onnx.load(str(bundle / ONNX_FILE))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 3  # a named (dynamic) batch, 3 channels
    spatial = [bool(d.dim_param) for d in dims[2:]]
    assert spatial == ([True, True] if task == "segmentation" else [False, False])


def _old_bundle(bundle: Path, dest: Path) -> Path:
    """The bundle as fitcycle wrote it before ONNX: no model.onnx and no "onnx" record."""
    shutil.copytree(bundle, dest)
    (dest / ONNX_FILE).unlink()
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["onnx"]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def classifier(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    root = tmp_path_factory.mktemp("classifier")
    items, paths = _items("classification", root, fashion_folder)
    learn, _ = cnn_learner(items, "resnet18", DataConfig(size=32, bs=16, seed=1), pretrained="none")
    learn.fit_one_cycle(1, 3e-3)
    return export_bundle(learn, root / "export"), _inputs(paths)


@pytest.mark.parametrize("change", ["old bundle", "file deleted"])
def test_a_bundle_without_model_onnx_is_served_by_pytorch(
    classifier: tuple[Path, list[bytes]], tmp_path: Path, change: str
) -> None:
    bundle, images = classifier
    if change == "old bundle":
        copy = _old_bundle(bundle, tmp_path / "old")
    else:
        copy = tmp_path / "deleted"
        shutil.copytree(bundle, copy)
        (copy / ONNX_FILE).unlink()
    predictor = Predictor(copy)
    assert predictor.backend == "torch"
    expected = Predictor(bundle, backend="torch").predict_batch(images)
    assert max(_probs_diff(a, b) for a, b in zip(predictor.predict_batch(images), expected, strict=True)) == 0.0


def test_pytorch_can_be_forced_and_a_replaced_model_onnx_is_refused(
    classifier: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    bundle, images = classifier
    forced = Predictor(bundle, backend="torch")
    assert forced.backend == "torch" and not isinstance(forced.model, OnnxModel)
    assert isinstance(Predictor(bundle).model, OnnxModel)
    with pytest.raises(ValueError, match="backend should be one of onnx, torch"):
        Predictor(bundle, backend="tensorrt")  # type: ignore[arg-type]
    copy = tmp_path / "replaced"
    shutil.copytree(bundle, copy)
    (copy / ONNX_FILE).write_bytes(b"not the exported graph")
    with pytest.raises(BundleError, match=r"model\.onnx: checksum does not match"):
        Predictor(copy)
    assert Predictor(copy, backend="torch").predict(images[0]).public() == forced.predict(images[0]).public()


def test_a_model_that_does_not_export_is_still_bundled_and_served(fashion_folder: Path, tmp_path: Path) -> None:
    """EfficientNet-Lite0's TensorFlow 'same' padding is computed from the input's shape in Python, which tracing
    bakes into the graph, so its U-Net answers wrongly at other image shapes: the check at export drops it."""
    items, paths = _items("segmentation", tmp_path / "data", fashion_folder)
    learn, _ = cnn_learner(items, "efficientnet_lite0", DataConfig(size=32, bs=8, seed=1), pretrained="none")
    bundle = export_bundle(learn, tmp_path / "export")
    manifest = read_manifest(bundle)
    assert not (bundle / ONNX_FILE).exists()
    assert manifest["onnx"]["file"] is None and "answers differently" in manifest["onnx"]["error"]
    predictor = Predictor(bundle)
    assert predictor.backend == "torch"
    assert isinstance(predictor.predict(paths[0]), MaskPrediction)


def test_the_api_builds_predictors_with_the_configured_backend(
    classifier: tuple[Path, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _ = classifier
    assert Settings().predictor == "onnx"
    monkeypatch.setenv("FITCYCLE_PREDICTOR", "torch")
    assert Settings().predictor == "torch"
    store = LocalStore(tmp_path / "objects")
    for f in bundle.iterdir():
        store.put_bytes(f"models/export/{f.name}", f.read_bytes())
    for backend in ("onnx", "torch"):
        cache = PredictorCache(store, tmp_path / backend, size=1, backend=Settings(predictor=backend).predictor)
        model = domain.Model(
            id=f"model-{backend}",
            project_id="p",
            job_id="j",
            arch="resnet18",
            classes=[],
            metrics={},
            bundle_prefix="models/export",
            created_at=datetime.now(UTC),
        )
        assert cache.get(model).backend == backend
