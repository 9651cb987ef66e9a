"""A bundle's model as ONNX (model.onnx), for serving on CPU with ONNX Runtime. The graph takes what the eager
model takes (the resized, normalised float tensor; the preprocessing stays in the manifest) and gives what it
gives, so every task decodes both the same way. The batch dimension is dynamic; a model whose output is an image
(the U-Net) also takes any height and width. Every export is checked against the eager model before it is kept:
a graph that answers differently is dropped, and the bundle is served by PyTorch."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine.onnx_runtime import load_onnx, onnxruntime_available

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
# How far ONNX Runtime's answers may be from the eager model's, relative to the outputs' size (float32 kernels
# sum in other orders; a graph that took a wrong branch is off by far more).
TOLERANCE = 1e-3
# A spatial model is traced at a size whose feature maps are odd at every level (2^k + 1 halves to 2^(k-1) + 1),
# so each "upsampled map does not match the skip connection: resize it" branch of the U-Net is in the graph. That
# resize is the identity where the sizes match, so the one graph serves every image shape.
SPATIAL_TRACE_SIZE = 65


class OnnxExportError(Exception):
    """The model could not be written as ONNX, or its ONNX graph does not answer like the eager model."""


def write_onnx(model: nn.Module, path: Path, size: int) -> dict[str, Any]:
    """Write `model` (eval mode, on the CPU) to `path` as ONNX and check that ONNX Runtime answers like it at
    the training size (spatial models: at other shapes too); the manifest's record of it. Raises
    OnnxExportError, with the file removed, when it cannot."""
    if not onnxruntime_available():
        raise OnnxExportError("onnxruntime is not installed, so the graph could not be checked")
    model = model.cpu().eval()
    try:
        with torch.no_grad():
            spatial = model(_example(1, size, size)).dim() == 4
        axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
        example = _example(1, SPATIAL_TRACE_SIZE, SPATIAL_TRACE_SIZE) if spatial else _example(2, size, size)
        _export(model, example, path, axes)
        _check_graph(path)
        # Another batch size than the traced one, and for a spatial model other shapes than the traced one.
        shapes = [(3, size, size)] + ([(1, size, size + size // 2 + 1), (1, size + 3, size)] if spatial else [])
        diff = _max_relative_diff(model, path, shapes)
    except OnnxExportError:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the exporter fails in many ways (an unsupported operator, a traced shape...)
        path.unlink(missing_ok=True)
        raise OnnxExportError(f"{type(exc).__name__}: {str(exc)[:400]}") from exc
    return {
        "file": ONNX_FILE,
        "opset": ONNX_OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_axes": list(axes.values()),
        "checked_max_diff": diff,
    }


def _example(n: int, height: int, width: int) -> torch.Tensor:
    """A normalised-image-like input, the same every time."""
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(0))


def _export(model: nn.Module, example: torch.Tensor, path: Path, axes: dict[int, str]) -> None:
    """The TorchScript-based exporter: it traces a CNN in about a second, where the torch.export-based one
    (torch's default) takes minutes on a few CPU cores and needs onnxscript. Tracing bakes Python branches on
    shapes into the graph, which is why write_onnx checks the graph at several shapes."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings on shape branches
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            do_constant_folding=True,
        )


def _check_graph(path: Path) -> None:
    """The ONNX checker's verdict on the file (well-formed graph, known operators of the opset)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"the ONNX graph is not valid: {str(exc)[:400]}") from exc


def _max_relative_diff(model: nn.Module, path: Path, shapes: list[tuple[int, int, int]]) -> float:
    """The largest difference between ONNX Runtime's and the eager model's outputs over inputs of these shapes
    (batch, height, width), relative to the outputs' size; OnnxExportError above TOLERANCE."""
    onnx_model = load_onnx(path, threads=torch.get_num_threads())
    worst = 0.0
    for n, h, w in shapes:
        x = _example(n, h, w)
        with torch.no_grad():
            expected = model(x).float()
            got = onnx_model(x)
        if got.shape != expected.shape:
            raise OnnxExportError(f"the ONNX graph answers {tuple(got.shape)} for {tuple(expected.shape)} at {h}x{w}")
        diff = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
        if not math.isfinite(diff) or diff > TOLERANCE:
            raise OnnxExportError(
                f"the ONNX graph answers differently from the model at {h}x{w} (relative difference {diff:.2g})"
            )
        worst = max(worst, diff)
    return worst
