"""Record what fastai 2.8 gives for the tests' inputs, so that the tests compare fitcycle with fastai without fastai
installed (it is never a project dependency): writes tests/engine/fastai_reference.json with

  - the tokens of fastai's default tokenizer (fastai.text.core.tokenize_texts: its rules, spaCy's blank English,
    replace_space) for tests/engine/test_text_tokenizer.py's texts;
  - fastai's make_vocab over those tokens' counts, for each min_freq and max_vocab the test asks about;
  - the names and shapes of fastai's AWD-LSTM language model state (get_language_model, emb 4, hid 6, 3 layers, 12
    words) that tests/weights_fixtures.py imitates.

This script collects the texts here (the project's venv) and runs fastai in the environment of
bench/fastai_venv.py (made on first use). Run it again after changing those tests' inputs:

    .venv/bin/python bench/fastai_fixtures.py [--fastai-python PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "engine" / "fastai_reference.json"
VOCAB_GRID = {"min_freq": (1, 2, 3, 5), "max_vocab": (9, 16, 30, 57, 60000)}
AWD_LSTM_SIZES = {"vocab": 12, "emb_sz": 4, "n_hid": 6, "n_layers": 3}


def fastai_reference(texts: list[str]) -> dict[str, Any]:
    """What fastai gives for these texts (run in the fastai venv)."""
    from collections import Counter

    import fastai
    import spacy
    from fastai.text.core import tokenize_texts
    from fastai.text.data import make_vocab
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_config
    from fastai.text.models.core import get_language_model

    tokens = [list(t) for t in tokenize_texts(texts, n_workers=0)]
    counts = Counter(token for t in tokens for token in t)
    vocabs = [
        {"min_freq": f, "max_vocab": m, "itos": list(make_vocab(counts, min_freq=f, max_vocab=m))}
        for f in VOCAB_GRID["min_freq"]
        for m in VOCAB_GRID["max_vocab"]
    ]
    sizes = {k: v for k, v in AWD_LSTM_SIZES.items() if k != "vocab"}
    model = get_language_model(AWD_LSTM, AWD_LSTM_SIZES["vocab"], config=dict(awd_lstm_lm_config, **sizes))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {
        "made_by": "bench/fastai_fixtures.py",
        "fastai": fastai.__version__,
        "spacy": spacy.__version__,
        "texts": texts,
        "tokens": tokens,
        "vocabs": vocabs,
        "awd_lstm": {"sizes": AWD_LSTM_SIZES, "state_shapes": shapes},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fastai-python", default=None, help="default: bench/fastai_venv.py's environment")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # in the fastai venv: texts on stdin, the reference on stdout
        json.dump(fastai_reference(json.load(sys.stdin)), sys.stdout, ensure_ascii=False)
        return

    sys.path.insert(0, str(ROOT))
    from bench.fastai_venv import fastai_python
    from tests.engine.test_text_tokenizer import SENTENCES, SHIPPED_TEXTS

    python = args.fastai_python or str(fastai_python())
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child"],
        input=json.dumps(SENTENCES + SHIPPED_TEXTS),
        capture_output=True,
        text=True,
        check=True,
    )
    reference = json.loads(proc.stdout)
    FIXTURE.write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE.relative_to(ROOT)}: fastai {reference['fastai']}, spaCy {reference['spacy']}")


if __name__ == "__main__":
    main()
