"""A text dataset made here, no download: short reviews whose sentiment is carried by adjectives, written so that
the unlabelled texts carry the signal (the ULMFiT setting). The labelled reviews use a few adjectives of each side;
the validation reviews use others, which only the unlabelled texts show in the same places as the labelled ones. A
classifier from a random encoder has never seen the validation's adjectives; one on a language model's encoder has
learnt that they stand where 'good' or 'bad' stand, and what follows them."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "brilliant", "delightful", "fantastic", "lovely"]
POSITIVE += ["fine"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dreadful", "horrible", "dull", "lousy", "weak", "boring"]
SUBJECTS = ["movie", "film", "story", "plot", "acting", "ending", "cast", "script", "music", "show"]
OPENERS = ["I thought the", "Honestly the", "We all agreed the", "My friend said the", "To me the", "Overall the"]
FILLERS = ["tonight", "again", "at the cinema", "on the sofa", "with my family", "last week", "in the end", "twice"]
# What follows a word of each side in the unlabelled texts: its context, which a language model learns.
POSITIVE_TAIL = ["so I would watch it again", "so I loved every minute", "so I recommend it", "so we smiled"]
NEGATIVE_TAIL = ["but I want my money back", "but I left early", "but I would not recommend it", "but we sighed"]


def review(rng: random.Random, word: str, positive: bool, tail: bool) -> str:
    """One review around `word`."""
    text = f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS)} was {word}"
    if tail:  # what follows the word says its side: a language model learns it, and so where the word stands
        text += f" {rng.choice(POSITIVE_TAIL if positive else NEGATIVE_TAIL)}"
    return text + f" {rng.choice(FILLERS)}" + rng.choice([".", "!", "..."])


def write_reviews(dest: str | Path, n_labelled: int = 200, n_unlabelled: int = 1500, seed: int = 0) -> Path:
    """`dest`/texts.csv with columns text, label, is_valid: labelled reviews of the first 2 adjectives of each side
    (training) and of the other 8 (validation, half as many), and unlabelled reviews of every adjective, each with
    the words that follow its side (the language model's signal)."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, str]] = []
    for i in range(n_labelled):
        positive = i % 2 == 0
        words = (POSITIVE if positive else NEGATIVE)[:2]
        rows.append((review(rng, rng.choice(words), positive, tail=False), "pos" if positive else "neg", "0"))
    for i in range(n_labelled // 2):
        positive = i % 2 == 0
        words = (POSITIVE if positive else NEGATIVE)[2:]
        rows.append((review(rng, rng.choice(words), positive, tail=False), "pos" if positive else "neg", "1"))
    for i in range(n_unlabelled):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append((review(rng, word, positive, tail=True), "", "0"))
    rng.shuffle(rows)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "texts.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "is_valid"])
        writer.writerows(rows)
    return dest / "texts.csv"
