"""bench/gpu_throughput.py runs on CPU too (small), so its three measurements and ratios stay working between
the GPU runs it is for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_throughput_bench_runs_on_cpu() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    for label in ("(a) minimal loop, synthetic", "(b) engine, synthetic", "(c) engine, JPEG"):
        line = next(x for x in out.splitlines() if x.startswith(label))
        assert float(re.findall(r"([\d.]+) images/s", line)[0]) > 0
    assert re.search(r"engine/minimal ratio \(b/a\): \d+\.\d{3}", out)
