"""The text engine end to end on texts made here: the language model learns (its perplexity falls far below the
unigram baseline's), a classifier on its encoder beats the same classifier from a random encoder where only the
unlabelled texts carry the signal, bundles round-trip without pickle, generation is seeded, a word's weight is
its gradient, and each unusable row is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.datasets.text_samples import NEGATIVE, POSITIVE, write_reviews
from core.engine.errors import DataError
from core.engine.items import TextItems
from core.engine.rules import LabelRule
from core.engine.text.awd_lstm import AWDConfig, LanguageModel, TextClassifier, classifier_groups, lm_groups
from core.engine.text.bundle import TextPredictor
from core.engine.text.data import LMLoader, SortedLoader
from core.engine.text.learner import detokenize
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec
from core.jobs.text_training import gradual_phases

SMALL = {"emb_sz": 48, "n_hid": 96, "n_layers": 2}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reviews")
    write_reviews(folder, n_labelled=160, n_unlabelled=2400, seed=1)
    return folder


def _spec(data: Path, **kw: object) -> TrainSpec:
    base: dict[str, object] = {
        "data": str(data),
        "labels": "text_csv",
        "valid_col": "is_valid",
        "bs": 32,
        "seq_len": 24,
        "arch_config": SMALL,
        "min_freq": 1,
        "report_every_n_batches": 1000,
        "seed": 3,
    }
    return TrainSpec.model_validate(base | kw)


@pytest.fixture(scope="module")
def language_model(reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("lm")
    spec = _spec(reviews, kind="language_model", pretrained="none", freeze_epochs=0, epochs=8, lr=2e-2)
    result = run_spec(spec, LocalJobContext(out, show_progress=False))
    return out / "export", result


def test_the_language_model_learns(language_model: tuple[Path, dict[str, object]]) -> None:
    bundle, result = language_model
    perplexity, unigram = float(result["perplexity"]), float(result["unigram_perplexity"])  # type: ignore[arg-type]
    print(f"perplexity {perplexity:.2f} against the unigram baseline's {unigram:.2f}")
    assert perplexity < unigram / 4
    assert 0.3 < float(result["accuracy"]) <= 1  # type: ignore[arg-type]
    epochs = result["epochs"]
    assert isinstance(epochs, list) and len(epochs) == 8 and all("perplexity" in e for e in epochs)
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"]
    samples = json.loads((bundle.parent / "samples.json").read_text())
    assert [s["epoch"] for s in samples] == list(range(8)) and all(s["text"].startswith("The") for s in samples)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "language_model" and manifest["config"]["emb_sz"] == 48
    assert not list(bundle.glob("*.pkl")) and not list(bundle.glob("*.pth"))


def test_the_language_models_encoder_beats_a_random_one(
    reviews: Path, language_model: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    bundle, _ = language_model
    accuracy = {}
    for start, extra in (("lm", {"init_bundle": str(bundle)}), ("random", {"pretrained": "none"})):
        spec = _spec(reviews, kind="fine_tune", freeze_epochs=1, epochs=3, lr=2e-2, **extra)
        result = run_spec(spec, LocalJobContext(tmp_path / start, show_progress=False))
        accuracy[start] = float(result["accuracy"])
    print(f"validation accuracy on unseen adjectives: {accuracy}")
    assert accuracy["lm"] >= 0.85
    assert accuracy["lm"] > accuracy["random"] + 0.2
    # The classifier's gradual unfreezing ran its four steps, its rates spread 2.6^4 from the embedding to the head.
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert [e["tag"] for e in metrics["epochs"]] == ["head", "freeze_to-2", "freeze_to-3", *["unfrozen"] * 3]
    rates = metrics["lrs"]["unfrozen"]
    assert rates[-1] == pytest.approx(1e-3) and rates[-1] / rates[0] == pytest.approx(2.6**4, rel=1e-6)
    interpretation = json.loads((tmp_path / "lm" / "interpretation.json").read_text())
    assert interpretation["classes"] == ["neg", "pos"] and len(interpretation["confusion_matrix"]) == 2
    assert all("text" in row for row in interpretation["top_losses"])

    predictor = TextPredictor(tmp_path / "lm" / "export")
    texts = [f"Overall the film was {POSITIVE[5]} tonight.", f"Overall the film was {NEGATIVE[5]} tonight."]
    answers = predictor.predict_texts(texts)
    assert [a.answer()["top"][0] for a in answers] == ["pos", "neg"]
    assert abs(sum(p for _, p in answers[0].answer()["predictions"]) - 1) < 1e-5
    weights = dict(predictor.word_weights(texts[0]))
    assert max(weights.values()) == 1.0 and weights[POSITIVE[5]] > weights["film"]


def test_generation_is_seeded_and_a_bundle_holds_no_pickle(language_model: tuple[Path, dict[str, object]]) -> None:
    bundle, _ = language_model
    predictor = TextPredictor(bundle)
    one = predictor.generate("I thought the movie was", words=12, seed=7)
    assert one == predictor.generate("I thought the movie was", words=12, seed=7)
    assert one.startswith("I thought the movie was") and len(one.split()) > 8
    with pytest.raises(Exception, match="language model"):
        predictor.predict_texts(["a text"])


def test_a_language_model_from_wikitext_weights_in_the_fleets_cache(
    reviews: Path, language_model: tuple[Path, dict[str, object]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pretrained: wt103` reads fastai's file (here a small model under fastai's names, as the weights store caches
    it): stage 1 trains the embeddings and decoder frozen, stage 2 unfreezes at a tenth of the rate; a word both
    vocabularies know keeps its row."""
    from safetensors.torch import save_file

    from core.engine.pretrained import WT103_VOCAB, WT103_WEIGHTS, wt103_dir
    from core.engine.text.bundle import read_text_bundle

    _, source, vocab = read_text_bundle(language_model[0])
    cache = tmp_path / "weights"
    monkeypatch.setenv("FITCYCLE_WEIGHTS_CACHE", str(cache))
    wt103_dir().mkdir(parents=True)
    # The same model with its words in another order (rows and vocabulary alike), as another corpus would have them.
    order = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(0))
    rows = ("0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight", "1.decoder.bias")
    state = {k: (v[order] if k in rows else v).contiguous().clone() for k, v in source.state_dict().items()}
    save_file(state, str(wt103_dir() / WT103_WEIGHTS))
    (wt103_dir() / WT103_VOCAB).write_text(json.dumps([vocab.itos[i] for i in order.tolist()]))
    spec = _spec(reviews, kind="language_model", pretrained="wt103", freeze_epochs=1, epochs=1, lr=2e-4)
    spec = spec.model_copy(update={"arch_config": None})  # the sizes are the weights' own
    result = run_spec(spec, LocalJobContext(tmp_path / "out", show_progress=False))
    assert result["pretrained"] == "wt103"
    assert [e["tag"] for e in result["epochs"]] == ["stage1", "stage2"]
    lrs = result["lrs"]
    assert lrs["stage1"][0] == pytest.approx(2e-4) and lrs["stage2"][0] == pytest.approx(2e-5)
    # Starting from a model of these very texts, its first epoch already predicts them well.
    assert result["epochs"][0]["perplexity"] < float(result["unigram_perplexity"]) / 4


def test_multi_label_texts(tmp_path: Path) -> None:
    rows = ["text,label"]
    for i in range(120):
        tags = [t for t, on in (("sport", i % 2), ("music", i % 3 == 0)) if on]
        words = " ".join(["goal match" if "sport" in tags else "", "song band" if "music" in tags else "", "day"])
        rows.append(f"a {words} {i % 7},{' '.join(tags)}")
    (tmp_path / "texts.csv").write_text("\n".join(rows))
    spec = TrainSpec(
        data=str(tmp_path), labels="text_csv", label_delim=" ", pretrained="none", bs=16, seq_len=16, min_freq=1,
        arch_config=SMALL, freeze_epochs=1, epochs=4, lr=2e-2, report_every_n_batches=1000,
    )  # fmt: skip
    result = run_spec(spec, LocalJobContext(tmp_path / "out", show_progress=False))
    assert result["task"] == "text_multilabel" and result["classes"] == ["music", "sport"]
    print(f"multi-label texts: accuracy_multi {result['accuracy_multi']:.3f}")
    assert result["accuracy_multi"] > 0.8
    answer = TextPredictor(tmp_path / "out" / "export").predict("a goal match song band day 3").answer()
    assert sorted(answer["labels"]) == ["music", "sport"]


def test_lr_find_on_texts(reviews: Path, language_model: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    spec = _spec(reviews, kind="lr_find", init_bundle=str(language_model[0]), epochs=1)
    result = run_spec(spec, LocalJobContext(tmp_path, show_progress=False))
    assert result["frozen"] and set(result["suggestions"]) >= {"valley"}
    assert (tmp_path / "lr_find.json").is_file() and (tmp_path / "plots" / "lr_find.png").is_file()


def test_fastai_layer_groups_and_parameter_names() -> None:
    lm = LanguageModel(40, AWDConfig.language_model(0.3, SMALL))
    assert [len(g) for g in lm_groups(lm)] == [2, 2, 3]
    names = set(lm.state_dict())
    assert {"0.encoder.weight", "0.encoder_dp.emb.weight", "0.rnns.0.weight_hh_l0_raw", "1.decoder.bias"} <= names
    assert "0.rnns.0.module.weight_ih_l0" in names
    assert lm[1].decoder.weight is lm.encoder.encoder.weight  # type: ignore[union-attr]  # tied
    clf = TextClassifier(40, 3, AWDConfig.classifier(0.5, SMALL))
    assert len(classifier_groups(clf)) == 4  # the embedding, each LSTM, the head


def test_batches_are_streams_for_the_language_model_and_sorted_for_the_classifier() -> None:
    import numpy as np

    texts = [np.arange(n, dtype=np.int64) + 2 for n in (5, 9, 3, 30, 12, 7, 8, 2)]
    lm = LMLoader(texts, bs=2, seq_len=4, shuffle=True, seed=0, device=torch.device("cpu"))
    batches = list(lm)
    assert len(batches) == len(lm) and batches[0][0].shape == (2, 4)
    assert torch.equal(batches[0][0][:, 1:], batches[0][1][:, :-1])  # the target is the next token
    clf = SortedLoader(texts, torch.arange(8), bs=3, shuffle=False, seed=0, device=torch.device("cpu"))
    first = next(iter(clf))[0]
    assert first.shape == (3, 30) and (first[1:, 0] == 1).all()  # padded at the front, longest first
    train = SortedLoader(texts, torch.arange(8), bs=3, shuffle=True, seed=0, device=torch.device("cpu"))
    assert len(train) == 2 and sum(len(b) for b in train.batches()) == 6  # the last incomplete batch dropped


def test_gradual_unfreezing_is_the_courses() -> None:
    spec = TrainSpec(data=".", labels="text_csv", freeze_epochs=1, epochs=2)
    phases = gradual_phases(spec, 2e-2, "lm")
    assert [(p[0], p[1], p[2]) for p in phases] == [
        ("head", 1, -1),
        ("freeze_to-2", 1, -2),
        ("freeze_to-3", 1, -3),
        ("unfrozen", 2, 0),
    ]
    assert phases[1][3] == slice(1e-2 / 2.6**4, 1e-2) and phases[3][3] == slice(1e-3 / 2.6**4, 1e-3)


def test_unusable_rows_are_reported_per_row(tmp_path: Path) -> None:
    (tmp_path / "texts.csv").write_bytes(
        b"text,label\nfine text,pos\n,neg\n\xff\xfe broken,neg\n" + b"x" * 100_001 + b",pos\nno label,\nok,neg\n"
    )
    items, split = LabelRule.of("text_csv", {}).apply(tmp_path, 0.5, 1)
    assert isinstance(items, TextItems)
    reasons = {r.key: r.reason for r in items.rejected}
    assert reasons == {
        "texts.csv#2": "empty text",
        "texts.csv#3": "not UTF-8 text",
        "texts.csv#4": "over 100,000 characters",
    }
    assert items.texts == ["fine text", "no label", "ok"] and items.labels == ["pos", "", "neg"]
    assert items.n_unlabelled == 1 and items.classes == ["neg", "pos"] and split == "random"
    with pytest.raises(DataError, match=r"text_col: 'texts\.csv' has no column 'body'"):
        LabelRule.of("text_csv", {"text_col": "body"}).apply(tmp_path)


def test_imdb_folder_layout(tmp_path: Path) -> None:
    for key, text in {
        "train/pos/1.txt": "loved it",
        "train/neg/2.txt": "hated it",
        "test/pos/3.txt": "great",
        "test/neg/4.txt": "awful",
        "unsup/5.txt": "no label here",
        "unsup/6.txt": "",
        "README": "not a text",
    }.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(text)
    items, split = LabelRule.of("text_folder", {}).apply(tmp_path)
    assert isinstance(items, TextItems)
    assert split == "folder"
    assert dict(zip(items.keys, zip(items.labels, items.is_valid, strict=True), strict=True)) == {
        "test/neg/4.txt": ("neg", True),
        "test/pos/3.txt": ("pos", True),
        "train/neg/2.txt": ("neg", False),
        "train/pos/1.txt": ("pos", False),
        "unsup/5.txt": ("", False),
    }
    assert {r.key: r.reason for r in items.rejected} == {"README": "not a .txt file", "unsup/6.txt": "empty text"}


def test_detokenize_reads_fastais_special_tokens() -> None:
    tokens = [
        "xxbos",
        "xxmaj",
        "the",
        "movie",
        "was",
        "xxup",
        "great",
        "xxrep",
        "3",
        "!",
        "and",
        "i",
        "did",
        "n't",
        ".",
    ]
    assert detokenize(tokens) == "The movie was GREAT!!! and i didn't."
