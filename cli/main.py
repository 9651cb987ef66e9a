"""`fitcycle`: train, find a learning rate and predict locally, with the same engine the workers run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.splits import SEED, VALID_PCT

if TYPE_CHECKING:
    from core.jobs.spec import TrainSpec

EXIT_BAD_INPUT = 2
# The job spec's default body (core.jobs.spec.DEFAULT_ARCH), named here so that `fitcycle --help` and the client
# verbs start without importing the engine (torch, torchvision); tests/jobs/test_job_timings.py keeps the two equal.
DEFAULT_ARCH = "efficientnet_lite0"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder holding the images (texts: the folder, or its CSV of texts)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--from-folder", action="store_true", help="label = parent folder name (the default)")
    rule.add_argument("--from-csv", metavar="FILE", help="CSV with a header: file name and label columns")
    rule.add_argument("--from-name-re", metavar="PATTERN", help="regex on the file name; group 1 is the label")
    rule.add_argument(
        "--from-points-csv",
        metavar="FILE",
        help="keypoints: CSV of file name, then x, y pixel column pairs (or a .json of points per image)",
    )
    rule.add_argument(
        "--from-values-csv", metavar="FILE", help="value regression: CSV of file name, then numbers (or .json)"
    )
    rule.add_argument(
        "--from-masks",
        action="store_true",
        help="segmentation: images under --images-dir, each with the mask --mask-template names",
    )
    rule.add_argument("--from-masks-csv", metavar="FILE", help="segmentation: CSV with image and mask columns")
    rule.add_argument(
        "--from-text-csv", metavar="FILE", help="texts: CSV with text and label columns (empty: unlabelled)"
    )
    rule.add_argument("--from-text-folder", action="store_true", help="texts: train/LABEL/*.txt, unsup/*.txt (IMDB)")
    p.add_argument("--text-col", default=None, help="texts: the CSV's text column (default: text)")
    p.add_argument(
        "--language-model", action="store_true", help="texts: train the AWD-LSTM language model (ULMFiT's first step)"
    )
    p.add_argument("--seq-len", type=int, default=72, help="texts: tokens per step (bptt, default 72)")
    p.add_argument("--drop-mult", type=float, default=None, help="texts: scales the AWD-LSTM's dropouts")
    p.add_argument("--min-freq", type=int, default=3, help="texts: rarer tokens are xxunk (default 3)")
    p.add_argument(
        "--arch-config",
        type=_parse_arch_config,
        default=None,
        help="texts: AWD-LSTM sizes, e.g. emb_sz=400,n_hid=1152,n_layers=3 (fastai's defaults)",
    )
    p.add_argument(
        "--codes",
        default=None,
        help="segmentation: mask value names in order, comma-separated (default: the data's codes.txt)",
    )
    p.add_argument("--void", default=None, help="segmentation: the code the loss and metrics ignore (e.g. void)")
    p.add_argument(
        "--images-dir",
        default=None,
        help="segmentation: folder of images (default: images); CSV: the folder its file names are in",
    )
    p.add_argument(
        "--mask-template",
        default="masks/{stem}.png",
        help="segmentation: mask of each image (default: masks/{stem}.png)",
    )
    p.add_argument("--mask-col", default="mask", help="segmentation CSV: the mask column (default: mask)")
    p.add_argument("--fn-col", default=None, help="CSV column with the file name (default: name, else the first)")
    p.add_argument("--label-col", default=None, help="CSV column with the label (default: label, else the next)")
    p.add_argument("--valid-col", default=None, help="CSV column marking validation rows (true/false)")
    p.add_argument(
        "--label-delim", default=None, help="multi-label: the CSV label column lists classes split by this (e.g. ' ')"
    )
    p.add_argument(
        "--arch", default=DEFAULT_ARCH, help=f"resnet18/34/50/101 or efficientnet_lite0 (default {DEFAULT_ARCH})"
    )
    p.add_argument("--pretrained", default="imagenet", help="imagenet, none, or a weights file / export folder")
    p.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    p.add_argument("--resize-method", choices=["crop", "squish", "pad"], default="crop")
    p.add_argument("--bs", type=int, default=64, help="batch size")
    p.add_argument(
        "--valid-pct",
        type=float,
        default=None,
        help=f"share of items for validation, stable per item ({VALID_PCT}; a language model's: 0.1)",
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"the split's seed ({SEED})")
    p.add_argument("--no-augment", action="store_true", help="turn off fastai's default augmentation")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        default=None,
        help="mixed precision (default: bf16 on a GPU that has it, else fp16; on a CPU, bf16 where it computes in "
        "it natively (AVX512-BF16, AMX) for image models, else fp32)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager if it fails)")
    p.add_argument(
        "--gpus", type=int, default=1, help="devices for one run (DistributedDataParallel; on CPU: processes)"
    )
    p.add_argument("--out", default="runs/latest", help="output folder")


def _parse_arch_config(value: str) -> dict[str, int]:
    """emb_sz=400,n_hid=1152,n_layers=3 as a dict (the spec checks the names and bounds)."""
    try:
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in value.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError("write it as emb_sz=400,n_hid=1152,n_layers=3") from None


def _in_data(data: str, path: str | None) -> str | None:
    """A table the user named on the command line, as the path inside the data folder that the engine takes
    (`data/fm/labels.csv` and `labels.csv` both name data/fm/labels.csv); other paths are left for the
    engine to refuse with its message (tables must live inside the dataset)."""
    if path is None:
        return None
    given, root = Path(path), Path(data).resolve()
    if (given.is_absolute() or given.exists()) and given.resolve().is_relative_to(root):
        return given.resolve().relative_to(root).as_posix()
    return path


def _outside_table(data: str, path: str | None, images_dir: str | None) -> dict[str, str] | None:
    """A labels table outside the image folder (fastai's `from_csv(path, csv, folder=...)`, Kaggle's
    train.csv beside train/): the spec's data becomes the folder holding both, the table is named inside it,
    and the images' folder is `images_dir`. On the command line the files are the user's own; what a REST
    request names stays inside its dataset. None when the table is inside `data` (or does not exist)."""
    if path is None:
        return None
    table, images = Path(path).resolve(), (Path(data) / (images_dir or ".")).resolve()
    if not table.is_file() or table.is_relative_to(Path(data).resolve()):
        return None
    root = Path(os.path.commonpath([table.parent, images]))
    return {
        "data": str(root),
        "csv": table.relative_to(root).as_posix(),
        "images_dir": images.relative_to(root).as_posix() or ".",
    }


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    labels, extra, text = "folder", dict[str, Any](), dict[str, Any]()
    if args.data.lower().endswith(".csv") and Path(args.data).is_file() and not args.from_csv:
        args.from_text_csv, args.data = Path(args.data).name, str(Path(args.data).parent)  # texts: DATA.csv
    outside = _outside_table(args.data, args.from_csv or args.from_masks_csv, args.images_dir)
    if args.from_csv:
        labels, extra = "csv", {"csv": _in_data(args.data, args.from_csv), "images_dir": args.images_dir}
    elif args.from_name_re:
        labels, extra = "name_re", {"pattern": args.from_name_re}
    elif args.from_points_csv:
        labels, extra = "points", {"csv": _in_data(args.data, args.from_points_csv)}
    elif args.from_values_csv:
        labels, extra = "values", {"csv": _in_data(args.data, args.from_values_csv)}
    elif args.from_text_csv or args.from_text_folder:
        labels = "text_csv" if args.from_text_csv else "text_folder"
        extra = (
            {"csv": _in_data(args.data, args.from_text_csv), "text_col": args.text_col} if args.from_text_csv else {}
        )
        text = {"seq_len": args.seq_len, "drop_mult": args.drop_mult, "min_freq": args.min_freq, "arch": "awd_lstm"}
        text["arch_config"] = args.arch_config
        text["pretrained"] = "none" if args.pretrained == "imagenet" else args.pretrained
        if args.language_model:
            from core.jobs.kinds import LANGUAGE_MODEL

            text["kind"] = LANGUAGE_MODEL.name
            text["valid_pct"] = LANGUAGE_MODEL.valid_pct
    elif args.from_masks or args.from_masks_csv:
        labels, extra = "masks", {"csv": _in_data(args.data, args.from_masks_csv)} if args.from_masks_csv else {}
        extra |= {
            "codes": [c.strip() for c in args.codes.split(",")] if args.codes else None,
            "void": args.void,
            "images_dir": args.images_dir,
            "mask_template": args.mask_template,
            "mask_col": args.mask_col,
        }
    return {
        "data": args.data,
        "labels": labels,
        **extra,
        **(outside or {}),
        "fn_col": args.fn_col,
        "label_col": args.label_col,
        "valid_col": args.valid_col,
        "label_delim": args.label_delim,
        "arch": args.arch,
        "pretrained": args.pretrained,
        **text,
        "size": args.size,
        "resize_method": args.resize_method,
        "bs": args.bs,
        "valid_pct": args.valid_pct if args.valid_pct is not None else text.pop("valid_pct", VALID_PCT),
        "seed": args.seed,
        "augment": not args.no_augment,
        "num_workers": args.workers,
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "gpus": args.gpus,
    }


def _parse_lr(text: str) -> float | tuple[float, float] | str:
    if text == "find":
        return text
    try:
        if "," in text:
            low, high = text.split(",")
            return float(low), float(high)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lr takes a number like 3e-3, a range low,high like 1e-5,1e-3, or 'find'; got '{text}'"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(prog="fitcycle", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="fine-tune a pretrained body (stage 1 frozen, stage 2 unfrozen)")
    _add_data_args(train)
    train.add_argument("--freeze-epochs", type=int, default=1, help="stage-1 epochs with the body frozen")
    train.add_argument("--epochs", type=int, default=4, help="stage-2 epochs, unfrozen")
    train.add_argument(
        "--lr",
        type=_parse_lr,
        default=None,
        help="base learning rate, low,high (discriminative: first layer group to head), or 'find' to run lr_find "
        "first (default: the fine_tune kind's, listed in the README's table of job kinds)",
    )
    train.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="also checkpoint every N steps")
    train.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="checkpoint once S seconds have passed since the last one (0: every epoch; Ctrl-C always checkpoints)",
    )
    train.add_argument("--grad-accum", type=int, default=1, metavar="N", help="step the optimizer every N batches")
    train.add_argument(
        "--sizes",
        default=None,
        metavar="S1,S2,...",
        help="progressive resizing: stage 1 + stage 2 at each size in turn (e.g. 128,256)",
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")

    lr_find = verbs.add_parser("lr-find", help="sweep the learning rate, print suggestions, write the plot")
    _add_data_args(lr_find)

    predict = verbs.add_parser("predict", help="classify images with an export bundle, on CPU")
    predict.add_argument("bundle", help="export folder (with manifest.json)")
    predict.add_argument("images", nargs="*", help="image files")
    predict.add_argument("--text", action="append", default=None, help="a text for a text classifier (repeatable)")
    predict.add_argument("--generate", metavar="PROMPT", default=None, help="a language model writes after PROMPT")
    predict.add_argument("--words", type=int, default=40, help="--generate: tokens to write (default 40)")
    predict.add_argument("--seed", type=int, default=None, help="--generate: the same seed writes the same text")
    predict.add_argument("--json", action="store_true", help="one JSON line per image")
    predict.add_argument(
        "--explain",
        nargs="?",
        const="heatmaps",
        default=None,
        metavar="DIR",
        help="images: write each image with its heatmap (Grad-CAM) over it to DIR (default: heatmaps); "
        "texts: print each word's weight",
    )
    predict.add_argument(
        "--heatmap-class", default=None, help="--explain: the class the heatmap is for (default: the answer)"
    )
    predict.add_argument(
        "--mask-dir", default="predicted-masks", help="segmentation: where to write each image's mask PNG"
    )

    sample = verbs.add_parser("sample-data", help="write a real sample dataset as image files (no download)")
    sample.add_argument(
        "name",
        choices=[
            "fashion-mnist",
            "animal-mnist",
            "digits",
            "fashion-mosaics",
            "silhouette-points",
            "silhouette-masks",
            "reviews",
        ],
        help="fashion-mosaics: multi-label 2x2 mosaics, labels.csv with a space-delimited 'tags' column; "
        "silhouette-points: keypoints (centroid, top) of silhouettes on textures, points.csv; "
        "silhouette-masks: segmentation, images/ + masks/ + codes.txt (void, brick, grass, gravel, animal); "
        "reviews: texts.csv of short reviews (text, label pos/neg or empty: unlabelled, is_valid), made here",
    )
    sample.add_argument("dest")
    sample.add_argument("--per-class", type=int, default=100)
    sample.add_argument("--size", type=int, default=None, help="resize to SIZE px (default: native)")
    sample.add_argument("--layout", choices=["folder", "csv", "name_re"], default="folder")

    from cli.platform import add_platform_verbs
    from cli.remote import add_remote_verbs

    add_platform_verbs(verbs)
    add_remote_verbs(verbs)
    return parser


def train_spec(args: argparse.Namespace) -> TrainSpec:
    """The spec `fitcycle train` runs: the data's rule and the recipe's settings (unset ones: the kind's)."""
    from core.jobs.spec import TrainSpec

    return TrainSpec(
        **_spec_fields(args),
        freeze_epochs=args.freeze_epochs,
        epochs=args.epochs,
        lr=args.lr,
        checkpoint_every_n_steps=args.checkpoint_every,
        checkpoint_every_seconds=args.checkpoint_seconds,
        grad_accum=args.grad_accum,
        plan=[{"size": int(s)} for s in args.sizes.split(",")] if args.sizes else None,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """fitcycle train."""
    from core.jobs.context import LocalJobContext
    from core.jobs.runner import TrainingStopped, run_spec, run_train

    spec = train_spec(args)
    ctx = LocalJobContext(args.out)
    if ctx.checkpoint_file.exists() and not args.resume:
        ctx.checkpoint_file.unlink()  # a fresh run; --resume keeps it

    def stop(signum: int, frame: object) -> None:
        if ctx.stop_requested:
            raise KeyboardInterrupt
        ctx.stop_requested = True
        print("\nstopping at the next batch, with a checkpoint (Ctrl-C again: quit now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        metrics = run_spec(spec, ctx) if args.language_model else run_train(spec, ctx)
    except TrainingStopped:
        print(f"stopped: {ctx.checkpoint_file} holds every step done; the same command with --resume goes on")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    main = metrics["main_metric"]
    print(f"{main} {metrics[main]:.4f}  ->  {Path(args.out) / 'metrics.json'}")
    print(f"export bundle: {Path(args.out) / 'export'}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """fitcycle lr-find."""
    from core.jobs.context import LocalJobContext
    from core.jobs.runner import run_lr_find
    from core.jobs.spec import TrainSpec

    spec = TrainSpec(**_spec_fields(args))
    result = run_lr_find(spec, LocalJobContext(args.out))
    for name, lr in result["suggestions"].items():
        print(f"{name:>8}: {lr:.2e}")
    print(f"plot: {Path(args.out) / 'plots' / 'lr_find.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """fitcycle predict: one line per image, the same answer the REST API gives (--json), or a few words."""
    from cli.answers import with_files
    from cli.heatmaps import explain_folder, overlay_path
    from core.engine.inference import Predictor

    if args.text or args.generate:
        return _predict_text(args)
    predictor = Predictor(args.bundle)
    explain = args.explain is not None or args.heatmap_class is not None
    if explain and not predictor.explains:
        print(
            f"error: --explain: heatmaps are for classification and multi-label models, not {predictor.task.name}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.heatmap_class is not None and args.heatmap_class not in predictor.classes:
        print(
            f"error: --heatmap-class: {args.heatmap_class!r} is not one of {', '.join(predictor.classes)}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    status = 0
    folder = explain_folder(Path(args.explain or "heatmaps")) if explain else None
    written: set[Path] = set()
    for path in args.images:
        try:
            if explain:
                p, heatmap = predictor.explain(path, args.heatmap_class)
            else:
                p, heatmap = predictor.predict(path), None
        except (OSError, ValueError) as exc:
            print(f"error: {path}: cannot read the image: {exc}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        answer = with_files(p.answer(), Path(path), Path(args.mask_dir))
        if heatmap is not None and folder is not None:
            dest = overlay_path(folder, Path(path), written)
            heatmap.over(path).save(dest)
            answer |= {"heatmap": str(dest), "heatmap_class": heatmap.label}
        if args.json:
            print(json.dumps({"path": path, **answer}))
        else:
            extra = f"  (mask: {answer['mask']})" if "mask" in answer else ""
            extra += f"  (heatmap for {answer['heatmap_class']}: {answer['heatmap']})" if heatmap is not None else ""
            print(f"{path}: {p.text()}{extra}")
    return status


def _predict_text(args: argparse.Namespace) -> int:
    """fitcycle predict BUNDLE --text "..." (a classifier) or --generate PROMPT (a language model)."""
    from core.engine.text.bundle import TextPredictor

    predictor = TextPredictor(args.bundle)
    if args.generate:
        print(predictor.generate(args.generate, args.words, seed=args.seed))
        return 0
    for text, p in zip(args.text, predictor.predict_texts(args.text), strict=True):
        words = predictor.word_weights(text) if args.explain is not None else None
        if args.json:
            print(json.dumps({"text": text[:80], **p.answer(), **({"words": words} if words is not None else {})}))
        else:
            print(f"{p.text()}  <- {text[:80]}")
            if words is not None:
                print("   " + " ".join(f"{w}({v:.2f})" for w, v in words))
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    """fitcycle sample-data."""
    from core.datasets.samples import write_mosaics, write_sample, write_silhouette_masks, write_silhouette_points

    if args.name == "reviews":
        from core.datasets.text_samples import write_reviews

        dest = write_reviews(args.dest, n_labelled=args.per_class * 4, n_unlabelled=args.per_class * 40).parent
    elif args.name == "fashion-mosaics":
        dest = write_mosaics(args.dest, count=args.per_class * 4)
    elif args.name == "silhouette-points":
        dest = write_silhouette_points(args.dest, count=args.per_class * 3)
    elif args.name == "silhouette-masks":
        dest = write_silhouette_masks(args.dest, count=args.per_class * 3, side=args.size or 64)
    else:
        dest = write_sample(args.name, args.dest, args.per_class, args.size, args.layout)
    print(f"wrote {args.name} to {dest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fitcycle` console script."""
    from core.engine.errors import FitcycleError, PretrainedWeightsNotFound

    args = build_parser().parse_args(argv)  # --help ends here, having imported neither pydantic nor the engine
    from pydantic import ValidationError

    from cli.platform import cmd_db, cmd_keys, cmd_worker
    from cli.remote import REMOTE_VERBS, cmd_remote
    from cli.serve import cmd_serve

    handlers = {
        "train": cmd_train,
        "lr-find": cmd_lr_find,
        "predict": cmd_predict,
        "sample-data": cmd_sample_data,
        "serve": cmd_serve,
        "worker": cmd_worker,
        "keys": cmd_keys,
        "db": cmd_db,
        **dict.fromkeys(REMOTE_VERBS, cmd_remote),
    }
    try:
        code = handlers[args.verb](args)
        sys.stdout.flush()  # a pipe that closed early fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `fitcycle ... | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command killed by SIGPIPE
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(map(str, err["loc"])) or "spec"
            print(f"error: {field}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FitcycleError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, PretrainedWeightsNotFound):  # the engine's words are the same for every interface
            print(
                "on the command line: --pretrained PATH, --pretrained none, or --arch efficientnet_lite0",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
