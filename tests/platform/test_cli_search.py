"""`fitcycle search` against the running stack, as a user types it: a bad space refused naming its path, a search
created and watched to its end (a line per trial, the best, the gate's decision on its model), shown as a table
and listed; another one left running by Ctrl-C on `watch`, then cancelled."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.platform.services import BIN, wait_for
from tests.platform.stack import Stack
from tests.platform.test_cli_remote import run

# Tiny trials: ResNet-18 from scratch at 32 px, two epochs each, on 4 Fashion-MNIST classes of 30 images.
BASE = ["--set", "arch=resnet18", "--set", "pretrained=none", "--set", "size=32", "--set", "bs=32"]
BASE += ["--set", "freeze_epochs=0", "--set", "epochs=2"]


def test_search_verbs_create_watch_show_list_and_cancel(stack: Stack, fashion_zip: Path, tmp_path: Path) -> None:
    client, _ = stack.new_project("cli-search")
    up = run(stack, client.key, "datasets", "upload", "fashion", str(fashion_zip))
    assert up.returncode == 0, up.stderr
    dataset = json.loads(up.stdout)["id"]

    # Refused before anything runs: the server's detail names the path.
    for space, said in (
        ("lr=log_uniform:1e-4,20", "422 Invalid search: space.lr: "),
        ("colour=choice:1,2", "422 Invalid search: space.colour: not a field of a job"),
    ):
        bad = run(stack, client.key, "search", "create", "--dataset", dataset[:8], *BASE, "--space", space)
        assert bad.returncode == 2 and said in bad.stderr, bad.stderr
    syntax = run(stack, client.key, "search", "create", "--dataset", dataset, "--space", "lr=log_uniform:1e-4")
    assert syntax.returncode == 2 and "log_uniform takes two numbers, LOW,HIGH" in syntax.stderr, syntax.stderr
    assert client.get("/searches").json()["count"] == 0

    watched = run(
        stack,
        client.key,
        "search",
        "create",
        "--dataset",
        dataset,
        *BASE,
        "--space",
        "lr=log_uniform:1e-3,3e-2",
        "--trials",
        "3",
        "--parallel",
        "2",
        "--sampler",
        "random",
        "--seed",
        "3",
        "--objective",
        "error_rate",
        "--register-as",
        "cli-searched",
        "--watch",
    )
    assert watched.returncode == 0, watched.stderr + stack.logs()
    search_id, rest = watched.stdout.split("\n", 1)
    summary = json.loads(rest)
    assert summary["id"] == search_id and summary["state"] == "succeeded"
    best = summary["best"]
    assert best is not None and 0 <= best["value"] <= 1 and 1e-3 <= best["params"]["lr"] <= 3e-2
    err = watched.stderr.replace("\r", "\n")
    for n in range(3):
        assert f"trial {n} " in err and "epochs: error_rate " in err, err
    assert f"best so far: trial {best['number']} error_rate {best['value']:.4f}" in err, err
    assert f"best: trial {best['number']} error_rate {best['value']:.4f}" in err
    assert "gate: promoted into cli-searched" in err, err
    assert client.get("/registry/cli-searched").json()["champion_id"] is not None

    shown = run(stack, client.key, "search", "show", search_id[:8])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"search {search_id}: succeeded, 3/3 trials ended; minimize error_rate")
    assert lines[2].split() == ["TRIAL", "STATE", "PARAMS", "EPOCHS", "ERROR_RATE", "JOB"]
    rows = [line.split() for line in lines[3:6]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(r[1] in ("succeeded", "pruned") for r in rows), lines
    assert any(line.startswith(f"best: trial {best['number']} ") for line in lines)
    assert any(line.startswith("epochs: ") and "of 6 unpruned" in line for line in lines), lines
    assert json.loads(run(stack, client.key, "search", "show", search_id, "--json").stdout)["id"] == search_id
    listed = run(stack, client.key, "search", "list").stdout.splitlines()
    assert listed[1].split()[:3] == [search_id, "succeeded", "3/3"], listed

    # Another search, watched, then Ctrl-C: the watch ends, the search goes on; cancel stops it.
    made = run(
        stack,
        client.key,
        "search",
        "create",
        "--dataset",
        dataset,
        *BASE[:-1],
        "epochs=300",  # a trial of 30 epochs here took 7 s: this one runs until it is cancelled
        "--space",
        "lr=log_uniform:1e-3,3e-2",
        "--trials",
        "3",
        "--parallel",
        "1",
        "--pruner",
        "none",
    )
    assert made.returncode == 0, made.stderr
    running_id = made.stdout.strip()
    wait_for(
        lambda: client.get(f"/searches/{running_id}").json()["counts"].get("running"),
        120,
        "a trial to start",
        interval=0.5,
    )
    log = tmp_path / "watch.err"
    with log.open("w") as stderr:
        env = {**stack.env, "FITCYCLE_URL": stack.a.base.removesuffix("/api/v1"), "FITCYCLE_KEY": client.key}
        proc = subprocess.Popen(
            [str(BIN / "fitcycle"), "search", "watch", running_id],
            env=env,
            stderr=stderr,
            text=True,
            # As a terminal's Ctrl-C finds it: a test run in the background would hand down SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for(lambda: "trials" in log.read_text(), 60, "the watch's bar")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    assert f"stopped watching; search {running_id} goes on" in log.read_text()
    assert client.get(f"/searches/{running_id}").json()["state"] == "running"

    cancel = run(stack, client.key, "search", "cancel", running_id)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.startswith(f"search {running_id} cancelled; trials 0 stop at their next batch"), cancel.stdout
    after = run(stack, client.key, "search", "watch", running_id)
    assert after.returncode == 1 and json.loads(after.stdout)["state"] == "cancelled", after.stderr
    again = run(stack, client.key, "search", "cancel", running_id)
    assert again.returncode == 2 and "nothing to cancel" in again.stderr, again.stderr
    trial_job = client.get(f"/searches/{running_id}").json()["trials"][0]["job_id"]
    assert client.wait(trial_job, timeout=120)["state"] == "cancelled"
