"""Text: fitcycle's ULMFiT pipeline against fastai 2.8's, side by side in one run, on the same texts with the same
recipe. Each side runs in a process of its own (this script again, `--side fitcycle|fastai`), so the whole-process
time counts imports, tokenization, both trainings, exports and serving; a side writes its figures as JSON. fastai's
side runs in a virtual environment of its own (bench/fastai_venv.py, made on first use; fastai is never a project
dependency), on the project's own torch.

  1. tokenization: tokens/s of fitcycle's `tokenize_texts` and fastai's `tokenize_df` on every text (each with its
     default worker count, then both in one process), and whether the tokens are identical;
  2. language model: fitcycle's `language_model` job (pretrained="none") against fastai's TextDataLoaders.from_df
     (is_lm, valid_pct 0.1) + language_model_learner(AWD_LSTM, pretrained=False, drop_mult=0.3) + fit_one_cycle;
  3. classifier: fitcycle's `fine_tune` on its language model's export against fastai's text_classifier_learner
     (drop_mult 0.5) + load_encoder + the course's gradual unfreezing; accuracy on the `is_valid` texts;
  4. serving: texts/s of fitcycle's TextPredictor and of fastai's load_learner (test_dl + get_preds, and predict).

Both sides: AWD-LSTM from random init at the same sizes (--emb-sz/--n-hid/--n-layers), the same bs, seq_len, epochs,
lr and min_freq, seeded, data loading in the training process (fastai num_workers=0), torch's threads (--threads).
The sides run --reps times each in ABBA order; a time printed is a side's fastest (other work on a shared machine
only ever adds time), an accuracy the first rep's (seeded: each rep should give the same, or a line says not); the
whole process's `time ratio` is the median of each rep's own fitcycle/fastai ratio, with its min-max.

Left as each library does it: fastai's vocabulary counts every text of the language model's data, fitcycle's the
training texts; the language model's 10% are fastai's RandomSplitter and fitcycle's per-text hash (other texts);
fastai tokenizes in defaults.cpus forked processes, fitcycle in this one under a million characters; fastai
pads a classifier batch in whole bptt chunks and skips texts not yet begun, fitcycle pads at the front; fitcycle's
jobs also write checkpoints, metrics.json, plots and safetensors bundles, fastai saves its encoder and pickles its
classifier (learn.export). fastai's learner with pretrained=False comes unfrozen: frozen here after load_encoder,
as the course's is; moms (0.8, 0.7, 0.8) in each of its four classifier fits, as fitcycle's.

    .venv/bin/python bench/text.py [--scale 1] [--lm-epochs 6] [--epochs 3] [--bs 64] [--seq-len 72] [--lr 2e-2]
                                   [--threads 0] [--reps 2] [--fastai-python PATH] [--summary FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # before any heavy import: a side's import time counts from here

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDES = ("fitcycle", "fastai")
GRADUAL_DIV = 2.6**4
CLASSIFIER_MOMS = (0.8, 0.7, 0.8)
SERVE_BATCH = 64  # fitcycle's MAX_TEXTS_PER_CALL; fastai's test_dl takes the learner's bs (set to this)
SERVE_SINGLE = 50  # texts answered one call each


def token_digest(token_lists: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha256()
    for tokens in token_lists:
        h.update(json.dumps(list(tokens), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def read_texts(csv_path: Path) -> tuple[list[str], list[str], list[bool]]:
    """(texts, labels, is_valid) of the CSV, read with the csv module (the texts both sides tokenize)."""
    import csv

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows], [r["is_valid"] == "1" for r in rows]


def seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----- fitcycle's side -------------------------------------------------------------------------------------------
def side_fitcycle(args: argparse.Namespace) -> dict[str, Any]:
    import spacy  # noqa: F401  # fastai.text.all imports it on the other side: count it in both imports
    import torch

    from core.engine.items import TextItems
    from core.engine.splits import split_by_rand_pct
    from core.engine.text.bundle import TextPredictor
    from core.engine.text.tokenizer import _worker_count, tokenize, tokenize_texts
    from core.jobs.context import LocalJobContext
    from core.jobs.runner import run_spec
    from core.jobs.spec import TrainSpec
    from core.jobs.training import label_items

    out: dict[str, Any] = {"import_s": time.perf_counter() - T_START, "torch_threads": torch.get_num_threads()}
    csv_path, work = Path(args.csv), Path(args.work)
    texts, labels, valid = read_texts(csv_path)

    # 1. tokenization
    t0 = time.perf_counter()
    tokenize("warm up")  # spaCy's blank English, made once a process (fastai makes it at each call)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = tokenize_texts(texts)
    default_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = tokenize_texts(texts, n_workers=1)
    single_s = time.perf_counter() - t0
    assert single == tokens
    n_tokens = sum(map(len, tokens))
    out["tok"] = {
        "n_texts": len(texts),
        "n_tokens": n_tokens,
        "default_s": default_s,
        "single_s": single_s,
        "warm_s": warm,
        "default_workers": f"{_worker_count(None, texts)} (1 a million characters, at most every core)",
        "digest": token_digest(tokens),
    }
    out["tok_stage_s"] = warm + default_s + single_s

    common: dict[str, Any] = {
        "data": str(csv_path.parent),
        "labels": "text_csv",
        "valid_col": "is_valid",
        "bs": args.bs,
        "seq_len": args.seq_len,
        "arch_config": {"emb_sz": args.emb_sz, "n_hid": args.n_hid, "n_layers": args.n_layers},
        "min_freq": args.min_freq,
        "seed": args.seed,
        "device": "cpu",
        "report_every_n_batches": 10**6,
    }

    # 2. language model
    t0 = time.perf_counter()
    seed_all(args.seed)  # the text jobs seed their data order, not torch (weights, dropout masks)
    lm_spec = TrainSpec(
        kind="language_model",
        pretrained="none",
        freeze_epochs=0,
        epochs=args.lm_epochs,
        lr=args.lr,
        valid_pct=args.valid_pct,
        **common,
    )
    lm = run_spec(lm_spec, LocalJobContext(work / "lm", show_progress=False))
    lm_s = time.perf_counter() - t0
    items = label_items(lm_spec)
    assert isinstance(items, TextItems)
    assert list(items.texts) == texts, "the job read other texts than the CSV's"
    flags = split_by_rand_pct(items.keys, args.valid_pct, args.seed)
    train_tokens = sum(len(t) for t, v in zip(tokens, flags, strict=True) if not v)
    timings = lm["timings"]
    out["lm"] = {
        "stage_s": lm_s,
        "fit_s": sum(v for k, v in timings.items() if k.startswith("fit:")),
        "tokenize_s": timings.get("tokenize", 0.0),
        "export_s": timings.get("export", 0.0),
        "train_tokens": train_tokens,
        "valid_texts": sum(flags),
        "epochs": args.lm_epochs,
        "accuracy": lm["accuracy"],
        "perplexity": lm["perplexity"],
        "vocab": lm["vocab_size"],
    }

    # 3. classifier
    t0 = time.perf_counter()
    seed_all(args.seed)
    clf = run_spec(
        TrainSpec(
            kind="fine_tune",
            init_bundle=str(work / "lm" / "export"),
            freeze_epochs=1,
            epochs=args.epochs,
            lr=args.lr,
            **common,
        ),
        LocalJobContext(work / "clf", show_progress=False),
    )
    clf_s = time.perf_counter() - t0
    timings = clf["timings"]
    train_idx = [i for i, (lab, v) in enumerate(zip(labels, valid, strict=True)) if lab and not v]
    out["clf"] = {
        "stage_s": clf_s,
        "fit_s": sum(v for k, v in timings.items() if k.startswith("fit:")),
        "export_s": timings.get("export", 0.0),
        "train_texts": len(train_idx),
        "train_tokens": sum(len(tokens[i]) for i in train_idx),
        "fit_epochs": 3 + args.epochs,
        "accuracy": clf["accuracy"],
        "encoder": clf["encoder"],
    }

    # 4. serving
    valid_texts = [t for t, lab, v in zip(texts, labels, valid, strict=True) if lab and v]
    valid_labels = [lab for lab, v in zip(labels, valid, strict=True) if lab and v]
    t0 = time.perf_counter()
    predictor = TextPredictor(work / "clf" / "export")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = []
    for start in range(0, len(valid_texts), SERVE_BATCH):
        answers += predictor.predict_texts(valid_texts[start : start + SERVE_BATCH])
    batch_s = time.perf_counter() - t0
    hits = sum(a.ranked()[0][0] == lab for a, lab in zip(answers, valid_labels, strict=True))
    t0 = time.perf_counter()
    for text in valid_texts[:SERVE_SINGLE]:
        predictor.predict(text)
    single_serve_s = time.perf_counter() - t0
    out["serve"] = {
        "load_s": load_s,
        "n": len(valid_texts),
        "batch_s": batch_s,
        "accuracy": hits / len(valid_texts),
        "n_single": min(SERVE_SINGLE, len(valid_texts)),
        "single_s": single_serve_s,
    }
    out["serve_stage_s"] = load_s + batch_s + single_serve_s
    return out


# ----- fastai's side ---------------------------------------------------------------------------------------------
def side_fastai(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import pandas as pd
    import torch
    from fastai.text.all import (
        AWD_LSTM,
        ColReader,
        DataBlock,
        Perplexity,
        RandomSplitter,
        TextBlock,
        TextDataLoaders,
        accuracy,
        awd_lstm_clas_config,
        awd_lstm_lm_config,
        language_model_learner,
        load_learner,
        set_seed,
        text_classifier_learner,
        tokenize_df,
    )

    warnings.filterwarnings("ignore")  # load_learner's pickle warning, torch.jit's deprecation
    out: dict[str, Any] = {"import_s": time.perf_counter() - T_START, "torch_threads": torch.get_num_threads()}
    csv_path, work = Path(args.csv), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts, labels, valid = read_texts(csv_path)

    # 1. tokenization (what TextDataLoaders.from_df runs: Tokenizer.from_df -> tokenize_df)
    df_texts = pd.DataFrame({"text": texts})
    t0 = time.perf_counter()
    tok_df, _ = tokenize_df(df_texts, "text")
    default_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    single_df, _ = tokenize_df(df_texts, "text", n_workers=0)
    single_s = time.perf_counter() - t0
    tokens = [list(t) for t in tok_df["text"]]
    assert tokens == [list(t) for t in single_df["text"]]
    from fastcore.basics import defaults

    out["tok"] = {
        "n_texts": len(texts),
        "n_tokens": sum(map(len, tokens)),
        "default_s": default_s,
        "single_s": single_s,
        "warm_s": 0.0,
        "default_workers": f"{defaults.cpus} (defaults.cpus, forked)",
        "digest": token_digest(tokens),
    }
    out["tok_stage_s"] = default_s + single_s

    df = pd.read_csv(csv_path, keep_default_na=False)  # an empty label stays "" (unlabelled), as in fitcycle
    assert df["text"].tolist() == texts
    sizes = {"emb_sz": args.emb_sz, "n_hid": args.n_hid, "n_layers": args.n_layers}

    # 2. language model: TextDataLoaders.from_df(is_lm=True)'s own DataBlock, spelled out to pass min_freq
    t0 = time.perf_counter()
    set_seed(args.seed)
    block = DataBlock(
        blocks=[TextBlock.from_df("text", is_lm=True, seq_len=args.seq_len, min_freq=args.min_freq)],
        get_x=ColReader("text"),
        splitter=RandomSplitter(args.valid_pct, seed=args.seed),
    )
    dls_lm = block.dataloaders(df, path=work, bs=args.bs, seq_len=args.seq_len, num_workers=0)
    data_s = time.perf_counter() - t0
    set_seed(args.seed)
    lm = language_model_learner(
        dls_lm,
        AWD_LSTM,
        pretrained=False,
        drop_mult=0.3,
        config={**awd_lstm_lm_config, **sizes},
        metrics=[accuracy, Perplexity()],
        path=work,
    )
    t1 = time.perf_counter()
    with lm.no_bar(), lm.no_logging():
        lm.fit_one_cycle(args.lm_epochs, args.lr)
    fit_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    lm.save_encoder("enc")
    export_s = time.perf_counter() - t1
    lm_s = time.perf_counter() - t0
    _, _, lm_acc, lm_ppl = lm.recorder.values[-1]
    out["lm"] = {
        "stage_s": lm_s,
        "fit_s": fit_s,
        "tokenize_s": data_s,
        "export_s": export_s,
        "train_tokens": int(dls_lm.train_ds.items["text_length"].sum()),
        "valid_texts": len(dls_lm.valid_ds),
        "epochs": args.lm_epochs,
        "accuracy": float(lm_acc),
        "perplexity": float(lm_ppl),
        "vocab": len(dls_lm.vocab),
        "num_workers": dls_lm.train.fake_l.num_workers,
    }

    # 3. classifier: the labelled texts, split by is_valid, on the language model's vocabulary and encoder
    t0 = time.perf_counter()
    set_seed(args.seed)
    df_clf = df[df["label"] != ""].reset_index(drop=True)
    dls_clf = TextDataLoaders.from_df(
        df_clf,
        path=work,
        text_col="text",
        label_col="label",
        valid_col="is_valid",
        text_vocab=dls_lm.vocab,
        seq_len=args.seq_len,
        bs=args.bs,
        num_workers=0,
    )
    set_seed(args.seed)
    clf = text_classifier_learner(
        dls_clf,
        AWD_LSTM,
        seq_len=args.seq_len,
        config={**awd_lstm_clas_config, **sizes},
        pretrained=False,
        drop_mult=0.5,
        metrics=accuracy,
        path=work,
    )
    clf.load_encoder("enc")
    clf.freeze()  # pretrained=False leaves the learner unfrozen; the course's learner is frozen here
    lr = args.lr
    t1 = time.perf_counter()
    with clf.no_bar(), clf.no_logging():
        clf.fit_one_cycle(1, lr, moms=CLASSIFIER_MOMS)
        clf.freeze_to(-2)
        clf.fit_one_cycle(1, slice(lr / 2 / GRADUAL_DIV, lr / 2), moms=CLASSIFIER_MOMS)
        clf.freeze_to(-3)
        clf.fit_one_cycle(1, slice(lr / 4 / GRADUAL_DIV, lr / 4), moms=CLASSIFIER_MOMS)
        clf.unfreeze()
        clf.fit_one_cycle(args.epochs, slice(lr / 20 / GRADUAL_DIV, lr / 20), moms=CLASSIFIER_MOMS)
    fit_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    clf.export("clf.pkl")
    export_s = time.perf_counter() - t1
    clf_s = time.perf_counter() - t0
    out["clf"] = {
        "stage_s": clf_s,
        "fit_s": fit_s,
        "export_s": export_s,
        "train_texts": len(dls_clf.train_ds),
        "train_tokens": int(dls_clf.train_ds.items["text_length"].sum()),
        "fit_epochs": 3 + args.epochs,
        "accuracy": float(clf.recorder.values[-1][2]),
        "encoder": "lm",
        "num_workers": dls_clf.train.fake_l.num_workers,
    }

    # 4. serving: the exported learner, loaded again
    valid_texts = [t for t, lab, v in zip(texts, labels, valid, strict=True) if lab and v]
    valid_labels = [lab for lab, v in zip(labels, valid, strict=True) if lab and v]
    t0 = time.perf_counter()
    served = load_learner(work / "clf.pkl", cpu=True)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with served.no_bar():
        dl = served.dls.test_dl(valid_texts, bs=SERVE_BATCH, num_workers=0)
        preds, _ = served.get_preds(dl=dl)
    batch_s = time.perf_counter() - t0
    vocab = served.dls.vocab[1]
    hits = sum(vocab[int(i)] == lab for i, lab in zip(preds.argmax(1), valid_labels, strict=True))
    t0 = time.perf_counter()
    with served.no_bar():
        for text in valid_texts[:SERVE_SINGLE]:
            served.predict(text)
    single_serve_s = time.perf_counter() - t0
    out["serve"] = {
        "load_s": load_s,
        "n": len(valid_texts),
        "batch_s": batch_s,
        "accuracy": hits / len(valid_texts),
        "n_single": min(SERVE_SINGLE, len(valid_texts)),
        "single_s": single_serve_s,
    }
    out["serve_stage_s"] = load_s + batch_s + single_serve_s
    return out


# ----- the parent: both sides, then the comparison -----------------------------------------------------------------
def recipe_args(args: argparse.Namespace) -> list[str]:
    names = (
        "lm_epochs",
        "epochs",
        "bs",
        "seq_len",
        "lr",
        "min_freq",
        "emb_sz",
        "n_hid",
        "n_layers",
        "valid_pct",
        "seed",
    )
    return [x for n in names for x in (f"--{n.replace('_', '-')}", str(getattr(args, n)))]


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over its reps: each time (a key ending in _s) the shortest, since other work on the
    machine only ever adds time; everything else (accuracies, counts: the same in every rep, seeded) from the first."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = fastest([r[key] for r in runs])
        elif key.endswith("_s"):
            out[key] = min(r[key] for r in runs)
        else:
            out[key] = value
    return out


def run_side(
    side: str, args: argparse.Namespace, csv_path: Path, work: Path, python: str
) -> tuple[dict[str, Any], float]:
    out = work / f"{side}.json"
    cmd = [python, str(Path(__file__).resolve()), "--side", side, "--json", str(out), "--csv", str(csv_path)]
    cmd += ["--work", str(work / side), *recipe_args(args)]
    t0 = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"--- {side} failed (exit {proc.returncode}) ---\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        raise SystemExit(1)
    return json.loads(out.read_text()), wall


def ratio_line(name: str, fc: float, fa: float, extra: str = "") -> None:
    print(f"  {name:<34} fitcycle {fc:7.2f}s  fastai {fa:7.2f}s  fitcycle/fastai time ratio: {fc / fa:.2f}{extra}")


def report(fc: dict[str, Any], fa: dict[str, Any], walls: dict[str, float], ratios: list[float]) -> None:
    print("\n1. tokenization (the same texts)")
    t_fc, t_fa = fc["tok"], fa["tok"]
    same = "identical" if t_fc["digest"] == t_fa["digest"] else "DIFFERENT"
    print(
        f"  {t_fc['n_texts']} texts; tokens: fitcycle {t_fc['n_tokens']}, fastai {t_fa['n_tokens']} ({same}); "
        f"default workers: fitcycle {t_fc['default_workers']}, fastai {t_fa['default_workers']}"
    )
    for key, label in (("default_s", "each side's default workers"), ("single_s", "one process each")):
        rates = f"  ({t_fc['n_tokens'] / t_fc[key]:,.0f} vs {t_fa['n_tokens'] / t_fa[key]:,.0f} tokens/s)"
        ratio_line(label, t_fc[key], t_fa[key], rates)

    print("\n2. language model (random init)")
    l_fc, l_fa = fc["lm"], fa["lm"]
    rate_fc = l_fc["train_tokens"] * l_fc["epochs"] / l_fc["fit_s"]
    rate_fa = l_fa["train_tokens"] * l_fa["epochs"] / l_fa["fit_s"]
    print(
        f"  vocab fitcycle {l_fc['vocab']} / fastai {l_fa['vocab']}; training tokens {l_fc['train_tokens']} / "
        f"{l_fa['train_tokens']}; validation texts {l_fc['valid_texts']} / {l_fa['valid_texts']}"
    )
    ratio_line(
        "fit (train + valid passes)", l_fc["fit_s"], l_fa["fit_s"], f"  ({rate_fc:,.0f} vs {rate_fa:,.0f} tok/s)"
    )
    ratio_line("whole stage (data, fit, export)", l_fc["stage_s"], l_fa["stage_s"])
    print(
        f"  validation accuracy: fitcycle {l_fc['accuracy']:.4f}  fastai {l_fa['accuracy']:.4f}   "
        f"perplexity: fitcycle {l_fc['perplexity']:.3f}  fastai {l_fa['perplexity']:.3f}"
    )

    print("\n3. classifier (gradual unfreezing on the language model's encoder)")
    c_fc, c_fa = fc["clf"], fa["clf"]
    rate_fc = c_fc["train_texts"] * c_fc["fit_epochs"] / c_fc["fit_s"]
    rate_fa = c_fa["train_texts"] * c_fa["fit_epochs"] / c_fa["fit_s"]
    tok_fc = c_fc["train_tokens"] * c_fc["fit_epochs"] / c_fc["fit_s"]
    tok_fa = c_fa["train_tokens"] * c_fa["fit_epochs"] / c_fa["fit_s"]
    ratio_line(
        "fit (4 phases)",
        c_fc["fit_s"],
        c_fa["fit_s"],
        f"  ({rate_fc:,.0f} vs {rate_fa:,.0f} texts/s, {tok_fc:,.0f} vs {tok_fa:,.0f} tok/s)",
    )
    ratio_line("whole stage (data, fit, export)", c_fc["stage_s"], c_fa["stage_s"])
    print(f"  validation accuracy: fitcycle {c_fc['accuracy']:.4f}  fastai {c_fa['accuracy']:.4f}")

    print("\n4. serving the exported classifier")
    s_fc, s_fa = fc["serve"], fa["serve"]
    ratio_line("load the export", s_fc["load_s"], s_fa["load_s"])
    ratio_line(
        f"{s_fc['n']} texts, {SERVE_BATCH} a call",
        s_fc["batch_s"],
        s_fa["batch_s"],
        f"  ({s_fc['n'] / s_fc['batch_s']:,.0f} vs {s_fa['n'] / s_fa['batch_s']:,.0f} texts/s)",
    )
    ratio_line(
        f"{s_fc['n_single']} texts, one a call",
        s_fc["single_s"],
        s_fa["single_s"],
        f"  ({s_fc['n_single'] / s_fc['single_s']:,.0f} vs {s_fa['n_single'] / s_fa['single_s']:,.0f} texts/s)",
    )
    print(f"  served accuracy: fitcycle {s_fc['accuracy']:.4f}  fastai {s_fa['accuracy']:.4f}")

    print("\n5. whole process against whole process (subprocess wall time)")
    print(f"  torch threads: fitcycle {fc['torch_threads']}, fastai {fa['torch_threads']}")
    ratio_line("imports", fc["import_s"], fa["import_s"])
    wall_fc, wall_fa = walls["fitcycle"], walls["fastai"]
    pipe_fc, pipe_fa = wall_fc - fc["tok_stage_s"], wall_fa - fa["tok_stage_s"]
    ratio_line("whole process", wall_fc, wall_fa)
    print(
        f"  whole process, each rep's own ratio: time ratio {statistics.median(ratios):.3f} "
        f"(min-max {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} reps)"
    )
    ratio_line("whole process less stage 1's bench", pipe_fc, pipe_fa)
    print(
        f"  accuracy: language model fitcycle {l_fc['accuracy']:.4f} / fastai {l_fa['accuracy']:.4f}; "
        f"classifier fitcycle {c_fc['accuracy']:.4f} / fastai {c_fa['accuracy']:.4f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies 400 labelled and 4,000 unlabelled reviews")
    p.add_argument("--lm-epochs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3, help="the classifier's unfrozen epochs (after 3 gradual ones)")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=72)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--min-freq", type=int, default=3)
    p.add_argument("--emb-sz", type=int, default=128)
    p.add_argument("--n-hid", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--valid-pct", type=float, default=0.1, help="the language model's random validation share")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in each side (OMP_NUM_THREADS); 0: torch's default. On a machine others share, 1 keeps "
        "a busy core from stalling every step of a 2-thread run",
    )
    p.add_argument("--reps", type=int, default=2, help="runs of each side, in ABBA order; times: the fastest")
    p.add_argument(
        "--fastai-python",
        default=None,
        help="the python that runs fastai's side (default: bench/fastai_venv.py's environment, made if missing)",
    )
    p.add_argument("--summary", default=None, help="also write every run's figures to this JSON file")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--csv", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:  # a child: one side, its figures to --json
        result = side_fitcycle(args) if args.side == "fitcycle" else side_fastai(args)
        Path(args.json).write_text(json.dumps(result, indent=1))
        return

    from bench.fastai_venv import fastai_python
    from core.datasets.text_samples import write_reviews

    pythons = {"fitcycle": sys.executable, "fastai": args.fastai_python or str(fastai_python())}
    with tempfile.TemporaryDirectory() as tmp:
        n_lab, n_unlab = round(400 * args.scale), round(4000 * args.scale)
        csv_path = write_reviews(Path(tmp) / "data", n_lab, n_unlab, seed=args.seed)
        load = os.getloadavg()[0]
        print(
            f"{n_lab} labelled (+{n_lab // 2} validation) and {n_unlab} unlabelled reviews; "
            f"AWD-LSTM emb {args.emb_sz}, hid {args.n_hid}, {args.n_layers} layers from random init; "
            f"bs {args.bs}, seq_len {args.seq_len}, lr {args.lr:g}, "
            f"min_freq {args.min_freq}; LM {args.lm_epochs} epochs, classifier 1+1+1+{args.epochs}; "
            f"cpu; load average {load:.2f}"
        )
        # Warm the file cache for both sides' imports, so that neither pays the other's first read.
        subprocess.run([sys.executable, "-c", "import spacy, core.jobs.runner"], cwd=ROOT, check=True)
        subprocess.run([pythons["fastai"], "-c", "import fastai.text.all"], cwd=ROOT, check=True)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for rep in range(args.reps):  # ABBA order, so drift in the machine's load hits both sides alike
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                result, wall = run_side(side, args, csv_path, Path(tmp) / f"work{rep}", pythons[side])
                runs[side].append({**result, "wall_s": wall})
                print(f"  rep {rep + 1} {side}: {wall:.1f}s wall, load average {os.getloadavg()[0]:.2f}")
        for side in SIDES:
            accs = {(r["lm"]["accuracy"], r["clf"]["accuracy"]) for r in runs[side]}
            if len(accs) > 1:
                print(f"  note: {side}'s accuracies differ between reps (language model, classifier): {sorted(accs)}")
        best = {side: fastest(runs[side]) for side in SIDES}
        ratios = [fc["wall_s"] / fa["wall_s"] for fc, fa in zip(runs["fitcycle"], runs["fastai"], strict=True)]
        report(best["fitcycle"], best["fastai"], {side: best[side]["wall_s"] for side in SIDES}, ratios)
        if args.summary:
            names = ("emb_sz", "n_hid", "n_layers", "lm_epochs", "epochs", "bs", "seq_len", "lr", "threads", "reps")
            summary = {"args": {n: getattr(args, n) for n in names}, "runs": runs}
            Path(args.summary).write_text(json.dumps(summary, indent=1))
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
