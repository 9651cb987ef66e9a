"""Upload throughput before and after the request limits: POST /datasets of the same archive to two API
processes side by side in one run — this checkout, and a baseline commit checked out in a temporary git
worktree — each on the embedded default (SQLite, local store), uploads interleaved so drift hits both alike.

    .venv/bin/python bench/upload_throughput.py --baseline c35689e [--images 2000 --reps 5]

Prints each side's median seconds and MB/s, and the ratio after/before (the target: the limits cost under 5%,
so a ratio of at least 0.95).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from core.datasets.samples import write_sample
from tests.platform.services import free_port, wait_for

HERE = Path(__file__).resolve().parents[1]


@contextmanager
def server(code: Path, workdir: Path) -> Iterator[tuple[str, str]]:
    """`fitcycle serve --no-worker` from the code in `code`, with a key; yields (base URL, key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env.update(PYTHONPATH=str(code), PYTHONUNBUFFERED="1", FITCYCLE_DATA_DIR=str(workdir / "data"))
    run = [sys.executable, "-m", "cli.main"]
    out = subprocess.run([*run, "keys", "create", "--project", "bench"], env=env, cwd=code, capture_output=True)
    key = out.stdout.decode().strip().splitlines()[-1]
    port = free_port()
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [*run, "serve", "--no-worker", "--port", str(port)], env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 120, f"the API from {code}")
        yield base, key
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def upload_seconds(base: str, key: str, archive: Path, n: int) -> float:
    with archive.open("rb") as f:
        start = time.perf_counter()
        res = httpx.post(
            f"{base}/datasets",
            headers={"Authorization": f"Bearer {key}"},
            data={"name": f"bench-{n}"},
            files={"archive": (archive.name, f, "application/zip")},
            timeout=600,
        )
        seconds = time.perf_counter() - start
    assert res.status_code == 201, res.text
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the commit to compare with (before the change)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old = tmp / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(old), args.baseline], check=True)
        try:
            classes = ["trouser", "bag", "sneaker", "dress"]
            folder = write_sample("fashion-mnist", tmp / "images", per_class=args.images // 4, size=64, classes=classes)
            archive = Path(shutil.make_archive(str(tmp / "upload"), "zip", folder))
            mb = archive.stat().st_size / 1024**2
            with server(old, tmp / "old") as before, server(HERE, tmp / "new") as after:
                upload_seconds(*before, archive, -1)  # warm-up: imports, first database writes
                upload_seconds(*after, archive, -1)
                times: dict[str, list[float]] = {"before": [], "after": []}
                for n in range(args.reps):
                    times["before"].append(upload_seconds(*before, archive, n))
                    times["after"].append(upload_seconds(*after, archive, n))
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(old)], check=False)
    med = {side: statistics.median(t) for side, t in times.items()}
    print(f"archive: {args.images} PNG images, {mb:.1f} MB; {args.reps} uploads each, interleaved")
    for side in ("before", "after"):
        print(
            f"{side:>6} ({args.baseline if side == 'before' else 'this checkout'}): median {med[side]:.2f}s, "
            f"{mb / med[side]:.1f} MB/s  (all: {', '.join(f'{t:.2f}' for t in times[side])})"
        )
    print(f"throughput ratio after/before: {med['before'] / med['after']:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
