"""The web UI in a real browser: Playwright drives Debian's Chromium against a real `fitcycle serve` (SQLite, a
local store, the filesystem broker and its worker). A user signs in, uploads an archive, trains while the
curve grows, reads the interpretation, cleans labels into a new version, retrains and sees the gate's
decision, asks the playground and corrects it, labels from the queue, and signs out; the sessions page signs a
key out everywhere. Screenshots of every page at 1280 px and 390 px go to tests/ui/screenshots/ (git-ignored)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from core.datasets.samples import write_sample, write_silhouette_masks, write_silhouette_points
from tests.platform.services import Client
from tests.platform.stack import make_zip
from tests.ui.browser import SHOTS, drop_file, fresh_serve, shoot

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CLASSES = ["trouser", "bag", "sneaker", "dress"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`fitcycle serve` on a fresh data dir, a project key, and an archive of real images to upload."""
    tmp = tmp_path_factory.mktemp("ui")
    with fresh_serve(tmp, "browser", FITCYCLE_REPORT_EVERY_N_BATCHES="1") as s:
        folder = write_sample("fashion-mnist", tmp / "clothes", per_class=36, size=32, classes=CLASSES)
        new = write_sample("fashion-mnist", tmp / "new", per_class=40, size=32, classes=CLASSES)
        yield {
            "base": s.base,
            "key": s.key,
            "client": s.client,
            "archive": make_zip(folder, tmp / "clothes.zip"),
            "photo": sorted((new / "bag").glob("*.png"))[-1],
            "serve": s.process,
            "tmp": tmp,
        }


def test_a_user_goes_around_the_loop_in_the_browser(
    served: dict[str, Any], browser: Browser, step: Callable[[str], None]
) -> None:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    base, client = served["base"], served["client"]
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk(page, served, client, step)
    except BaseException:
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        print(served["serve"].tail(6000))
        raise
    assert errors == [], f"scripts failed in the page: {errors}"
    context.close()


def walk(page: Page, served: dict[str, Any], client: Client, step: Callable[[str], None]) -> None:
    step("sign in")
    # Sign in: a page asked for without a session goes to /signin and comes back after.
    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/signin\?next=/jobs$"))
    shoot(page, "signin")
    page.get_by_label("Project key").fill("fc_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That key was not accepted")
    page.get_by_label("Project key").fill(served["key"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/jobs$"))
    session = next(c for c in page.context.cookies() if c["name"] == "fitcycle_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert session["value"].startswith("fs_") and served["key"] not in session["value"]  # a session, not the key
    assert page.evaluate("document.cookie") == ""  # nothing the page's scripts can read

    step("csrf")
    # A state-changing API call from the signed-in browser without the page's CSRF token is refused, and so is
    # one with it that another site sent.
    refused = page.request.post("/api/v1/jobs", data={"kind": "fine_tune", "dataset_id": "x"})
    assert refused.status == 403 and "CSRF" in refused.json()["detail"]
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    elsewhere = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    refused = page.request.post("/api/v1/jobs", data={"kind": "fine_tune", "dataset_id": "x"}, headers=elsewhere)
    assert refused.status == 403 and "this site's own pages" in refused.json()["detail"]
    assert page.request.post("/api/v1/jobs", data={"kind": "x"}, headers={"X-CSRF-Token": csrf}).status == 422

    step("upload")
    # Upload an archive: counts per class and split, then the dataset page.
    page.goto("/datasets")
    drop_file(page, "[data-upload] [data-drop]", served["archive"], "application/zip")
    assert page.get_by_label("Archive").evaluate("input => input.files[0].name") == "clothes.zip"
    page.get_by_label("Dataset name").fill("clothes")
    page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result")
    expect(result).to_contain_text("clothes v1: 144 items")
    for cls in CLASSES:
        expect(result.locator("td", has_text=cls)).to_have_count(1)
    shoot(page, "datasets")
    result.get_by_role("link", name="Open the dataset").click()
    expect(page.locator("ul.items li")).to_have_count(48)  # the first page of the grid
    expect(page.get_by_role("img", name=re.compile("a training batch"))).to_be_visible()
    shoot(page, "dataset")
    dataset_id = page.url.rsplit("/", 1)[-1]

    step("fine_tune from the form")
    # A fine_tune from the form; its page shows the curve gaining points while it runs, with no reload.
    page.goto("/jobs")
    form = page.locator("[data-job-form]")
    expect(form.get_by_label("Architecture")).to_have_attribute("placeholder", re.compile("^efficientnet_lite0"))
    form.get_by_label("Kind").select_option("lr_find")  # the kind decides which fields the form shows
    expect(form.locator("#kind-help")).to_contain_text("learning-rate sweep")
    expect(form.get_by_label(re.compile("^Learning rate"))).to_be_hidden()
    expect(form.get_by_label(re.compile("^Frozen epochs"))).to_be_hidden()
    form.get_by_label("Kind").select_option("fine_tune")
    expect(form.get_by_label(re.compile("^Learning rate"))).to_have_attribute("placeholder", "default: 0.002")
    form.get_by_label("Architecture").fill("resnet18")
    form.get_by_label("Pretrained").select_option("none")
    form.get_by_label("Image size (px)").fill("32")
    form.get_by_label("Batch size").fill("16")
    form.get_by_label("Frozen epochs (the body frozen first)").fill("0")
    form.get_by_label("Epochs", exact=True).fill("4")
    form.get_by_label("Learning rate (a number, low,high, find or auto)").fill("0.003")
    form.get_by_label(re.compile("^Any other setting")).fill('seed=7\nmetrics=["accuracy", "error_rate"]')
    form.get_by_role("button", name="Queue the job").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    train_id = page.url.rsplit("/", 1)[-1]
    spec = client.get(f"/jobs/{train_id}").json()["spec"]
    assert spec["seed"] == 7 and spec["epochs"] == 4 and spec["lr"] == 0.003 and spec["arch"] == "resnet18"
    page.evaluate("window.__sameDocument = true")
    chart = page.locator("#loss-chart")
    first = int(chart.get_attribute("data-points") or 0)
    page.wait_for_function(
        "n => Number(document.querySelector('#loss-chart').dataset.points) > n", arg=first, timeout=120_000
    )
    expect(page.locator("[data-job-page] [data-field=state]")).to_have_text("succeeded", timeout=180_000)
    page.wait_for_function("() => document.querySelectorAll('#epochs tbody tr').length === 4")
    grown = int(chart.get_attribute("data-points") or 0)
    assert grown > first and page.evaluate("window.__sameDocument") is True  # the same page, never reloaded
    assert page.evaluate("window.fcCharts.metric.data[0].length") == 4  # one point per epoch
    page.reload()
    expect(page.locator("#epochs tbody tr").first.locator("td").nth(1)).to_have_text("1")  # epochs count from 1
    shoot(page, "job")

    step("lr_find and stage 2")
    # lr_find from the trained model: the curve with its suggestions; one of them starts stage 2, whose state
    # the jobs list follows live (here: cancelled from elsewhere, seen without a reload).
    sweep = client.submit(kind="lr_find", dataset_id=dataset_id, parent_job_id=train_id)
    assert client.wait(sweep["id"])["state"] == "succeeded"
    page.goto(f"/jobs/{sweep['id']}")
    expect(page.locator("#lr-chart canvas")).to_have_count(1)
    use = page.get_by_role("button", name="Use this rate for stage 2")
    assert use.count() >= 2
    shoot(page, "lr-find")
    use.first.click()
    expect(page.get_by_role("heading", name=re.compile("^stage2 job"))).to_be_visible()
    stage2_id = page.url.rsplit("/", 1)[-1]
    page.goto("/jobs")
    page.evaluate("window.__sameDocument = true")
    client.post(f"/jobs/{stage2_id}/cancel")
    expect(page.locator(f'tr[data-job="{stage2_id}"] [data-field=state]')).to_have_text("cancelled", timeout=60_000)
    metric = page.locator(f'tr[data-job="{train_id}"] [data-field=metric]')
    expect(metric).to_have_text(re.compile(r"(accuracy|error_rate) [01]\.\d{4}"))  # the job's main metric
    assert page.evaluate("window.__sameDocument") is True
    shoot(page, "jobs")
    client.wait(stage2_id)

    step("segmentation and points grids")
    # A segmentation dataset's grid draws each mask over its image; a points dataset's, each point.
    masks = write_silhouette_masks(served["tmp"] / "scenes", count=12, side=32, seed=1)
    scenes = client.upload("scenes", make_zip(masks, served["tmp"] / "s.zip"), labels="masks", void="void").json()
    page.goto(f"/datasets/{scenes['id']}")
    expect(page.locator("figure.overlay canvas.mask")).to_have_count(12)
    shoot(page, "dataset-masks")
    points = write_silhouette_points(served["tmp"] / "points", count=8, seed=1)
    marked = client.upload("marks", make_zip(points, served["tmp"] / "p.zip"), labels="points", csv="points.csv")
    page.goto(f"/datasets/{marked.json()['id']}")
    expect(page.locator("figure.overlay canvas.mask")).to_have_count(8)

    step("interpret")
    # Interpret it, with the cleaner's out-of-fold suspects.
    job = client.submit(kind="interpret", dataset_id=dataset_id, parent_job_id=train_id, folds=2, cleaner_epochs=1)
    assert client.wait(job["id"])["state"] == "succeeded"
    page.goto(f"/jobs/{job['id']}")
    page.get_by_role("link", name="Interpretation", exact=True).click()
    expect(page.locator("table.confusion")).to_be_visible()
    expect(page.locator("table.confusion tbody tr")).to_have_count(len(CLASSES))
    expect(page.get_by_role("heading", name="Top losses")).to_be_visible()
    assert page.locator("h2#tl-h + ul li").count() >= 1
    shoot(page, "interpretation")

    step("cleaner and retrain")
    # The cleaner: relabel two items, remove one (by keyboard), create the version, retrain from the champion.
    page.goto(f"/jobs/{job['id']}/cleaner")
    cards = page.locator(".suspect")
    assert cards.count() >= 3
    keys = [cards.nth(i).get_attribute("data-item") for i in range(3)]
    labels = []
    for i in range(2):  # each to a class it does not have
        given = json.loads(cards.nth(i).get_attribute("data-given") or "{}")["label"]
        labels.append(next(c for c in CLASSES if c != given))
        cards.nth(i).locator(".relabel").fill(labels[-1])
    cards.nth(2).focus()
    page.keyboard.press("r")
    expect(page.locator("[data-edit-count]")).to_have_text("2 relabelled, 1 removed")
    expect(page.locator("#status")).to_contain_text(f"Card 3 ({keys[2]}): marked for removal;")  # and where focus went
    shoot(page, "cleaner")
    page.get_by_role("button", name="Create version").click()
    expect(page.locator("#cleaner-result")).to_contain_text("Version 2 of clothes: ")
    expect(page.locator("#cleaner-result")).not_to_contain_text("{")  # in words, not JSON
    version = client.get(f"/datasets/{dataset_id}/versions/2/diff").json()
    assert version["counts"]["removed"] == 1 and keys[2] in version["removed"]
    relabelled = {r["item"]: r["after"]["label"] for r in version["relabelled"]}
    assert {k: relabelled.get(k) for k in keys[:2]} == dict(zip(keys[:2], labels, strict=True))
    page.get_by_role("button", name="Retrain from champion").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    expect(page.locator("[data-job-page] [data-field=state]")).to_have_text("succeeded", timeout=240_000)
    page.reload()
    expect(page.get_by_role("heading", name=re.compile(r"^The gate: (promoted|rejected)$"))).to_be_visible()
    page.goto(f"/datasets/{dataset_id}")  # the version's changes in words (the note has its own column)
    changes = page.locator("h2#versions-h + table tbody tr").last.locator("td").nth(3)
    expect(changes).to_contain_text("relabelled: 2")
    expect(changes).not_to_contain_text("note")

    step("registry decision")
    # The registry shows the decision with both scores.
    page.goto("/models")
    page.get_by_role("link", name="clothes").first.click()
    decision = page.locator("h2#decisions-h + table > tbody > tr")
    expect(decision).to_have_count(2)  # the gate's on the retrain, newest first; the first model's, as champion
    expect(decision.last).to_contain_text("the first model of the name")
    expect(decision.first).to_contain_text("gate")
    # the challenger's score, and the champion's
    expect(decision.first.locator(":scope > td").nth(3)).to_contain_text("accuracy")
    expect(decision.first.locator(":scope > td").nth(4)).to_contain_text("accuracy")
    per_class = decision.first.locator("details")  # each class's items and paired test, on request
    per_class.locator("summary").click()
    expect(per_class.locator("table.per-class > tbody > tr")).to_have_count(len(CLASSES))
    shoot(page, "registry")
    step("promote by hand and policy")
    # Promote the other version by hand (a roll back, or taking the challenger), with a reason; then the policy.
    page.once("dialog", lambda dialog: dialog.accept("checked by hand"))
    page.locator("button[data-promote]").first.click()
    expect(decision).to_have_count(3)
    expect(decision.first).to_contain_text("checked by hand")
    policy = page.locator("[data-policy]")
    policy.get_by_label("Retrain after this much new feedback").fill("30")
    policy.get_by_label("Largest drop allowed for one class").fill("0.2")
    policy.get_by_role("button", name="Save the policy").click()
    expect(page.locator("#status")).to_contain_text("Save the policy: done")
    saved = client.get("/registry/clothes").json()
    assert saved["policy"]["min_feedback"] == 30 and saved["policy"]["max_class_drop"] == 0.2
    assert saved["retrains_on_feedback"] is True
    page.goto("/models")
    shoot(page, "models")

    step("playground")
    # The playground: an image to the name's champion; the answer drawn; a correction counted.
    page.goto("/playground?name=clothes")
    drop_file(page, "[data-playground] [data-drop]", served["photo"], "image/png")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#bars li")).to_have_count(len(CLASSES))
    before = int(page.locator("[data-feedback-count]").inner_text())
    page.get_by_label("The right answer").fill("bagg")  # a typo: asked whether it is a new class; no, it is not
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Send the correction").click()
    expect(page.locator("#status")).to_contain_text("'bagg' is not one of the classes")
    expect(page.locator("[data-feedback-count]")).to_have_text(str(before))
    page.get_by_label("The right answer").fill("bag")
    page.get_by_role("button", name="Send the correction").click()
    expect(page.locator("[data-feedback-count]")).to_have_text(str(before + 1))
    shoot(page, "playground")

    step("labelling queue")
    # The queue: a second prediction waits for a label; one click labels it and it leaves.
    client.post("/registry/clothes/predict", files={"file": ("x.png", served["photo"].read_bytes())})
    page.goto("/predictions")
    queued = page.locator("[data-prediction]")
    n = queued.count()
    assert n >= 1
    shoot(page, "predictions")
    queued.first.get_by_role("button", name="bag", exact=True).click()
    expect(queued).to_have_count(n - 1)
    for left in range(n - 1, 0, -1):  # label the rest: the empty queue says so across the page
        queued.first.get_by_role("button", name="Right").click()
        expect(queued).to_have_count(left - 1)
    page.reload()
    empty = page.locator(".queue li.empty")
    expect(empty).to_be_visible()
    assert (empty.bounding_box() or {"width": 0})["width"] > 600

    step("deleting predictions")
    # One prediction deleted from its card (its image goes too); then every one before tomorrow, by date.
    doomed = client.post("/registry/clothes/predict", files={"file": ("y.png", served["photo"].read_bytes())})
    doomed_id = doomed.json()["prediction_id"]
    page.reload()
    page.locator(f"[data-prediction='{doomed_id}']").get_by_role("button", name="Delete").click()
    expect(page.locator(f"[data-prediction='{doomed_id}']")).to_have_count(0)
    assert client.get(f"/predictions/{doomed_id}/image").status_code == 404
    assert client.get("/predictions").json()["count"] > 0
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    page.get_by_label("Made before").fill(tomorrow)
    page.once("dialog", lambda dialog: dialog.accept())  # it asks first: this cannot be undone
    page.get_by_role("button", name="Delete them").click()
    expect(page.locator("#status")).to_contain_text("predictions deleted")
    assert client.get("/predictions").json()["count"] == 0

    step("phone widths")
    # Every page fits a phone: nothing wider than the screen but tables, which scroll in their own box.
    page.set_viewport_size({"width": 390, "height": 844})
    every = ["/datasets", f"/datasets/{dataset_id}", "/jobs", f"/jobs/{train_id}", f"/jobs/{sweep['id']}"]
    every += [f"/jobs/{job['id']}/interpretation", f"/jobs/{job['id']}/cleaner", "/models", "/registry/clothes"]
    for path in [*every, "/playground", "/predictions"]:
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.set_viewport_size({"width": 1280, "height": 900})

    step("sign out")
    # Sign out: the pages and the API refuse the browser, and the session is over on the server too.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/datasets")
    expect(page).to_have_url(re.compile(r"/signin\?next=/datasets$"))
    assert page.request.get("/api/v1/datasets").status == 401
    replayed = httpx.get(f"{served['base']}/api/v1/datasets", cookies={"fitcycle_session": session["value"]})
    assert replayed.status_code == 401 and "sign-in has ended" in replayed.json()["detail"]


def test_the_sessions_page_and_signing_out_everywhere(served: dict[str, Any], browser: Browser) -> None:
    """Signing in again in the same browser ends the session it replaces; /sessions lists the key's sessions with
    this browser's marked, and signs the key out everywhere, another browser's session too."""
    base, key = served["base"], served["key"]
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        tokens = []
        for _ in range(2):
            page.goto("/signin")
            page.get_by_label("Project key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            expect(page).to_have_url(re.compile(r"/datasets$"))
            tokens.append(next(c["value"] for c in context.cookies() if c["name"] == "fitcycle_session"))
        assert tokens[0] != tokens[1]
        assert httpx.get(f"{base}/api/v1/datasets", cookies={"fitcycle_session": tokens[0]}).status_code == 401
        with httpx.Client(base_url=base) as other:  # a second browser signs in with the same key
            csrf = re.search(r'name="csrf" value="([^"]+)"', other.get("/signin").text)
            assert csrf is not None
            signed = other.post("/signin", data={"key": key, "csrf": csrf.group(1)}, headers={"Origin": base})
            assert signed.status_code == 303 and other.get("/api/v1/datasets").status_code == 200
            page.get_by_role("link", name="Sessions").click()
            expect(page).to_have_url(re.compile(r"/sessions$"))
            expect(page.locator("table.sessions tbody tr")).to_have_count(2)
            expect(page.locator("tr[data-current]")).to_contain_text("this browser")
            shoot(page, "sessions")
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.set_viewport_size({"width": 1280, "height": 900})
            page.get_by_role("button", name="Sign out everywhere").click()
            expect(page).to_have_url(re.compile(r"/signin$"))
            assert other.get("/api/v1/datasets").status_code == 401  # the other browser is signed out too
        assert page.request.get("/api/v1/datasets").status == 401
    finally:
        context.close()


def test_the_pages_forms_are_small_and_the_sign_in_needs_its_token(served: dict[str, Any]) -> None:
    base = served["base"]
    big = httpx.post(f"{base}/signin", content=b"key=" + b"x" * 20_000, headers=FORM)
    assert big.status_code == 413
    multipart = httpx.post(f"{base}/signin", files={"junk": ("j", b"x")})
    assert multipart.status_code == 415
    no_token = httpx.post(f"{base}/signin", data={"key": served["key"]})
    assert no_token.status_code == 403 and "fitcycle_session" not in no_token.headers.get("set-cookie", "")
    page = httpx.get(f"{base}/signin")
    assert (
        page.headers["cache-control"] == "no-store"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )
    api = httpx.get(f"{base}/api/v1/health")
    assert api.headers["x-content-type-options"] == "nosniff" and "sandbox" in api.headers["content-security-policy"]
    docs_csp = httpx.get(f"{base}/docs").headers["content-security-policy"]  # Swagger's inline script by its hash
    script_src = next(part for part in docs_csp.split(";") if part.strip().startswith("script-src"))
    assert "'sha256-" in script_src and "unsafe-inline" not in script_src and "frame-ancestors 'none'" in docs_csp
