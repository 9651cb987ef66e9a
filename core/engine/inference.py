"""The Predictor [fastai: load_learner + predict]: loads an export bundle on CPU and answers for a path,
bytes or PIL image, one or a batch. The bundle's task rebuilds the model and decodes its outputs: ranked
classes, multi-label sets, points, values or a segmentation mask (see tasks/)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from core.engine.architectures import get_architecture
from core.engine.errors import BundleError
from core.engine.export import read_manifest
from core.engine.images import open_rgb
from core.engine.tasks import Prediction, get_task
from core.engine.transforms import Normalize, image_to_uint8_tensor, resize_image

ImageInput = str | Path | bytes | Image.Image


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
        self.task = get_task(m["task"])
        model = self.task.inference_model(get_architecture(m["arch"]), m)
        state = load_file(str(self.bundle / m["weights"]), device="cpu")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.bundle}: the weights do not fit the manifest's model: {str(exc)[:400]}") from exc
        self.model = model.to(self.device).eval()

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's outputs for images resized to the training size, in one pass (on the CPU)."""
        resized = [image_to_uint8_tensor(resize_image(img, self.size, self.method, None)) for img in images]
        x = torch.stack(resized).to(self.device).float().div_(255)
        return self.model(self.normalize(x)).float().cpu()

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Answer several images (one forward pass; segmentation: one pass each, at its own shape)."""
        if not images:
            return []
        return self.task.predict(self, [open_rgb(img) for img in images])

    def predict(self, image: ImageInput) -> Prediction:
        """Answer one image given as a path, bytes or PIL image."""
        return self.predict_batch([image])[0]
