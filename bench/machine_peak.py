"""This machine's fp32 (and bf16) limit for the work a CNN does, as torch runs it (oneDNN/MKL on a CPU) at its
thread count: a large matrix product (2048 x 2048, torch.mm) and a ResNet-like 3x3 convolution (128 -> 128
channels on 28 x 28 maps, batch 64, the forward pass). The benchmarks divide a task's achieved FLOP/s by the
better of the two (`machine_peak_gflops`) to say what share of the machine a training run used; a run in bf16
(autocast, as fitcycle trains image models on a CPU with native bf16) is divided by the same kernels' bf16 rate.

    .venv/bin/python bench/machine_peak.py [--seconds 1.5] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Peak:
    """GFLOP/s of each kernel, the thread count they ran at, and the better of the two (`gflops`)."""

    matmul: float
    conv: float
    threads: int
    bf16_matmul: float = 0.0
    bf16_conv: float = 0.0

    @property
    def gflops(self) -> float:
        return max(self.matmul, self.conv)

    @property
    def bf16(self) -> float:
        """The bf16 peak (0 when not measured)."""
        return max(self.bf16_matmul, self.bf16_conv)

    def line(self) -> str:
        return (
            f"machine peak: {self.gflops:.1f} GFLOP/s fp32 at {self.threads} thread(s) "
            f"(matmul 2048^2 {self.matmul:.1f}, conv 3x3 128ch 28px bs64 {self.conv:.1f})"
            + (
                f"; bf16 {self.bf16:.1f} (matmul {self.bf16_matmul:.1f}, conv {self.bf16_conv:.1f})"
                if self.bf16
                else ""
            )
        )


def _best_rate(step: Callable[[], object], flops: float, seconds: float) -> float:
    """GFLOP/s of `step`'s fastest run within about `seconds` (after two warm-up runs): other work on a shared
    machine only ever slows a run, so the fastest is the closest to what the machine can do."""
    for _ in range(2):
        step()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return flops / best / 1e9


def _kernels(seconds: float, dtype: torch.dtype) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    n = 2048
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    matmul = _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, seconds)

    bs, c, hw, k = 64, 128, 28, 3
    x = torch.randn(bs, c, hw, hw, generator=gen).to(dtype)
    w = torch.randn(c, c, k, k, generator=gen).to(dtype)
    conv_flops = 2.0 * bs * c * c * k * k * hw * hw  # padding 1: the output is hw x hw
    conv = _best_rate(lambda: F.conv2d(x, w, padding=1), conv_flops, seconds)
    return matmul, conv


@torch.no_grad()
def measure_peak(seconds: float = 1.5, bf16: bool = False) -> Peak:
    """Measure both kernels, about `seconds` each, in fp32 (and with `bf16`, in bf16 too)."""
    matmul, conv = _kernels(seconds, torch.float32)
    bf16_rates = _kernels(seconds, torch.bfloat16) if bf16 else (0.0, 0.0)
    return Peak(matmul, conv, torch.get_num_threads(), *bf16_rates)


_CACHED: Peak | None = None


def machine_peak_gflops(seconds: float = 1.5) -> float:
    """The machine's fp32 peak for these kernels, GFLOP/s, measured once a process."""
    global _CACHED
    if _CACHED is None:
        _CACHED = measure_peak(seconds)
    return _CACHED.gflops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.5, help="time spent on each kernel")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, oneDNN enabled: {torch.backends.mkldnn.is_available()}")
    print(measure_peak(args.seconds, bf16=True).line())


if __name__ == "__main__":
    main()
