"""ONNX Runtime on the CPU, wearing the eager model's shape: an nn.Module whose forward takes the float tensor the
eager model takes and returns a tensor, so the Predictor and every task's decode use either the same way."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxModel(nn.Module):
    """An ONNX Runtime session (CPUExecutionProvider) called like the eager model. It holds no parameters; it is
    an nn.Module so that code that puts the model in eval mode or walks its modules works unchanged."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.output_name: str = session.get_outputs()[0].name
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's output for a float32 (N, 3, H, W) batch, as a CPU tensor."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """An ONNX file as an OnnxModel: all graph optimizations, `threads` intra-op threads (default: as many as
    PyTorch uses, so both backends get the same share of the machine), one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    # No busy-waiting between operators: in a server the other threads (decoding, HTTP, the database) need those
    # cycles. Measured with 100 clients on 2 cores, resnet34 at 224 px: 0.70 -> 0.74 of the in-process rate, and
    # the in-process rate itself unchanged (bench/load.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no notices about the graph's optimizations on every load
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return OnnxModel(session)
