"""Client verbs over the REST API: upload datasets, queue and watch jobs (a progress bar fed by the
job's server-sent events), fetch artifacts and predict. --url/--key or FITCYCLE_URL/FITCYCLE_KEY."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from cli.answers import with_files
from cli.heatmaps import explain_folder, overlay_path
from core.jobs.kind_names import KIND_NAMES

# Named here, not imported from core.engine.rules (which imports PIL, numpy and torch): the client verbs only
# speak HTTP, and start in a fraction of the time. tests/jobs/test_job_timings.py keeps the two equal.
RULE_KINDS: tuple[str, ...] = ("folder", "csv", "name_re", "points", "values", "masks", "text_csv", "text_folder")


def add_remote_verbs(verbs: Any) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--url",
            default=os.environ.get("FITCYCLE_URL", "http://127.0.0.1:8000"),
            help="the server (env FITCYCLE_URL)",
        )
        p.add_argument("--key", default=os.environ.get("FITCYCLE_KEY"), help="project API key (env FITCYCLE_KEY)")
        return p

    ds = verbs.add_parser("datasets", help="datasets on a fitcycle server").add_subparsers(dest="sub", required=True)
    up = common(ds.add_parser("upload", help="upload an archive as a new dataset version"))
    up.add_argument("name")
    up.add_argument("archive", type=Path)
    up.add_argument("--labels", choices=RULE_KINDS, default="folder")
    up.add_argument("--csv", default=None, help="the CSV inside the archive (labels csv, points, values; masks: pairs)")
    up.add_argument("--pattern", default=None, help="labels name_re: group 1 is the label")
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other upload field: label_col, label_delim, valid_col, codes (comma-separated), void, "
        "images_dir, mask_template, mask_col, valid_pct, seed",
    )
    ds_list = common(ds.add_parser("list", help="list datasets (a table; --json for scripts)"))
    ds_list.add_argument("--json", action="store_true")
    ds_delete = common(ds.add_parser("delete", help="delete a dataset (or one --version) and its files"))
    ds_delete.add_argument("dataset")
    ds_delete.add_argument("--version", type=int, default=None)

    jobs = verbs.add_parser("jobs", help="jobs on a fitcycle server").add_subparsers(dest="sub", required=True)
    submit = common(jobs.add_parser("submit", help="queue a job (and watch it with --watch)"))
    submit.add_argument("kind", choices=KIND_NAMES, help="the job's kind (`fitcycle jobs kinds` says what each does)")
    submit.add_argument("--dataset", required=True, help="dataset id")
    submit.add_argument("--parent", default=None, help="parent job id (the kinds that continue from a model)")
    submit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any job field, value as JSON when it parses (e.g. --set epochs=2 --set lr=[1e-5,1e-3])",
    )
    submit.add_argument("--watch", action="store_true")
    submit.add_argument(
        "--estimate",
        action="store_true",
        help="queue nothing: a probe on a worker times the model, and the job's expected seconds per phase, peak "
        "memory and stored bytes are printed (then submit with --set estimate_job_id=PROBE to compare at its end)",
    )
    kinds = common(jobs.add_parser("kinds", help="the job kinds: parent, default lr, the lr forms each takes"))
    kinds.add_argument("--json", action="store_true")
    jobs_list = common(jobs.add_parser("list", help="list jobs, newest first (a table; --json for scripts)"))
    jobs_list.add_argument("--json", action="store_true")
    jobs_list.add_argument("--limit", type=int, default=50)
    jobs_delete = common(jobs.add_parser("delete", help="delete a finished job and its artifacts"))
    jobs_delete.add_argument("job")
    watch = common(jobs.add_parser("watch", help="follow a job: progress bar with loss and metrics"))
    watch.add_argument("job")
    show = common(jobs.add_parser("show", help="a job as JSON"))
    show.add_argument("job")
    rerun = common(
        jobs.add_parser("rerun", help="queue a finished job again; says whether its weights came out bit-identical")
    )
    rerun.add_argument("job")
    rerun.add_argument("--seed", type=int, default=None, help="another seed (the split and the draws change)")
    rerun.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    rerun.add_argument("--queue", default=None)
    rerun.add_argument("--watch", action="store_true", help="follow it, then compare it with the job it reran")
    answers = common(jobs.add_parser("predictions", help="a predict job's answers, as one JSON Lines or CSV file"))
    answers.add_argument("job")
    answers.add_argument("--format", choices=["jsonl", "csv"], default="csv")
    answers.add_argument("--out", type=Path, default=None, help="default: predictions-JOB.FORMAT")
    cancel = common(jobs.add_parser("cancel", help="stop a job at its next batch"))
    cancel.add_argument("job")
    get = common(jobs.add_parser("artifact", help="download an artifact of a job"))
    get.add_argument("job")
    get.add_argument("name", help="e.g. plots/losses.png, metrics.json")
    get.add_argument("--out", type=Path, default=None)

    models = verbs.add_parser("models", help="models on a fitcycle server").add_subparsers(dest="sub", required=True)
    pred = common(models.add_parser("predict", help="predict images with a served model (any task)"))
    pred.add_argument("model")
    pred.add_argument("images", nargs="*", type=Path)
    pred.add_argument("--mask-dir", type=Path, default=Path("predicted-masks"), help="segmentation: mask PNGs here")
    pred.add_argument("--text", action="append", default=None, help="a text for a text classifier (repeatable)")
    explain_options(pred)
    gen = common(models.add_parser("generate", help="a language model writes after a prompt"))
    gen.add_argument("model")
    gen.add_argument("prompt")
    gen.add_argument("--words", type=int, default=40)
    gen.add_argument("--temperature", type=float, default=0.75)
    gen.add_argument("--seed", type=int, default=None)
    models_list = common(models.add_parser("list", help="list models (a table; --json for scripts)"))
    models_list.add_argument("--json", action="store_true")
    models_delete = common(models.add_parser("delete", help="delete a model and its bundle"))
    models_delete.add_argument("model")
    model_drift = common(models.add_parser("drift", help="is what the model is asked still what it learnt from?"))
    model_drift.add_argument("model")
    model_drift.add_argument("--json", action="store_true")
    download = common(models.add_parser("download", help="a model's export bundle, unpacked (for fitcycle predict)"))
    download.add_argument("model")
    download.add_argument("--out", type=Path, default=None, help="folder to unpack it into (default: ./MODEL_ID)")

    version = common(ds.add_parser("version", help="cut a new version: feedback added, items relabelled or removed"))
    version.add_argument("dataset")
    version.add_argument("--from", dest="from_version", type=int, default=None, help="default: the latest version")
    version.add_argument(
        "--add-feedback", default=None, metavar="all|ID,ID", help="unused feedback on this dataset's models, or ids"
    )
    version.add_argument(
        "--edits", type=Path, default=None, help='a JSON file {"relabel": [{"item", "label"...}], "remove": [KEY]}'
    )
    version.add_argument("--remove", nargs="*", default=[], metavar="KEY")
    version.add_argument("--note", default="")
    versions = common(ds.add_parser("versions", help="a dataset's versions and what each changed"))
    versions.add_argument("dataset")
    versions.add_argument("--json", action="store_true")

    reg = verbs.add_parser("registry", help="model names: champion, challenger, decisions").add_subparsers(
        dest="sub", required=True
    )
    reg_list = common(reg.add_parser("list", help="every model name (a table; --json for scripts)"))
    reg_list.add_argument("--json", action="store_true")
    reg_show = common(reg.add_parser("show", help="a name's versions, champion and decisions, as JSON"))
    reg_show.add_argument("name")
    reg_drift = common(reg.add_parser("drift", help="the drift of the name's champion"))
    reg_drift.add_argument("name")
    reg_drift.add_argument("--json", action="store_true")
    reg_promote = common(reg.add_parser("promote", help="make a model the name's champion (also to roll back)"))
    reg_promote.add_argument("name")
    reg_promote.add_argument("model")
    reg_promote.add_argument("--reason", default="")
    reg_predict = common(reg.add_parser("predict", help="the name's champion answers; prints the prediction ids"))
    reg_predict.add_argument("name")
    reg_predict.add_argument("images", nargs="+", type=Path)
    reg_predict.add_argument("--mask-dir", type=Path, default=Path("predicted-masks"))
    explain_options(reg_predict)
    reg_policy = common(reg.add_parser("policy", help="set a name's retraining policy"))
    reg_policy.add_argument("name")
    reg_policy.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="min_feedback=20 ...")

    preds = verbs.add_parser("predictions", help="logged predictions").add_subparsers(dest="sub", required=True)
    preds_list = common(preds.add_parser("list", help="most uncertain (or recent) first: what to label next"))
    preds_list.add_argument("--name", default=None)
    preds_list.add_argument("--model", default=None)
    preds_list.add_argument("--order", choices=["uncertainty", "recent"], default="uncertainty")
    preds_list.add_argument("--limit", type=int, default=20)
    preds_list.add_argument("--unlabelled", action="store_true", help="only those without feedback yet")
    preds_list.add_argument("--json", action="store_true")
    preds_del = common(preds.add_parser("delete", help="delete predictions with their kept inputs and feedback"))
    which = preds_del.add_mutually_exclusive_group(required=True)
    which.add_argument("prediction", nargs="?", default=None, help="one prediction")
    which.add_argument("--before", metavar="ISO-TIME", default=None, help="every prediction made before this time")
    which.add_argument("--older-than-days", type=float, default=None, help="every prediction older than N days")

    proj = verbs.add_parser("project", help="the key's project and its settings").add_subparsers(
        dest="sub", required=True
    )
    common(proj.add_parser("show", help="the project and its settings, as JSON"))
    proj_set = common(proj.add_parser("set", help="change settings (an admin key)"))
    proj_set.add_argument("--keep-inputs", choices=["on", "off"], default=None, help="store predicted images")
    proj_set.add_argument(
        "--input-retention-days",
        metavar="DAYS|off",
        default=None,
        help="delete predictions and their kept inputs after DAYS (not those whose feedback waits for a version)",
    )
    proj_set.add_argument(
        "--drift-threshold",
        metavar="PSI|off",
        default=None,
        help="the population stability index past which a served model's drift raises an alarm (default 0.25)",
    )
    proj_set.add_argument(
        "--drift-window", type=int, default=None, help="the latest answers drift is measured on (default 500)"
    )
    gold = proj_set.add_mutually_exclusive_group()
    gold.add_argument(
        "--gold", metavar="DATASET[:VERSION]", default=None, help="the gold set the promotion gate also scores on"
    )
    gold.add_argument("--no-gold", action="store_true", help="stop scoring on a gold set")

    clean = common(verbs.add_parser("clean", help="an interpret job's suspects: targets its models doubt"))
    clean.set_defaults(sub="suspects")
    clean.add_argument("job", help="an interpret job")
    clean.add_argument("--limit", type=int, default=30)
    clean.add_argument(
        "--edits",
        type=Path,
        default=None,
        help="write their suggested relabels as an edits file for 'datasets version'",
    )
    clean.add_argument(
        "--min-confidence",
        type=float,
        default=0.8,
        metavar="P",
        help="--edits takes only suggestions the model gives at least this probability (default 0.8; tasks "
        "without a probability: all)",
    )

    fb = verbs.add_parser("feedback", help="correct predictions").add_subparsers(dest="sub", required=True)
    send = common(fb.add_parser("send", help="the right answer for a prediction"))
    send.add_argument("prediction")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--label", help="classification (a class the model lacks needs --new-class)")
    target.add_argument("--labels", help="multi-label: comma-separated classes ('' for none)")
    target.add_argument("--points", help="points: JSON [[x, y], ...] in the image's pixels")
    target.add_argument("--values", help="values: JSON [v, ...]")
    target.add_argument("--mask", type=Path, help="segmentation: a mask PNG (values = code indices)")
    target.add_argument("--correct", action="store_true", help="the prediction was right")
    send.add_argument("--idempotency-key", default=None)
    send.add_argument("--new-class", action="store_true", help="the label is a new class, not a typo")
    fb_delete = common(fb.add_parser("delete", help="take back feedback no dataset version has used yet"))
    fb_delete.add_argument("feedback")
    fb_list = common(fb.add_parser("list", help="feedback, oldest first"))
    fb_list.add_argument("--name", default=None)
    fb_list.add_argument("--unused", action="store_true", help="not yet in a dataset version")

    hooks = verbs.add_parser("webhooks", help="where the project's events go (an admin key changes them)")
    hooks_sub = hooks.add_subparsers(dest="sub", required=True)
    common(hooks_sub.add_parser("list", help="the project's webhooks"))
    hook_new = common(hooks_sub.add_parser("create", help="POST events to a public http(s) URL, signed"))
    hook_new.add_argument("address", metavar="URL", help="where to POST (not the server's --url)")
    hook_new.add_argument(
        "--event",
        action="append",
        required=True,
        help="job.succeeded, job.failed, model.promoted, retrain.rejected, model.drift",
    )
    hook_new.add_argument(
        "--secret", default=os.environ.get("FITCYCLE_WEBHOOK_SECRET"), help="or FITCYCLE_WEBHOOK_SECRET"
    )
    for sub, text in (
        ("delete", "delete it (its deliveries not yet sent are dropped)"),
        ("disable", "send it nothing more until enabled"),
        ("enable", "send it events again"),
        ("deliveries", "what was sent to it, newest first"),
    ):
        common(hooks_sub.add_parser(sub, help=text)).add_argument("webhook")

    weights = verbs.add_parser("weights", help="the fleet's pretrained weights, fetched by every worker")
    weights_sub = weights.add_subparsers(dest="sub", required=True)
    weights_up = common(
        weights_sub.add_parser(
            "upload",
            help="store a weights file for the whole fleet (an admin key): torchvision's ResNet ImageNet file under "
            "its published name (e.g. resnet34-b627a593.pth), or fastai's WikiText-103 lstm_fwd.pth / itos_wt103.pkl",
        )
    )
    weights_up.add_argument("file", type=Path)
    weights_list = common(weights_sub.add_parser("list", help="what the fleet's weights store holds"))
    weights_list.add_argument("--json", action="store_true")

    from cli.search import add_search_verbs

    add_search_verbs(verbs, common)


# The verbs that talk to a server (cli.main sends them here); the feedback loop's share one dispatcher.
LOOP_VERBS = ("registry", "predictions", "feedback", "clean", "project", "webhooks", "weights")
REMOTE_VERBS = ("datasets", "jobs", "models", "search", *LOOP_VERBS)


class RemoteError(Exception):
    """The server answered with a problem."""


def _client(args: argparse.Namespace) -> httpx.Client:
    if not args.key:
        raise RemoteError("no API key: pass --key or set FITCYCLE_KEY (fitcycle keys create --project NAME)")
    return httpx.Client(
        base_url=args.url.rstrip("/") + "/api/v1",
        headers={"Authorization": f"Bearer {args.key}"},
        timeout=httpx.Timeout(60, read=None),
    )


def _check(res: httpx.Response) -> Any:
    if res.status_code >= 400:
        try:
            body = res.json()
            raise RemoteError(f"{res.status_code} {body.get('title', '')}: {body.get('detail', res.text)}")
        except json.JSONDecodeError:
            raise RemoteError(f"{res.status_code}: {res.text[:500]}") from None
    if res.status_code == 204 or not res.content:  # a DELETE's answer: nothing to read
        return None
    return res.json() if res.headers.get("content-type", "").startswith("application/json") else res.content


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class StageBar:
    """One progress bar per stage of a job, over its batches: filled to 100% when the stage ends, closed
    before the next one opens (so earlier bars are never redrawn under the epoch lines)."""

    def __init__(self, live: bool = True) -> None:
        self.bar: tqdm[Any] | None = None
        self.stage: str | None = None
        self.live = live  # False for a job that has ended: its replay gets epoch lines, not bars at replay speed

    def on_state(self, progress: dict[str, Any]) -> None:
        total = (progress.get("n_epoch") or 0) * (progress.get("n_batches") or 0)
        stage = progress.get("stage")
        if not self.live:
            return
        if not stage or not total or (stage == self.stage and self.bar is not None and self.bar.total == total):
            return
        self.finish()
        self.stage = stage
        self.bar = tqdm(total=total, desc=stage, file=sys.stderr, dynamic_ncols=True, unit="batch")

    def on_batch(self, row: dict[str, Any]) -> None:
        if self.bar is not None and row.get("tag") == self.stage:
            self.bar.update(max(0, row["iter"] + 1 - self.bar.n))
            self.bar.set_postfix(loss=f"{row['smooth_loss']:.4f}", lr=f"{row['lr']:.1e}")

    def finish(self, complete: bool = True) -> None:
        if self.bar is not None:
            if complete and self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
        self.bar = None


def watch_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """A progress bar over each stage's batches, with loss, and a line per epoch; returns the job. A job that has
    already ended is replayed as its epoch lines alone."""
    ended = _check(http.get(f"/jobs/{job_id}"))["state"] in ("succeeded", "failed", "cancelled")
    bars = StageBar(live=not ended)
    with http.stream("GET", f"/jobs/{job_id}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                data = json.loads(line[6:])
                if event == "state":
                    bars.on_state(data.get("progress") or {})
                elif event == "batch":
                    bars.on_batch(data)
                elif event == "epoch":
                    metrics = " ".join(f"{k}={v:.4f}" for k, v in data["metrics"].items() if v is not None)
                    tqdm.write(
                        f"{data['tag']} epoch {data['epoch'] + 1}: train_loss={data['train_loss']:.4f} "
                        f"valid_loss={(data['valid_loss'] or float('nan')):.4f} {metrics}",
                        file=sys.stderr,
                    )
                elif event == "end":
                    bars.finish(complete=data.get("state") == "succeeded")
                    break
    bars.finish(complete=False)
    return dict(_check(http.get(f"/jobs/{job_id}")))


def estimate_text(found: dict[str, Any], probe_id: str) -> str:
    """A dry run's estimate, for a terminal."""
    rows = [[phase, f"{seconds:.1f}"] for phase, seconds in found["phases"].items()]
    rows.append(["total", f"{found['total_seconds']:.1f}"])
    lines = [
        table(rows, ["PHASE", "SECONDS"]),
        f"peak memory {found['peak_memory_bytes'] / 2**20:.0f} MiB, stores {found['stored_bytes'] / 1e6:.1f} MB",
        *found["notes"],
        f"queue it with --set estimate_job_id={probe_id} to set this against the actual at its end",
    ]
    return "\n".join(lines)


def rerun_text(job: dict[str, Any]) -> str:
    """A rerun's comparison with the job it reran, for a terminal."""
    found = job.get("rerun")
    if not found:
        return f"job {job['id']} is not a rerun"
    lines = [f"job {job['id']} ({job['state']}) reran job {found['of']}: {found['note']}"]
    lines += [f"  {d['fact']}: {json.dumps(d['before'])} -> {json.dumps(d['after'])}" for d in found["differences"]]
    return "\n".join(lines)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Rows as aligned columns under a header."""
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _when(stamp: str | None) -> str:
    return (stamp or "")[:16].replace("T", " ")


def _listing(verb: str, items: list[dict[str, Any]]) -> str:
    if verb == "datasets":
        return table(
            [
                [d["id"], d["name"], d["version"], d["n_items"], len(d["classes"]), _when(d["created_at"])]
                for d in items
            ],
            ["ID", "NAME", "VERSION", "ITEMS", "CLASSES", "CREATED"],
        )
    if verb == "models":
        return table(
            [
                [
                    m["id"],
                    m["arch"],
                    m["metrics"].get("task", ""),
                    _main_metric(m["metrics"]),
                    m["job_id"],
                    _when(m["created_at"]),
                ]
                for m in items
            ],
            ["ID", "ARCH", "TASK", "METRIC", "JOB", "CREATED"],
        )
    rows = []
    for j in items:
        p = j.get("progress") or {}
        where = f"{p.get('stage', '')} {p.get('epoch', 0) + 1}/{p.get('n_epoch')}" if p.get("n_epoch") else ""
        rows.append([j["id"], j["kind"], j["state"], where, _main_metric(j["result"]), _when(j["created_at"])])
    return table(rows, ["ID", "KIND", "STATE", "PROGRESS", "METRIC", "CREATED"])


def _main_metric(result: dict[str, Any]) -> str:
    name = result.get("main_metric")
    value = result.get(name) if name else None
    return f"{name}={value:.4f}" if isinstance(value, int | float) else ""


# The arguments that name a job, model or dataset by id, and where to look one up by the first characters the
# web UI shows (8 of them).
ID_ARGS = {"job": "jobs", "parent": "jobs", "model": "models", "dataset": "datasets"}


def full_id(http: httpx.Client, collection: str, ident: str) -> str:
    """An id given by its first characters (as the web UI shows it) made whole; a whole id as it is."""
    if len(ident) >= 36 or not re.fullmatch(r"[0-9a-f-]{4,35}", ident):
        return ident
    matches: set[str] = set()
    for offset in range(0, 20_000, 500):  # every list comes in pages
        data = _check(http.get(f"/{collection}", params={"limit": 500, "offset": offset}))["data"]
        matches |= {x["id"] for x in data if x["id"].startswith(ident)}
        if len(data) < 500:
            break
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        raise RemoteError(f"no {collection[:-1]} in this project has an id starting with '{ident}'")
    raise RemoteError(f"'{ident}' starts the ids of {len(matches)} {collection}: give more of it")


def cmd_remote(args: argparse.Namespace) -> int:
    """Dispatch datasets/jobs/models verbs."""
    try:
        with _client(args) as http:
            for name, collection in ID_ARGS.items():
                if isinstance(getattr(args, name, None), str):
                    setattr(args, name, full_id(http, collection, getattr(args, name)))
            return _dispatch(args, http)
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2


def explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain",
        nargs="?",
        const=Path("heatmaps"),
        default=None,
        type=Path,
        metavar="DIR",
        help="images: write each image with its heatmap over it to DIR (default: heatmaps); texts: each word's weight",
    )
    parser.add_argument("--heatmap-class", default=None, help="--explain: the class the heatmap is for")


def _predict(
    http: httpx.Client,
    path: str,
    images: list[Path],
    mask_dir: Path,
    explain: Path | None = None,
    heatmap_class: str | None = None,
) -> None:
    """One JSON line per image: the answer (top 5 classes), a mask written to a file; with `explain`, the image
    with its heatmap over it written to that folder."""
    params = {"explain": "true"} if explain is not None or heatmap_class is not None else {}
    params |= {"heatmap_class": heatmap_class} if heatmap_class is not None else {}
    folder = explain_folder(explain or Path("heatmaps")) if params else None
    written: set[Path] = set()
    for image in images:
        with image.open("rb") as f:
            result = _check(http.post(path, params=params, files={"file": (image.name, f)}))
        if "predictions" in result:
            result["predictions"] = result["predictions"][:5]
        if result.get("heatmap") and folder is not None:
            result["heatmap"] = str(_write_overlay(image, result, overlay_path(folder, image, written)))
        print(json.dumps({"path": str(image), **with_files(result, image, mask_dir)}))


def _write_overlay(image: Path, result: dict[str, Any], dest: Path) -> Path:
    """The image with the answer's heatmap (a greyscale PNG, base64) over it, as `dest`."""
    import numpy as np
    from PIL import Image

    from core.engine.inference import Heatmap

    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["heatmap"]))).convert("L"))
    Heatmap(str(result.get("heatmap_class")), heat).over(image).save(dest)
    return dest


def _feedback_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.correct:
        return {"correct": True}
    new_class = {"new_class": True} if args.new_class else {}
    if args.label is not None:
        return {"label": args.label, **new_class}
    if args.labels is not None:
        return {"labels": [c.strip() for c in args.labels.split(",") if c.strip()], **new_class}
    if args.points is not None:
        return {"points": json.loads(args.points)}
    if args.values is not None:
        return {"values": json.loads(args.values)}
    return {"mask": base64.b64encode(args.mask.read_bytes()).decode()}


def _version_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"note": args.note, "remove": list(args.remove)}
    if args.from_version is not None:
        body["from_version"] = args.from_version
    if args.add_feedback:
        body["add_feedback"] = "all" if args.add_feedback == "all" else args.add_feedback.split(",")
    if args.edits is not None:
        edits = json.loads(args.edits.read_text())
        body["relabel"] = edits.get("relabel", [])
        body["remove"] += edits.get("remove", [])
    return body


def _registry_table(items: list[dict[str, Any]]) -> str:
    return table(
        [[e["name"], e["versions"], e["champion_id"], e["challenger_id"] or ""] for e in items],
        ["NAME", "VERSIONS", "CHAMPION", "CHALLENGER"],
    )


def _predictions_table(items: list[dict[str, Any]]) -> str:
    rows = []
    for p in items:
        answer = p["answer"]
        said = (answer.get("top") or [""])[0] if "top" in answer else " ".join(answer.get("labels", [])) or "-"
        rows.append([p["id"], f"{p['uncertainty']:.3f}", said, p["filename"][:40], _when(p["created_at"])])
    return table(rows, ["PREDICTION", "UNCERTAINTY", "ANSWER", "FILE", "CREATED"])


def _all_feedback(http: httpx.Client, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every feedback row GET /feedback lists, oldest first, a page of 500 at a time."""
    found: list[dict[str, Any]] = []
    while True:
        page = _check(http.get("/feedback", params={**params, "limit": 500, "offset": len(found)}))
        found += page["data"]
        if len(page["data"]) < 500 or len(found) >= page["count"]:
            return found


def _dispatch_loop(args: argparse.Namespace, http: httpx.Client) -> int:
    """Registry, predictions, feedback and dataset versions."""
    verb = (args.verb, args.sub)
    if verb == ("registry", "list"):
        items = _check(http.get("/registry"))["data"]
        print(json.dumps(items, indent=1) if args.json else _registry_table(items))
    elif verb == ("registry", "show"):
        print(json.dumps(_check(http.get(f"/registry/{args.name}")), indent=1))
    elif verb == ("registry", "drift"):
        found = _check(http.get(f"/registry/{args.name}/drift"))
        print(json.dumps(found, indent=1) if args.json else drift_text(found))
    elif verb == ("registry", "promote"):
        body = {"model_id": args.model, "reason": args.reason}
        decision = _check(http.post(f"/registry/{args.name}/promote", json=body))
        print(f"{args.name}: champion is now {decision['model_id']} (was {decision['champion_id']})")
    elif verb == ("registry", "predict"):
        _predict(http, f"/registry/{args.name}/predict", args.images, args.mask_dir, args.explain, args.heatmap_class)
    elif verb == ("registry", "policy"):
        policy = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
        print(json.dumps(_check(http.put(f"/registry/{args.name}/policy", json=policy)), indent=1))
    elif verb == ("predictions", "list"):
        params: dict[str, Any] = {"order": args.order, "limit": args.limit, "unlabelled": args.unlabelled}
        params |= {k: v for k, v in {"name": args.name, "model_id": args.model}.items() if v}
        items = _check(http.get("/predictions", params=params))["data"]
        print(json.dumps(items, indent=1) if args.json else _predictions_table(items))
    elif verb == ("predictions", "delete"):
        if args.prediction:
            _check(http.delete(f"/predictions/{args.prediction}"))
            print(f"deleted prediction {args.prediction}")
        else:
            before = args.before or (datetime.now(UTC) - timedelta(days=args.older_than_days)).isoformat()
            deleted, more = 0, True
            while more:  # the service deletes a batch per call
                done = _check(http.delete("/predictions", params={"before": before}))
                deleted, more = deleted + done["deleted"], done["more"]
            print(f"deleted {deleted} predictions made before {before}")
    elif verb[0] == "webhooks":
        _webhooks(args, http)
    elif verb[0] == "weights":
        _weights(args, http)
    elif verb == ("feedback", "send"):
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        stored = _check(
            http.post(f"/predictions/{args.prediction}/feedback", json=_feedback_body(args), headers=headers)
        )
        print(f"feedback {stored['id']} on prediction {stored['prediction_id']}: {json.dumps(stored['target'])}")
    elif verb == ("feedback", "delete"):
        _check(http.delete(f"/feedback/{args.feedback}"))
        print(f"feedback {args.feedback} deleted")
    elif verb == ("clean", "suspects"):
        found = _check(http.get(f"/jobs/{args.job}/suspects", params={"limit": args.limit}))
        rows = [
            [
                r["item"],
                "valid" if r["valid"] else "train",
                _target_text(r["given"]),
                _target_text(r["suggested"]),
                "" if r["probability"] is None else f"{r['probability']:.3f}",
                f"{r['loss']:.3f}",
            ]
            for r in found["data"]
        ]
        print(table(rows, ["ITEM", "SPLIT", "GIVEN", "SUGGESTED", "P(SUGGESTED)", "LOSS"]))
        if args.edits is not None:
            changed = [r for r in found["data"] if r["suggested"] != r["given"]]
            sure = [r for r in changed if r["probability"] is None or r["probability"] >= args.min_confidence]
            relabel = [{"item": r["item"], **r["suggested"]} for r in sure]
            args.edits.write_text(json.dumps({"relabel": relabel}, indent=1))
            left_out = (
                f"{len(changed) - len(sure)} of the {len(found['data'])} listed (--limit) below P(SUGGESTED) "
                f"{args.min_confidence} left out: look at them, or lower --min-confidence"
            )
            apply = (
                f"; apply them with: fitcycle datasets version {found['dataset_id']} --from {found['version']} "
                f"--edits {args.edits}"
                if relabel
                else "; nothing to apply"
            )
            print(f"{len(relabel)} relabels -> {args.edits} ({left_out}){apply}", file=sys.stderr)
    elif verb == ("project", "show"):
        print(json.dumps(_check(http.get("/project")), indent=1))
    elif verb == ("project", "set"):
        settings: dict[str, Any] = {}
        if args.keep_inputs is not None:
            settings["keep_inputs"] = args.keep_inputs == "on"
        if args.input_retention_days is not None:
            days = args.input_retention_days
            if days != "off" and not days.isdigit():
                raise RemoteError(f"--input-retention-days {days}: a whole number of days, or off")
            settings["input_retention_days"] = None if days == "off" else int(days)
        if args.drift_threshold is not None:
            value = args.drift_threshold
            try:
                settings["drift_threshold"] = None if value == "off" else float(value)
            except ValueError:
                raise RemoteError(f"--drift-threshold {value}: a number (0.25 is the default), or off") from None
        if args.drift_window is not None:
            settings["drift_window"] = args.drift_window
        if args.no_gold:
            settings["gold"] = None
        elif args.gold is not None:
            dataset, _, number = args.gold.partition(":")
            if number and not number.isdigit():
                raise RemoteError(f"--gold {args.gold}: DATASET_ID, or DATASET_ID:VERSION with a version number")
            settings["gold"] = {"dataset_id": dataset} | ({"version": int(number)} if number else {})
        print(json.dumps(_check(http.patch("/project", json=settings)), indent=1))
    elif verb == ("feedback", "list"):
        params = {"unused": args.unused} | ({"name": args.name} if args.name else {})
        print(json.dumps(_all_feedback(http, params), indent=1))
    elif verb == ("datasets", "version"):
        made = _check(http.post(f"/datasets/{args.dataset}/versions", json=_version_body(args)))
        changes = json.dumps(made["changes"])
        print(f"dataset {made['id']} version {made['version']} (from {made['parent_version']}): {changes}")
        print(json.dumps(made["counts"]))
    elif verb == ("datasets", "versions"):
        items = _check(http.get(f"/datasets/{args.dataset}/versions"))["data"]
        rows = [
            [v["version"], v["parent_version"] or "", v["n_items"], len(v["classes"]), v["note"][:40]] for v in items
        ]
        print(
            json.dumps(items, indent=1) if args.json else table(rows, ["VERSION", "FROM", "ITEMS", "CLASSES", "NOTE"])
        )
    return 0


def _webhooks(args: argparse.Namespace, http: httpx.Client) -> None:
    if args.sub == "list":
        hooks = _check(http.get("/webhooks"))["data"]
        rows = [[h["id"], "on" if h["active"] else "off", ",".join(h["events"]), h["url"]] for h in hooks]
        print(table(rows, ["ID", "ACTIVE", "EVENTS", "URL"]))
    elif args.sub == "create":
        if not args.secret:
            raise RemoteError("give --secret (16 or more characters), or set FITCYCLE_WEBHOOK_SECRET")
        body = {"url": args.address, "events": args.event, "secret": args.secret}
        print(json.dumps(_check(http.post("/webhooks", json=body)), indent=1))
    elif args.sub == "delete":
        _check(http.delete(f"/webhooks/{args.webhook}"))
        print(f"deleted webhook {args.webhook}")
    elif args.sub in ("disable", "enable"):
        print(json.dumps(_check(http.patch(f"/webhooks/{args.webhook}", json={"active": args.sub == "enable"}))))
    else:
        sent = _check(http.get(f"/webhooks/{args.webhook}/deliveries"))["data"]
        rows = [[d["id"], d["event"], d["state"], d["attempts"], (d["last_error"] or "")[:60]] for d in sent]
        print(table(rows, ["ID", "EVENT", "STATE", "TRIES", "LAST ERROR"]))


def _weights(args: argparse.Namespace, http: httpx.Client) -> None:
    if args.sub == "upload":
        if not args.file.is_file():
            raise RemoteError(f"{args.file}: no such file")
        with args.file.open("rb") as f:
            res = http.post("/weights", files={"file": (args.file.name, f)})
        stored = _check(res)
        done = "stored for the fleet" if res.status_code == 201 else "already in the fleet's store (the same file)"
        print(f"{stored['name']} ({stored['kind']}, {stored['size'] / 1024**2:.1f} MB): {done}")
    else:
        found = _check(http.get("/weights"))["data"]
        rows = [
            [
                w["name"],
                w["kind"],
                w["arch"] or "",
                f"{w['size'] / 1024**2:.1f} MB",
                w["sha256"][:12],
                _when(w["uploaded_at"]),
            ]
            for w in found
        ]
        print(
            json.dumps(found, indent=1)
            if args.json
            else table(rows, ["NAME", "KIND", "ARCH", "SIZE", "SHA256", "UPLOADED"])
        )


def _target_text(target: dict[str, Any], width: int = 40) -> str:
    """A target in a table cell: a label, a label set, rounded numbers, or a mask's class shares."""
    if "label" in target:
        text = str(target["label"])
    elif "labels" in target:
        text = ",".join(target["labels"]) or "(none)"
    elif "mask" in target:
        text = "(a mask)"
    elif "shares" in target:
        text = " ".join(f"{c}:{s:.0%}" for c, s in target["shares"].items())
    else:
        numbers: list[Any] = next(iter(target.values()), [])
        text = json.dumps(json.loads(json.dumps(numbers), parse_float=lambda v: round(float(v), 1)))
    return text if len(text) <= width else text[: width - 3] + "..."


def _dispatch(args: argparse.Namespace, http: httpx.Client) -> int:
    verb = (args.verb, args.sub)
    if args.verb == "search":
        from cli.search import dispatch_search

        return dispatch_search(args, http)
    if args.verb in LOOP_VERBS or verb in (
        ("datasets", "version"),
        ("datasets", "versions"),
    ):
        return _dispatch_loop(args, http)
    if verb == ("datasets", "upload"):
        fields = {
            k: v
            for k, v in {"name": args.name, "labels": args.labels, "csv": args.csv, "pattern": args.pattern}.items()
            if v
        }
        for item in args.set:
            field, _, value = item.partition("=")
            fields[field] = value
        with args.archive.open("rb") as f:
            print(
                json.dumps(
                    _check(http.post("/datasets", data=fields, files={"archive": (args.archive.name, f)})), indent=1
                )
            )
    elif args.sub == "list":
        params = {"limit": args.limit} if args.verb == "jobs" else {}
        items = _check(http.get(f"/{args.verb}", params=params))["data"]
        print(json.dumps(items, indent=1) if args.json else _listing(args.verb, items))
    elif args.sub == "delete":
        ident = {"datasets": "dataset", "jobs": "job", "models": "model"}[args.verb]
        params = {"version": args.version} if args.verb == "datasets" and args.version else {}
        gone = _check(http.delete(f"/{args.verb}/{getattr(args, ident)}", params=params))
        print(f"deleted {gone['deleted']}: {gone['objects']} objects, {gone['bytes'] / 1024**2:.1f} MB")
    elif verb == ("jobs", "submit"):
        spec: dict[str, Any] = {"kind": args.kind, "dataset_id": args.dataset}
        if args.parent:
            spec["parent_job_id"] = args.parent
        for item in args.set:
            field, _, value = item.partition("=")
            spec[field] = _value(value)
        if args.estimate:
            probe = _check(http.post("/jobs", json={**spec, "dry_run": True}))
            print(f"probe {probe['id']} queued; waiting for a worker", file=sys.stderr)
            done = watch_job(http, probe["id"])
            if done["state"] != "succeeded":
                raise RemoteError(f"the probe {done['state']}: {done.get('error') or ''}")
            print(estimate_text(done["result"]["estimate"], probe["id"]))
            return 0
        job = _check(http.post("/jobs", json=spec))
        print(job["id"])
        if args.watch:
            return _report(watch_job(http, job["id"]))
    elif verb == ("jobs", "kinds"):
        found = _check(http.get("/job-kinds"))["data"]
        rows = [
            [
                k["name"],
                k["parent"] or "-",
                k["lr"] if k["lr"] is not None else "-",
                ", ".join(k["lr_forms"]) or "-",
                k["summary"],
            ]
            for k in found
        ]
        print(json.dumps(found, indent=1) if args.json else table(rows, ["KIND", "PARENT", "LR", "TAKES", "WHAT"]))
    elif verb == ("jobs", "watch"):
        return _report(watch_job(http, args.job))
    elif verb == ("jobs", "rerun"):
        changes = {"seed": args.seed, "deterministic": args.deterministic, "queue": args.queue}
        job = _check(http.post(f"/jobs/{args.job}/rerun", json={k: v for k, v in changes.items() if v is not None}))
        print(job["id"])
        if args.watch:
            watch_job(http, job["id"])
            print(rerun_text(_check(http.get(f"/jobs/{job['id']}"))))
    elif verb == ("jobs", "predictions"):
        out = args.out or Path(f"predictions-{args.job[:8]}.{args.format}")
        with http.stream("GET", f"/jobs/{args.job}/predictions", params={"format": args.format}) as res:
            if res.status_code >= 400:
                res.read()
                _check(res)
            with out.open("wb") as f:
                for chunk in res.iter_bytes():
                    f.write(chunk)
        print(out)
    elif verb == ("jobs", "show"):
        print(json.dumps(_check(http.get(f"/jobs/{args.job}")), indent=1))
    elif verb == ("jobs", "cancel"):
        job = _check(http.post(f"/jobs/{args.job}/cancel"))
        if job["state"] == "cancelled":
            print(f"job {job['id']} cancelled before it started")
        else:
            p = job.get("progress") or {}
            at = f" (now at {p.get('stage')} epoch {p.get('epoch', 0) + 1}, batch {p.get('batch')})" if p else ""
            print(f"job {job['id']}: cancel requested{at}; it stops at its next batch and keeps its last checkpoint")
    elif verb == ("jobs", "artifact"):
        data = _check(http.get(f"/jobs/{args.job}/artifacts/{args.name}"))
        out = args.out or Path(args.name.rsplit("/", 1)[-1])
        out.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
        print(out)
    elif verb == ("models", "predict") and args.text:
        body = {"texts": args.text, "explain": args.explain is not None}
        for result in _check(http.post(f"/models/{args.model}/predict-text", json=body))["results"]:
            result["predictions"] = result["predictions"][:5]
            print(json.dumps(result))
    elif verb == ("models", "predict"):
        if not args.images:
            raise SystemExit("error: give image files, or --text TEXT for a text classifier")
        _predict(http, f"/models/{args.model}/predict", args.images, args.mask_dir, args.explain, args.heatmap_class)
    elif verb == ("models", "generate"):
        body = {"prompt": args.prompt, "words": args.words, "temperature": args.temperature, "seed": args.seed}
        print(_check(http.post(f"/models/{args.model}/generate", json=body))["text"])
    elif verb == ("models", "drift"):
        found = _check(http.get(f"/models/{args.model}/drift"))
        print(json.dumps(found, indent=1) if args.json else drift_text(found))
    elif verb == ("models", "download"):
        out = unpack_bundle(_check(http.get(f"/models/{args.model}/bundle")), args.out or Path(args.model))
        print(f"{out}  (fitcycle predict {out} IMAGE...)")
    return 0


def drift_text(found: dict[str, Any]) -> str:
    """A model's drift in a few lines: each signal's PSI and what moved, the open alarm explained."""
    who = f"model {found['model_id']}" + (f" ({found['name']})" if found.get("name") else "")
    if not found["watched"]:
        return f"{who}: its drift is not watched: {found['not_watched']}"
    threshold, bar = found["threshold"], found["alarm_at"]
    limit = "alarms off" if threshold is None else f"alarm past {bar:.3f}: the threshold {threshold:g} + sampling"
    lines = [f"{who}: latest {found['window_size']} answers against {found['reference_items']} at export ({limit})"]
    if not found["scores"]:
        lines.append(f"  not scored yet: a window needs {found['min_window']} answers")
    for signal, score in found["scores"].items():
        lines.append(f"  {signal:<12} PSI {score['score']:.3f}  {score['text']}")
    alarm = found.get("alarm")
    if alarm:
        lines.append(f"ALARM since {alarm['since']}: {alarm['text']} (PSI {alarm['score']:.3f} > {alarm['bar']:.3f})")
        lines.append(f"  for example: predictions {', '.join(alarm['examples'])}")
        if alarm.get("action"):
            lines.append(f"  policy: {alarm['action']}")
    return "\n".join(lines)


def unpack_bundle(data: bytes, out: Path) -> Path:
    """A bundle's zip unpacked into `out`: plain files only, each inside `out` (a server's archive is still
    checked like any other)."""
    import io
    import zipfile

    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            target = (root / info.filename).resolve()
            if info.is_dir() or not target.is_relative_to(root):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
    return out


def _report(job: dict[str, Any]) -> int:
    """The job's outcome as JSON on stdout (for scripts), then on stderr, in words, what a person reads next: an
    lr_find's suggestions, the gate's decision on its model."""
    result = job["result"]
    print(
        json.dumps(
            {k: job[k] for k in ("id", "state", "error", "model_id")}
            | {"result": {k: v for k, v in result.items() if not isinstance(v, list | dict)}},
            indent=1,
        )
    )
    suggestions = result.get("suggestions") or {}
    if suggestions:
        said = ", ".join(f"{k} {v:.2e}" for k, v in suggestions.items() if isinstance(v, int | float))
        print(f"lr_find suggests: {said} (stage 2 'auto' takes valley/10 .. the stage-1 rate/5)", file=sys.stderr)
    decision = result.get("decision") or {}
    if decision.get("action"):
        said = f"gate: {decision['action']} as {result.get('name')} v{result.get('version')}: {decision.get('reason')}"
        print(said, file=sys.stderr)
    return 0 if job["state"] == "succeeded" else 1
