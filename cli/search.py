"""`fitcycle search create|watch|show|list|cancel`: hyperparameter searches over REST. A search's trials are jobs
of its base kind with the space's fields sampled; `watch` follows the search's server-sent events (a bar over its
trials, with the running, the pruned and the best so far, and a line per trial as it ends).

Like the other client verbs this module speaks HTTP only: it imports neither the engine nor Optuna."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from core.jobs.kind_names import KIND_NAMES

DISTRIBUTIONS = ("log_uniform", "uniform", "choice")
AROUND_LR_FIND = "around_lr_find"
ENDED = ("succeeded", "failed", "cancelled", "pruned")
SPACE_HELP = (
    "PATH=log_uniform:LO,HI | PATH=uniform:LO,HI | PATH=choice:A,B,... | lr=around_lr_find (repeatable; e.g. "
    "--space lr=log_uniform:1e-4,1e-1 --space size=choice:64,128 --space transforms.max_rotate=uniform:0,20)"
)


class SearchArgError(ValueError):
    """A command-line value that cannot be a search's: the message names the option and what to write."""


def add_search_verbs(verbs: Any, common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """The `search` verb and its subcommands; `common` adds --url and --key."""
    search = verbs.add_parser("search", help="hyperparameter searches: trials, pruning, the best").add_subparsers(
        dest="sub", required=True
    )
    create = common(search.add_parser("create", help="start a search (prints its id; --watch follows it)"))
    create.add_argument(
        "--kind",
        choices=KIND_NAMES,
        default=None,
        help="the trials' job kind (default: the --base-json one's, else fine_tune)",
    )
    create.add_argument("--dataset", default=None, help="dataset id (or give dataset_id in --base-json)")
    create.add_argument("--parent", default=None, help="parent job id (the kinds that continue from a model)")
    create.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a base job field, value as JSON when it parses (e.g. --set epochs=4 --set arch=resnet18)",
    )
    create.add_argument(
        "--base-json", default=None, metavar="FILE|JSON", help="the base job body as POST /jobs takes it"
    )
    create.add_argument("--space", action="append", default=[], metavar="PATH=DIST", help=SPACE_HELP)
    create.add_argument(
        "--space-json",
        default=None,
        metavar="FILE|JSON",
        help='the space as the API takes it: {"lr": {"log_uniform": [1e-4, 0.1]}, "size": {"choice": [64, 128]}}',
    )
    create.add_argument("--trials", type=int, default=None, help="at most this many trials (server default: 16)")
    create.add_argument("--parallel", type=int, default=None, help="trials queued or running at once (default: 2)")
    create.add_argument("--pruner", choices=["asha", "median", "none"], default=None, help="default: asha")
    create.add_argument("--sampler", choices=["tpe", "random", "grid"], default=None, help="default: tpe")
    create.add_argument("--seed", type=int, default=None, help="the same seed samples the same trials")
    create.add_argument(
        "--objective",
        default=None,
        metavar="METRIC[:maximize|minimize]",
        help="what to optimise (default: the task's main metric, its own direction)",
    )
    create.add_argument("--register-as", default=None, metavar="NAME", help="the best trial's model joins this name")
    create.add_argument("--watch", action="store_true", help="follow it until it ends")
    watch = common(search.add_parser("watch", help="follow a search: trials done, pruned, the best so far"))
    watch.add_argument("search")
    show = common(search.add_parser("show", help="a search's trials as a table, its best and what pruning saved"))
    show.add_argument("search")
    show.add_argument("--json", action="store_true")
    show.add_argument("--importance", action="store_true", help="also how much each field explains (fANOVA)")
    listing = common(search.add_parser("list", help="the project's searches, newest first"))
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--limit", type=int, default=20)
    cancel = common(search.add_parser("cancel", help="stop a search and its trials"))
    cancel.add_argument("search")


# ----- reading the command line --------------------------------------------------------------------------------------
def _json_arg(option: str, text: str) -> Any:
    """A JSON value given inline or as a file's path."""
    source = text
    if not text.lstrip().startswith(("{", "[")) and Path(text).is_file():
        source = Path(text).read_text()
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise SearchArgError(f"{option}: neither a JSON file nor JSON ({exc.msg} at {exc.pos})") from None


def _number(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SearchArgError(f"{option}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise SearchArgError(f"{option}: '{text}' is not a finite number")
    return int(value) if re.fullmatch(r"[+-]?\d+", text.strip()) else value


def _choice_value(text: str) -> Any:
    """A choice: a number or a boolean when it reads as one (JSON), else the text (an architecture's name)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, bool | int | float | str) or value is None else text


def parse_space_arg(text: str) -> tuple[str, Any]:
    """One --space PATH=DIST as the API's (path, dimension)."""
    path, eq, dist = text.partition("=")
    path, dist = path.strip(), dist.strip()
    option = f"--space {text}"
    if not eq or not path or not dist:
        raise SearchArgError(f"{option}: write PATH=DISTRIBUTION, e.g. lr=log_uniform:1e-4,1e-1")
    if dist == AROUND_LR_FIND:
        return path, AROUND_LR_FIND
    name, colon, values = dist.partition(":")
    name = name.strip().replace("-", "_")
    if name not in DISTRIBUTIONS:
        hint = f", or {AROUND_LR_FIND}" if path == "lr" else ""
        raise SearchArgError(f"{option}: unknown distribution '{name}'; use log_uniform, uniform or choice{hint}")
    items = [v.strip() for v in values.split(",")] if colon else []
    if not items or any(v == "" for v in items):
        example = "choice:64,128" if name == "choice" else f"{name}:1e-4,1e-1"
        raise SearchArgError(f"{option}: {name} takes comma-separated values, e.g. {path}={example}")
    if name == "choice":
        return path, {"choice": [_choice_value(v) for v in items]}
    if len(items) != 2:
        raise SearchArgError(f"{option}: {name} takes two numbers, LOW,HIGH")
    return path, {name: [_number(option, v) for v in items]}


def parse_objective(text: str) -> dict[str, str]:
    metric, _, direction = text.partition(":")
    if not metric or direction not in ("", "maximize", "minimize"):
        raise SearchArgError(f"--objective {text}: write METRIC, METRIC:maximize or METRIC:minimize")
    return {"metric": metric} | ({"direction": direction} if direction else {})


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """POST /searches' body from `search create`'s options."""
    base: dict[str, Any] = {}
    if args.base_json:
        base = _json_arg("--base-json", args.base_json)
        if not isinstance(base, dict):
            raise SearchArgError("--base-json: a JSON object, a job body as POST /jobs takes it")
    base["kind"] = args.kind or base.get("kind") or "fine_tune"
    if args.dataset:
        base["dataset_id"] = args.dataset
    if args.parent:
        base["parent_job_id"] = args.parent
    for item in args.set:
        field, eq, value = item.partition("=")
        if not eq or not field:
            raise SearchArgError(f"--set {item}: write FIELD=VALUE")
        try:
            base[field] = json.loads(value)
        except json.JSONDecodeError:
            base[field] = value
    if "dataset_id" not in base:
        raise SearchArgError("give --dataset (or dataset_id in --base-json)")
    space: dict[str, Any] = {}
    if args.space_json:
        space = _json_arg("--space-json", args.space_json)
        if not isinstance(space, dict):
            raise SearchArgError('--space-json: a JSON object, {"PATH": {"log_uniform": [LO, HI]}, ...}')
    for item in args.space:
        path, dim = parse_space_arg(item)
        if path in space:
            raise SearchArgError(f"--space {item}: {path} is given twice")
        space[path] = dim
    if not space:
        raise SearchArgError(f"give at least one --space ({SPACE_HELP}) or --space-json")
    body: dict[str, Any] = {"base": base, "space": space}
    options = {
        "trials": args.trials,
        "parallel": args.parallel,
        "pruner": args.pruner,
        "sampler": args.sampler,
        "seed": args.seed,
        "register_as": args.register_as,
    }
    body |= {k: v for k, v in options.items() if v is not None}
    if args.objective:
        body["objective"] = parse_objective(args.objective)
    return body


# ----- words and tables ----------------------------------------------------------------------------------------------
def fmt_value(v: Any) -> str:
    """A parameter or objective in a few characters: 3.16e-03, 0.25, 64, resnet34."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if v == 0 or 1e-2 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in params.items())


def _per_trial(search: dict[str, Any]) -> int | None:
    n = len(search["trials"])
    return search["epochs_unpruned"] // n if n else None


def trial_line(search: dict[str, Any], trial: dict[str, Any]) -> str:
    """A trial that has ended, in one line: how, after how many epochs, its objective, its fields."""
    metric = search["objective"]["metric"]
    per = _per_trial(search)
    epochs = f"{trial['epochs']}/{per}" if per else str(trial["epochs"])
    value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
    how = {"pruned": f"pruned after {epochs} epochs"}.get(trial["state"], f"{trial['state']}, {epochs} epochs")
    return f"trial {trial['number']} {how}: {metric} {value}  {fmt_params(trial['params'])}"


def best_text(search: dict[str, Any]) -> str:
    best = search.get("best")
    if not best:
        return "no trial has finished yet" if search["state"] == "running" else "no trial succeeded"
    metric = search["objective"]["metric"]
    return f"trial {best['number']} {metric} {best['value']:.4f}  {fmt_params(best['params'])}  (job {best['job_id']})"


def epochs_text(search: dict[str, Any]) -> str:
    used, unpruned = search["epochs_used"], search["epochs_unpruned"]
    saved = f" (pruning saved {1 - used / unpruned:.0%})" if unpruned and used < unpruned else ""
    return f"{used} epochs run of {unpruned} unpruned{saved}"


def decision_text(search: dict[str, Any]) -> str | None:
    decision = search.get("decision") or {}
    if not decision.get("action"):
        return None
    return f"gate: {decision['action']} into {search.get('register_as')}: {decision.get('reason', '')}"


def trials_table(search: dict[str, Any]) -> str:
    from cli.remote import table

    metric = search["objective"]["metric"]
    rows = [
        [
            t["number"],
            t["state"],
            fmt_params(t["params"]),
            t["epochs"],
            "" if t["value"] is None else f"{t['value']:.4f}",
            t["job_id"],
        ]
        for t in sorted(search["trials"], key=lambda t: t["number"])
    ]
    return table(rows, ["TRIAL", "STATE", "PARAMS", "EPOCHS", metric.upper(), "JOB"])


def show_text(search: dict[str, Any]) -> str:
    """`search show`: the search in a line, its trials as a table, the best, the epochs, the gate's decision."""
    objective = search["objective"]
    n_done = sum(n for state, n in search["counts"].items() if state in ENDED)
    head = (
        f"search {search['id']}: {search['state']}, {n_done}/{search['max_trials']} trials ended; "
        f"{objective['direction']} {objective['metric']}; sampler {search['sampler']}, pruner {search['pruner']}"
        + (f", seed {search['seed']}" if search["seed"] is not None else "")
    )
    lines = [head]
    if search.get("lr_range"):
        low, high = search["lr_range"]
        lines.append(f"lr_find (job {search['lr_find_job_id']}): lr within [{low:.2e}, {high:.2e}]")
    lines += ["", trials_table(search) if search["trials"] else "(no trials yet)", ""]
    lines.append(f"best: {best_text(search)}")
    lines.append(f"epochs: {epochs_text(search)}")
    said = decision_text(search)
    if said:
        lines.append(said)
    if search.get("error") and search["state"] != "succeeded":
        lines.append(f"error: {search['error']}")
    return "\n".join(lines)


def list_table(items: list[dict[str, Any]]) -> str:
    from cli.remote import _when, table

    rows = []
    for s in items:
        n_done = sum(n for state, n in s["counts"].items() if state in ENDED)
        best = s.get("best")
        rows.append(
            [
                s["id"],
                s["state"],
                f"{n_done}/{s['max_trials']}",
                s["counts"].get("pruned", 0),
                f"{s['sampler']}/{s['pruner']}",
                f"{s['objective']['metric']}={best['value']:.4f}" if best else "",
                _when(s["created_at"]),
            ]
        )
    return table(rows, ["ID", "STATE", "TRIALS", "PRUNED", "SAMPLER/PRUNER", "BEST", "CREATED"])


def summary(search: dict[str, Any]) -> dict[str, Any]:
    """What `watch` prints on stdout at the end, for scripts."""
    best = search.get("best")
    return {
        "id": search["id"],
        "state": search["state"],
        "error": search["error"],
        "objective": search["objective"],
        "best": {k: best[k] for k in ("number", "job_id", "params", "value")} if best else None,
        "counts": search["counts"],
        "epochs_used": search["epochs_used"],
        "epochs_unpruned": search["epochs_unpruned"],
        "decision": search.get("decision"),
    }


# ----- following one -------------------------------------------------------------------------------------------------
class SearchProgress:
    """A bar over the search's trials (running, pruned and the best in its postfix) and a line per trial as it
    ends; a search that had already ended is told as its lines alone."""

    def __init__(self, live: bool = True, out: Any = None) -> None:
        self.live = live
        self.out = out or sys.stderr
        self.bar: tqdm[Any] | None = None
        self.told: set[int] = set()
        self.best: int | None = None
        self.lr_told = False
        self.live_sweep = False

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def update(self, search: dict[str, Any]) -> None:
        sweep = search.get("lr_find_job_id")
        if sweep and not self.lr_told:
            if search.get("lr_range"):
                low, high = search["lr_range"]
                self.write(
                    f"lr_find (job {sweep}) done: lr within [{low:.2e}, {high:.2e}], a decade each side of its valley"
                )
                self.lr_told = True
            elif search["state"] == "running" and not self.live_sweep:
                self.write(f"lr_find first (job {sweep}): the trials' lr is sampled around its valley")
                self.live_sweep = True
        if self.live and self.bar is None:
            self.bar = tqdm(
                total=search["max_trials"],
                desc="trials",
                file=self.out,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ended [{elapsed}{postfix}]",
            )
        for trial in sorted(search["trials"], key=lambda t: t["number"]):
            if trial["state"] in ENDED and trial["number"] not in self.told:
                self.told.add(trial["number"])
                self.write(trial_line(search, trial))
        best = search.get("best")
        if best and best["number"] != self.best:
            self.best = best["number"]
            self.write(f"best so far: {best_text(search)}")
        if self.bar is not None:
            counts = search["counts"]
            postfix: dict[str, Any] = {k: counts.get(k, 0) for k in ("running", "queued", "pruned")}
            if best:
                postfix["best"] = f"{best['value']:.4f}"
            if sweep and not search.get("lr_range"):
                postfix = {"lr_find": "running"}
            self.bar.total = search["max_trials"]
            self.bar.n = len(self.told)
            self.bar.set_postfix(postfix, refresh=True)  # the count and the postfix drawn together

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


def _events(http: httpx.Client, search_id: str) -> Any:
    """(event, data) from the search's SSE stream until `end`, or until the server closes it."""
    with http.stream("GET", f"/searches/{search_id}/events") as stream:
        if stream.status_code >= 400:
            stream.read()
            from cli.remote import _check

            _check(stream)
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                yield event, json.loads(line[6:])
                event = None


def watch_search(http: httpx.Client, search_id: str, retries: int = 5) -> dict[str, Any]:
    """Follow the search until it ends (reconnecting if the stream drops while it runs); returns it as GET
    answers. Ctrl-C raises KeyboardInterrupt to the caller, and the search goes on."""
    from cli.remote import _check

    search = _check(http.get(f"/searches/{search_id}"))
    progress = SearchProgress(live=search["state"] == "running")
    failures = 0
    try:
        while True:
            try:
                for event, data in _events(http, search_id):
                    failures = 0
                    if event == "search":
                        search = data
                        progress.update(search)
                    elif event == "end":
                        break
                search = _check(http.get(f"/searches/{search_id}"))
            except httpx.TransportError:  # the stream or the server dropped: a few tries, further apart each
                failures += 1
                if failures > retries:
                    raise
                time.sleep(min(2.0**failures, 10.0))
                continue
            if search["state"] != "running":
                progress.update(search)
                break
            time.sleep(1.0)  # the stream ended while the search runs (a restarted server): open it again
    finally:
        progress.close()
    return dict(search)


def report(search: dict[str, Any]) -> int:
    """The outcome: JSON on stdout (for scripts), in words on stderr; 0 when the search succeeded."""
    print(json.dumps(summary(search), indent=1))
    words = [f"search {search['id']} {search['state']}" + (f": {search['error']}" if search["error"] else "")]
    words += [f"best: {best_text(search)}", f"epochs: {epochs_text(search)}"]
    said = decision_text(search)
    if said:
        words.append(said)
    print("\n".join(words), file=sys.stderr)
    return 0 if search["state"] == "succeeded" else 1


def _follow(http: httpx.Client, search_id: str) -> int:
    try:
        return report(watch_search(http, search_id))
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; search {search_id} goes on (fitcycle search watch {search_id}, or "
            f"fitcycle search cancel {search_id})",
            file=sys.stderr,
        )
        return 130


def full_search_id(http: httpx.Client, ident: str) -> str:
    """A search id given by its first characters made whole (the list comes 100 at a time)."""
    from cli.remote import RemoteError, _check

    if len(ident) >= 36 or not re.fullmatch(r"[0-9a-f-]{4,35}", ident):
        return ident
    matches: set[str] = set()
    for offset in range(0, 10_000, 100):
        data = _check(http.get("/searches", params={"limit": 100, "offset": offset}))["data"]
        matches |= {x["id"] for x in data if x["id"].startswith(ident)}
        if len(data) < 100:
            break
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        raise RemoteError(f"no search in this project has an id starting with '{ident}'")
    raise RemoteError(f"'{ident}' starts the ids of {len(matches)} searches: give more of it")


def dispatch_search(args: argparse.Namespace, http: httpx.Client) -> int:
    """The `search` subcommands (cli.remote.cmd_remote has made the client and the dataset/parent ids whole)."""
    from cli.remote import RemoteError, _check

    if args.sub == "create":
        try:
            body = create_body(args)
        except SearchArgError as exc:
            raise RemoteError(str(exc)) from None
        made = _check(http.post("/searches", json=body))
        print(made["id"], flush=True)
        return _follow(http, made["id"]) if args.watch else 0
    if args.sub == "list":
        items = _check(http.get("/searches", params={"limit": min(args.limit, 100)}))["data"]
        print(json.dumps(items, indent=1) if args.json else list_table(items))
        return 0
    search_id = full_search_id(http, args.search)
    if args.sub == "watch":
        return _follow(http, search_id)
    if args.sub == "show":
        search = _check(http.get(f"/searches/{search_id}"))
        if args.importance:
            search["importance"] = _check(http.get(f"/searches/{search_id}/importance"))
        if args.json:
            print(json.dumps(search, indent=1))
            return 0
        print(show_text(search))
        if args.importance:
            found = search["importance"]
            said = ", ".join(f"{k} {v:.2f}" for k, v in found["importances"].items()) or found.get("note") or "-"
            print(f"importance ({found['evaluator']}, {found['n_trials']} trials): {said}")
        return 0
    # cancel
    search = _check(http.post(f"/searches/{search_id}/cancel"))
    running = [t["number"] for t in search["trials"] if t["state"] not in ENDED]
    stopping = f"; trials {', '.join(map(str, running))} stop at their next batch" if running else ""
    print(f"search {search_id} cancelled{stopping}")
    return 0
