"""fastai's default word tokenizer and vocabulary, reimplemented token for token [fastai 2.8: text.core's rules,
`SpacyTokenizer`, `TokenizeWithRules` and `tokenize_texts`; text.data's `make_vocab` and `Numericalize`].

A text goes through fastai's rules as a string (fix_html, replace_rep, replace_wrep, spec_add_spaces,
rm_useless_spaces, replace_all_caps, replace_maj, lowercase, which puts xxbos first), then through spaCy's blank
English tokenizer with the special tokens as special cases, then each token through replace_space. Nothing is
downloaded: `spacy.blank("en")` is the rule-based tokenizer alone. Tokenized texts are cached per dataset version
as JSON lines, keyed by the texts and the tokenizer's version.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from core.engine.errors import BundleError, DataError

if TYPE_CHECKING:
    from spacy.tokenizer import Tokenizer as SpacyTokenizer

# The special tokens, named and ordered as fastai's (`defaults.text_spec_tok`).
UNK = "xxunk"  # a token not in the vocabulary; id 0
PAD = "xxpad"
BOS = "xxbos"  # begins every text
EOS = "xxeos"
FLD = "xxfld"
TK_REP = "xxrep"  # a repeated character: xxrep 5 o
TK_WREP = "xxwrep"  # a repeated word: xxwrep 4 very
TK_UP = "xxup"  # the next word was in ALL CAPS
TK_MAJ = "xxmaj"  # the next word was Capitalized
SPECIAL_TOKENS: tuple[str, ...] = (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)
FAKE = "xxfake"  # pads a vocabulary to a multiple of 8, as fastai's make_vocab does

# Part of every cache key: bump it whenever a rule below, or the way tokens are stored, changes.
TOKENIZER_VERSION = "fastai-2.8-en-2"

MAX_VOCAB_ENTRIES = 1_000_000
# Starting a worker costs about a second (spawn, import spaCy): give each one at least a second's work, about a
# million characters (1,000 reviews of 200 words), or tokenize in this process.
MIN_CHARS_PER_WORKER = 1_000_000
CHUNKS_PER_WORKER = 4  # several chunks each, so a worker that gets the long texts does not hold up the rest


# fastai's rules on the string, in fastai's order. Each is a copy of fastai's, regular expression for
# regular expression: a "better" rule here would break parity with models trained by fastai.
_RE_SPEC = re.compile(r"([/#\\])")
_RE_SPACE = re.compile(" {2,}")
_RE_REP = re.compile(r"(\S)(\1{2,})")
_RE_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_RE_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
_RE_MAJ = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")


def fix_html(text: str) -> str:
    """Undo the HTML escapes and markup leftovers that scraped documents carry."""
    text = (
        text.replace("#39;", "'")
        .replace("amp;", "&")
        .replace("#146;", "'")
        .replace("nbsp;", " ")
        .replace("#36;", "$")
        .replace("\\n", "\n")
        .replace("quot;", "'")
        .replace("<br />", "\n")
        .replace('\\"', '"')
        .replace("<unk>", UNK)
        .replace(" @.@ ", ".")
        .replace(" @-@ ", "-")
        .replace("...", " …")
    )
    return html.unescape(text)


def replace_rep(text: str) -> str:
    """Replace a character repeated 3+ times by xxrep, the count and the character: 'cccc' -> ' xxrep 4 c '."""

    def _replace(m: re.Match[str]) -> str:
        char, rest = m.groups()
        return f" {TK_REP} {len(rest) + 1} {char} "

    return _RE_REP.sub(_replace, text)


def replace_wrep(text: str) -> str:
    """Replace a word repeated 3+ times by xxwrep, the count and the word: 'a a a a' -> ' xxwrep 4 a '."""

    def _replace(m: re.Match[str]) -> str:
        word, repeats, end = m.groups()
        return f" {TK_WREP} {len(repeats.split()) + 2} {word} {end}"

    return _RE_WREP.sub(_replace, text)


def spec_add_spaces(text: str) -> str:
    """Put spaces around / # and \\ so that spaCy splits them off."""
    return _RE_SPEC.sub(r" \1 ", text)


def rm_useless_spaces(text: str) -> str:
    """Squeeze runs of spaces into one."""
    return _RE_SPACE.sub(" ", text)


def replace_all_caps(text: str) -> str:
    """Lower a word in ALL CAPS (two letters or more) and put xxup before it."""

    def _replace(m: re.Match[str]) -> str:
        space, word = m.group(1), m.group(2)
        return f"{space}{TK_UP + ' ' if len(word) > 1 else ''}{word.lower()}"

    return _RE_ALL_CAPS.sub(_replace, text)


def replace_maj(text: str) -> str:
    """Lower a Capitalized word (two characters or more) and put xxmaj before it."""

    def _replace(m: re.Match[str]) -> str:
        space, word = m.group(1), m.group(2)
        return f"{space}{TK_MAJ + ' ' if len(word) > 1 else ''}{word.lower()}"

    return _RE_MAJ.sub(_replace, text)


def lowercase(text: str) -> str:
    """Lower the whole text, strip its ends and put xxbos first (fastai's default: no xxeos)."""
    return f"{BOS} {text.lower().strip()}"


def replace_space(token: str) -> str:
    """Turn a space inside a token into '▁', so that tokens joined by spaces split back the same."""
    return token.replace(" ", "▁")


TEXT_RULES: tuple[Callable[[str], str], ...] = (
    fix_html,
    replace_rep,
    replace_wrep,
    spec_add_spaces,
    rm_useless_spaces,
    replace_all_caps,
    replace_maj,
    lowercase,
)


@functools.cache
def _spacy_tokenizer() -> SpacyTokenizer:
    """This process's spaCy English tokenizer (made once: spacy.blank takes a while), special tokens kept whole."""
    import spacy
    from spacy.symbols import ORTH

    tokenizer = cast("SpacyTokenizer", spacy.blank("en").tokenizer)
    for token in SPECIAL_TOKENS:
        tokenizer.add_special_case(token, [{ORTH: token}])
    return tokenizer


MAX_RUN = 200  # characters without a space: spaCy and the capitals rule take time in the square of a run's length
_RE_LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")


def break_long_runs(text: str) -> str:
    """Runs of more than MAX_RUN characters without a space, cut by a space every MAX_RUN characters. No word is that
    long, so fastai's tokens are unchanged for any text but one built to make tokenizing slow ("([" * 50,000 took
    minutes): each run's cost is then bounded, and a text's is linear in its length."""
    if len(text) <= MAX_RUN:
        return text
    return _RE_LONG_RUN.sub(lambda m: " ".join(m[0][i : i + MAX_RUN] for i in range(0, len(m[0]), MAX_RUN)), text)


def apply_rules(text: str) -> str:
    """The text after fastai's string rules, ready for spaCy (very long space-free runs broken first)."""
    text = break_long_runs(text)
    for rule in TEXT_RULES:
        text = rule(text)
    return text


def tokenize(text: str) -> list[str]:
    """One text's tokens: fastai's rules, spaCy's English tokenizer, then replace_space on each token."""
    return [replace_space(token.text) for token in _spacy_tokenizer()(apply_rules(text))]


def _tokenize_chunk(texts: Sequence[str]) -> list[list[str]]:
    return [tokenize(text) for text in texts]


def _start_worker() -> None:
    """Make a pool worker's spaCy tokenizer before its first chunk, without torch.

    spaCy's thinc imports torch when it can (2 s and hundreds of MB per worker) and needs none of it to
    tokenize; a spawned worker runs nothing else, so it hides torch from thinc. A worker whose parent's main
    module already imported torch keeps it."""
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` now raises ImportError
    _spacy_tokenizer()


def _worker_count(requested: int | None, texts: Sequence[str]) -> int:
    """How many processes to use: every core unless told, each with at least MIN_CHARS_PER_WORKER characters."""
    if requested is None:
        requested = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested < 1:
        raise ValueError(f"n_workers must be at least 1 (or None for every core), got {requested}")
    return max(1, min(requested, len(texts), sum(map(len, texts)) // MIN_CHARS_PER_WORKER))


def tokenize_texts(texts: Sequence[str], n_workers: int | None = None) -> list[list[str]]:
    """Tokenize every text, in order, on `n_workers` processes (None: every core; 1 or little text: this process)."""
    workers = _worker_count(n_workers, texts)
    if workers == 1:
        return _tokenize_chunk(texts)
    size = -(-len(texts) // (workers * CHUNKS_PER_WORKER))
    chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
    # spawn, not fork: the parent may hold torch's threads or CUDA, which a forked child must not inherit. A spawned
    # worker imports only the parent's main script and this module.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker) as pool:
        return [tokens for chunk in pool.map(_tokenize_chunk, chunks) for tokens in chunk]


# The cache of tokenized texts: one JSON list of tokens a line, a line a text (tokens can hold newlines).
def _cache_key(texts: Sequence[str]) -> str:
    """sha256 over the tokenizer's version, spaCy's version (its English exceptions can change) and the texts."""
    digest = hashlib.sha256(f"{TOKENIZER_VERSION}\0spacy {version('spacy')}\0{len(texts)}\0".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _read_cache(path: Path, n_texts: int) -> list[list[str]] | None:
    """The cached token lists, or None when the file is missing or not what was written (then tokenize again)."""
    try:
        with path.open(encoding="utf-8", errors="surrogatepass", newline="\n") as f:
            token_lists = [json.loads(line) for line in f]
    except (OSError, ValueError):
        return None
    if len(token_lists) != n_texts or not all(isinstance(tokens, list) for tokens in token_lists):
        return None
    return token_lists


def _write_cache(path: Path, token_lists: list[list[str]]) -> None:
    """Write the token lists beside `path`, then rename into place: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass", newline="\n") as f:
            for tokens in token_lists:
                f.write(json.dumps(tokens, ensure_ascii=False))
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tokenize_cached(texts: Sequence[str], cache_dir: Path, n_workers: int | None = None) -> list[list[str]]:
    """`tokenize_texts`, read from `cache_dir` when these texts were tokenized by this version before."""
    path = Path(cache_dir) / f"tokens-{_cache_key(texts)}.jsonl"
    cached = _read_cache(path, len(texts))
    if cached is not None:
        return cached
    token_lists = tokenize_texts(texts, n_workers=n_workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_cache(path, token_lists)
    return token_lists


class _TokenIds(dict[str, int]):
    """Token -> id; a token not in the vocabulary is xxunk's id, 0 (without being added, unlike a defaultdict)."""

    def __missing__(self, token: str) -> int:
        return 0


def _vocab_problem(itos: object) -> str | None:
    """What is wrong with a list of tokens as a vocabulary, or None."""
    if not isinstance(itos, list):
        return f"expected a JSON list of tokens, found {type(itos).__name__}"
    if len(itos) > MAX_VOCAB_ENTRIES:
        return f"expected at most {MAX_VOCAB_ENTRIES:,} tokens, found {len(itos):,}"
    not_str = next((i for i, token in enumerate(itos) if not isinstance(token, str)), None)
    if not_str is not None:
        return f"expected every token to be a string, found {type(itos[not_str]).__name__} at index {not_str}"
    if tuple(itos[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        return f"expected the special tokens {list(SPECIAL_TOKENS)} first, found {itos[: len(SPECIAL_TOKENS)]}"
    counts = Counter(token for token in itos if token != FAKE)
    repeated = [token for token, n in counts.items() if n > 1]
    if repeated:
        return f"expected each token once, found {repeated[:5]} more than once"
    return None


@dataclass(frozen=True)
class Vocab:
    """The tokens a model knows, by id [fastai: make_vocab + Numericalize]: specials first, xxunk is 0."""

    itos: list[str]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _vocab_problem(self.itos)
        if problem is not None:
            raise DataError(f"Not a vocabulary: {problem}.")
        # xxfake pads the table and is never a token's id, as in fastai's Numericalize.
        ids = _TokenIds((token, i) for i, token in enumerate(self.itos) if token != FAKE)
        object.__setattr__(self, "stoi", ids)

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], min_freq: int = 3, max_vocab: int = 60000) -> Vocab:
        """fastai's make_vocab: the max_vocab most frequent tokens seen min_freq times or more (ties in first-seen
        order), the special tokens first, then as many xxfake as bring the length up to a multiple of 8 (1 to 8)."""
        if max_vocab < len(SPECIAL_TOKENS):
            raise ValueError(f"max_vocab must leave room for the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        frequent = [token for token, n in counts.most_common(max_vocab) if n >= min_freq]
        specials = set(SPECIAL_TOKENS)
        itos = [*SPECIAL_TOKENS, *(token for token in frequent if token not in specials)][:max_vocab]
        # fastai adds 8 - len % 8: a length already a multiple of 8 still gets eight.
        return cls(itos + [FAKE] * (8 - len(itos) % 8))

    def __len__(self) -> int:
        return len(self.itos)

    def numericalize(self, tokens: Iterable[str]) -> np.ndarray:
        """The tokens' ids (int64); a token not in the vocabulary is xxunk, 0."""
        stoi = self.stoi
        return np.fromiter((stoi[token] for token in tokens), dtype=np.int64)

    def textify(self, ids: Iterable[int] | np.ndarray) -> str:
        """The tokens of these ids, joined by spaces."""
        array = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= len(self.itos)):
            raise ValueError(f"ids must be in [0, {len(self.itos)}), found {array.min()}..{array.max()}")
        return " ".join(self.itos[i] for i in array.tolist())

    def to_json(self) -> str:
        """The vocabulary as a JSON list of tokens, id order."""
        return json.dumps(self.itos, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        """A vocabulary stored by to_json, checked: a list of at most 1,000,000 strings, the special tokens first."""
        try:
            itos = json.loads(text)
        except ValueError as e:
            raise BundleError(f"The stored vocabulary is not JSON ({e}); export the model again.") from None
        problem = _vocab_problem(itos)
        if problem is not None:
            raise BundleError(f"The stored vocabulary is unusable: {problem}; export the model again.")
        return cls(itos)
