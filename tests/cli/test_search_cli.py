"""`fitcycle search`'s own parts, without a server: the --space syntax, the body `create` posts, and what `watch`,
`show`, `list` and `cancel` print from the API's answers (an httpx mock transport plays the server). The verbs
against a real stack: tests/platform/test_cli_search.py."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cli.main import build_parser
from cli.remote import RemoteError
from cli.search import SearchArgError, create_body, dispatch_search, parse_space_arg, watch_search

SID = "5e4c0000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr=log_uniform:1e-4,1e-1", ("lr", {"log_uniform": [1e-4, 0.1]})),
        ("lr=log-uniform:1e-4, 0.1", ("lr", {"log_uniform": [1e-4, 0.1]})),
        ("bs=uniform:8,64", ("bs", {"uniform": [8, 64]})),
        ("size=choice:64,128", ("size", {"choice": [64, 128]})),
        ("arch=choice:resnet18,resnet34", ("arch", {"choice": ["resnet18", "resnet34"]})),
        ("mixup=choice:true,false", ("mixup", {"choice": [True, False]})),
        ("transforms.max_rotate=uniform:0,20.5", ("transforms.max_rotate", {"uniform": [0, 20.5]})),
        ("lr=around_lr_find", ("lr", "around_lr_find")),
    ],
)
def test_a_space_option_is_the_apis_dimension(text: str, expected: tuple[str, Any]) -> None:
    assert parse_space_arg(text) == expected


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("lr", "write PATH=DISTRIBUTION"),
        ("lr=loguniform:1e-4,1", "unknown distribution 'loguniform'; use log_uniform, uniform or choice, or around"),
        ("lr=log_uniform:1e-4", "log_uniform takes two numbers, LOW,HIGH"),
        ("lr=log_uniform:1e-4,big", "'big' is not a number"),
        ("lr=uniform:0,inf", "'inf' is not a finite number"),
        ("size=choice:", "choice takes comma-separated values, e.g. size=choice:64,128"),
        ("size=choice:64,,128", "choice takes comma-separated values"),
    ],
)
def test_a_bad_space_option_says_what_to_write(text: str, said: str) -> None:
    with pytest.raises(SearchArgError, match=r"^--space ") as err:
        parse_space_arg(text)
    assert said in str(err.value)


def create_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["search", "create", *argv])


def test_create_builds_the_body_from_options_a_base_and_a_space_file(tmp_path: Any) -> None:
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"transforms.max_rotate": {"uniform": [0, 20]}}))
    args = create_args(
        "--base-json",
        '{"kind": "stage1", "arch": "resnet18", "epochs": 3}',
        "--dataset",
        "d1",
        "--set",
        "size=32",
        "--set",
        "pretrained=none",
        "--space-json",
        str(space_file),
        "--space",
        "lr=log_uniform:1e-4,1e-1",
        "--trials",
        "3",
        "--pruner",
        "none",
        "--sampler",
        "random",
        "--seed",
        "0",
        "--objective",
        "accuracy:maximize",
        "--register-as",
        "best",
    )
    assert create_body(args) == {
        "base": {
            "kind": "stage1",
            "arch": "resnet18",
            "epochs": 3,
            "dataset_id": "d1",
            "size": 32,
            "pretrained": "none",
        },
        "space": {"transforms.max_rotate": {"uniform": [0, 20]}, "lr": {"log_uniform": [1e-4, 0.1]}},
        "trials": 3,
        "pruner": "none",
        "sampler": "random",
        "seed": 0,
        "register_as": "best",
        "objective": {"metric": "accuracy", "direction": "maximize"},
    }
    # The defaults are the server's: only what was given is sent; the kind is fine_tune unless named.
    plain = create_body(create_args("--dataset", "d1", "--space", "lr=around_lr_find", "--objective", "valid_loss"))
    assert plain == {
        "base": {"kind": "fine_tune", "dataset_id": "d1"},
        "space": {"lr": "around_lr_find"},
        "objective": {"metric": "valid_loss"},
    }


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--space", "lr=uniform:0,1"], "give --dataset (or dataset_id in --base-json)"),
        (["--dataset", "d"], "give at least one --space"),
        (["--dataset", "d", "--space", "lr=uniform:0,1", "--space", "lr=around_lr_find"], "lr is given twice"),
        (["--dataset", "d", "--space", "lr=uniform:0,1", "--objective", "accuracy:up"], "METRIC:maximize"),
        (["--dataset", "d", "--space-json", "{lr: 1}"], "--space-json: neither a JSON file nor JSON"),
        (["--dataset", "d", "--space-json", "[1]"], "--space-json: a JSON object"),
        (["--base-json", "[]", "--space", "lr=uniform:0,1"], "--base-json: a JSON object"),
    ],
)
def test_create_refuses_a_body_it_cannot_make(argv: list[str], said: str) -> None:
    with pytest.raises(SearchArgError) as err:
        create_body(create_args(*argv))
    assert said in str(err.value)


# ----- the verbs against a played server -----------------------------------------------------------------------------
def trial(number: int, state: str, lr: float, values: list[float]) -> dict[str, Any]:
    return {
        "number": number,
        "job_id": f"job-{number}",
        "state": state,
        "params": {"lr": lr},
        "epochs": len(values),
        "value": values[-1] if values else None,
        "values": values,
        "started_at": None,
        "finished_at": None,
    }


def search(state: str, trials: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    done = [t for t in trials if t["state"] == "succeeded"]
    return {
        "id": SID,
        "state": state,
        "base": {},
        "space": {"lr": {"log_uniform": [1e-4, 1e-1]}},
        "max_trials": 3,
        "parallel": 2,
        "objective": {"metric": "error_rate", "direction": "minimize"},
        "pruner": "asha",
        "sampler": "random",
        "seed": 1,
        "register_as": None,
        "lr_find_job_id": None,
        "lr_range": None,
        "adopt_job_id": None,
        "created_at": "2025-01-01T00:00:00Z",
        "finished_at": None,
        "error": None,
        "counts": counts,
        "epochs_used": sum(t["epochs"] for t in trials),
        "epochs_unpruned": 3 * len(trials),
        "best": min(done, key=lambda t: t["value"]) if done else None,
        "best_so_far": [],
        "decision": None,
        "trials": trials,
    } | extra


RUNNING = search("running", [trial(0, "running", 1e-3, [0.5]), trial(1, "queued", 2e-2, [])])
HALF = search("running", [trial(0, "succeeded", 1e-3, [0.5, 0.4, 0.3]), trial(1, "pruned", 2e-2, [0.7])])
DONE = search(
    "succeeded",
    [*HALF["trials"], trial(2, "succeeded", 5e-3, [0.4, 0.2, 0.1])],
    decision={"action": "promoted", "reason": "the first model of the name"},
    register_as="searched",
)


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


def played(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://server/api/v1")


def server(snapshots: list[dict[str, Any]], final: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    """GET /searches/ID answers the first snapshot, then (once the stream has run) the final one."""
    streamed: list[bool] = []

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        if path == f"/searches/{SID}/events":
            streamed.append(True)
            body = sse(*[("search", s) for s in snapshots], ("end", {"state": final["state"]}))
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        if path == f"/searches/{SID}":
            return httpx.Response(200, json=final if streamed else snapshots[0])
        return httpx.Response(404, json={"title": "Not Found", "detail": f"no route {path}"})

    return handle


def test_watch_tells_each_trial_as_it_ends_and_the_best_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    with played(server([RUNNING, HALF, DONE], DONE)) as http:
        final = watch_search(http, SID)
    assert final == DONE
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("trial ", "best so far"))]
    assert lines == [
        "trial 0 succeeded, 3/3 epochs: error_rate 0.3000  lr=1.00e-03",
        "trial 1 pruned after 1/3 epochs: error_rate 0.7000  lr=0.02",
        "best so far: trial 0 error_rate 0.3000  lr=1.00e-03  (job job-0)",
        "trial 2 succeeded, 3/3 epochs: error_rate 0.1000  lr=5.00e-03",
        "best so far: trial 2 error_rate 0.1000  lr=5.00e-03  (job job-2)",
    ]
    assert "3/3" in err and "pruned=1" in err  # the bar: trials ended of the most, the pruned in its postfix


def test_watch_tells_the_lr_find_first_then_the_range_it_gave(capsys: pytest.CaptureFixture[str]) -> None:
    sweeping = search("running", [], lr_find_job_id="sweep-1", space={"lr": "around_lr_find"})
    found = sweeping | {"lr_range": [1e-4, 1e-2], "trials": RUNNING["trials"], "counts": RUNNING["counts"]}
    done = DONE | {"lr_find_job_id": "sweep-1", "lr_range": [1e-4, 1e-2]}
    with played(server([sweeping, found, done], done)) as http:
        watch_search(http, SID)
    err = capsys.readouterr().err.replace("\r", "\n")
    first = err.index("lr_find first (job sweep-1): the trials' lr is sampled around its valley")
    ranged = err.index("lr_find (job sweep-1) done: lr within [1.00e-04, 1.00e-02]")
    assert first < ranged < err.index("trial 0 succeeded")
    assert "lr_find=running" in err  # the bar, while it runs


def run_verb(http: httpx.Client, *argv: str) -> int:
    return dispatch_search(build_parser().parse_args(["search", *argv]), http)


def test_watch_exits_0_on_success_and_1_on_cancel_with_the_summary_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with played(server([DONE], DONE)) as http:
        assert run_verb(http, "watch", SID) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["best"] == {"number": 2, "job_id": "job-2", "params": {"lr": 5e-3}, "value": 0.1}
    assert (summary["epochs_used"], summary["epochs_unpruned"]) == (7, 9)
    assert "epochs: 7 epochs run of 9 unpruned (pruning saved 22%)" in err
    assert "gate: promoted into searched: the first model of the name" in err
    # An ended search is replayed as lines, without a bar.
    assert "trial 1 pruned after 1/3 epochs" in err and "trial/s" not in err

    cancelled = search("cancelled", HALF["trials"], error="cancelled")
    with played(server([RUNNING, cancelled], cancelled)) as http:
        assert run_verb(http, "watch", SID) == 1
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"


def test_ctrl_c_stops_watching_and_leaves_the_search_running(capsys: pytest.CaptureFixture[str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield sse(("search", RUNNING))
        raise KeyboardInterrupt

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})
        if request.method == "POST":
            pytest.fail("Ctrl-C must not cancel the search")
        return httpx.Response(200, json=RUNNING)

    with played(handle) as http:
        assert run_verb(http, "watch", SID) == 130
    err = capsys.readouterr().err
    assert f"stopped watching; search {SID} goes on" in err and f"fitcycle search cancel {SID}" in err


def test_watch_opens_the_stream_again_when_it_drops_while_the_search_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cli.search.time.sleep", lambda s: None)
    opened: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            opened.append(1)
            if len(opened) == 1:  # a server restart: the stream closes without `end` ...
                return httpx.Response(200, content=sse(("search", RUNNING)))
            if len(opened) == 2:  # ... and the next try finds nobody listening yet
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, content=sse(("search", DONE), ("end", {"state": "succeeded"})))
        return httpx.Response(200, json=RUNNING if len(opened) < 3 else DONE)

    with played(handle) as http:
        assert watch_search(http, SID)["state"] == "succeeded"
    assert len(opened) == 3

    def down(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=RUNNING)

    with played(down) as http, pytest.raises(httpx.ConnectError):  # cmd_remote: "error: cannot reach URL"
        watch_search(http, SID, retries=2)


def test_show_list_and_cancel(capsys: pytest.CaptureFixture[str]) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        if path == "/searches" and request.method == "GET":
            return httpx.Response(200, json={"data": [DONE, RUNNING | {"id": "aaaa0000-1"}], "count": 2})
        if path == f"/searches/{SID}/cancel":
            return httpx.Response(202, json=search("cancelled", RUNNING["trials"]))
        if path == f"/searches/{SID}/importance":
            return httpx.Response(200, json={"importances": {"lr": 1.0}, "evaluator": "fanova", "n_trials": 2})
        return httpx.Response(200, json=DONE)

    with played(handle) as http:
        assert run_verb(http, "show", SID[:8], "--importance") == 0  # the first characters, as the web UI shows
        shown = capsys.readouterr().out.splitlines()
        assert shown[0] == (
            f"search {SID}: succeeded, 3/3 trials ended; minimize error_rate; sampler random, pruner asha, seed 1"
        )
        assert shown[2].split() == ["TRIAL", "STATE", "PARAMS", "EPOCHS", "ERROR_RATE", "JOB"]
        assert shown[3].split() == ["0", "succeeded", "lr=1.00e-03", "3", "0.3000", "job-0"]
        assert shown[4].split() == ["1", "pruned", "lr=0.02", "1", "0.7000", "job-1"]
        assert "best: trial 2 error_rate 0.1000  lr=5.00e-03  (job job-2)" in shown
        assert "epochs: 7 epochs run of 9 unpruned (pruning saved 22%)" in shown
        assert "gate: promoted into searched: the first model of the name" in shown
        assert "importance (fanova, 2 trials): lr 1.00" in shown

        assert run_verb(http, "show", SID, "--json") == 0
        assert json.loads(capsys.readouterr().out)["best"]["number"] == 2

        assert run_verb(http, "list") == 0
        listed = capsys.readouterr().out.splitlines()
        assert listed[0].split() == ["ID", "STATE", "TRIALS", "PRUNED", "SAMPLER/PRUNER", "BEST", "CREATED"]
        assert listed[1].split()[:6] == [SID, "succeeded", "3/3", "1", "random/asha", "error_rate=0.1000"]
        assert listed[2].split()[:4] == ["aaaa0000-1", "running", "0/3", "0"]

        assert run_verb(http, "cancel", SID) == 0
        assert capsys.readouterr().out.strip() == f"search {SID} cancelled; trials 0, 1 stop at their next batch"
        with pytest.raises(RemoteError, match="no search in this project has an id starting with 'ffff'"):
            run_verb(http, "show", "ffff")


def test_a_refused_search_prints_the_servers_detail() -> None:
    detail = "space.lr: log_uniform needs a low above 0"

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"title": "Invalid search", "detail": detail, "field": "space.lr"})

    with played(handle) as http, pytest.raises(RemoteError, match=f"^422 Invalid search: {re.escape(detail)}$"):
        run_verb(http, "create", "--dataset", "d", "--space", "lr=log_uniform:0,1")
    # A syntax error never reaches the server.
    with played(lambda r: pytest.fail("sent")) as http, pytest.raises(RemoteError, match=r"^--space lr=log_uniform"):
        run_verb(http, "create", "--dataset", "d", "--space", "lr=log_uniform:1")
