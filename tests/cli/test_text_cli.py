"""The text flow from a shell, as the README's text section runs it: a language model on a CSV of texts (some
unlabelled), a classifier on its encoder, answers for texts and generated text from the two bundles."""

from __future__ import annotations

import json
from pathlib import Path

from core.datasets.text_samples import NEGATIVE, POSITIVE, write_reviews
from tests.cli.test_cli import run

SMALL = ["--arch-config", "emb_sz=48,n_hid=96,n_layers=2", "--bs", "32", "--seq-len", "24", "--min-freq", "1"]


def test_train_a_language_model_then_a_classifier_and_predict(tmp_path: Path) -> None:
    csv = write_reviews(tmp_path / "reviews", n_labelled=160, n_unlabelled=2000, seed=4)
    lm = run(
        "train", csv, "--language-model", "--epochs", "6", "--freeze-epochs", "0", *SMALL, "--out", tmp_path / "lm"
    )
    assert lm.returncode == 0, lm.stderr
    assert lm.stdout.startswith("perplexity ")
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert metrics["spec"]["valid_pct"] == 0.1 and metrics["perplexity"] < metrics["unigram_perplexity"] / 4

    clf = run(
        "train", csv, "--valid-col", "is_valid", "--pretrained", tmp_path / "lm" / "export", "--epochs", "4",
        *SMALL, "--out", tmp_path / "clf",
    )  # fmt: skip
    assert clf.returncode == 0, clf.stderr
    assert clf.stdout.startswith("accuracy ")
    assert json.loads((tmp_path / "clf" / "metrics.json").read_text())["encoder"] == "lm"

    texts = [f"Honestly the show was {POSITIVE[7]} again.", f"Honestly the show was {NEGATIVE[7]} again."]
    answered = run("predict", tmp_path / "clf" / "export", "--text", texts[0], "--text", texts[1], "--json")
    assert answered.returncode == 0, answered.stderr
    tops = [json.loads(line)["top"][0] for line in answered.stdout.splitlines()]
    assert tops == ["pos", "neg"]
    written = run("predict", tmp_path / "lm" / "export", "--generate", "My friend said the", "--words", "8")
    assert written.returncode == 0 and written.stdout.startswith("My friend said the"), written.stderr
    wrong = run("predict", tmp_path / "lm" / "export", "--text", "a text")
    assert wrong.returncode != 0 and "language model" in wrong.stderr
