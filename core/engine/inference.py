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
from core.engine.transforms import Normalize, image_to_uint8_tensor, resize_image

ImageInput = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """The predicted label, its index, and the probability of every class (in class order). Multi-label:
    `labels` holds every class above its tuned threshold, and label/index the most probable class."""

    label: str
    index: int
    probs: list[float]
    labels: list[str] = field(default_factory=list)

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
        self.multi_label = m["task"] == "multilabel"
        self.thresholds: list[float] = list(m.get("thresholds", []))
        head = m["head"]
        model = create_cnn_model(
            get_architecture(m["arch"]),
            len(self.classes),
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

    def _tensor(self, image: ImageInput) -> torch.Tensor:
        return image_to_uint8_tensor(resize_image(open_rgb(image), self.size, self.method, None))

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Classify several images in one forward pass."""
        if not images:
            return []
        x = torch.stack([self._tensor(img) for img in images]).to(self.device).float().div_(255)
        logits = self.model(self.normalize(x)).float()
        probs = (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).cpu()
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
