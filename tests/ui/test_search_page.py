"""A hyperparameter search in a real browser, against a real `fitcycle serve`: a search started over REST, its page
opened while it runs; the trials table fills with no reload, the best-so-far curve and the parallel-coordinates
plot draw, each field's importance shows, a trial the pruner stopped is marked pruned (here, on its job's page and
in the jobs list too), the table sorts by a column; the searches list links to it; a second search is cancelled
from its page. Screenshots (search-*) go to tests/ui/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from core.datasets.samples import write_sample
from tests.platform.services import Client, wait_for
from tests.platform.stack import make_zip
from tests.ui.browser import SHOTS, fresh_serve, shoot

CLASSES = ["trouser", "bag", "sneaker", "dress"]
# Tiny trials: ResNet-18 from scratch at 32 px, 2 epochs, on 120 images (about 10 s each on 2 cores).
BASE = {"kind": "fine_tune", "arch": "resnet18", "pretrained": "none", "size": 32, "bs": 32, "freeze_epochs": 0}
# A pruned trial, deterministically. ASHA's first rung is after epoch 1: there, a trial worse than every earlier one
# stops. On valid_loss, lr 1e-4 is far below 0.01 after one epoch (a few steps at 0.01 leave the batch-norm statistics
# off: a loss in the hundreds) and 5.0 diverges (a loss beyond 1e20). One trial at a time in the grid's order for
# seed 355, which starts with 0.01 (0.01, 1e-4, 5.0 as Optuna's GridSampler shuffles it with this seed, and with the
# per-trial seeds of api/services/searches.py): 1e-4 goes on and 5.0 is pruned, whichever comes second. Two trials
# succeed with different rates: an importance to show.
SEARCH = {
    "space": {"lr": {"choice": [0.0001, 0.01, 5.0]}},
    "sampler": "grid",
    "seed": 355,
    "pruner": "asha",
    "parallel": 1,
    "trials": 3,
    "objective": {"metric": "valid_loss"},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`fitcycle serve` on a fresh data dir, a project key, and a dataset of real images uploaded."""
    tmp = tmp_path_factory.mktemp("search-ui")
    with fresh_serve(tmp, "searches") as s:
        folder = write_sample("fashion-mnist", tmp / "clothes", per_class=30, size=32, classes=CLASSES)
        uploaded = s.client.upload("clothes", make_zip(folder, tmp / "clothes.zip"))
        assert uploaded.status_code == 201, uploaded.text
        yield {
            "base": s.base,
            "key": s.key,
            "client": s.client,
            "dataset_id": uploaded.json()["id"],
            "serve": s.process,
        }


def test_a_search_in_the_browser(served: dict[str, Any], browser: Browser, step: Callable[[str], None]) -> None:
    context = browser.new_context(base_url=served["base"], viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk(page, served, served["client"], step)
    except BaseException:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "search-failure.png"), full_page=True)
        print(served["serve"].tail(6000))
        raise
    assert errors == [], f"scripts failed in the page: {errors}"
    context.close()


def start_search(client: Client, dataset_id: str, **body: Any) -> str:
    res = client.post("/searches", json={"base": {**BASE, "dataset_id": dataset_id, "epochs": 2}, **body})
    assert res.status_code == 201, res.text
    return str(res.json()["id"])


def walk(page: Page, served: dict[str, Any], client: Client, step: Callable[[str], None]) -> None:
    step("sign in")
    page.goto("/signin")
    page.get_by_label("Project key").fill(served["key"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/datasets$"))

    step("the search's page while it runs")
    # Opened as the search starts: no trial or one; the rows come (and change state) with no reload.
    search_id = start_search(client, served["dataset_id"], **SEARCH)
    page.get_by_role("link", name="Searches").click()
    expect(page).to_have_url(re.compile(r"/searches$"))
    page.get_by_role("link", name=search_id[:8]).click()
    expect(page).to_have_url(re.compile(f"/searches/{search_id}$"))
    page.evaluate("window.__sameDocument = true")
    head = page.locator("[data-search-page]")
    expect(head).to_contain_text("objective valid_loss (minimize)")
    expect(head).to_contain_text("pruner asha · sampler grid (seed 355)")
    rows = page.locator("#trials tbody tr[data-trial]")
    assert rows.count() <= 1  # the table fills live from here
    expect(rows).to_have_count(2, timeout=120_000)  # the first trial has ended, the second started
    expect(rows.first.locator(".state")).to_have_text("succeeded")
    expect(page.locator("#best-chart")).not_to_have_attribute("data-points", "0")
    shoot(page, "search-running")
    expect(head.locator("[data-field=state]")).to_have_text("succeeded", timeout=180_000)
    assert page.evaluate("window.__sameDocument") is True  # the same page, never reloaded

    step("the finished search: table, plots, importance, pruned")
    done = client.get(f"/searches/{search_id}").json()
    by_state = {t["number"]: t["state"] for t in done["trials"]}
    order = [t["params"]["lr"] for t in sorted(done["trials"], key=lambda t: t["number"])]
    assert order[0] == 0.01 and sorted(order) == [0.0001, 0.01, 5.0], f"the grid's order for this seed changed: {order}"
    assert sorted(by_state.values()) == ["pruned", "succeeded", "succeeded"], done["trials"]
    pruned = next(t for t in done["trials"] if t["state"] == "pruned")
    expect(rows).to_have_count(3)
    for number, state in by_state.items():
        expect(page.locator(f'#trials tr[data-trial="{number}"] .state')).to_have_text(state)
    row = page.locator(f'#trials tr[data-trial="{pruned["number"]}"]')
    expect(row).to_have_class(re.compile(r"\bpruned\b"))
    expect(row.locator("td").nth(2)).to_have_text("5")  # lr
    expect(row.get_by_role("link")).to_have_attribute("href", f"/jobs/{pruned['job_id']}")
    best = done["best"]
    expect(page.locator(f'#trials tr[data-trial="{best["number"]}"] .badge.best')).to_have_text("best")
    expect(head.locator("[data-field=best]")).to_contain_text(f"trial {best['number']}")
    expect(head.locator("[data-field=done]")).to_have_text("3")
    expect(head.locator("[data-field=epochs]")).to_have_text(f"{done['epochs_used']} of {done['epochs_unpruned']}")
    expect(head.get_by_role("button", name="Cancel the search")).to_be_hidden()
    # The best so far over time: uPlot's canvas, a point per improvement.
    expect(page.locator("#best-chart canvas")).to_have_count(1)
    expect(page.locator("#best-chart")).to_have_attribute("data-points", str(len(done["best_so_far"])))
    # Parallel coordinates: an axis for lr (log: it spans more than 2 decades) and one for the objective; a line
    # per finished trial, the pruned one faded.
    plot = page.locator("#parallel svg")
    expect(plot.locator("g.axis")).to_have_count(2)
    expect(plot.locator("g.axis").first.locator("text.title")).to_have_text("lr")
    ticks = plot.locator("g.axis").first.locator("text.tick")
    expect(ticks).to_have_text(["0.0001", "0.01", "5"])  # each choice named
    low, mid, high = (float(ticks.nth(i).get_attribute("y") or 0) for i in range(3))
    assert 0.35 < (low - mid) / (low - high) < 0.5  # 0.01 at log's 2/4.7 of the way up, not linear's 0.002
    expect(plot.locator("polyline")).to_have_count(3)
    expect(plot.locator("polyline.pruned")).to_have_count(1)
    faded = plot.locator("polyline.pruned").evaluate("el => Number(getComputedStyle(el).opacity)")
    assert faded < 0.5
    # Each field's importance, as GET /importance says.
    importance = client.get(f"/searches/{search_id}/importance").json()
    assert importance["importances"], importance
    bars = page.locator("#importance li")
    expect(bars).to_have_count(len(importance["importances"]))
    expect(bars.first).to_contain_text("lr")
    expect(page.locator("[data-field=importance-note]")).to_be_hidden()

    step("sorting the trials")
    page.locator('button[data-sort="value"]').click()
    expect(page.locator("#trials th", has_text="valid_loss")).to_have_attribute("aria-sort", "ascending")
    ordered = [str(t["number"]) for t in sorted(done["trials"], key=lambda t: t["value"])]
    assert [rows.nth(i).get_attribute("data-trial") for i in range(3)] == ordered
    page.locator('button[data-sort="value"]').click()
    expect(page.locator("#trials th", has_text="valid_loss")).to_have_attribute("aria-sort", "descending")
    assert [rows.nth(i).get_attribute("data-trial") for i in range(3)] == ordered[::-1]
    page.reload()  # the page as the server renders a finished search
    expect(rows).to_have_count(3)
    expect(page.locator("#parallel polyline")).to_have_count(3)
    shoot(page, "search")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than its screen but the table
    page.reload()
    expect(page.locator("#parallel polyline")).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})

    step("the pruned trial's job, and the jobs list")
    page.locator(f'#trials tr[data-trial="{pruned["number"]}"]').get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"/jobs/{pruned['job_id']}$"))
    expect(page.locator("[data-job-page] [data-field=state]")).to_have_text("pruned")
    trial_of = page.locator(".trial-of")
    expect(trial_of).to_contain_text(f"Trial {pruned['number']} of search {search_id[:8]}: the search's pruner stopped")
    expect(trial_of.get_by_role("link")).to_have_attribute("href", f"/searches/{search_id}")
    shoot(page, "search-pruned-job")
    page.goto("/jobs")
    listed = page.locator(f'tr[data-job="{pruned["job_id"]}"]')
    expect(listed.locator("[data-field=state] .state.pruned")).to_have_text("pruned")
    expect(listed).to_contain_text(f"trial {pruned['number']} of search {search_id[:8]}")

    step("the searches list")
    page.goto("/searches")
    listed = page.locator(f'tr[data-search="{search_id}"]')
    expect(listed.locator(".state")).to_have_text("succeeded")
    expect(listed).to_contain_text("valid_loss")
    expect(listed).to_contain_text("3/3 (1 pruned)")
    expect(listed).to_contain_text(f"{done['epochs_used']} of {done['epochs_unpruned']} unpruned")
    shoot(page, "searches")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})

    step("cancel a search from its page")
    other = start_search(client, served["dataset_id"], space={"lr": {"log_uniform": [1e-4, 1e-2]}}, trials=4)
    page.goto(f"/searches/{other}")
    expect(page.locator("[data-field=importance-note]")).to_have_text(
        "needs two finished trials that differ in a field"
    )
    expect(page.locator("#parallel")).to_have_attribute("data-lines", "0")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel the search").click()
    expect(page.locator("[data-search-page] [data-field=state]")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel the search")).to_be_hidden()
    wait_for(
        lambda: all(t["state"] == "cancelled" for t in client.get(f"/searches/{other}").json()["trials"]),
        60,
        "the cancelled search's trials to end",
    )
