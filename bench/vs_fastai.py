"""fitcycle against fastai 2.8 on every task, whole process against whole process: the same data on disk, the same
validation items, the same recipe (ResNet-18 from random init, epochs, batch size, learning rate, augmentation,
seed), the same torch threads, each run a process of its own, the two interleaved (ABBA).

  digits        classification, scikit-learn's digits at 32 px              (write_sample, layout csv)
  mosaics       multi-label 2x2 Fashion-MNIST mosaics at 48 px             (write_mosaics)
  points        one point (a silhouette's centroid) on textures, 48 px     (write_silhouette_points)
  segmentation  11 codes at 48 px: void, 3 textures, 7 animals             (write_silhouette_masks)
  text          bench/text.py's ULMFiT flow, its fastai side run by the fastai venv's python

fitcycle's side is the user's command, `fitcycle train DATA --from-... --arch resnet18 --pretrained none`; fastai's
is this script again (`--side fastai`, run by the python of bench/fastai_venv.py's environment: fastai is never a
project dependency): a DataBlock on the same CSV (ColSplitter on its is_valid column), Resize, aug_transforms with
the same settings (no warp for points, as fitcycle), Normalize() (stats from a batch: fastai adds no normalization
to an untrained body, fitcycle uses the data's), vision_learner / unet_learner(resnet18, pretrained=False),
fit_one_cycle(epochs, lr), learn.export. Both load data in the training process (num_workers 0). The recipes are
TASKS below (digits without augmentation: a flipped digit is another digit, or none); --scale sizes the data.

The time is each process's wall time, from its start to its exit: imports, data, training and the saved model on
both sides. `time ratio` is the median over the reps of each rep's fitcycle/fastai ratio, with its min-max. The
quality is computed afterwards, by one function of this script, from each side's saved model's predictions for
the same validation items (fitcycle: the export bundle; fastai: load_learner): accuracy, accuracy_multi (0.5),
the mean point error in pixels, pixel accuracy and mean IoU over the non-void pixels.

`share of peak` is a fit's FLOP/s over the machine's (bench/machine_peak.py): each training image costs 3x the
model's forward FLOPs (FlopCounterMode, at the task's size), each validation image 1x, over the fit's seconds.
`model alone` is the same model's forward, backward and AdamW step on one batch already in memory: the gap from it
to the fit is the data and the loop; the gap from it to 100% the kernels at these small sizes.

    .venv/bin/python bench/vs_fastai.py [--tasks digits,mosaics,points,segmentation,text] [--reps 5]
                                        [--scale 1] [--threads 0] [--fastai-venv DIR] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # before any heavy import: a side's own phases count from here

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDES = ("fitcycle", "fastai")
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe")  # with void + 3 textures: 11 codes
TABLE = "bench.csv"  # each task's items: name, target column(s), is_valid (0/1), written by this script


@dataclass(frozen=True)
class Recipe:
    """One task: its data, and the recipe both sides train with."""

    name: str
    kind: str  # classification | multilabel | points | segmentation
    size: int
    items: int
    epochs: int
    bs: int
    lr: float
    augment: bool
    what: str


TASKS = {
    "digits": Recipe("digits", "classification", 32, 1700, 5, 64, 1e-2, False, "scikit-learn digits, 10 classes"),
    "mosaics": Recipe("mosaics", "multilabel", 48, 1200, 5, 64, 1e-2, True, "Fashion-MNIST mosaics, 4 labels"),
    "points": Recipe("points", "points", 48, 1200, 5, 64, 1e-2, True, "silhouette centroids on textures"),
    "segmentation": Recipe("segmentation", "segmentation", 48, 500, 5, 32, 1e-2, True, "silhouettes, 11 codes"),
}
TEXT = "text"
QUICK_ITEMS = {"digits": 200, "mosaics": 120, "points": 120, "segmentation": 60}
MAIN_METRIC = {
    "classification": "accuracy",
    "multilabel": "accuracy_multi",
    "points": "point error (px)",
    "segmentation": "pixel accuracy",
}


# ----- the data: written once, read by both sides --------------------------------------------------------------
def write_task_data(recipe: Recipe, root: Path, seed: int) -> Path:
    """The task's images and TABLE (name, targets, is_valid: a seeded random 20%)."""
    import numpy as np

    from core.datasets.samples import write_mosaics, write_sample, write_silhouette_masks, write_silhouette_points

    n = recipe.items
    if recipe.kind == "classification":
        write_sample("digits", root, per_class=max(2, n // 10), size=recipe.size, layout="csv")
        rows, header = _read_rows(root / "labels.csv"), ["name", "label"]
    elif recipe.kind == "multilabel":
        write_mosaics(root, count=n, seed=seed)
        rows, header = _read_rows(root / "labels.csv"), ["name", "tags"]
    elif recipe.kind == "points":  # square images at the task's size: the resize moves no point
        write_silhouette_points(root, count=n, width=recipe.size, height=recipe.size, seed=seed)
        rows, header = _read_rows(root / "points.csv"), ["name", "centroid_x", "centroid_y"]
    else:
        write_silhouette_masks(root, count=n, side=recipe.size, seed=seed, animals=ANIMALS)
        rows, header = _read_rows(root / "pairs.csv"), ["name", "mask"]
    order = np.random.default_rng(seed).permutation(len(rows))
    valid = set(order[: round(0.2 * len(rows))].tolist())
    with (root / TABLE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, "is_valid"])
        for i, row in enumerate(rows):
            w.writerow([*(row[h] for h in header), int(i in valid)])
    return root / TABLE


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def valid_rows(table: Path) -> list[dict[str, str]]:
    """The validation items, in the table's order: the order both sides' predictions come in."""
    return [r for r in _read_rows(table) if r["is_valid"] == "1"]


# ----- fitcycle's side: the CLI --------------------------------------------------------------------------------------
def fitcycle_command(recipe: Recipe, root: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """`fitcycle train` for the task, from scratch: one one-cycle phase of `epochs` epochs."""
    script = Path(sys.executable).with_name("fitcycle")
    cmd = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from cli.main import main; raise SystemExit(main())"]
    )
    rule = {
        "classification": ["--from-csv", TABLE],
        "multilabel": ["--from-csv", TABLE, "--label-col", "tags", "--label-delim", " "],
        "points": ["--from-points-csv", TABLE],
        "segmentation": ["--from-masks-csv", TABLE, "--void", "void"],
    }[recipe.kind]
    return [
        *cmd,
        "train",
        str(root),
        *rule,
        "--valid-col",
        "is_valid",
        "--arch",
        "resnet18",
        "--pretrained",
        "none",
        "--size",
        str(recipe.size),
        "--bs",
        str(recipe.bs),
        "--freeze-epochs",
        "0",
        "--epochs",
        str(recipe.epochs),
        "--lr",
        str(recipe.lr),
        *([] if recipe.augment else ["--no-augment"]),
        "--seed",
        str(args.seed),
        "--workers",
        "0",
        "--device",
        args.device,
        *(["--precision", args.precision] if args.precision else []),
        "--out",
        str(out),
    ]


def fitcycle_predictions(recipe: Recipe, bundle: Path, root: Path, names: list[str]) -> dict[str, Any]:
    """The export bundle's outputs for the validation items (PyTorch backend), as predictions(): probabilities,
    points in pixels or masks of code indices."""
    import torch
    from PIL import Image

    from core.engine.inference import Predictor

    predictor = Predictor(bundle, backend="torch")
    outs = []
    with torch.inference_mode():
        for start in range(0, len(names), 64):
            images = [Image.open(root / n).convert("RGB") for n in names[start : start + 64]]
            outs.append(predictor.forward(images))
    out = torch.cat(outs)
    classes = list(predictor.classes)
    if recipe.kind == "classification":
        return {"classes": classes, "probs": out.softmax(1).numpy()}
    if recipe.kind == "multilabel":
        return {"classes": classes, "probs": out.sigmoid().numpy()}
    if recipe.kind == "points":
        return {"points": to_pixels(out.numpy(), recipe.size)}
    codes = (root / "codes.txt").read_text().split()
    lookup = torch.tensor([codes.index(c) for c in classes])
    return {"masks": lookup[out.argmax(1)].numpy().astype("uint8")}


def fitcycle_model(bundle: Path) -> Any:
    """The bundle's PyTorch model."""
    from core.engine.inference import Predictor

    return Predictor(bundle, backend="torch").model


# ----- fastai's side: this script in the fastai venv -------------------------------------------------------------
def point_of(row: Any) -> Any:
    """fastai's get_y for points: the row's centroid as a (1, 2) tensor (module level: learn.export pickles it)."""
    import torch

    return torch.tensor([[float(row["centroid_x"]), float(row["centroid_y"])]])


def side_fastai(args: argparse.Namespace) -> dict[str, Any]:
    """Train and export with fastai; each phase's seconds."""
    import warnings

    import pandas as pd
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        CrossEntropyLossFlat,
        DataBlock,
        ImageBlock,
        MaskBlock,
        MultiCategoryBlock,
        Normalize,
        PointBlock,
        Resize,
        accuracy,
        accuracy_multi,
        aug_transforms,
        foreground_acc,
        resnet18,
        set_seed,
        unet_learner,
        vision_learner,
    )

    warnings.filterwarnings("ignore")
    t: dict[str, Any] = {"import_s": time.perf_counter() - T_START, "torch_threads": torch.get_num_threads()}
    root, out, kind = Path(args.data), Path(args.out), args.kind
    out.mkdir(parents=True, exist_ok=True)

    # The data: the same table, its is_valid column as the split.
    t0 = time.perf_counter()
    set_seed(args.seed)
    df = pd.read_csv(root / TABLE, keep_default_na=False)  # an empty tag list stays "" (no label)
    get_x = ColReader("name", pref=f"{root}/")
    codes = (root / "codes.txt").read_text().split() if kind == "segmentation" else []
    blocks, get_y = {
        "classification": ((ImageBlock, CategoryBlock), ColReader("label")),
        "multilabel": ((ImageBlock, MultiCategoryBlock), ColReader("tags", label_delim=" ")),
        "points": ((ImageBlock, PointBlock), point_of),
        "segmentation": ((ImageBlock, MaskBlock(codes)), ColReader("mask", pref=f"{root}/")),
    }[kind]
    aug = aug_transforms(max_warp=0.0 if kind == "points" else 0.2) if args.augment else []
    block = DataBlock(
        blocks=blocks,
        get_x=get_x,
        get_y=get_y,
        splitter=ColSplitter("is_valid"),
        item_tfms=Resize(args.size),
        batch_tfms=[*aug, Normalize()],
    )
    dls = block.dataloaders(df, bs=args.bs, num_workers=0, device=torch.device(args.device))
    t["data_s"] = time.perf_counter() - t0
    t["n_train"], t["n_valid"] = len(dls.train_ds), len(dls.valid_ds)

    # The learner: ResNet-18 from random init, fastai's head (no head dropout for points, as fitcycle).
    t0 = time.perf_counter()
    set_seed(args.seed)
    if kind == "segmentation":
        void = codes.index("void")
        assert void == 0, "foreground_acc's bkg_idx is 0"
        learn = unet_learner(
            dls,
            resnet18,
            pretrained=False,
            n_out=len(codes),
            loss_func=CrossEntropyLossFlat(axis=1, ignore_index=void),
            metrics=[foreground_acc],
        )
    else:
        options: dict[str, dict[str, Any]] = {
            "classification": {"metrics": [accuracy]},
            "multilabel": {"metrics": [accuracy_multi]},
            "points": {"y_range": (-1, 1), "ps": 0.0},
        }
        learn = vision_learner(dls, resnet18, pretrained=False, **options[kind])
    learn.path = out
    t["learner_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    learn.fit_one_cycle(args.epochs, args.lr)
    t["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    learn.export("export.pkl")
    t["export_s"] = time.perf_counter() - t0
    t["total_s"] = time.perf_counter() - T_START
    return t


def side_fastai_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Each exported learner's predictions for the validation items (saved as .npz), and its model's FLOPs and
    speed alone."""
    import warnings

    import numpy as np
    import torch
    from fastai.vision.all import load_learner

    warnings.filterwarnings("ignore")
    root, kind = Path(args.data), args.kind
    names = json.loads(Path(args.names).read_text())
    result: dict[str, Any] = {}
    for i, export in enumerate(args.exports.split(",")):
        learn = load_learner(export, cpu=args.device == "cpu")
        dl = learn.dls.test_dl([root / n for n in names], bs=64, num_workers=0)
        with learn.no_bar():
            preds, _ = learn.get_preds(dl=dl)
        preds = torch.as_tensor(preds).float()
        saved: dict[str, Any]
        if kind in ("classification", "multilabel"):
            saved = {"classes": np.array([str(c) for c in learn.dls.vocab]), "probs": preds.numpy()}
        elif kind == "points":
            saved = {"points": to_pixels(preds.reshape(len(names), -1).numpy(), args.size)}
        else:
            saved = {"masks": preds.argmax(1).numpy().astype("uint8")}
        np.savez(Path(args.out) / f"fastai-{i}.npz", allow_pickle=False, **saved)
        if i == 0:
            result["flops"] = forward_flops(learn.model, args.size)
            result["alone_ips"] = model_alone_ips(learn.model, args.size, args.bs)
    return result


# ----- what both sides share: the quality, the FLOPs ---------------------------------------------------------------
def to_pixels(out: Any, size: int) -> Any:
    """A model's [-1, 1] point outputs (N, 2) as pixels of the (square, size x size) image."""
    return (out.reshape(len(out), -1)[:, :2] + 1) / 2 * size


def quality(recipe: Recipe, root: Path, rows: list[dict[str, str]], pred: dict[str, Any]) -> dict[str, float]:
    """The task's main metric (and a second one) of one side's predictions for the validation rows, computed the
    same way for both sides."""
    import numpy as np
    from PIL import Image

    if recipe.kind == "classification":
        classes = [str(c) for c in pred["classes"]]
        hits = [classes[int(k)] == r["label"] for k, r in zip(pred["probs"].argmax(1), rows, strict=True)]
        return {"accuracy": float(np.mean(hits))}
    if recipe.kind == "multilabel":
        classes = [str(c) for c in pred["classes"]]
        truth = np.array([[c in r["tags"].split() for c in classes] for r in rows])
        return {"accuracy_multi": float(((pred["probs"] > 0.5) == truth).mean())}
    if recipe.kind == "points":
        truth = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in rows])
        return {"point error (px)": float(np.linalg.norm(pred["points"] - truth, axis=1).mean())}
    codes = (root / "codes.txt").read_text().split()
    void = codes.index("void")
    truth = np.stack([np.asarray(Image.open(root / r["mask"])) for r in rows])
    keep = truth != void
    masks = pred["masks"]
    ious = []
    for c in range(len(codes)):
        if c == void:
            continue
        t, p = (truth == c) & keep, (masks == c) & keep
        if t.any():
            ious.append((t & p).sum() / (t | p).sum())
    return {"pixel accuracy": float((masks == truth)[keep].mean()), "mean IoU": float(np.mean(ious))}


def forward_flops(model: Any, size: int) -> float:
    """FLOPs of one image's forward pass (torch.utils.flop_counter: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def model_alone_ips(model: Any, size: int, bs: int, steps: int = 5) -> float:
    """Images/s of forward, backward and an AdamW step on one batch already in memory (no data, no loop): its
    fastest step after two warm-up steps, since other work on a shared machine only ever slows a step."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for i in range(steps + 2):
        t0 = time.perf_counter()
        model(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return bs / best


# ----- the parent ----------------------------------------------------------------------------------------------
def run_timed(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a side's process; its wall time (start to exit). Its output goes to `log`."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"--- failed (exit {proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-6000:]}")
        raise SystemExit(1)
    return wall


def fastai_command(py: Path, recipe: Recipe, root: Path, out: Path, args: argparse.Namespace, side: str) -> list[str]:
    return [
        str(py),
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--kind",
        recipe.kind,
        "--data",
        str(root),
        "--out",
        str(out),
        "--size",
        str(recipe.size),
        "--bs",
        str(recipe.bs),
        "--epochs",
        str(recipe.epochs),
        "--lr",
        str(recipe.lr),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        *(["--augment"] if recipe.augment else []),
    ]


def spread(values: list[float]) -> str:
    """median (min-max) of per-rep values."""
    return f"{statistics.median(values):.3f} (min-max {min(values):.3f}-{max(values):.3f}, {len(values)} reps)"


def fitcycle_trains_bf16(args: argparse.Namespace) -> bool:
    """Whether fitcycle's side trains in bf16: asked, or its default on a CPU with native bf16."""
    from core.engine.callbacks import cpu_has_native_bf16

    return args.precision == "bf16" or (args.precision is None and args.device == "cpu" and cpu_has_native_bf16())


def bench_task(
    recipe: Recipe, args: argparse.Namespace, py: Path, peak: float, work: Path, fc_peak: float | None = None
) -> dict[str, Any]:
    """One image task, `args.reps` times each side; fitcycle's share of peak against `fc_peak` (its precision's
    peak: bf16 when it trains in bf16), fastai's against fp32's `peak`."""
    fc_peak = fc_peak or peak
    """Both sides on one task, interleaved; prints and returns the comparison."""
    import numpy as np

    root = work / recipe.name / "data"
    table = write_task_data(recipe, root, args.seed)
    rows = valid_rows(table)
    names = [r["name"] for r in rows]
    n_items = sum(1 for _ in _read_rows(table))
    aug = "augment (fastai's defaults" + (", no warp)" if recipe.kind == "points" else ")")
    print(
        f"== {recipe.name}: {recipe.kind}, {recipe.what}, {recipe.size} px; {n_items - len(rows)} train / "
        f"{len(rows)} valid; resnet18 from scratch, {recipe.epochs} epoch(s), bs {recipe.bs}, lr {recipe.lr:g}, "
        f"{aug if recipe.augment else 'no augment'}"
    )
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    walls: dict[str, list[float]] = {s: [] for s in SIDES}
    own: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for rep in range(args.reps):  # ABBA: drift in the machine's load hits both sides alike
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            out = work / recipe.name / f"{side}-{rep}"
            if side == "fitcycle":
                walls[side].append(run_timed(fitcycle_command(recipe, root, out, args), out.with_suffix(".log"), env))
                metrics = json.loads((out / "metrics.json").read_text())
                own[side].append(metrics["timings"])
            else:
                cmd = [*fastai_command(py, recipe, root, out, args, "fastai"), "--json", str(out / "timings.json")]
                walls[side].append(run_timed(cmd, out.with_suffix(".log"), env))
                own[side].append(json.loads((out / "timings.json").read_text()))
        ratio = walls["fitcycle"][-1] / walls["fastai"][-1]
        print(
            f"  rep {rep + 1}: fitcycle {walls['fitcycle'][-1]:6.1f}s  fastai {walls['fastai'][-1]:6.1f}s  "
            f"ratio {ratio:.3f}  (load average {os.getloadavg()[0]:.2f})"
        )

    # Quality: every rep's saved model on the validation items, one function for both sides.
    preds_dir = work / recipe.name / "preds"
    preds_dir.mkdir(parents=True, exist_ok=True)
    (preds_dir / "names.json").write_text(json.dumps(names))
    fc_quality = [
        quality(
            recipe,
            root,
            rows,
            fitcycle_predictions(recipe, work / recipe.name / f"fitcycle-{r}" / "export", root, names),
        )
        for r in range(args.reps)
    ]
    exports = ",".join(str(work / recipe.name / f"fastai-{r}" / "export.pkl") for r in range(args.reps))
    cmd = fastai_command(py, recipe, root, preds_dir, args, "fastai-predict")
    cmd += ["--exports", exports, "--names", str(preds_dir / "names.json"), "--json", str(preds_dir / "fastai.json")]
    run_timed(cmd, preds_dir / "fastai-predict.log", env)
    fa_info = json.loads((preds_dir / "fastai.json").read_text())
    fa_quality = [quality(recipe, root, rows, dict(np.load(preds_dir / f"fastai-{r}.npz"))) for r in range(args.reps)]
    fc_model = fitcycle_model(work / recipe.name / "fitcycle-0" / "export")
    fc_flops, fc_alone = forward_flops(fc_model, recipe.size), model_alone_ips(fc_model, recipe.size, recipe.bs)

    # Time.
    ratios = [a / b for a, b in zip(walls["fitcycle"], walls["fastai"], strict=True)]
    med = {s: statistics.median(walls[s]) for s in SIDES}
    print(f"  whole process (median): fitcycle {med['fitcycle']:.1f}s  fastai {med['fastai']:.1f}s")
    print(f"  time ratio: {spread(ratios)}  [fitcycle/fastai, each rep's own ratio]")

    # Quality.
    metric = MAIN_METRIC[recipe.kind]
    qualities = {"fitcycle": fc_quality, "fastai": fa_quality}
    for name in fc_quality[0]:
        parts = []
        for s in SIDES:
            values = [q[name] for q in qualities[s]]
            parts.append(
                f"{s} {statistics.median(values):.4f}"
                + (f" ({min(values):.4f}-{max(values):.4f})" if len(set(values)) > 1 else "")
            )
        better = "lower is better" if name.startswith("point error") else "higher is better"
        main = " (main)" if name == metric else ""
        print(f"  {name}{main}: {'  '.join(parts)}  [{len(rows)} valid items, {better}]")

    # Throughput against the machine's limit.
    fc_fit = [sum(v for k, v in t.items() if k.startswith("fit")) for t in own["fitcycle"]]
    fa_fit = [t["fit_s"] for t in own["fastai"]]
    n_valid = own["fastai"][0]["n_valid"]
    n_train = own["fastai"][0]["n_train"] // recipe.bs * recipe.bs  # both drop the last partial batch
    share = {}
    for s, fit, flops, alone in (
        ("fitcycle", fc_fit, fc_flops, fc_alone),
        ("fastai", fa_fit, fa_info["flops"], fa_info["alone_ips"]),
    ):
        fit_flops = recipe.epochs * (3 * n_train + n_valid) * flops
        best = min(fit)
        share[s] = fit_flops / best / ((fc_peak if s == "fitcycle" else peak) * 1e9)
        print(
            f"  {s}: fit {best:.1f}s (fastest rep; {recipe.epochs * n_train / best:.0f} training images/s), "
            f"{flops / 1e9:.3f} GFLOP forward per image; model alone {alone:.0f} images/s "
            f"= {alone * 3 * flops / (peak * 1e9):.0%} of peak"
        )
    print(
        f"  share of peak: {share['fitcycle']:.0%}  (fitcycle's fit against {fc_peak:.0f} GFLOP/s"
        f"{', its bf16 peak' if fc_peak != peak else ''}; fastai's {share['fastai']:.0%} against fp32's "
        f"{peak:.0f}; `model alone`: fp32)"
    )
    last_fc, last_fa = own["fitcycle"][-1], own["fastai"][-1]
    outside = walls["fitcycle"][-1] - last_fc["total"]
    phases = ", ".join(f"{k} {v:.1f}" for k, v in last_fc.items() if k != "total")
    print(f"  where fitcycle's time went (last rep, s): start + imports + exit {outside:.1f}, {phases}")
    rest = walls["fastai"][-1] - last_fa["total_s"]
    print(
        f"  where fastai's time went (last rep, s): start + exit {rest:.1f}, imports {last_fa['import_s']:.1f}, "
        f"data {last_fa['data_s']:.1f}, learner {last_fa['learner_s']:.1f}, fit {last_fa['fit_s']:.1f}, "
        f"export {last_fa['export_s']:.1f}"
    )
    return {"task": recipe.name, "ratio": statistics.median(ratios), "share": share["fitcycle"]}


def bench_text(args: argparse.Namespace, py: Path, peak: float, work: Path) -> dict[str, Any]:
    """bench/text.py with its fastai side in the fastai venv; the whole process's per-rep ratios."""
    summary = work / "text-summary.json"
    cmd = [sys.executable, str(ROOT / "bench" / "text.py"), "--fastai-python", str(py), "--summary", str(summary)]
    cmd += ["--reps", str(args.reps), "--threads", str(args.threads)]
    if args.quick:
        cmd += ["--scale", "0.1", "--lm-epochs", "1", "--epochs", "1"]
    print("== text: bench/text.py (ULMFiT: language model, then classifier; serving)", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"--- bench/text.py failed (exit {proc.returncode})\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
        raise SystemExit(1)
    print("\n".join("  " + line for line in proc.stdout.rstrip().splitlines()))
    s = json.loads(summary.read_text())
    runs, a = s["runs"], s["args"]
    ratios = [f["wall_s"] / b["wall_s"] for f, b in zip(runs["fitcycle"], runs["fastai"], strict=True)]
    print(f"  time ratio: {spread(ratios)}  [whole process, fitcycle/fastai, each rep's own ratio]")
    fc, fa = runs["fitcycle"][0], runs["fastai"][0]
    print(f"  classifier accuracy: fitcycle {fc['clf']['accuracy']:.4f}  fastai {fa['clf']['accuracy']:.4f}")
    share = {}
    for side, r in (("fitcycle", runs["fitcycle"]), ("fastai", runs["fastai"])):
        lm = r[0]["lm"]
        per_token = awd_lstm_flops(a["emb_sz"], a["n_hid"], a["n_layers"], lm["vocab"])
        fit = min(x["lm"]["fit_s"] for x in r)
        share[side] = 3 * per_token * lm["train_tokens"] * lm["epochs"] / fit / (peak * 1e9)
    print(
        f"  share of peak: {share['fitcycle']:.0%}  (fitcycle's language-model fit; fastai's {share['fastai']:.0%}; "
        f"AWD-LSTM {a['emb_sz']}/{a['n_hid']}/{a['n_layers']}, 3x forward FLOPs per training token, validation left "
        f"out; peak {peak:.0f} GFLOP/s)"
    )
    return {"task": TEXT, "ratio": statistics.median(ratios), "share": share["fitcycle"]}


def awd_lstm_flops(emb: int, hid: int, layers: int, vocab: int) -> float:
    """Forward FLOPs per token of an AWD-LSTM language model: each LSTM layer's four gates (2 per multiply-add on
    its input and hidden state) and the decoder onto the vocabulary."""
    total = 0.0
    for i in range(layers):
        n_in, n_out = (emb if i == 0 else hid), (emb if i == layers - 1 else hid)
        total += 2 * 4 * n_out * (n_in + n_out)
    return total + 2 * emb * vocab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tasks", default=",".join([*TASKS, TEXT]), help="comma-separated, from: " + ", ".join([*TASKS, TEXT])
    )
    p.add_argument("--reps", type=int, default=None, help="runs of each side per task, ABBA order (default 5)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies each image task's item count")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads in every process (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="fitcycle's (default: the engine's)")
    p.add_argument("--fastai-venv", type=Path, default=None, help="the fastai venv (bench/fastai_venv.py's default)")
    p.add_argument("--work", type=Path, default=None, help="keep the data, models and logs here (default: a temp dir)")
    p.add_argument(
        "--quick", action="store_true", help="tiny data, 1 epoch, 1 rep (unless --reps): checks it runs end to end"
    )
    # A side's own arguments (this script run again as one side).
    p.add_argument("--side", choices=("fastai", "fastai-predict"), help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    p.add_argument("--augment", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--exports", help=argparse.SUPPRESS)
    p.add_argument("--names", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:  # a child: one side's run, its figures to --json
        result = side_fastai(args) if args.side == "fastai" else side_fastai_predict(args)
        Path(args.json).write_text(json.dumps(result, indent=1))
        return

    import torch

    from bench.fastai_venv import fastai_python
    from bench.machine_peak import measure_peak

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - {*TASKS, TEXT})
    if unknown:
        p.error(f"unknown tasks {unknown}; choose from {', '.join([*TASKS, TEXT])}")
    args.reps = args.reps or (1 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    py = fastai_python(args.fastai_venv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="vs-fastai-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Warm the file cache for both sides' imports, so that neither pays the other's first read.
        subprocess.run([sys.executable, "-c", "import core.jobs.runner, cli.main"], cwd=ROOT, check=True)
        subprocess.run([str(py), "-W", "ignore", "-c", "import fastai.vision.all"], cwd=ROOT, check=True)
        results, peak_gflops, bf16_gflops = [], 0.0, 0.0
        fc_bf16 = fitcycle_trains_bf16(args)
        for name in tasks:
            # The machine's limit, measured again before each task: the best seen so far (others' work on a shared
            # machine only ever lowers a measurement).
            peak = measure_peak(0.3 if args.quick else 1.5, bf16=fc_bf16)
            peak_gflops = max(peak_gflops, peak.gflops)
            bf16_gflops = max(bf16_gflops, peak.bf16)
            print(f"\n{peak.line()}; best so far {peak_gflops:.1f}")
            if name == TEXT:
                results.append(bench_text(args, py, peak_gflops, work))
                continue
            recipe = TASKS[name]
            if args.quick:
                recipe = replace(recipe, items=QUICK_ITEMS[name], epochs=1)
            else:
                recipe = replace(recipe, items=round(recipe.items * args.scale))
            fc_peak = bf16_gflops if fc_bf16 else peak_gflops
            results.append(bench_task(recipe, args, py, peak_gflops, work, fc_peak))
        print("\nsummary (fitcycle/fastai time ratio, median of per-rep ratios; target <= 0.80):")
        for r in results:
            print(f"  {r['task']:<13} time ratio {r['ratio']:.3f}   share of peak {r['share']:.0%}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
