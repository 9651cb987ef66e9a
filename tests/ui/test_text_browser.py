"""The web UI for texts (the course's ULMFiT flow) in a real browser, against a real `fitcycle serve`: a CSV of
reviews (some unlabelled) uploaded from the form, its texts listed; a language model queued from the jobs form, its
page with its curves and the samples it wrote after each epoch; a classifier on its encoder, its interpretation
with the texts it got most wrong; the playground classifying a typed text with each word coloured by its weight
and continuing a prompt; the predictions page showing texts. Screenshots (text-*) go to tests/ui/screenshots/."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from core.datasets.samples import write_sample
from core.datasets.text_samples import POSITIVE, write_reviews
from tests.platform.services import Client
from tests.platform.stack import make_zip
from tests.ui.browser import SHOTS, drop_file, fresh_serve, shoot

N_LABELLED, N_UNLABELLED = 80, 400  # 80 + 40 validation + 400 unlabelled reviews
TINY = {"emb_sz": 48, "n_hid": 96, "n_layers": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`fitcycle serve` on a fresh data dir, a project key, and a CSV of reviews to upload."""
    tmp = tmp_path_factory.mktemp("text-ui")
    with fresh_serve(tmp, "texts", FITCYCLE_REPORT_EVERY_N_BATCHES="1") as s:
        csv = write_reviews(tmp / "reviews", n_labelled=N_LABELLED, n_unlabelled=N_UNLABELLED, seed=4)
        yield {"base": s.base, "key": s.key, "client": s.client, "csv": csv, "serve": s.process, "tmp": tmp}


def test_texts_in_the_browser(served: dict[str, Any], browser: Browser, step: Callable[[str], None]) -> None:
    context = browser.new_context(base_url=served["base"], viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk(page, served, served["client"], step)
    except BaseException:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "text-failure.png"), full_page=True)
        print(served["serve"].tail(6000))
        raise
    assert errors == [], f"scripts failed in the page: {errors}"
    context.close()


def alpha(css_colour: str) -> float:
    """The opacity of a computed CSS colour ('rgba(r, g, b, a)' or 'rgb(r, g, b)')."""
    parts = re.findall(r"[\d.]+", css_colour)
    return float(parts[3]) if len(parts) == 4 else 1.0


def walk(page: Page, served: dict[str, Any], client: Client, step: Callable[[str], None]) -> None:
    step("sign in")
    page.goto("/signin")
    page.get_by_label("Project key").fill(served["key"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/datasets$"))

    step("upload a CSV of texts from the form")
    drop_file(page, "[data-upload] [data-drop]", served["csv"], "text/csv")
    page.get_by_label("Dataset name").fill("reviews")
    page.get_by_label("Labelling rule").select_option("text_csv")
    page.get_by_label(re.compile("^More fields")).fill("valid_col=is_valid")
    page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result")
    n_items = N_LABELLED + N_LABELLED // 2 + N_UNLABELLED
    expect(result).to_contain_text(f"reviews v1: {n_items} items, split column")
    result.get_by_role("link", name="Open the dataset").click()
    dataset_id = page.url.rsplit("/", 1)[-1]

    step("the dataset's texts")
    # Its texts, paged, each with its label (or marked unlabelled) and split; counts per class; no picture.
    expect(page.locator("[data-unlabelled]")).to_have_text(f"{N_UNLABELLED} unlabelled")
    texts = page.locator("ol.texts > li")
    expect(texts).to_have_count(48)
    assert page.locator("ol.texts > li.unlabelled").count() > 0
    expect(page.locator("ol.texts > li.unlabelled").first.locator(".badge")).to_have_text("unlabelled")
    expect(texts.first).to_contain_text(re.compile(r"(train|valid)"))
    expect(page.locator("h2#counts-h + table tbody tr")).to_have_count(2)  # neg, pos
    expect(page.locator("img.batch")).to_have_count(0)
    shoot(page, "text-dataset")
    batch = page.request.get(f"/api/v1/datasets/{dataset_id}/show_batch")
    assert batch.status == 422 and "holds texts" in batch.json()["detail"]
    items = page.request.get(f"/api/v1/datasets/{dataset_id}/items?limit=5").json()
    assert items["n_unlabelled"] == N_UNLABELLED and all(item["text"] for item in items["data"])

    step("a language model from the jobs form")
    # A text dataset: its kinds only, and the text fields (no image size; pretrained none, wt103 or a language model).
    photos = write_sample("fashion-mnist", served["tmp"] / "photos", per_class=8, size=32, classes=["bag", "dress"])
    uploaded = client.upload("photos", make_zip(photos, served["tmp"] / "photos.zip"))
    assert uploaded.status_code == 201, uploaded.text
    images_id = uploaded.json()["id"]
    page.goto("/jobs")
    form = page.locator("[data-job-form]")
    language_model = form.locator('#kind option[value="language_model"]')
    form.get_by_label("Dataset", exact=True).select_option(images_id)
    assert language_model.is_disabled()  # it learns from texts only
    expect(form.get_by_label("Tokens per step (seq_len)")).to_be_hidden()
    form.get_by_label("Dataset", exact=True).select_option(dataset_id)
    assert language_model.is_enabled()
    form.get_by_label("Kind").select_option("language_model")
    expect(form.get_by_label("Image size (px)")).to_be_hidden()
    expect(form.get_by_label("Architecture")).to_be_hidden()
    expect(form.get_by_label("Tokens per step (seq_len)")).to_be_visible()
    expect(form.get_by_label(re.compile("^Learning rate"))).to_have_attribute("placeholder", "default: 0.02")
    assert form.locator('#pretrained option[value="wt103"]').is_enabled()
    assert form.locator('#pretrained option[value="imagenet"]').is_disabled()
    form.get_by_label("Pretrained").select_option("none")
    form.get_by_label("Batch size").fill("32")
    form.get_by_label("Tokens per step (seq_len)").fill("24")
    form.get_by_label("Frozen epochs (the body frozen first)").fill("0")
    form.get_by_label("Epochs", exact=True).fill("2")
    form.get_by_label(re.compile("^Any other setting")).fill(f"arch_config={json.dumps(TINY)}\nmin_freq=1")
    shoot(page, "text-jobs-form")
    form.get_by_role("button", name="Queue the job").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    lm_id = page.url.rsplit("/", 1)[-1]
    spec = client.get(f"/jobs/{lm_id}").json()["spec"]
    assert spec["seq_len"] == 24 and spec["arch_config"] == TINY and spec["bs"] == 32
    assert spec["arch"] == "awd_lstm" and spec["pretrained"] == "none"

    step("the language model's page")
    # Its curves and epochs (accuracy and perplexity), then the samples it wrote after each epoch.
    expect(page.locator("[data-job-page] [data-field=state]")).to_have_text("succeeded", timeout=120_000)
    page.wait_for_function("() => document.querySelectorAll('#epochs tbody tr').length === 2")
    expect(page.locator("#epochs tbody tr").last).to_contain_text("perplexity")
    page.reload()
    samples = page.locator("ol.samples li")
    expect(samples).to_have_count(2)
    expect(samples.first).to_contain_text("epoch 1")
    page.wait_for_function("() => window.fcCharts.metric && window.fcCharts.metric.data[0].length === 2")
    shoot(page, "text-lm-job")
    lm = client.get(f"/jobs/{lm_id}").json()

    step("a classifier on its encoder")
    common = {"dataset_id": dataset_id, "bs": 32, "seq_len": 24, "min_freq": 1}
    clf = client.submit(kind="fine_tune", parent_job_id=lm_id, freeze_epochs=1, epochs=1, name="sentiment", **common)
    clf = client.wait(clf["id"], timeout=180)
    assert clf["state"] == "succeeded", clf["error"]
    page.goto(f"/jobs/{clf['id']}")
    page.get_by_role("link", name="Interpretation", exact=True).click()
    expect(page.locator("table.confusion tbody tr")).to_have_count(2)
    losses = page.locator("h2#tl-h + ol.texts > li")
    assert losses.count() >= 1
    expect(losses.first).to_contain_text(re.compile(r"given\s+\w+\s+·\s+predicted\s+\w+"))
    expect(losses.first.locator("p").last).to_contain_text(re.compile(r"\w+ \w+ \w+"))  # the text itself
    shoot(page, "text-interpretation")

    step("the playground classifies a text")
    # The classifier, asked by its name: a textarea, not an image; its words coloured by their weight. The text
    # goes into the page as text, never as markup.
    page.goto("/playground?name=sentiment")
    expect(page.get_by_label("Image", exact=True)).to_be_hidden()
    typed = f"Overall the film was {POSITIVE[4]} tonight <b>so</b> I recommend it"
    page.get_by_label("Text", exact=True).fill(typed)
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#bars li")).to_have_count(2)
    words = page.locator("#word-weights span")
    assert words.count() >= 8
    expect(page.locator("#word-weights b")).to_have_count(0)
    weights = [float(w) for w in words.evaluate_all("spans => spans.map((s) => s.dataset.weight)")]
    assert max(weights) == 1.0 and min(weights) < 1.0
    heaviest = words.nth(weights.index(1.0))
    lightest = words.nth(weights.index(min(weights)))
    colour = "el => getComputedStyle(el).backgroundColor"
    strong, faint = heaviest.evaluate(colour), lightest.evaluate(colour)
    assert alpha(strong) > alpha(faint), (strong, faint)  # the heavier the word, the stronger its colour
    expect(page.locator("#answer-canvas")).to_be_hidden()
    shoot(page, "text-playground-classify")

    step("the playground continues a prompt")
    page.goto(f"/playground?model={lm['model_id']}")
    expect(page.get_by_label("Text", exact=True)).to_be_hidden()
    page.get_by_label("Prompt").fill("I thought the movie was")
    page.get_by_label("Words to write").fill("12")
    page.get_by_role("button", name="Generate").click()
    generated = page.locator("#generated")
    expect(generated).to_contain_text(re.compile(r"^I thought the movie was \S+"))
    expect(generated.locator("strong")).to_have_text("I thought the movie was")
    expect(page.locator("[data-correct]")).to_be_hidden()
    shoot(page, "text-playground-generate")

    step("predictions show their texts")
    page.goto("/predictions")
    said = page.locator("blockquote.said")
    expect(said.filter(has_text="Overall the film was")).to_have_count(1)
    expect(page.locator(".queue img")).to_have_count(0)
    shoot(page, "text-predictions")

    step("phone widths")
    page.set_viewport_size({"width": 390, "height": 844})
    paths = [f"/datasets/{dataset_id}", "/jobs", f"/jobs/{lm_id}", f"/jobs/{clf['id']}/interpretation"]
    for path in [*paths, "/playground?name=sentiment", "/predictions"]:
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
