"""The Predictor [fastai: load_learner + predict]: loads an export bundle on CPU and answers for a path,
bytes or PIL image, one or a batch. The bundle's task rebuilds the model and decodes its outputs: ranked
classes, multi-label sets, points, values or a segmentation mask (see tasks/). On the CPU the model runs in ONNX
Runtime when the bundle has a model.onnx (backend "onnx", the default), else in PyTorch; both take the same tensor
and give the same outputs, so the task decodes either the same way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from core.engine.architectures import get_architecture
from core.engine.errors import BundleError
from core.engine.export import onnx_model_file, read_manifest
from core.engine.heatmap import grad_cam, heatmap_layer, on_image, overlay
from core.engine.heatmap import png as heatmap_png
from core.engine.images import open_rgb
from core.engine.onnx_runtime import load_onnx, onnxruntime_available
from core.engine.tasks import Prediction, get_task
from core.engine.transforms import Normalize, image_to_uint8_tensor, resize_image

ImageInput = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class Heatmap:
    """Where in an image the evidence for `label` is: H x W uint8 (the image's own size), 255 the strongest."""

    label: str
    heat: np.ndarray

    def png(self) -> bytes:
        """As an 8-bit greyscale PNG."""
        return heatmap_png(self.heat)

    def over(self, image: ImageInput) -> Image.Image:
        """The image it was made for with the heatmap over it, in the course's colours."""
        return overlay(open_rgb(image), self.heat)


Backend = Literal["onnx", "torch"]
BACKENDS: tuple[Backend, ...] = ("onnx", "torch")

log = logging.getLogger(__name__)


class Predictor:
    """A bundle's model on CPU (or a given device), in eval mode, with its inference transforms."""

    def __init__(self, bundle: str | Path, device: str | torch.device = "cpu", backend: Backend = "onnx") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend should be one of {', '.join(BACKENDS)}, not {backend!r}")
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
        self.model: nn.Module = model.to(self.device).eval()
        self.backend: Backend = "torch"  # what answers: "onnx" only once model.onnx is loaded
        # Explained calls need PyTorch's gradients, and a model of their own: their hook on a model that plain calls
        # share would fire on those calls' threads too. Built on the first explained call.
        self._torch_model: nn.Module | None = None
        self._explain_lock = threading.Lock()  # one explained call at a time: its hook is on the shared model
        if backend == "onnx":
            self._use_onnx()

    def _use_onnx(self) -> None:
        """Answer with ONNX Runtime when the bundle has a model.onnx of these weights and the device is the CPU;
        otherwise keep the PyTorch model (the weights were loaded and checked above either way), and log why."""
        path, why = onnx_model_file(self.bundle, self.manifest)
        if path is not None and self.device.type != "cpu":
            path, why = None, f"ONNX Runtime serves on the CPU only, and this Predictor is on {self.device}"
        if path is not None and not onnxruntime_available():
            path, why = None, "onnxruntime is not installed"
        if path is None:
            log.info("%s: served by PyTorch (%s)", self.bundle, why)
            return
        try:
            self.model, self.backend = load_onnx(path), "onnx"
        except Exception as exc:  # e.g. an opset newer than this onnxruntime: PyTorch still serves the bundle
            log.warning("%s: served by PyTorch, ONNX Runtime could not load %s: %s", self.bundle, path.name, exc)

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images resized to the training size and normalized: the model's input batch, on its device."""
        resized = [image_to_uint8_tensor(resize_image(img, self.size, self.method, None)) for img in images]
        return self.normalize(torch.stack(resized).to(self.device).float().div_(255))

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's outputs for images resized to the training size, in one pass (on the CPU)."""
        return self.model(self.inputs(images)).float().cpu()

    @property
    def explains(self) -> bool:
        """Whether its answers can carry heatmaps (classification and multi-label)."""
        return self.task.explains

    def _pytorch_model(self) -> nn.Module:
        """The bundle's model in PyTorch (when ONNX Runtime serves, built again from the weights once)."""
        if self._torch_model is None:
            m = self.manifest
            model = self.task.inference_model(get_architecture(m["arch"]), m)
            model.load_state_dict(load_file(str(self.bundle / m["weights"]), device="cpu"), strict=True)
            self._torch_model = model.to(self.device).eval()
        return self._torch_model

    def explain(self, image: ImageInput, heatmap_class: str | None = None) -> tuple[Prediction, Heatmap]:
        """One image's answer with its heatmap (Grad-CAM at the manifest's `heatmap_layer`) for `heatmap_class`
        (None: the answer's most probable class). The answer comes from PyTorch, whatever serves plain calls:
        ONNX Runtime has no gradients. A task without heatmaps or a class the model does not know: ValueError."""
        if not self.task.explains:
            raise ValueError(f"heatmaps are for classification and multi-label models, not {self.task.name}")
        if heatmap_class is not None and heatmap_class not in self.classes:
            raise ValueError(f"heatmap_class {heatmap_class[:100]!r} is not one of the model's classes")
        img = open_rgb(image)  # an image that cannot be decoded: OSError or ValueError, before the model runs
        with self._explain_lock:
            model = self._pytorch_model()
            layer = heatmap_layer(model, self.manifest)
            target = None if heatmap_class is None else [self.classes.index(heatmap_class)]
            out, cam = grad_cam(model, self.inputs([img]), layer, target)
        prediction = self.task.decode(out[0].float().cpu(), img, self)
        index = int(out[0].argmax()) if target is None else target[0]
        heat = on_image(cam[0].cpu(), img.width, img.height, self.size, self.method)
        return prediction, Heatmap(self.classes[index], heat)

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Answer several images (one forward pass; segmentation: one pass each, at its own shape)."""
        if not images:
            return []
        return self.task.predict(self, [open_rgb(img) for img in images])

    def predict(self, image: ImageInput) -> Prediction:
        """Answer one image given as a path, bytes or PIL image."""
        return self.predict_batch([image])[0]
