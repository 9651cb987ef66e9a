"""The Predictor [fastai: load_learner + predict]: loads an export bundle on CPU and classifies a path,
bytes or PIL image, one or a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from core.engine.architectures import get_architecture
from core.engine.errors import BundleError
from core.engine.export import read_manifest
from core.engine.images import open_rgb
from core.engine.model import HeadConfig, create_cnn_model
from core.engine.transforms import Normalize, image_to_uint8_tensor, resize_image, resize_map

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
        model = create_cnn_model(
            get_architecture(m["arch"]),
            m["n_out"],
            head=HeadConfig(
                lin_ftrs=list(head["lin_ftrs"]), ps=float(head["ps"]), concat_pool=bool(head["concat_pool"])
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

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Classify several images in one forward pass."""
        if not images:
            return []
        opened = [open_rgb(img) for img in images]
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
