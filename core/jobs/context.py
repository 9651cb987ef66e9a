"""The JobContext: the one object through which a job reaches the outside world (report metrics, save
and load checkpoints, write artifacts, ask whether to stop). LocalJobContext keeps everything in a
folder, so the same job code runs in the CLI, a notebook or a test with no server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol

from core.engine.checkpoint import load_checkpoint, save_checkpoint


class JobContext(Protocol):
    """What a running job may ask of its host."""

    show_progress: bool

    def on_batch(self, row: dict[str, Any]) -> None:
        """Record a sampled training batch."""

    def on_epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch's losses and metrics."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep this checkpoint as the job's latest."""

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint, to resume from, or None for a fresh start."""

    def artifact_path(self, name: str) -> Path:
        """A local path to write the artifact `name` (e.g. 'plots/losses.png') to."""

    def artifact_written(self, name: str) -> None:
        """Tell the host that artifact `name` is complete (it may upload it)."""

    def should_stop(self) -> bool:
        """True when the job was cancelled and should stop at the next batch."""


class LocalJobContext:
    """Everything under one folder: metrics.jsonl, checkpoints/last.pt and the artifacts."""

    def __init__(self, out_dir: str | Path, show_progress: bool = True) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.show_progress = show_progress
        self.batches: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.stop_requested = False
        self.notices: list[dict[str, Any]] = []

    @property
    def checkpoint_file(self) -> Path:
        """Where the latest checkpoint lives."""
        return self.out / "checkpoints" / "last.pt"

    def on_batch(self, row: dict[str, Any]) -> None:
        self.batches.append(row)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        with (self.out / "epochs.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_progress(self, row: dict[str, Any]) -> None:
        """A job that is no fit (a predict job's chunks): how far it is, on stderr."""
        if self.show_progress:
            print(f"\r{row['stage']}: {row['done']}/{row['total']}", end="", file=sys.stderr, flush=True)

    def on_notice(self, notice: dict[str, Any]) -> None:
        """Something the job changed on its own (out of memory: a smaller micro-batch), said on stderr."""
        self.notices.append(notice)
        if notice.get("kind") == "oom_backoff":
            print(
                f"fitcycle: out of memory at step {notice['step']}: batch of {notice['batch_size']} now runs as "
                f"{notice['accumulation']} micro-batches of {notice['micro_batch']} ({notice['error']})",
                file=sys.stderr,
            )

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.checkpoint_file)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        return load_checkpoint(self.checkpoint_file) if self.checkpoint_file.is_file() else None

    def artifact_path(self, name: str) -> Path:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_written(self, name: str) -> None:
        return None

    def should_stop(self) -> bool:
        return self.stop_requested
