"""Where a training job's time goes: one whole job (`core.jobs.runner.run_spec`, as `fitcycle train` runs it:
checkpoints and artifacts written to a folder) with every part of the training loop timed by wall clock —
decode (reading and resizing images, their targets), augmentation, normalize, forward, loss, backward,
optimizer step, metrics and the callbacks — and the job's own phases (metrics.json `timings`: data checks,
show_batch, interpretation, export), then the rest of the process (imports, Python between them). With
--torch-profile, torch.profiler's table of the operators that took the most CPU.

Default: the 48 px multi-label mosaics job of issue 24's first profile (resnet18 from random init, 5 epochs, bs 64).

    .venv/bin/python bench/profile_job.py [--task multilabel|classification|points|segmentation] [--size 48]
                                          [--epochs 5] [--count 600] [--torch-profile]
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.datasets.samples import write_mosaics, write_sample, write_silhouette_masks, write_silhouette_points  # noqa: E402
from core.engine import data as data_module  # noqa: E402
from core.engine import learner as learner_module  # noqa: E402
from core.engine.tasks.base import Task  # noqa: E402
from core.jobs.context import LocalJobContext  # noqa: E402
from core.jobs.runner import run_spec  # noqa: E402
from core.jobs.spec import TrainSpec  # noqa: E402

T_IMPORTED = time.perf_counter()


class Clock:
    """Seconds per section, summed; sections may nest (a section's own time excludes none of its children)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.in_loop = False

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time every call of owner.attr under `name`."""
        original: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)


def instrument(clock: Clock) -> None:
    """Time the loop's parts by patching the engine's classes (this process only)."""
    original_getitem = data_module.ImageItemsDataset.__getitem__

    def getitem(self: Any, i: int) -> Any:
        with clock.section("decode" if clock.in_loop else "decode (outside the epochs)"):
            return original_getitem(self, i)

    data_module.ImageItemsDataset.__getitem__ = getitem  # type: ignore[method-assign]
    clock.wrap(data_module.Normalize, "__call__", "normalize")
    clock.wrap(Task, "augment", "augment")
    learn_cls = learner_module.Learner
    original_call = learn_cls.__call__

    def call(self: Any, event: str) -> None:
        with clock.section(f"callbacks:{event}"):
            original_call(self, event)

    learn_cls.__call__ = call  # type: ignore[method-assign]

    # Forward, loss, backward and step: the events between them mark the boundaries.
    def forward_of(self: Any) -> None:
        t0 = time.perf_counter()
        self.pred = self.model(self.xb)
        clock.seconds["forward (train)" if self.training else "forward (valid)"] += time.perf_counter() - t0
        self("after_pred")
        t0 = time.perf_counter()
        self.loss_grad = self.loss_func(self.pred, self.yb)
        self.loss = self.loss_grad.detach()
        clock.seconds["loss"] += time.perf_counter() - t0
        self("after_loss")
        if not self.training or len(self.yb) == 0:
            return
        self._with_events(self._backward, "backward", learner_module.CancelBackwardException)
        self._with_events(self._step, "step", learner_module.CancelStepException)

    learn_cls._do_one_batch = forward_of  # type: ignore[method-assign]
    clock.wrap(learn_cls, "_backward", "backward")
    clock.wrap(learn_cls, "_step", "optimizer step")
    original_loops = learn_cls._all_batches

    def loops(self: Any) -> None:
        clock.in_loop = True
        try:
            with clock.section("epoch loops"):
                original_loops(self)
        finally:
            clock.in_loop = False

    learn_cls._all_batches = loops  # type: ignore[method-assign]


def make_data(task: str, root: Path, count: int, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """The task's dataset (real images, see core.datasets.samples) and its spec fields."""
    if task == "classification":
        write_sample("digits", root, per_class=max(1, count // 10), size=32)
        return root, {"labels": "folder"}
    if task == "multilabel":
        write_mosaics(root, count=count, seed=seed)
        return root, {"labels": "csv", "csv": "labels.csv", "label_col": "tags", "label_delim": " "}
    if task == "points":
        write_silhouette_points(root, count=count, seed=seed)
        return root, {"labels": "points", "csv": "points.csv"}
    write_silhouette_masks(root, count=count, side=64, seed=seed)
    return root, {"labels": "masks", "void": "void"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="multilabel", choices=["classification", "multilabel", "points", "segmentation"])
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--count", type=int, default=600, help="items in the dataset")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: the engine's choice")
    p.add_argument("--torch-profile", action="store_true", help="also print torch.profiler's top operators")
    args = p.parse_args()

    clock = Clock()
    instrument(clock)
    with tempfile.TemporaryDirectory(prefix="fitcycle-profile-") as tmp:
        data, fields = make_data(args.task, Path(tmp) / "data", args.count)
        spec = TrainSpec(
            data=str(data),
            arch="resnet18",
            pretrained="none",
            size=args.size,
            bs=args.bs,
            freeze_epochs=0,
            epochs=args.epochs,
            lr=1e-2,
            seed=0,
            num_workers=0,
            device="cpu",
            precision=args.precision,
            **fields,
        )
        t0 = time.perf_counter()
        profiler = (
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            if args.torch_profile
            else contextlib.nullcontext()
        )
        with profiler as prof:
            metrics = run_spec(spec, LocalJobContext(Path(tmp) / "out", show_progress=False))
        job = time.perf_counter() - t0
    whole = time.perf_counter() - T_START
    print(f"{args.task} at {args.size} px, resnet18 from random init, {args.epochs} epochs, {args.count} items")
    print(f"whole process {whole:.2f} s: imports {T_IMPORTED - T_START:.2f} s, job {job:.2f} s")
    main_metric = metrics["main_metric"]
    print(f"{main_metric} {metrics[main_metric]:.4f}, precision {metrics['spec'].get('precision') or 'default'}")
    print("job phases (metrics.json timings):")
    for name, seconds in metrics["timings"].items():
        print(f"  {name:<28} {seconds:8.2f} s  {seconds / whole:6.1%}")
    print("inside the epochs (wall clock, summed over calls):")
    loops = clock.seconds.pop("epoch loops", 0.0)
    callbacks = sum(v for k, v in clock.seconds.items() if k.startswith("callbacks:"))
    parts = {k: v for k, v in clock.seconds.items() if not k.startswith("callbacks:") and k != "_"}
    # Callback events wrap backward/step (before_/after_ events): the callbacks' own time is what their
    # handlers took, which the events' timings hold once the loop's timed parts inside them are taken away.
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {seconds:8.2f} s  {seconds / whole:6.1%}")
    inner = sum(parts.get(k, 0.0) for k in ("decode", "augment", "normalize"))
    model_time = sum(
        parts.get(k, 0.0) for k in ("forward (train)", "forward (valid)", "loss", "backward", "optimizer step")
    )
    print(f"  {'callbacks (all events)':<28} {callbacks:8.2f} s  {callbacks / whole:6.1%}")
    for name, seconds in sorted(clock.seconds.items(), key=lambda kv: -kv[1]):
        if name.startswith("callbacks:") and seconds >= 0.01:
            print(f"    {name[10:]:<26} {seconds:8.2f} s")
    in_loops = sum(v for k, v in clock.seconds.items() if k.startswith("callbacks:") and k.endswith("_batch"))
    rest = loops - inner - model_time - in_loops
    print(f"  {'Python between them':<28} {rest:8.2f} s  {rest / whole:6.1%}  (the epochs' loops, less the above)")
    if args.torch_profile and prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
