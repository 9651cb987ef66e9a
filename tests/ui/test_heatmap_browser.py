"""Heatmaps in a real browser, against a real `fitcycle serve`: a small classifier trained over REST; its
interpretation page lays each top loss's heatmap over its image (the same box), says which class it is for, and one
checkbox hides them all; the playground's "Explain (heatmap)" asks for a class's heatmap and colours it over the
answer's image, and asks again when another class is picked. Then the champion is sent 100 inverted images: the
registry page shows the drift alarm's banner, explained, and its chart; the models page marks the model. Screenshots
(heatmap-*, drift-*) go to tests/ui/screenshots/."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Browser, Page, expect

from core.datasets.samples import write_sample
from tests.platform.services import Client, wait_for
from tests.platform.stack import make_zip
from tests.ui.browser import SHOTS, fresh_serve, shoot

CLASSES = ["trouser", "bag", "sneaker"]
# ResNet-18 from scratch at 96 px, 2 epochs on 81 images, 54 more to validate on (the heatmaps need not be good ones;
# the pages must show them). Not 32 px: there ResNet's last block is one cell, and every heatmap is flat or none.
SIZE = 96
TRAIN = {"kind": "fine_tune", "arch": "resnet18", "pretrained": "none", "size": SIZE, "bs": 16, "freeze_epochs": 0}

# Pixels of the answer's canvas with colour in them (max - min channel over 24): the images are greyscale, so
# only the coloured heatmap puts any there.
COLOURED = """() => {
    const c = document.getElementById("answer-canvas");
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
        if (Math.max(px[i], px[i + 1], px[i + 2]) - Math.min(px[i], px[i + 1], px[i + 2]) > 24) n++;
    }
    return { coloured: n, width: c.width, height: c.height };
}"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`fitcycle serve` on a fresh data dir, and a classifier trained there (its fine_tune writes the
    interpretation, with a heatmap per top loss)."""
    tmp = tmp_path_factory.mktemp("heatmap-ui")
    with fresh_serve(tmp, "heatmaps", FITCYCLE_LOOP_INTERVAL_SECONDS="1") as s:  # the drift checks: every second
        folder = write_sample("fashion-mnist", tmp / "clothes", per_class=45, size=SIZE, classes=CLASSES)
        unseen = write_sample("fashion-mnist", tmp / "unseen", per_class=3, size=SIZE, offset=45, classes=CLASSES)
        uploaded = s.client.upload("clothes", make_zip(folder, tmp / "clothes.zip"))
        assert uploaded.status_code == 201, uploaded.text
        # 54 validation images: a drift reference needs 50 (core.engine.drift.MIN_REFERENCE).
        job = s.client.submit(**TRAIN, dataset_id=uploaded.json()["id"], epochs=2, seed=3, valid_pct=0.4)
        done = s.client.wait(job["id"], timeout=600)
        assert done["state"] == "succeeded", done
        summary = s.client.get(f"/jobs/{job['id']}/artifacts/interpretation.json").json()
        # A photo with evidence for two classes at least (a class with none anywhere has an empty heatmap; which
        # photos have it depends on the model, whose training is not bit-identical from run to run).
        tried = []
        for photo in sorted(unseen.rglob("*.png")):
            heat = {c: hottest(s.client, done["model_id"], photo, c) for c in CLASSES}
            tried.append(heat)
            if sum(h > 0 for h in heat.values()) >= 2:
                break
        assert sum(h > 0 for h in heat.values()) >= 2, f"each photo's hottest heatmap pixel for each class: {tried}"
        yield {
            "base": s.base,
            "key": s.key,
            "client": s.client,
            "job_id": job["id"],
            "model_id": done["model_id"],
            "summary": summary,
            "photo": photo,
            # Two classes to ask for whose heatmaps show (a class without evidence anywhere has an empty one).
            "picks": [c for c in CLASSES if heat[c] > 0][:2],
            "serve": s.process,
        }


def hottest(client: Client, model_id: str, photo: Path, heatmap_class: str) -> int:
    """The hottest pixel of the photo's heatmap for a class, asked over REST."""
    res = client.post(
        f"/models/{model_id}/predict",
        params={"explain": "true", "heatmap_class": heatmap_class},
        files={"file": (photo.name, photo.read_bytes(), "image/png")},
    )
    assert res.status_code == 200, res.text
    return int(np.asarray(Image.open(io.BytesIO(base64.b64decode(res.json()["heatmap"])))).max())


def test_heatmaps_in_the_browser(served: dict[str, Any], browser: Browser, step: Callable[[str], None]) -> None:
    context = browser.new_context(base_url=served["base"], viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk(page, served, step)
    except BaseException:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "heatmap-failure.png"), full_page=True)
        print(served["serve"].tail(6000))
        raise
    assert errors == [], f"scripts failed in the page: {errors}"
    context.close()


def walk(page: Page, served: dict[str, Any], step: Callable[[str], None]) -> None:
    step("sign in")
    page.goto("/signin")
    page.get_by_label("Project key").fill(served["key"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/datasets$"))

    step("the interpretation's heatmaps")
    job_id = served["job_id"]
    tops = served["summary"]["top_losses"]
    assert tops and all(t["heatmap"].startswith("heatmaps/") and t["heatmap_class"] in CLASSES for t in tops), tops
    page.goto(f"/jobs/{job_id}/interpretation")
    toggle = page.get_by_label("Show heatmaps")
    expect(toggle).to_be_checked()
    figures = page.locator("h2#tl-h ~ ul.items figure")
    expect(figures).to_have_count(len(tops))
    heatmaps = page.locator("img.heatmap")
    expect(heatmaps).to_have_count(len(tops))
    for i, t in enumerate(tops):
        figure = figures.nth(i)
        expect(figure.locator("figcaption")).to_contain_text(f"heatmap for {t['heatmap_class']}")
        heat = figure.locator("img.heatmap")
        expect(heat).to_have_attribute("src", f"/api/v1/jobs/{job_id}/artifacts/{t['heatmap']}")
        heat.scroll_into_view_if_needed()
        expect(heat).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle())
        # Laid over its item's image: the same box.
        under = figure.locator("img:not(.heatmap)").bounding_box()
        over = heat.bounding_box()
        assert under and over, (under, over)
        assert all(abs(under[k] - over[k]) <= 1 for k in ("x", "y", "width", "height")), (under, over)
    # The heatmaps are the top losses', not plots of their own.
    expect(page.locator("#plots-h ~ .plots figcaption", has_text="heatmaps/")).to_have_count(0)
    expect(page.locator("#plots-h ~ .plots figcaption", has_text="plots/top_losses.png")).to_have_count(1)
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "heatmap-interpretation")
    toggle.uncheck()
    for i in range(len(tops)):
        expect(heatmaps.nth(i)).to_be_hidden()
    expect(figures.first.locator("img:not(.heatmap)")).to_be_visible()
    shoot(page, "heatmap-interpretation-off")
    toggle.check()
    expect(heatmaps.first).to_be_visible()
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/jobs/{job_id}")  # the job's page lists them as artifacts, never as plots
    expect(page.locator("figure figcaption", has_text="heatmaps/")).to_have_count(0)

    step("the playground explains")
    page.goto(f"/playground?model={served['model_id']}")
    explain = page.get_by_label("Explain (heatmap)")
    picker = page.get_by_label("Heatmap for")
    expect(explain).to_be_visible()
    expect(explain).not_to_be_checked()
    expect(picker.locator("option")).to_have_text(["the most probable class", *served["summary"]["classes"]])
    page.get_by_label("Image", exact=True).set_input_files(served["photo"])
    explain.check()
    first, second = served["picks"]
    picker.select_option(first)
    with page.expect_response(re.compile(r"/predict\?")) as asked:
        page.get_by_role("button", name="Predict").click()
    assert re.search(r"[?&]explain=true(&|$)", asked.value.url) and f"heatmap_class={first}" in asked.value.url
    answer = asked.value.json()
    assert answer["heatmap_class"] == first, {k: v for k, v in answer.items() if k != "heatmap"}
    grey = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"])))
    assert grey.mode == "L" and grey.size == Image.open(served["photo"]).size, (grey.mode, grey.size)
    caption = page.locator("#heatmap-for")
    expect(caption).to_have_text(f"heatmap for {first}")
    drawn = page.evaluate(COLOURED)
    assert drawn["width"] == grey.width and drawn["coloured"] > 0, drawn
    expect(page.locator("#answer-text")).not_to_contain_text(answer["heatmap"][:40])  # not the base64 in the JSON
    shoot(page, "heatmap-playground")

    step("another class asks again")
    with page.expect_response(re.compile(r"/predict\?")) as again:
        picker.select_option(second)
    assert f"heatmap_class={second}" in again.value.url
    expect(caption).to_have_text(f"heatmap for {second}")
    assert page.evaluate(COLOURED)["coloured"] > 0

    step("the most probable class, and no heatmap")
    with page.expect_response(re.compile(r"/predict\?")) as top:
        picker.select_option(index=0)  # the most probable class: explain=true alone
    assert "heatmap_class" not in top.value.url
    best = top.value.json()
    assert best["heatmap_class"] == best["top"][0], best["top"]
    expect(caption).to_have_text(f"heatmap for {best['top'][0]}")
    explain.uncheck()
    with page.expect_response(re.compile(r"/models/[^/]+/predict")) as plain:
        page.get_by_role("button", name="Predict").click()
    assert "explain" not in plain.value.url and "heatmap" not in plain.value.json()
    expect(caption).to_be_hidden()
    assert page.evaluate(COLOURED)["coloured"] == 0

    step("a drift alarm: the registry page's banner and chart, the models page's mark")
    client: Client = served["client"]
    assert client.http.patch("/project", json={"drift_window": 100}).status_code == 200
    inverted = io.BytesIO()
    ImageOps.invert(Image.open(served["photo"]).convert("RGB")).save(inverted, format="PNG")
    files = [("file", (f"inverted-{i}.png", inverted.getvalue(), "image/png")) for i in range(10)]
    for _ in range(10):
        assert client.post("/registry/clothes/predict", files=files).status_code == 200
    alarm = wait_for(lambda: client.get("/registry/clothes/drift").json()["alarm"], 60, "the drift alarm")
    assert alarm["signal"] in ("input", "uncertainty", "class_mix"), alarm
    page.goto("/registry/clothes")
    banner = page.get_by_role("alert")
    expect(banner).to_contain_text("Drift:")
    expect(banner).to_contain_text(alarm["text"])
    expect(banner.locator("img")).to_have_count(len(alarm["examples"]))
    chart = page.get_by_role("img", name="drift scores over the last 24 hours")
    expect(chart).to_be_visible()
    expect(chart.locator("circle")).to_have_count(3)  # uncertainty, class mix, input
    expect(page.locator("table.drift-scores tbody tr")).to_have_count(3)
    expect(page.get_by_label("Retrain from the corrections when the champion drifts")).to_have_value("false")
    shoot(page, "drift-registry")
    page.goto("/models")
    expect(page.locator(f'td[data-drift="{served["model_id"]}"]')).to_contain_text("drift alarm")
    shoot(page, "drift-models")
