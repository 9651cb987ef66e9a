"""What makes a job's weights: the facts a job records (`record`), a digest of the weights it exported
(`weights_digest`), the seed of its draws (`data_seed_for`), deterministic algorithms on request
(`deterministic_algorithms`), and what differs between two records (`differences`) — so a rerun can say whether it
made the same weights again and, if not, which recorded fact changed.

Where randomness enters a job, all of it seeded: the split (a hash of `seed` and each item's key), the initial
weights (torch's generator, seeded with the data seed before the model is built), the data order and augmentations
(generators seeded by data seed, fit, epoch and batch), dropout (the global generator, seeded with the initial
weights). Two more facts change the floats without any random draw: the number of CPU threads (oneDNN splits its
reductions by thread) and the instruction set or GPU (other kernels, bf16 by default where the CPU has it)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.engine.splits import MAX_SEED

# Spec fields that name this machine's files (the data's cache, a parent's bundle): they differ between workers and
# say nothing of what was trained; the facts beside them (the dataset's hash, the parent's id) do.
LOCAL_FIELDS = ("data", "init_bundle", "csv", "device")


def data_seed_for(seed: int, kind: str, lineage: str = "") -> int:
    """The seed of a job's draws (initial weights, data order, augmentations): a function of its spec's seed, its
    kind and what it continues from (a parent job's id, a retrained model's id), never of the job's own id: the same
    job queued again draws the same, and a child draws other batches than its parent."""
    digest = hashlib.blake2b(f"{seed}:{kind}:{lineage}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (MAX_SEED + 1)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes and bytes, in name order): equal exactly when the
    weights are bit-identical, however they were saved."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def bundle_weights_digest(bundle: Path, weights_file: str) -> str:
    """weights_digest of an export bundle's weights file."""
    from safetensors.torch import load_file

    return weights_digest(load_file(str(bundle / weights_file)))


@functools.cache
def code_version() -> dict[str, str | None]:
    """fitcycle's package version and the commit it runs from: FITCYCLE_COMMIT (an image built from a commit), else
    the checkout's HEAD, else None."""
    try:
        version: str | None = importlib.metadata.version("fitcycle")
    except importlib.metadata.PackageNotFoundError:
        version = None
    commit = os.environ.get("FITCYCLE_COMMIT") or None
    if commit is None:
        root = Path(__file__).resolve().parents[2]
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
            )
            commit = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"package": version, "commit": commit}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: torch.device) -> dict[str, Any]:
    """The device a job trained on, as far as it changes the floats: its kind and name, the CPU's instruction set
    (torch's kernels follow it) and the threads of its reductions."""
    facts: dict[str, Any] = {
        "type": device.type,
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def record(spec_summary: dict[str, Any], device: torch.device, precision: str, deterministic: bool) -> dict[str, Any]:
    """The facts that make a job's weights, as the engine sees them (the worker adds the dataset's hash)."""
    seed = spec_summary.get("seed")
    return {
        "spec": {k: v for k, v in spec_summary.items() if k not in LOCAL_FIELDS},
        "seeds": {"seed": seed, "data_seed": spec_summary.get("data_seed", seed)},
        "code": code_version(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"),
            "numpy": _version("numpy"),
            "pillow": _version("pillow"),
        },
        "device": device_facts(device),
        "precision": precision,
        "deterministic": deterministic,
    }


def flatten(facts: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested record as 'a.b.c' keys (lists kept whole)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recorded fact whose value differs between two records: {fact, before, after}, in name order."""
    a, b = flatten(before), flatten(after)
    return [
        {"fact": name, "before": a.get(name), "after": b.get(name)}
        for name in sorted(set(a) | set(b))
        if a.get(name) != b.get(name)
    ]


@contextmanager
def deterministic_algorithms(on: bool, device: torch.device) -> Iterator[None]:
    """With `on`: torch's deterministic algorithms for the with-block (an op that has none raises, naming
    itself), cuDNN's benchmark off and cuBLAS's workspace fixed on CUDA; the process's settings come back after."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
