"""Hyperparameter searches on the distributed stack (PostgreSQL, Redis, S3, a Celery worker, the API over HTTP):
trials are ordinary jobs, Optuna's study lives in the platform's database, and the pruner stops weak trials at an
epoch's end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from core.datasets.samples import write_sample
from tests.platform.services import Client, wait_for
from tests.platform.stack import Stack, make_zip

# Small trials: ResNet-18 from scratch at 32 px, on 4 Fashion-MNIST classes.
TRIAL = {"kind": "fine_tune", "arch": "resnet18", "pretrained": "none", "size": 32, "bs": 32, "freeze_epochs": 0}
FINAL = ("succeeded", "failed", "cancelled", "pruned")


@pytest.fixture(scope="module")
def fashion_search_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Fashion-MNIST classes, 60 images each (a quarter of them validation: 60 items), 32 px."""
    tmp = tmp_path_factory.mktemp("search-zip")
    folder = write_sample(
        "fashion-mnist", tmp / "data", per_class=60, size=32, classes=["trouser", "bag", "sneaker", "dress"]
    )
    return make_zip(folder, tmp / "fashion-search.zip")


def run_search(c: Client, body: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    res = c.post("/searches", json=body)
    assert res.status_code == 201, res.text
    search_id = res.json()["id"]
    done: dict[str, Any] = wait_for(
        lambda: (s := c.get(f"/searches/{search_id}").json())["state"] != "running" and s,
        timeout,
        f"search {search_id} to finish",
        interval=1.0,
    )
    return done


def test_a_search_checks_its_space_and_adopts_its_best_trial(stack: Stack, fashion_search_zip: Path) -> None:
    c, _ = stack.new_project("search-small")
    ds = c.upload("fashion", fashion_search_zip).json()
    base = {**TRIAL, "dataset_id": ds["id"], "epochs": 2}

    # Each refusal is a 422 naming the path, before anything runs.
    for space, path in (
        ({"lr": {"log_uniform": [0, 1]}}, "space.lr"),
        ({"lr": {"log_uniform": [1e-4, 20]}}, "space.lr"),
        ({"size": {"choice": [32, 8]}}, "space.size"),
        ({"valid_pct": {"uniform": [0.1, 0.3]}}, "space.valid_pct"),
        ({"transforms.spin": {"uniform": [0, 1]}}, "space.transforms.spin"),
        ({"arch": {"choice": ["resnet18", "vgg"]}}, "space.arch"),
        ({"bs": {"uniform": [8.5, 32]}}, "space.bs"),
        ({"colour": {"choice": [1, 2]}}, "space.colour"),
    ):
        res = c.post("/searches", json={"base": base, "space": space, "trials": 2})
        assert res.status_code == 422 and res.json()["detail"].startswith(f"{path}:"), (space, res.text)
    res = c.post("/searches", json={"base": {**base, "kind": "lr_find"}, "space": {"lr": {"uniform": [0.1, 0.2]}}})
    assert res.status_code == 422 and res.json()["detail"].startswith("base.kind:"), res.text

    done = run_search(
        c,
        {
            "base": base,
            "space": {"lr": "around_lr_find", "transforms.max_rotate": {"uniform": [0, 20]}},
            "trials": 3,
            "parallel": 2,
            "sampler": "random",
            "seed": 3,
            "register_as": "searched",
        },
    )
    assert done["state"] == "succeeded", done["error"]
    assert len(done["trials"]) == 3 and all(t["state"] in FINAL for t in done["trials"])
    assert done["objective"] == {"metric": "error_rate", "direction": "minimize"}
    # around_lr_find: one lr_find of the base job first, then lr within a decade of its valley.
    sweep = c.get(f"/jobs/{done['lr_find_job_id']}").json()
    valley = sweep["result"]["suggestions"]["valley"]
    assert sweep["kind"] == "lr_find" and sweep["spec"]["arch"] == "resnet18"
    assert done["lr_range"] == pytest.approx([valley / 10, valley * 10])
    assert len({t["params"]["lr"] for t in done["trials"]}) == 3  # a seeded sampler, a new draw for each trial
    assert all(valley / 10 <= t["params"]["lr"] <= valley * 10 for t in done["trials"])
    best = done["best"]
    assert best is not None and best["value"] == min(t["value"] for t in done["trials"] if t["state"] == "succeeded")
    job = c.get(f"/jobs/{best['job_id']}").json()
    assert job["search_id"] == done["id"] and job["spec"]["lr"] == pytest.approx(best["params"]["lr"])
    assert job["spec"]["transforms"]["max_rotate"] == pytest.approx(best["params"]["transforms.max_rotate"])
    # The trials' models joined no name; the best one's was adopted into `searched`, as its first version.
    assert done["decision"]["action"] == "promoted" or "champion" in done["decision"]["reason"], done["decision"]
    registry = c.get("/registry/searched").json()
    assert registry["champion_id"] is not None
    adopted = c.get(f"/jobs/{done['adopt_job_id']}").json()
    assert adopted["parent_job_id"] == best["job_id"] and adopted["model_id"] == registry["champion_id"]
    # A trial's bundle skips model.onnx; the adopted one is given it, so the name is served by ONNX Runtime.
    assert adopted["result"]["onnx_added"] is True, adopted["result"]
    answer = c.post(
        "/registry/searched/predict",
        files={"file": ("x.png", (fashion_search_zip.parent / "data" / "bag" / "0000.png").read_bytes())},
    )
    assert answer.status_code == 200, answer.text
    assert c.get(f"/searches/{done['id']}/importance").status_code == 200
    assert done["id"] in {s["id"] for s in c.get("/searches").json()["data"]}
    assert math.isfinite(done["best_so_far"][-1][1])

    # Cancelling a search cancels its running trial and queues no more.
    res = c.post(
        "/searches",
        json={"base": {**base, "epochs": 30}, "space": {"lr": {"uniform": [1e-3, 1e-2]}}, "trials": 4, "parallel": 1},
    )
    search_id = res.json()["id"]

    def running_trial() -> dict[str, Any] | None:
        trials = c.get(f"/searches/{search_id}").json()["trials"]
        return trials[0] if trials and c.get(f"/jobs/{trials[0]['job_id']}").json()["state"] == "running" else None

    trial = wait_for(running_trial, 300, "the first trial to run", interval=0.3)
    assert c.post(f"/searches/{search_id}/cancel").status_code == 202
    assert c.wait(trial["job_id"], timeout=120)["state"] == "cancelled"
    cancelled = c.get(f"/searches/{search_id}").json()
    assert cancelled["state"] == "cancelled" and len(cancelled["trials"]) == 1
    again = c.post(f"/searches/{search_id}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["detail"]


def finished_value(trial: dict[str, Any]) -> float:
    assert trial["state"] == "succeeded" and trial["value"] is not None, trial
    return float(trial["value"])


def test_a_search_of_8_trials_finds_an_lr_the_dense_grid_calls_good(stack: Stack, fashion_search_zip: Path) -> None:
    """TPE's 8 trials over five decades of lr (ASHA pruning, the defaults) land where a 9-point grid's final error is
    within 0.02 of its best, and do as well. Both searches have one seed: their trials share data order, augmentation
    and initial weights, so they differ by lr alone."""
    c, _ = stack.new_project("search-lr")
    ds = c.upload("fashion", fashion_search_zip).json()
    base = {**TRIAL, "dataset_id": ds["id"], "epochs": 3}
    grid = [10 ** (-5 + 5 * k / 8) for k in range(9)]  # 1e-5 .. 1, a factor of 4.2 apart
    dense = run_search(
        c,
        {
            "base": base,
            "space": {"lr": {"choice": grid}},
            "trials": 9,
            "parallel": 2,
            "sampler": "grid",
            "pruner": "none",
            "seed": 0,  # the same draws as the search below: the trials of both differ by lr alone
        },
    )
    assert dense["state"] == "succeeded" and dense["max_trials"] == 9, dense["error"]
    errors = {t["params"]["lr"]: finished_value(t) for t in dense["trials"]}
    assert sorted(errors) == pytest.approx(grid)
    best_error = min(errors.values())
    good = [lr for lr, e in errors.items() if e <= best_error + 0.02]
    step = grid[1] / grid[0]
    # Where the final error is within 0.02 of the grid's best: around the good points, as far as the grid can tell
    # (up to the next point each side, whose error it knows to be worse).
    low, high = min(good) / step, max(good) * step

    found = run_search(
        c,
        {"base": base, "space": {"lr": {"log_uniform": [1e-5, 1.0]}}, "trials": 8, "parallel": 2, "seed": 0},
    )
    assert found["state"] == "succeeded" and len(found["trials"]) == 8, found["error"]
    best = found["best"]
    print(
        "grid: "
        + ", ".join(f"{lr:.1e}: {e:.3f}" for lr, e in sorted(errors.items()))
        + f"; good lr [{low:.1e}, {high:.1e}]"
        + f"; the search's best: lr {best['params']['lr']:.2e}, error {best['value']:.3f}"
        f" ({found['counts']}, {found['epochs_used']} of {found['epochs_unpruned']} epochs)"
    )
    assert low * 0.999 <= best["params"]["lr"] <= high * 1.001
    assert best["value"] <= best_error + 0.02  # and its final error is within 0.02 of the grid's best (or below it)


def test_asha_spends_at_most_half_the_epochs_and_keeps_the_best(stack: Stack, fashion_zip: Path) -> None:
    """The same 12 trials (a random sampler, one seed: the same lrs, data order and initial weights) with ASHA and
    unpruned: ASHA runs at most half the epochs, and its best is within 0.02 of the unpruned best. 9 epochs: ASHA's
    rungs after 1, 3 and 9 (its reduction factor is 3). The objective is the validation loss: an error rate on 24
    items ties often, and a trial tied with the best at a rung goes on (measured: 70 of 108 epochs)."""
    c, _ = stack.new_project("search-asha")
    ds = c.upload("fashion", fashion_zip).json()
    body = {
        "base": {**TRIAL, "dataset_id": ds["id"], "epochs": 9},
        "space": {"lr": {"log_uniform": [1e-5, 1.0]}},
        "trials": 12,
        "parallel": 2,
        "sampler": "random",
        "seed": 7,
        "objective": {"metric": "valid_loss"},
    }
    asha = run_search(c, {**body, "pruner": "asha"})
    full = run_search(c, {**body, "pruner": "none"})
    for done in (asha, full):
        assert done["state"] == "succeeded" and len(done["trials"]) == 12, done["error"]
    lrs = [t["params"]["lr"] for t in asha["trials"]]
    assert lrs == pytest.approx([t["params"]["lr"] for t in full["trials"]])  # the same 12 trials
    assert full["epochs_used"] == full["epochs_unpruned"] == 108
    pruned = [t for t in asha["trials"] if t["state"] == "pruned"]
    assert pruned and all(t["epochs"] in (1, 3) and t["value"] is not None for t in pruned)
    job = c.get(f"/jobs/{pruned[0]['job_id']}").json()
    assert (
        job["state"] == "pruned"
        and job["model_id"] is None
        and job["result"]["pruned_after_epoch"] == pruned[0]["epochs"]
    )
    assert len(c.get(f"/jobs/{pruned[0]['job_id']}/metrics").json()["epochs"]) == pruned[0]["epochs"]  # kept
    print(
        f"ASHA: {asha['epochs_used']} of {asha['epochs_unpruned']} epochs ({asha['counts']}),"
        f" best {asha['best']['value']:.3f}"
        f"; unpruned: {full['epochs_used']} epochs, best {full['best']['value']:.3f}"
    )
    assert asha["epochs_used"] <= 0.5 * full["epochs_used"]
    assert asha["best"]["value"] <= full["best"]["value"] + 0.02


def test_a_search_survives_a_killed_worker_and_a_restarted_api(stack: Stack, fashion_search_zip: Path) -> None:
    """SIGKILL the worker in the middle of a trial and restart the API while the search runs: the trial resumes on
    a new worker, the search goes on, and every trial ends once, in one final state, counted once."""
    c, _ = stack.new_project("search-crash")
    ds = c.upload("fashion", fashion_search_zip).json()
    res = c.post(
        "/searches",
        json={
            "base": {**TRIAL, "dataset_id": ds["id"], "epochs": 3, "bs": 16},
            "space": {"lr": {"log_uniform": [3e-3, 3e-2]}},
            "trials": 3,
            "parallel": 1,
            "pruner": "none",
        },
    )
    assert res.status_code == 201, res.text
    search_id = res.json()["id"]

    def training() -> dict[str, Any] | None:
        trials = c.get(f"/searches/{search_id}").json()["trials"]
        if not trials:
            return None
        job = c.get(f"/jobs/{trials[0]['job_id']}").json()
        return job if job["state"] == "running" and (job["epoch"] or 0) >= 1 and (job["batch"] or 0) >= 3 else None

    victim = wait_for(training, 300, "the first trial to be in its second epoch", interval=0.1)
    stack.worker.kill()
    stack.restart_api()
    stack.start_worker()
    done: dict[str, Any] = wait_for(
        lambda: (s := c.get(f"/searches/{search_id}").json())["state"] != "running" and s,
        900,
        "the search to finish",
        interval=1.0,
    )
    assert done["state"] == "succeeded", done["error"] or stack.logs()
    assert sorted(t["number"] for t in done["trials"]) == [0, 1, 2]
    assert all(t["state"] == "succeeded" and t["epochs"] == 3 for t in done["trials"]), done["trials"]
    resumed = c.get(f"/jobs/{victim['id']}").json()
    assert resumed["attempts"] == 2 and resumed["search_id"] == search_id
    jobs = [j for j in c.get("/jobs", params={"limit": 500}).json()["data"] if j["search_id"] == search_id]
    assert len(jobs) == 3  # no trial queued twice
    # Optuna's study agrees: three trials, each told once, complete.
    import optuna

    from core.db.studies import study_storage

    study = optuna.load_study(
        study_name=f"fitcycle-search-{search_id}", storage=study_storage(stack.env["FITCYCLE_DATABASE_URL"])
    )
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in study.get_trials()] == pytest.approx([t["value"] for t in done["trials"]])
