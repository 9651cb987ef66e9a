"""Segmentation [fastai: MaskBlock, unet_learner]: a class per pixel. A U-Net decoder on the pretrained body,
per-pixel cross-entropy that ignores the void code, pixel accuracy / Dice / mean IoU; the answer is a mask
at the image's own size (in code values) with each class's share; interpretation is per-class IoU against
the majority-class baseline and the worst masks drawn."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.engine.architectures import Architecture
from core.engine.errors import BundleError, DataError
from core.engine.images import MAX_PIXELS
from core.engine.interpret import ValidOutputs, predict_valid
from core.engine.items import IGNORE_INDEX, MaskItems
from core.engine.masks import MASK_MODES, open_mask
from core.engine.metrics import dice_per_class, iou_per_class, pixel_confusion
from core.engine.model import HeadConfig
from core.engine.plots import plot_bars, plot_images, plot_mask_rows
from core.engine.tasks.base import Correction, Doubt, Grid, Prediction, Scores, Task, manifest_field
from core.engine.transforms import BatchAugment, image_to_uint8_tensor, resize_image, resize_map
from core.engine.unet import DynamicUnet, UnetConfig

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor
    from core.engine.learner import Learner


@dataclass(frozen=True)
class MaskPrediction(Prediction):
    """An 8-bit mask of code values at the image's own size, and the share of its pixels per class."""

    mask: Image.Image
    shares: dict[str, float]
    entropy: float = 0.0  # mean per-pixel entropy of the class probabilities (nats)

    def mask_png(self) -> bytes:
        """The mask as PNG bytes (pixel value = code index, as in the training masks)."""
        buf = io.BytesIO()
        self.mask.save(buf, format="PNG")
        return buf.getvalue()

    def answer(self) -> dict[str, Any]:
        return {"mask": self.mask_png(), "shares": self.shares}

    def text(self) -> str:
        return "  ".join(f"{c} {v:.1%}" for c, v in self.shares.items())

    @property
    def uncertainty(self) -> float:
        return self.entropy


MAX_MASK_BYTES = 20 * 1024 * 1024  # a target's PNG (28 MiB of base64 text in JSON)


class MaskedCrossEntropy(nn.Module):
    """Per-pixel cross-entropy averaged over the non-void pixels [fastai: CrossEntropyLossFlat(axis=1)
    with ignore_index]; a batch whose pixels are all void gives 0, not NaN."""

    def forward(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(preds, targs, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targs != IGNORE_INDEX).sum().clamp_min(1)


@dataclass(frozen=True)
class MaskBatch:
    """What segmentation's interpretation keeps of one validation batch instead of its C x H x W logits: each
    image's mean pixel loss, pixel confusion matrix and predicted classes."""

    losses: torch.Tensor  # (N,) mean loss over the non-void pixels
    confusions: torch.Tensor  # (N, C, C) actual x predicted pixel counts
    preds: torch.Tensor  # (N, H, W) int16 class indices


def keep_mask_batch(logits: torch.Tensor, targs: torch.Tensor) -> MaskBatch:
    """A validation batch's full-precision logits and masks, reduced to a MaskBatch (on the CPU)."""
    n = logits.shape[1]
    yb = targs.long()
    per_pixel = F.cross_entropy(logits, yb, ignore_index=IGNORE_INDEX, reduction="none")
    counted = (yb != IGNORE_INDEX).sum(dim=(1, 2)).clamp_min(1)
    pred = logits.argmax(dim=1)
    confusions = torch.stack([pixel_confusion(p[None], t[None], n) for p, t in zip(pred, yb, strict=True)])
    return MaskBatch((per_pixel.sum(dim=(1, 2)) / counted).cpu(), confusions.cpu(), pred.to(torch.int16).cpu())


class SegmentationInterpretation:
    """Segmentation: the pixel confusion matrix, per-class IoU and Dice, the majority-class baseline, and the
    validation images with the highest loss drawn with their true and predicted masks. Computed from the last
    validation pass's MaskBatches when given, else from a fresh pass."""

    def __init__(self, learn: Learner, baseline_items: int = 1000, outputs: ValidOutputs | None = None) -> None:
        self.learn = learn
        self.classes = learn.dls.classes
        n = len(self.classes)
        self.dataset = learn.dls.valid.dataset
        batches: list[MaskBatch] = (outputs if outputs is not None else predict_valid(learn)).batches
        pixel_acc, ious = [], []
        self.confusion = torch.zeros(n, n, dtype=torch.long)
        for batch in batches:
            for cm in batch.confusions:
                self.confusion += cm
                pixel_acc.append(float(cm.diag().sum() / cm.sum().clamp_min(1)))
                ious.append(float(iou_per_class(cm).nanmean()))
        self.losses = torch.cat([b.losses for b in batches])
        self.item_accuracy, self.item_iou = pixel_acc, ious
        self.preds = torch.cat([b.preds for b in batches])
        self.baseline_class = self._majority_class(baseline_items)

    def _majority_class(self, max_items: int) -> int:
        """The class most frequent in (up to max_items of) the training masks: the trivial baseline."""
        train = self.learn.dls.train.dataset
        items = self.learn.dls.items
        assert isinstance(items, MaskItems)
        step = max(1, len(train) // max_items)
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for i in range(0, len(train), step):  # the mask files alone, at their own size: no image is decoded
            classes = items.class_lookup[np.asarray(open_mask(items.mask_path(train.indices[i])))]
            counts += np.bincount(classes[classes != IGNORE_INDEX], minlength=len(self.classes))
        return int(counts.argmax())

    def per_class(self) -> dict[str, dict[str, float]]:
        """IoU, Dice, recall (pixel accuracy within the class) and pixel shares per class."""
        cm = self.confusion.double()
        iou, dice = iou_per_class(self.confusion), dice_per_class(self.confusion)
        total = cm.sum().clamp_min(1)
        out = {}
        for i, c in enumerate(self.classes):
            actual = float(cm[i].sum())
            out[c] = {
                "iou": float(iou[i]),
                "dice": float(dice[i]),
                "recall": float(cm[i, i]) / actual if actual else float("nan"),
                "share_actual": actual / float(total),
                "share_predicted": float(cm[:, i].sum() / total),
            }
        return out

    def baseline(self) -> dict[str, Any]:
        """Pixel accuracy and mean IoU of predicting the majority training class everywhere."""
        cm = self.confusion.double()
        b = self.baseline_class
        constant = torch.zeros_like(cm)
        constant[:, b] = cm.sum(dim=1)  # every actual pixel predicted as the majority class
        return {
            "class": self.classes[b],
            "pixel_accuracy": float(cm[b].sum() / cm.sum().clamp_min(1)),
            "mean_iou": float(iou_per_class(constant.long()).nanmean()),
        }

    def top_losses(self, k: int = 6) -> list[dict[str, Any]]:
        """The k validation images with the highest mean pixel loss."""
        idx = torch.topk(self.losses, min(k, len(self.losses))).indices.tolist()
        return [
            {
                "item": self.dataset.key(i),
                "loss": float(self.losses[i]),
                "pixel_accuracy": self.item_accuracy[i],
                "mean_iou": self.item_iou[i],
            }
            for i in idx
        ]

    def as_dict(self, k: int = 6) -> dict[str, Any]:
        """Everything above as plain data, for JSON (NaN, for a class absent everywhere, becomes null)."""
        cm = self.confusion
        per_class = {c: {m: (None if v != v else v) for m, v in row.items()} for c, row in self.per_class().items()}
        return {
            "task": "segmentation",
            "classes": self.classes,
            "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp_min(1)),
            "mean_iou": float(iou_per_class(cm).nanmean()),
            "dice": float(dice_per_class(cm).nanmean()),
            "per_class": per_class,
            "baseline_majority_class": self.baseline(),
            "confusion_pixels": cm.tolist(),
            "top_losses": self.top_losses(k),
        }

    def plots(self) -> list[tuple[str, Callable[[Path], Path]]]:
        return [
            ("plots/per_class_iou.png", self.plot_per_class_iou),
            ("plots/top_losses.png", self.plot_top_losses),
        ]

    def plot_top_losses(self, path: str | Path, k: int = 6) -> Path:
        """The worst images: image, true mask, predicted mask."""
        idx = torch.topk(self.losses, min(k, len(self.losses))).indices.tolist()
        samples = [self.dataset[i] for i in idx]
        images = torch.stack([s[0] for s in samples]).float() / 255
        titles = [f"{self.dataset.key(i)}\nloss {self.losses[i]:.2f}  iou {self.item_iou[i]:.2f}" for i in idx]
        return plot_mask_rows(images, [s[1] for s in samples], [self.preds[i] for i in idx], titles, self.classes, path)

    def plot_per_class_iou(self, path: str | Path) -> Path:
        """Per-class IoU as bars."""
        return plot_bars({c: row["iou"] for c, row in self.per_class().items()}, path, "IoU")


class SegmentationTask(Task):
    name: ClassVar[str] = "segmentation"
    items_type = MaskItems
    metrics = ("pixel_accuracy", "dice", "mean_iou")
    main_metric = "mean_iou"
    result_keys = ("pixel_accuracy", "mean_iou", "dice", "per_class", "baseline_majority_class")
    activation = "softmax"
    target_from_file = True
    answer_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "mask": (bytes, "a single-channel PNG at the image's own size, each pixel's value the index of its code"),
        "shares": (dict[str, float], "each class's share of the image's pixels"),
    }

    def target(self, items: MaskItems, i: int, grid: Grid) -> torch.Tensor:
        """The mask on the image's grid (the same crop, nearest: no code is blended into another); padding
        takes the void code (ignored) if there is one. Values become class indices, void the ignore index."""
        void = items.void_code
        mask = grid.resize(open_mask(items.mask_path(i)), Image.Resampling.NEAREST, fill=0 if void is None else void)
        return torch.from_numpy(items.class_lookup[np.asarray(mask)])

    def augment(
        self, augment: BatchAugment, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, _, masks = augment.apply(x, gen, masks=y)
        assert masks is not None
        return x, masks

    def build_model(
        self, arch: Architecture, body: nn.Sequential, dls: ImageDataLoaders, head: HeadConfig
    ) -> tuple[nn.Module, Any]:
        return DynamicUnet(body, dls.n_out), UnetConfig()

    def loss(self) -> nn.Module:
        return MaskedCrossEntropy()

    def manifest_fields(self, dls: ImageDataLoaders, thresholds: list[float] | None) -> dict[str, Any]:
        items = dls.items
        assert isinstance(items, MaskItems)
        return {"codes": list(items.codes), "void_code": items.void_code}

    def check_manifest(self, manifest: dict[str, Any], where: Path) -> None:
        super().check_manifest(manifest, where)
        classes = manifest["classes"]
        codes = manifest_field(manifest, "codes", list, where)
        void = manifest.get("void_code")
        non_void = [c for i, c in enumerate(codes) if i != void]
        if non_void != classes or (void is not None and not (isinstance(void, int) and 0 <= void < len(codes))):
            raise BundleError(f"{where}: the codes {codes} (void {void}) do not match the classes {classes}")

    def inference_model(self, arch: Architecture, manifest: dict[str, Any]) -> nn.Module:
        head = manifest["head"]
        config = UnetConfig(bool(head["blur"]), bool(head["last_cross"]), bool(head["bottle"]))
        return DynamicUnet(arch.body(arch.build()), manifest["n_out"], config)

    def predict(self, predictor: Predictor, images: Sequence[Image.Image]) -> list[Prediction]:
        """One pass per image, at its own shape (the U-Net is fully convolutional)."""
        codes = list(predictor.manifest["codes"])
        code_of_class = np.array([codes.index(c) for c in predictor.classes], dtype=np.uint8)
        return [self._segment(predictor, img, code_of_class) for img in images]

    def _segment(self, predictor: Predictor, image: Image.Image, code_of_class: np.ndarray) -> MaskPrediction:
        """The whole image through the U-Net: `crop` keeps the aspect ratio (short side at the training size)
        instead of cutting, `pad` letterboxes and cuts the padding off again; each pixel's class comes back
        at the original size (nearest), as its code value."""
        size, method = predictor.size, predictor.method
        w, h = image.size
        if method == "crop":
            scale = size / min(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            resized, box = image.resize((nw, nh), Image.Resampling.BILINEAR), (0, 0, nw, nh)
        elif method == "pad":
            ax, left, ay, top = resize_map(w, h, size, "pad", None)
            box = (int(left), int(top), int(left) + round(ax * w), int(top) + round(ay * h))
            resized = resize_image(image, size, "pad", None)
        else:
            resized, box = resize_image(image, size, "squish", None), (0, 0, size, size)
        x = image_to_uint8_tensor(resized)[None].to(predictor.device).float().div_(255)
        logits = predictor.model(predictor.normalize(x))[0].float()[:, box[1] : box[3], box[0] : box[2]]
        entropy = float(-(logits.softmax(dim=0) * logits.log_softmax(dim=0)).sum(dim=0).mean())
        classes = logits.argmax(dim=0).cpu().numpy().astype(np.uint8)
        full = np.asarray(Image.fromarray(classes).resize((w, h), Image.Resampling.NEAREST))
        counts = np.bincount(full.ravel(), minlength=len(predictor.classes))
        shares = {c: float(n) / full.size for c, n in zip(predictor.classes, counts, strict=True)}
        return MaskPrediction(Image.fromarray(code_of_class[full]), shares, entropy)

    def keep_valid(self, output: torch.Tensor, target: torch.Tensor) -> MaskBatch:
        return keep_mask_batch(output, target)

    def interpret(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> SegmentationInterpretation:
        return SegmentationInterpretation(learn, outputs=outputs)

    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        return plot_images(images, [""] * len(images), path, masks=list(targets), classes=classes)

    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        """{"mask": PNG bytes}: single-channel, the image's size, each value the index of a code."""
        png = body.get("mask")
        if not isinstance(png, bytes) or len(png) > MAX_MASK_BYTES:
            raise DataError(f"mask: a segmentation target is {{'mask': a PNG}} of at most {MAX_MASK_BYTES:,} bytes")
        codes = manifest["codes"]
        try:
            with Image.open(io.BytesIO(png)) as m:
                # Everything that needs no pixels first: a large mask for a small image is refused undecoded.
                if m.format != "PNG" or m.mode not in MASK_MODES:
                    raise DataError("mask: a single-channel PNG (grayscale or palette), each value a code's index")
                if m.size != image_size:
                    raise DataError(f"mask: it is {m.width}x{m.height}, the image is {image_size[0]}x{image_size[1]}")
                if m.width * m.height > MAX_PIXELS:
                    raise DataError("mask: over the pixel limit")
                raw = np.asarray(m)  # the image's own size at most: checked above
                top = int(raw.max()) if raw.size else 0
                if top >= len(codes):
                    raise DataError(f"mask: value {top} has no code (codes are 0-{len(codes) - 1}: {codes})")
                values = raw.astype(np.uint8)
        except DataError:
            raise
        except (ValueError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"mask: not a PNG we can read ({type(exc).__name__})") from None
        buf = io.BytesIO()
        Image.fromarray(values, mode="L").save(buf, format="PNG")
        return Correction({"mask": ""}, buf.getvalue())

    def confirmed(self, answer: dict[str, Any]) -> Correction:
        return Correction({"mask": ""}, answer["mask"])

    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        return {"label": "", "mask": target["mask"]}

    def doubt(self, prediction: Prediction, items: MaskItems, i: int) -> Doubt:
        """The share of the item's (non-void) pixels where the answer's class differs from the given mask's;
        `given` shows the given mask's share of each class (the mask itself is the item's)."""
        assert isinstance(prediction, MaskPrediction)
        truth = np.asarray(open_mask(items.mask_path(i))).astype(np.int64)
        pred = np.asarray(prediction.mask).astype(np.int64)
        keep = truth != (items.void_code if items.void_code is not None else -1)
        wrong = float((pred[keep] != truth[keep]).mean()) if keep.any() else 0.0
        shares = {c: round(float((truth == v).mean()), 4) for v, c in enumerate(items.codes) if (truth == v).any()}
        return Doubt(wrong, {"shares": shares}, {"mask": prediction.public()["mask"]})

    def score(self, predictions: Sequence[Prediction], items: MaskItems, indices: Sequence[int]) -> Scores:
        """Mean IoU over the classes present (by code value; void pixels left out), and IoU per class."""
        n = len(items.codes)
        cm = torch.zeros(n, n, dtype=torch.long)
        each: list[float] = []  # per item: its own mean IoU over the classes it shows
        per_item: dict[str, list[float]] = {}  # per class: its IoU on each item whose truth holds it
        for p, i in zip(predictions, indices, strict=True):
            assert isinstance(p, MaskPrediction)
            truth = torch.from_numpy(np.asarray(open_mask(items.mask_path(i))).astype(np.int64))
            pred = torch.from_numpy(np.asarray(p.mask).astype(np.int64))
            keep = truth != (items.void_code if items.void_code is not None else -1)
            one = torch.bincount(truth[keep] * n + pred[keep].clamp(0, n - 1), minlength=n * n).reshape(n, n)
            cm += one
            item_iou = iou_per_class(one)
            each.append(float(item_iou.nanmean()) if bool((item_iou == item_iou).any()) else 1.0)
            for v in one.sum(1).nonzero().flatten().tolist():
                if v != items.void_code:
                    per_item.setdefault(items.codes[v], []).append(float(item_iou[v]))
        iou = iou_per_class(cm)
        per_class = {c: float(iou[v]) for v, c in enumerate(items.codes) if v != items.void_code and iou[v] == iou[v]}
        return Scores(
            "mean_iou",
            sum(per_class.values()) / max(1, len(per_class)),
            True,
            per_class,
            len(indices),
            tuple(each),
            {c: tuple(per_item[c]) for c in per_class if c in per_item},
        )
