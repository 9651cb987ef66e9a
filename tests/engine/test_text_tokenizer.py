"""The text tokenizer and vocabulary give fastai's tokens and ids, token for token: a model fine-tuned here reads
text as the fastai model it came from did. fastai is not a dependency: what it gives for these texts is recorded in
fastai_reference.json by bench/fastai_fixtures.py (run it again after changing SENTENCES)."""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.errors import BundleError
from core.engine.text import tokenizer
from core.engine.text.tokenizer import (
    SPECIAL_TOKENS,
    UNK,
    Vocab,
    tokenize,
    tokenize_cached,
    tokenize_texts,
)

SENTENCES = [
    "This movie was great!",
    "I LOVED it. THE BEST FILM OF THE YEAR.",
    "It was sooooo boring... I fell asleep!!!!",
    "very very very very bad acting",
    "the the the end",
    "Fish & chips &amp; a pint &lt;3 &quot;cheers&quot; &#39;mate&#39;",
    "Line one<br />Line two<br /><br />Line three",
    "He said #39;hello#39; and quot;bye quot; with nbsp;spaces #36;5",
    "Don't do that. I'm sure you'll regret it; they've said so, haven't they?",
    "Numbers: 1,234.56 and 3.14, 42nd street, 1990s, 10:30pm, $20, 50%.",
    "A well-known state-of-the-art mother-in-law -- a dash — an em dash.",
    "Café naïve résumé façade Über Ärger straße",
    "Emoji 😀 are fun 👍🏽 right? 🎬🍿",
    "",
    "   ",
    "\n\n",
    "First line\nsecond line\r\nthird\tcolumn",
    "Visit https://www.example.com/path/to/page?x=1&y=2#frag or mail me@example.org",
    "C:\\Users\\me\\file.txt and a/b/c and #hashtag",
    "Mr. Smith went to Washington D.C. on Jan. 5th, U.S.A.",
    "I",
    "A",
    "OK then, I'm OK.",
    "HTML <b>bold</b> and <i>italic</i> tags <unk> too",
    "wikitext @-@ style @.@ numbers 1 @,@ 000",
    "Ellipsis... and more.... and more.....",
    "Quotes: 'single' \"double\" `back` «guillemets» “curly”",
    "Tabs\tand  double  spaces   and    more",
    "!!!???...,,,;;;",
    "aaa bbb ccc",
    "xxbos xxunk xxmaj already special tokens xxfake",
    "CamelCase McDonald iPhone eBay NASA's JSON-RPC",
    "Don't STOP believing!!! Hold on to that FEELING.",
    "It's 5 o'clock somewhere, y'all.",
    "Ünïcödé ÀLL CÄPS and Ωmega",
    "日本語のテキストも大丈夫ですか。中文也可以。",
    "Hyphen-ated-words and under_scores and dots.in.words",
    'Backslash-quote \\"escaped\\" and literal \\n newline',
    "repeated words words words words, and words!",
    "The end.",
]


def _zen() -> str:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        import this  # noqa: F401  (prints the Zen of Python on import)
    return out.getvalue()


# Real prose shipped with Python: module docstrings and the Zen (bench/fastai_fixtures.py records fastai's tokens).
SHIPPED_TEXTS = [_zen(), str(difflib.__doc__), str(textwrap.__doc__), str(json.__doc__), str(contextlib.__doc__)]


FASTAI_REFERENCE = Path(__file__).with_name("fastai_reference.json")


def _fastai_reference() -> dict[str, Any]:
    """fastai 2.8's tokens for the texts (tokenized as TextDataLoaders' default path does: tokenize_df's default
    rules, WordTokenizer, replace_space) and its make_vocab, as bench/fastai_fixtures.py recorded them."""
    reference = json.loads(FASTAI_REFERENCE.read_text(encoding="utf-8"))
    assert reference["texts"][: len(SENTENCES)] == SENTENCES, "SENTENCES changed: run bench/fastai_fixtures.py"
    return reference


def test_tokens_match_fastai_token_for_token() -> None:
    reference = _fastai_reference()
    texts = reference["texts"]  # SENTENCES, then SHIPPED_TEXTS as the recording's Python had them
    ours = [tokenize(text) for text in texts]
    for text, a, b in zip(texts, ours, reference["tokens"], strict=True):
        assert a == b, f"{text!r}"
    # The sentences reach the rules they were written for.
    every = Counter(token for tokens in ours for token in tokens)
    assert all(every[token] > 0 for token in SPECIAL_TOKENS if token not in ("xxpad", "xxeos", "xxfld"))
    assert ours[SENTENCES.index("")] == ["xxbos"]


def test_vocab_matches_fastai_make_vocab() -> None:
    reference = _fastai_reference()
    token_lists = [tokenize(text) for text in reference["texts"]]
    # Ties on purpose: many tokens share a count, and their order is the order they were first seen.
    grid = {(v["min_freq"], v["max_vocab"]) for v in reference["vocabs"]}
    assert grid == {(f, m) for f in (1, 2, 3, 5) for m in (9, 16, 30, 57, 60000)}
    for recorded in reference["vocabs"]:
        min_freq, max_vocab = recorded["min_freq"], recorded["max_vocab"]
        ours = Vocab.build(token_lists, min_freq=min_freq, max_vocab=max_vocab)
        assert ours.itos == recorded["itos"], (min_freq, max_vocab)
        assert len(ours) % 8 == 0


def test_a_multiple_of_eight_still_gets_eight_fakes_as_in_fastai() -> None:
    vocab = Vocab.build([["a"] * 3], min_freq=1, max_vocab=10)  # 9 specials + 'a' -> 10, padded to 16
    assert vocab.itos == [*SPECIAL_TOKENS, "a", *["xxfake"] * 6]
    tokens = [f"w{i}" for i in range(7)]  # 9 + 7 = 16 already a multiple of 8: fastai still adds 8
    assert len(Vocab.build([tokens], min_freq=1)) == 24


def test_numericalize_textify_round_trip() -> None:
    vocab = Vocab.build([tokenize(text) for text in SENTENCES], min_freq=2)
    tokens = tokenize("This movie was very very very very bad, I'm sure.")
    ids = vocab.numericalize(tokens)
    assert ids.dtype == np.int64 and ids.shape == (len(tokens),)
    known = [token if token in vocab.stoi else UNK for token in tokens]
    assert vocab.textify(ids) == " ".join(known)
    assert vocab.numericalize(["zyzzyva", "xxfake"]).tolist() == [0, 0]
    assert vocab.stoi["zyzzyva"] == 0 and "zyzzyva" not in vocab.stoi  # a miss is xxunk and adds nothing
    assert vocab.numericalize([]).tolist() == []
    with pytest.raises(ValueError, match="ids must be in"):
        vocab.textify([len(vocab)])


def test_vocab_json_round_trip_and_refusals() -> None:
    vocab = Vocab.build([tokenize(text) for text in SENTENCES], min_freq=1)
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab and again.stoi == vocab.stoi
    specials = list(SPECIAL_TOKENS)
    bad = {
        "not JSON": "[",
        "expected a JSON list": json.dumps({"itos": specials}),
        "to be a string, found int at index 9": json.dumps([*specials, 7]),
        "at most 1,000,000": json.dumps(specials + [f"t{i}" for i in range(1_000_000)]),
        "special tokens": json.dumps(["the", *specials]),
        "more than once": json.dumps([*specials, "the", "the"]),
    }
    for message, text in bad.items():
        with pytest.raises(BundleError, match=message):
            Vocab.from_json(text)


def test_workers_give_the_serial_tokens_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"Text number {i}: {SENTENCES[i % len(SENTENCES)]}" for i in range(120)]
    assert tokenizer._worker_count(None, texts) == 1  # little text: no pool, whatever the cores
    with pytest.raises(ValueError, match="n_workers"):
        tokenize_texts(texts, n_workers=0)
    monkeypatch.setattr(tokenizer, "MIN_CHARS_PER_WORKER", 1)  # a pool even for a little text
    assert tokenizer._worker_count(2, texts) == 2
    assert tokenize_texts(texts, n_workers=2) == tokenize_texts(texts, n_workers=1) == [tokenize(t) for t in texts]


def test_cache_hits_for_the_same_texts_and_misses_for_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [*SENTENCES, "a text\nwith lines\u2028and a separator"]
    first = tokenize_cached(texts, tmp_path / "cache", n_workers=1)
    assert first == [tokenize(text) for text in texts]
    (stored,) = (tmp_path / "cache").iterdir()
    assert [json.loads(line) for line in stored.read_text(encoding="utf-8").split("\n")[:-1]] == first

    def _no_tokenizing(texts: list[str], n_workers: int | None = None) -> list[list[str]]:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tokenizer, "tokenize_texts", _no_tokenizing)
    assert tokenize_cached(texts, tmp_path / "cache") == first
    with pytest.raises(AssertionError, match="cache was not used"):
        tokenize_cached([*texts[:-1], "another text"], tmp_path / "cache")

    # A damaged cache file is a miss, never an error or a wrong answer.
    monkeypatch.undo()
    stored.write_text('["xxbos"]\n', encoding="utf-8")
    assert tokenize_cached(texts, tmp_path / "cache", n_workers=1) == first
