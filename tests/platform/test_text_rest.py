"""The course's ULMFiT flow over REST with PostgreSQL, Redis, S3 and a Celery worker: a bare CSV of texts (some
unlabelled) uploaded, a language model on all of them, a classifier on its encoder (stage 1, then stage 2), answers
for texts (with each word's weight) and generated text, and the refusals a user meets on the way."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.datasets.text_samples import NEGATIVE, POSITIVE, write_reviews
from tests.platform.services import wait_for
from tests.platform.stack import Stack

TINY = {"emb_sz": 48, "n_hid": 96, "n_layers": 2}


def test_language_model_then_classifier_over_rest(stack: Stack, tmp_path: Path, fashion_zip: Path) -> None:
    a = stack.a
    images = a.upload("not-texts", fashion_zip).json()
    refused = a.post("/jobs", json={"kind": "language_model", "dataset_id": images["id"]})
    assert refused.status_code == 422 and "labels=text_csv" in refused.json()["detail"], refused.text
    csv = write_reviews(tmp_path / "reviews", n_labelled=160, n_unlabelled=2000, seed=2)
    res = a.upload("reviews", csv, labels="text_csv", valid_col="is_valid")
    assert res.status_code == 201, res.text
    ds = res.json()
    assert ds["classes"] == ["neg", "pos"] and ds["n_items"] == 160 + 80 + 2000
    assert ds["labels"]["kind"] == "text_csv" and ds["split"] == "column"

    # A kind that takes no texts, an image architecture, ImageNet weights: each a 422 that says what to do.
    for body, field in (
        ({"kind": "language_model", "arch": "resnet18"}, "arch"),
        ({"kind": "language_model", "pretrained": "imagenet"}, "pretrained"),
        ({"kind": "language_model", "gpus": 2, "bs": 64}, "kind"),
    ):
        refused = a.post("/jobs", json={"dataset_id": ds["id"], **body})
        assert refused.status_code == 422 and refused.json()["detail"].startswith(f"{field}:"), refused.text

    common = {"dataset_id": ds["id"], "bs": 32, "seq_len": 24, "min_freq": 1}
    lm = a.wait(
        a.submit(kind="language_model", arch_config=TINY, freeze_epochs=0, epochs=6, **common)["id"], timeout=900
    )
    assert lm["state"] == "succeeded", lm["error"]
    assert lm["spec"]["arch"] == "awd_lstm" and lm["spec"]["pretrained"] == "none" and lm["spec"]["lr"] == 0.02
    result = lm["result"]
    assert result["perplexity"] < result["unigram_perplexity"] / 4, result
    assert result["name"] == "reviews-lm"  # a registry name of its own: the classifiers' champion is not an LM
    epochs = a.get(f"/jobs/{lm['id']}/metrics").json()["epochs"]
    assert len(epochs) == 6 and all(e["metrics"]["perplexity"] > 0 for e in epochs)
    samples = a.get(f"/jobs/{lm['id']}/artifacts/samples.json").json()
    assert len(samples) == 6

    generated = a.post(f"/models/{lm['model_id']}/generate", json={"prompt": "I thought the", "words": 10, "seed": 1})
    assert generated.status_code == 200, generated.text
    again = a.post(f"/models/{lm['model_id']}/generate", json={"prompt": "I thought the", "words": 10, "seed": 1})
    assert generated.json()["text"] == again.json()["text"] and generated.json()["text"].startswith("I thought the")
    assert a.post(f"/models/{lm['model_id']}/predict-text", json={"texts": ["x"]}).status_code == 422

    # A search over a text classifier on the LM's encoder: its objective is the classifier's accuracy.
    res = a.post(
        "/searches",
        json={
            "base": {"kind": "stage1", "parent_job_id": lm["id"], "epochs": 1, **common},
            "space": {"lr": {"choice": [0.005, 0.02]}, "drop_mult": {"choice": [0.5]}},
            "sampler": "grid",
            "pruner": "none",
        },
    )
    assert res.status_code == 201, res.text
    search_id = res.json()["id"]
    searched = wait_for(
        lambda: (s := a.get(f"/searches/{search_id}").json())["state"] != "running" and s, 600, "the text search", 1.0
    )
    assert searched["state"] == "succeeded" and searched["max_trials"] == 2, searched["error"]
    assert searched["objective"] == {"metric": "accuracy", "direction": "maximize"}
    assert sorted(t["params"]["lr"] for t in searched["trials"]) == [0.005, 0.02]
    assert searched["best"]["value"] == max(t["value"] for t in searched["trials"])

    stage1 = a.wait(a.submit(kind="stage1", parent_job_id=lm["id"], epochs=1, **common)["id"], timeout=600)
    assert stage1["state"] == "succeeded", stage1["error"]
    assert stage1["spec"]["lr"] == 0.02 and [e["tag"] for e in stage1["result"]["epochs"]] == ["head"]
    # Four unfrozen epochs: with two, the classifier was still learning (its validation loss falling), and on 1 seed
    # in 6 (or other thread timings) ended below 0.8; with four, 0.9875 to 1.0 over six seeds.
    stage2 = a.wait(a.submit(kind="stage2", parent_job_id=stage1["id"], epochs=4, **common)["id"], timeout=600)
    assert stage2["state"] == "succeeded", stage2["error"]
    assert [e["tag"] for e in stage2["result"]["epochs"]] == ["freeze_to-2", "freeze_to-3", *["unfrozen"] * 4]
    print(f"text classifier on the LM's encoder: accuracy {stage2['result']['accuracy']:.3f} on unseen adjectives")
    assert stage2["result"]["accuracy"] >= 0.8
    assert stage2["result"]["decision"]["action"] in ("promoted", "rejected")  # the gate judged it against stage 1

    interpreted = a.wait(a.submit(kind="interpret", dataset_id=ds["id"], parent_job_id=stage2["id"], folds=0)["id"])
    assert interpreted["state"] == "succeeded", interpreted["error"]
    interpretation = a.get(f"/jobs/{interpreted['id']}/artifacts/interpretation.json").json()
    assert len(interpretation["confusion_matrix"]) == 2 and interpretation["top_losses"][0]["text"]
    assert interpreted["result"]["error_rate"] == pytest.approx(1 - stage2["result"]["accuracy"], abs=0.02)

    model = stage2["model_id"]
    texts = [f"To me the plot was {POSITIVE[6]} twice.", f"To me the plot was {NEGATIVE[6]} twice."]
    answered = a.post(f"/models/{model}/predict-text", json={"texts": texts, "explain": True})
    assert answered.status_code == 200, answered.text
    results = answered.json()["results"]
    assert [r["top"][0] for r in results] == ["pos", "neg"] and all(r["task"] == "text_classification" for r in results)
    assert all(r["prediction_id"] and max(w for _, w in r["words"]) == 1.0 for r in results)
    logged = a.get("/predictions", params={"order": "uncertainty"}).json()["data"]
    assert {r["prediction_id"] for r in results} <= {p["id"] for p in logged}
    image = a.post(f"/models/{model}/predict", files={"file": ("x.png", b"not an image")})
    assert image.status_code == 422 and "predict-text" in image.json()["detail"]
    too_many = a.post(f"/models/{model}/predict-text", json={"texts": ["a"] * 65})
    assert too_many.status_code == 422
    heavy = a.post(f"/models/{model}/predict-text", json={"texts": ["a"] * 9, "explain": True})
    assert heavy.status_code == 422 and "at most 8" in heavy.text

    # The feedback loop for text: corrections (one says the answer was right), a version with them, a retrain.
    wrong, right = results
    fb = a.post(f"/predictions/{wrong['prediction_id']}/feedback", json={"label": "neg"})
    assert fb.status_code == 201, fb.text
    assert a.post(f"/predictions/{right['prediction_id']}/feedback", json={"correct": True}).status_code == 201
    bad = a.post(f"/predictions/{right['prediction_id']}/feedback", json={"points": [[1, 2]]})
    assert bad.status_code == 422 and "label" in bad.json()["detail"]
    cut = a.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all"})
    assert cut.status_code == 201, cut.text
    version = cut.json()
    assert version["n_items"] == ds["n_items"] + 2 and version["changes"]["added"] == 2
    page = a.get(f"/datasets/{ds['id']}/items", params={"limit": 500, "offset": 2000}).json()
    added = {i["key"]: i for i in page["data"]}[f"feedback/{wrong['prediction_id']}.txt"]
    assert added["label"] == "neg" and added["text"] == texts[0]
    # Texts the models answered feed the next language model: a cut adds them unlabelled (not those corrected).
    served = [f"My friend said the music was {POSITIVE[8]} twice.", "To me the cast was fine in the end."]
    assert a.post(f"/models/{model}/predict-text", json={"texts": served}).status_code == 200
    grown = a.post(f"/datasets/{ds['id']}/versions", json={"add_served_texts": True})
    assert grown.status_code == 201, grown.text
    assert grown.json()["changes"]["added"] == 2 and grown.json()["n_items"] == version["n_items"] + 2
    again = a.post(f"/datasets/{ds['id']}/versions", json={"add_served_texts": True})
    assert again.status_code == 422 and "nothing to change" in again.json()["detail"]
    page = a.get(f"/datasets/{ds['id']}/items", params={"limit": 500, "offset": 2000}).json()
    assert page["n_unlabelled"] == 2002 and {i["text"] for i in page["data"] if i["key"].startswith("served/")} == set(
        served
    )

    retrain = a.wait(a.submit(kind="retrain", dataset_id=ds["id"], epochs=1)["id"], timeout=600)
    assert retrain["state"] == "succeeded", retrain["error"]
    assert retrain["result"]["encoder"] == "classifier" and "decision" in retrain["result"]

    # A text PostgreSQL cannot hold as it is (NUL) is answered and logged, its row's text made printable.
    nul = a.post(f"/models/{model}/predict-text", json={"texts": ["the plot \u0000 was fine"]})
    assert nul.status_code == 200, nul.text
    nul_id = nul.json()["results"][0]["prediction_id"]
    logged = a.get("/predictions", params={"limit": 500}).json()["data"]
    assert "the plot \ufffd was fine" in {p["filename"] for p in logged if p["id"] == nul_id}
