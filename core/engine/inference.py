"""The Predictor [fastai: load_learner + predict]: loads an export bundle on CPU and answers for a path,
bytes or PIL image, one or a batch: classes, multi-label sets, points, values or a segmentation mask."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from core.engine.architectures import get_architecture
from core.engine.errors import BundleError
from core.engine.export import read_manifest
from core.engine.images import open_rgb
from core.engine.model import HeadConfig, create_cnn_model
from core.engine.transforms import Normalize, image_to_uint8_tensor, resize_image, resize_map
from core.engine.unet import DynamicUnet, UnetConfig

ImageInput = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """The predicted label, its index, and the probability of every class (in class order). Multi-label:
    `labels` holds every class above its tuned threshold, and label/index the most probable class."""

    label: str
    index: int
    probs: list[float]
    labels: list[str] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)  # points task: (x, y) in the original image's pixels
    values: list[float] = field(default_factory=list)  # values task
    mask: Image.Image | None = None  # segmentation: 8-bit mask of code values, the original image's size
    shares: dict[str, float] = field(default_factory=dict)  # segmentation: share of the image's pixels per class

    def mask_png(self) -> bytes:
        """The segmentation mask as PNG bytes (pixel value = code index, as in the training masks)."""
        if self.mask is None:
            raise ValueError("this prediction has no mask (not a segmentation model)")
        buf = io.BytesIO()
        self.mask.save(buf, format="PNG")
        return buf.getvalue()

    def ranked(self, classes: Sequence[str]) -> list[tuple[str, float]]:
        """(label, probability) for every class, most probable first."""
        return sorted(zip(classes, self.probs, strict=True), key=lambda t: -t[1])


class Predictor:
    """A bundle's model on CPU (or a given device), in eval mode, with its inference transforms."""

    def __init__(self, bundle: str | Path, device: str | torch.device = "cpu") -> None:
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        m = self.manifest
        self.classes: list[str] = list(m["classes"])
        self.size: int = m["input_size"]
        self.method = m["resize_method"]
        self.normalize = Normalize(tuple(m["normalization"]["mean"]), tuple(m["normalization"]["std"]))
        self.device = torch.device(device)
        self.task: str = m["task"]
        self.multi_label = self.task == "multilabel"
        self.thresholds: list[float] = list(m.get("thresholds", []))
        head = m["head"]
        arch = get_architecture(m["arch"])
        model: torch.nn.Module
        if self.task == "segmentation":
            config = UnetConfig(bool(head["blur"]), bool(head["last_cross"]), bool(head["bottle"]))
            model = DynamicUnet(arch.body(arch.build()), m["n_out"], config)
            codes = list(m["codes"])
            self.code_of_class = np.array([codes.index(c) for c in self.classes], dtype=np.uint8)
        else:
            model = create_cnn_model(
                arch,
                m["n_out"],
                head=HeadConfig(
                    lin_ftrs=list(head["lin_ftrs"]),
                    ps=float(head["ps"]),
                    concat_pool=bool(head["concat_pool"]),
                    target_scale=bool(head.get("target_scale", False)),
                ),
            )
        state = load_file(str(self.bundle / m["weights"]), device="cpu")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.bundle}: the weights do not fit the manifest's model: {str(exc)[:400]}") from exc
        self.model = model.to(self.device).eval()

    def _resized(self, image: Image.Image) -> torch.Tensor:
        return image_to_uint8_tensor(resize_image(image, self.size, self.method, None))

    def _regression(self, output: torch.Tensor, image: Image.Image) -> Prediction:
        if self.task == "values":
            return Prediction("", -1, [], values=output.tolist())
        # Points: [-1, 1] -> resized pixels -> the original image's pixels (undo the resize's affine map).
        ax, bx, ay, by = resize_map(image.width, image.height, self.size, self.method, None)
        xy = (output.view(-1, 2) + 1) / 2 * self.size
        points = [[(x - bx) / ax, (y - by) / ay] for x, y in xy.tolist()]
        return Prediction("", -1, [], points=points)

    def _segment(self, image: Image.Image) -> Prediction:
        """The whole image through the fully convolutional U-Net: `crop` keeps the aspect ratio (short side
        at the training size) instead of cutting, `pad` letterboxes and cuts the padding off again; each
        pixel's class comes back at the original size (nearest), as its code value."""
        w, h = image.size
        if self.method == "crop":
            scale = self.size / min(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            resized, box = image.resize((nw, nh), Image.Resampling.BILINEAR), (0, 0, nw, nh)
        elif self.method == "pad":
            ax, left, ay, top = resize_map(w, h, self.size, "pad", None)
            box = (int(left), int(top), int(left) + round(ax * w), int(top) + round(ay * h))
            resized = resize_image(image, self.size, "pad", None)
        else:
            resized, box = resize_image(image, self.size, "squish", None), (0, 0, self.size, self.size)
        x = image_to_uint8_tensor(resized)[None].to(self.device).float().div_(255)
        classes = self.model(self.normalize(x))[0].argmax(dim=0).cpu().numpy().astype(np.uint8)
        classes = classes[box[1] : box[3], box[0] : box[2]]
        full = np.asarray(Image.fromarray(classes).resize((w, h), Image.Resampling.NEAREST))
        counts = np.bincount(full.ravel(), minlength=len(self.classes))
        shares = {c: float(n) / full.size for c, n in zip(self.classes, counts, strict=True)}
        return Prediction("", -1, [], mask=Image.fromarray(self.code_of_class[full]), shares=shares)

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Classify several images in one forward pass (segmentation: one pass each, at its own shape)."""
        if not images:
            return []
        opened = [open_rgb(img) for img in images]
        if self.task == "segmentation":
            return [self._segment(img) for img in opened]
        x = torch.stack([self._resized(img) for img in opened]).to(self.device).float().div_(255)
        outputs = self.model(self.normalize(x)).float().cpu()
        if self.task in ("points", "values"):
            return [self._regression(o, img) for o, img in zip(outputs, opened, strict=True)]
        probs = outputs.sigmoid() if self.multi_label else outputs.softmax(dim=1)
        out = []
        for p in probs:
            i = int(p.argmax())
            if self.multi_label:
                chosen = [c for c, v, t in zip(self.classes, p.tolist(), self.thresholds, strict=True) if v > t]
            else:
                chosen = [self.classes[i]]
            out.append(Prediction(self.classes[i], i, p.tolist(), chosen))
        return out

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image given as a path, bytes or PIL image."""
        return self.predict_batch([image])[0]
