"""What ASHA pruning buys a hyperparameter search: three searches over the same learning-rate range on the same
data, one after the other on one `fitcycle serve` (its one worker runs one trial at a time), compared side by side.

  asha    pruner asha, sampler random   weak trials stopped at epoch 1, 3, 9... (the top third goes on)
  random  pruner none, sampler random   the same seed: the same trials, each run to its last epoch
  grid    pruner none, sampler grid     as many lrs, log-spaced over the same range, each run to its end

All three take the same seed: a seeded search's trials draw their batches, augmentations and initial weights from
it (worker/execute.py's _data_seed), so every trial of the three starts from the same draws and trials differ by
their learning rate alone.

Every search queues all its trials at once (parallel = trials): with one worker they still run one at a time, and
the random sampler draws the whole set in one pass from its seed, so ASHA and random search run the very same
trials. Per search: epochs run, wall time, the best objective (a succeeded trial's last epoch), and the epochs and
seconds until the objective first reached the target, where the target is the best any of the three found plus
--gap (error_rate: lower is better). "Reached" counts any epoch of any trial (a pruned one's too), as the search's
best_so_far does; its seconds are best_so_far's, since the search began, and its epochs count every epoch every
trial had run by then (from each trial's per-epoch values and its start and end).

    PYTHONPATH=. .venv/bin/python bench/search.py [--trials 9] [--epochs 5] [--per-class 60] [--quick]

A one-epoch job runs first, so that no search pays for the worker's start. Prints each search's trials, a
side-by-side table and the ratios ASHA/random and ASHA/grid (below 1: ASHA was cheaper), with the load average
around each search (the searches run one after the other: on a shared machine their wall times are only as
comparable as their loads) and what a trial costs besides its epochs. Everything runs in a scratch folder,
removed at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.embedded import served_embedded
from core.datasets.samples import write_sample
from tests.platform.services import Client, wait_for

CLASSES = ["trouser", "bag", "sneaker", "dress"]
LOW, HIGH = 1e-5, 1.0
METRIC = "error_rate"  # lower is better


@dataclass
class Run:
    name: str
    search: dict[str, Any]
    wall: float  # seconds from created to finished
    load: tuple[float, float]  # the 1-minute load average as it began and as it ended (2 cores: above 2, contended)

    @property
    def busy(self) -> float:
        """Seconds the worker spent in its trials (start to end of each)."""
        return sum(d for _, d in trial_seconds(self.search))

    @property
    def best(self) -> float | None:
        best = self.search["best"]
        return None if best is None else float(best["value"])


def grid_lrs(n: int) -> list[float]:
    """n learning rates log-spaced over [LOW, HIGH], both ends included, at 3 significant digits."""
    if n == 1:
        return [math.sqrt(LOW * HIGH)]
    step = (math.log10(HIGH) - math.log10(LOW)) / (n - 1)
    return [float(f"{10 ** (math.log10(LOW) + i * step):.3g}") for i in range(n)]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def trial_seconds(search: dict[str, Any]) -> list[tuple[int, float]]:
    """(epochs, seconds) of each trial that ran."""
    return [
        (t["epochs"], stamp(t["finished_at"]) - stamp(t["started_at"]))
        for t in search["trials"]
        if t["started_at"] and t["finished_at"]
    ]


def fit_cost(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares seconds = fixed + per_epoch x epochs over every trial: what a trial costs besides its epochs."""
    n = len(points)
    if not n:
        return None
    mx, my = sum(e for e, _ in points) / n, sum(s for _, s in points) / n
    sxx = sum((e - mx) ** 2 for e, _ in points)
    if not sxx:
        return None
    per_epoch = sum((e - mx) * (s - my) for e, s in points) / sxx
    return my - per_epoch * mx, per_epoch


def run_search(client: Client, name: str, body: dict[str, Any], timeout: float) -> Run:
    load = os.getloadavg()[0]
    res = client.post("/searches", json=body)
    if res.status_code != 201:
        raise SystemExit(f"{name}: the search was refused: {res.status_code} {res.text}")
    search_id = res.json()["id"]
    t = time.perf_counter()
    done: dict[str, Any] = wait_for(
        lambda: (s := client.get(f"/searches/{search_id}").json())["state"] != "running" and s,
        timeout,
        f"search {name} to finish",
        interval=1.0,
    )
    wall = stamp(done["finished_at"]) - stamp(done["created_at"]) if done["finished_at"] else time.perf_counter() - t
    run = Run(name, done, wall, (load, os.getloadavg()[0]))
    print(
        f"{name}: {done['state']} in {wall:.0f}s ({run.busy:.0f}s in trials), {done['epochs_used']} epochs; "
        f"load average {run.load[0]:.1f} -> {run.load[1]:.1f}",
        flush=True,
    )
    for trial in sorted(done["trials"], key=lambda x: x["number"]):
        values = " ".join("-" if v is None else f"{v:.3f}" for v in trial["values"])
        print(f"  trial {trial['number']:>2} lr={trial['params']['lr']:.2e} {trial['state']:<9} {values}")
    if done["state"] != "succeeded":
        raise SystemExit(f"{name}: the search {done['state']}: {done['error']}")
    return run


def epoch_times(trial: dict[str, Any]) -> list[float]:
    """When each of a trial's epochs ended, spread evenly over its run (one worker: its epochs lie within it)."""
    n = len(trial["values"])
    if not n or not trial["started_at"] or not trial["finished_at"]:
        return []
    start, end = stamp(trial["started_at"]), stamp(trial["finished_at"])
    return [start + (j + 1) / n * (end - start) for j in range(n)]


def to_target(search: dict[str, Any], target: float) -> tuple[float, int] | None:
    """(seconds, epochs) until the objective first reached `target`: best_so_far's seconds; the epochs every trial
    had run by then, the reaching one's up to the epoch that reached it."""
    seconds = next((t for t, v in search["best_so_far"] if v <= target + 1e-12), None)
    if seconds is None:
        return None
    when = stamp(search["created_at"]) + seconds
    reached: tuple[float, int, int] | None = None  # (estimated time, trial number, epoch index)
    for trial in search["trials"]:
        for j, (v, t) in enumerate(zip(trial["values"], epoch_times(trial), strict=False)):
            if v is not None and v <= target + 1e-12 and (reached is None or t < reached[0]):
                reached = (t, trial["number"], j)
                break
    if reached is None:
        return None
    epochs = reached[2] + 1
    for trial in search["trials"]:
        if trial["number"] != reached[1]:
            epochs += sum(1 for t in epoch_times(trial) if t <= when)
    return seconds, epochs


def quotient(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratio(a: float | None, b: float | None) -> str:
    q = quotient(a, b)
    return "n/a" if q is None else f"{q:.2f}"


def search_bodies(base: dict[str, Any], trials: int, seed: int) -> dict[str, dict[str, Any]]:
    """The three searches' bodies: the same base, trials, objective and seed."""
    common = {"base": base, "trials": trials, "parallel": trials, "objective": {"metric": METRIC}, "seed": seed}
    log_uniform = {"lr": {"log_uniform": [LOW, HIGH]}}
    return {
        "asha": common | {"space": log_uniform, "pruner": "asha", "sampler": "random"},
        "random": common | {"space": log_uniform, "pruner": "none", "sampler": "random"},
        "grid": common | {"space": {"lr": {"choice": grid_lrs(trials)}}, "pruner": "none", "sampler": "grid"},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--epochs", type=int, default=5, help="each trial's epochs, unpruned (fine_tune, from scratch)")
    p.add_argument("--per-class", type=int, default=60, help="Fashion-MNIST images per class (4 classes)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="every search's: the samplers' and the trials' draws")
    p.add_argument("--seeds", type=int, default=1, help="repeat the three with seeds --seed, --seed + 1, ...")
    p.add_argument("--gap", type=float, default=0.02, help="the target: the best of the three + this")
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 trials of 2 epochs, 20 images per class")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs, args.per_class = 3, 2, 20
    if not 1 <= args.trials <= 32:
        raise SystemExit("--trials: 1 to 32 (a grid takes at most 32 choices)")

    tmp = Path(tempfile.mkdtemp(prefix="fitcycle-bench-search-"))
    try:
        folder = write_sample("fashion-mnist", tmp / "data", args.per_class, args.size, classes=CLASSES)
        archive = Path(shutil.make_archive(str(tmp / "fashion"), "zip", folder))
        with served_embedded("fitcycle-bench-search-serve-") as served:
            client = served.client
            dataset = client.upload("fashion", archive).json()["id"]
            base = {
                "kind": "fine_tune",
                "dataset_id": dataset,
                "arch": "resnet18",
                "pretrained": "none",
                "size": args.size,
                "bs": 32,
                "freeze_epochs": 0,
                "epochs": args.epochs,
            }
            # Warm-up: the worker imports torch and fetches the data once, before any search is timed.
            client.wait(client.submit(**(base | {"epochs": 1, "lr": 1e-3}))["id"], timeout=600)
            timeout = 120 + args.trials * args.epochs * 60
            print(
                f"{args.trials} trials x {args.epochs} epochs, lr in [{LOW:g}, {HIGH:g}]; resnet18 from scratch at "
                f"{args.size} px on {len(CLASSES) * args.per_class} Fashion-MNIST images; objective {METRIC}",
                flush=True,
            )
            found: dict[int, dict[str, dict[str, float | None]]] = {}
            for seed in range(args.seed, args.seed + args.seeds):
                print(f"\n--- seed {seed}", flush=True)
                bodies = search_bodies(base, args.trials, seed)
                runs = [run_search(client, name, body, timeout) for name, body in bodies.items()]
                found[seed] = report(runs, args.gap)
        if args.seeds > 1:
            summarize(found)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(runs: list[Run], gap: float) -> dict[str, dict[str, float | None]]:
    """The side-by-side table and the ratios; returns the ratios ASHA/other by measure."""
    bests = [r.best for r in runs if r.best is not None]
    target = min(bests) + gap
    reach = {r.name: to_target(r.search, target) for r in runs}
    print(f"\ntarget: {METRIC} <= {target:.4f} (the best of the three, {min(bests):.4f}, + {gap})")
    header = f"{'search':<7} {'epochs':>6} {'unpruned':>8} {'wall s':>7} {'trial s':>7} {'best':>7} "
    print(header + f"{'epochs->target':>14} {'s->target':>9}  pruned")
    for r in runs:
        s, hit = r.search, reach[r.name]
        pruned = s["counts"].get("pruned", 0)
        print(
            f"{r.name:<7} {s['epochs_used']:>6} {s['epochs_unpruned']:>8} {r.wall:>7.0f} {r.busy:>7.0f} "
            f"{'-' if r.best is None else f'{r.best:.4f}':>7} {'-' if hit is None else hit[1]:>14} "
            f"{'-' if hit is None else f'{hit[0]:.0f}':>9}  {pruned}/{len(s['trials'])}"
        )
    asha = runs[0]
    out: dict[str, dict[str, float | None]] = {}
    for other in runs[1:]:
        a, o = reach[asha.name], reach[other.name]
        q = out[f"asha/{other.name}"] = {
            "epochs": quotient(asha.search["epochs_used"], other.search["epochs_used"]),
            "wall": quotient(asha.wall, other.wall),
            "trial s": quotient(asha.busy, other.busy),
            "epochs to target": quotient(a and a[1], o and o[1]),
            "s to target": quotient(a and a[0], o and o[0]),
        }
        print(f"asha/{other.name}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in q.items()))
    same = [t["params"]["lr"] for t in sorted(runs[0].search["trials"], key=lambda t: t["number"])] == [
        t["params"]["lr"] for t in sorted(runs[1].search["trials"], key=lambda t: t["number"])
    ]
    print(f"asha and random ran the same lrs: {'yes' if same else 'NO'}")
    cost = fit_cost([p for r in runs for p in trial_seconds(r.search)])
    if cost is not None:
        print(
            f"a trial cost {cost[0]:.1f}s + {cost[1]:.2f}s an epoch (least squares over every trial): pruning saves "
            "the epochs, not the trial's own start and end"
        )
    sys.stdout.flush()
    return out


def summarize(found: dict[int, dict[str, dict[str, float | None]]]) -> None:
    """Per pair and measure: each seed's ratio and their median (seeds where it is n/a left out)."""
    print(f"\n=== {len(found)} seeds: ratio per seed (median)")
    first = next(iter(found.values()))
    for pair, measures in first.items():
        for measure in measures:
            values = [found[seed][pair][measure] for seed in found]
            known = [v for v in values if v is not None]
            median = f"{statistics.median(known):.2f}" if known else "n/a"
            each = " ".join("n/a" if v is None else f"{v:.2f}" for v in values)
            print(f"{pair:<12} {measure:<16} {each}  ({median})")


if __name__ == "__main__":
    main()
