"""Text jobs, the course's ULMFiT flow [fastai course v3, lesson 3, IMDB]: a language model fine-tuned (or trained) on
every text of the dataset, labelled or not, then a classifier on its encoder and vocabulary, trained with gradual
unfreezing and discriminative rates. The kinds (core/jobs/kinds/) call `run_language_model` and `run_classifier`;
both report, checkpoint and resume through the context as image jobs do, and end with an export bundle and
metrics.json. Tokens are cached beside the dataset version, so a second job on it does not tokenize again."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from core.engine.callbacks import (
    CheckpointCallback,
    MixedPrecision,
    ProgressCallback,
    ReportCallback,
    StopCallback,
    resolve_precision,
)
from core.engine.errors import CheckpointError, DataError, PretrainedWeightsNotFound
from core.engine.events import Callback
from core.engine.items import TextItems
from core.engine.learner import Learner
from core.engine.metrics import get_metric
from core.engine.plots import plot_losses
from core.engine.splits import split_by_rand_pct
from core.engine.text.awd_lstm import AWDConfig, LanguageModel, LinearDecoder, check_arch_config
from core.engine.text.bundle import export_text_bundle, read_text_bundle
from core.engine.text.data import TextDataConfig
from core.engine.text.interpret import interpret_classifier
from core.engine.text.learner import (
    SampleText,
    classifier_learner,
    detokenize,
    lm_learner,
    load_encoder,
    match_embeddings,
)
from core.engine.text.manifest import LANGUAGE_MODEL, TEXT_CLASSIFICATION, TEXT_MULTILABEL, TextTask
from core.engine.text.tokenizer import Vocab, tokenize_cached
from core.jobs.context import JobContext
from core.jobs.spec import TrainSpec
from core.jobs.training import PhaseTimer, find_lr, pick_device

GRADUAL_DIV = 2.6**4  # the course's discriminative spread: each layer group 2.6x the one below
LM_DROP_MULT = 0.3  # the course's language_model_learner(..., drop_mult=0.3)
CLASSIFIER_DROP_MULT = 0.5  # the course's text_classifier_learner(..., drop_mult=0.5)
SAMPLE_PROMPT = "The"
TEXT_LR = 2e-2  # the course's classifier rate (its language model's too)


def token_cache_dir(spec: TrainSpec) -> Path:
    """Where a dataset version's tokens are kept: beside its materialized files (one folder per version)."""
    return Path(spec.data).parent / "tokens"


def tokens_of(items: TextItems, spec: TrainSpec, timer: PhaseTimer) -> list[list[str]]:
    with timer.phase("tokenize"):
        return tokenize_cached(items.texts, token_cache_dir(spec), n_workers=os.cpu_count())


def _callbacks(spec: TrainSpec, ctx: JobContext, device: torch.device) -> list[Callback]:
    cbs: list[Callback] = [
        ReportCallback(ctx, spec.report_every_n_batches),
        CheckpointCallback(ctx.save_checkpoint, spec.checkpoint_every_n_steps, spec.checkpoint_every_seconds),
        StopCallback(ctx.should_stop),
    ]
    if getattr(ctx, "show_progress", False):
        cbs.append(ProgressCallback())
    # On a CPU a text model trains in fp32 unless asked: bf16 was measured for the convolutional models only.
    precision = resolve_precision(spec.precision, device, cpu_bf16=False)
    if precision != "fp32":
        cbs.append(MixedPrecision(precision))
    return cbs


def _data(spec: TrainSpec) -> TextDataConfig:
    return TextDataConfig(
        bs=spec.bs, seq_len=spec.seq_len, seed=spec.seed if spec.data_seed is None else spec.data_seed
    )


def _resume_from(resume: dict[str, Any] | None, learn: Learner, tags: list[str]) -> int:
    """The index of the phase a checkpoint resumes (its base rate back in learn.extra); 0 without one."""
    if resume is None:
        return 0
    if resume["tag"] not in tags:
        raise CheckpointError(f"the checkpoint is from phase '{resume['tag']}', which this job does not have")
    learn.extra = dict(resume.get("extra", {}))
    return tags.index(resume["tag"])


def _base_lr(spec: TrainSpec, ctx: JobContext, learn: Learner, epochs: int, timer: PhaseTimer) -> float:
    if "base_lr" in learn.extra:
        return float(learn.extra["base_lr"])
    if spec.lr == "find":
        with timer.phase("lr_find"):
            base = find_lr(learn, ctx, epochs).suggestions["valley"]
    elif isinstance(spec.lr, tuple):
        base = spec.lr[1]
    elif isinstance(spec.lr, float | int):
        base = float(spec.lr)
    else:
        raise ValueError(f"lr {spec.lr!r} is not a rate a text job takes")
    learn.extra = {"base_lr": base}
    return base


def _write_json(ctx: JobContext, name: str, data: Any) -> None:
    ctx.artifact_path(name).write_text(json.dumps(data, indent=1))
    ctx.artifact_written(name)


# ----- the language model ----------------------------------------------------------------------------------------
@dataclass
class PretrainedLM:
    state: dict[str, torch.Tensor]
    itos: list[str]
    config: dict[str, Any]
    source: str


def sizes_of(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An AWD-LSTM's emb_sz, n_hid and n_layers, read off its weights (fastai's names)."""
    n_layers = len({k.split(".")[2] for k in state if k.startswith("0.rnns.")})
    if "0.encoder.weight" not in state or "0.rnns.0.weight_hh_l0_raw" not in state:
        from core.engine.errors import WeightsMismatch

        raise WeightsMismatch("the pretrained language model's weights are not an AWD-LSTM's (fastai's names)")
    emb_sz = int(state["0.encoder.weight"].shape[1])
    n_hid = int(state["0.rnns.0.weight_hh_l0_raw"].shape[1]) if n_layers > 1 else emb_sz
    return {"emb_sz": emb_sz, "n_hid": n_hid, "n_layers": n_layers}


def _pretrained_lm(spec: TrainSpec) -> PretrainedLM | None:
    """The language model to start from: none, a fitcycle language model's bundle, or WikiText-103's weights."""
    source = spec.init_bundle or spec.pretrained
    if source in ("none", "imagenet"):
        return None
    if source == "wt103":
        from core.engine.pretrained import load_wt103, wt103_dir

        state, itos = load_wt103(wt103_dir())
        return PretrainedLM(state, itos, sizes_of(state), "wt103")
    folder = Path(source)
    if not (folder / "manifest.json").is_file():
        raise PretrainedWeightsNotFound(
            f"pretrained: '{spec.pretrained}' is neither 'none', 'wt103' nor a language model"
        )
    manifest, model, vocab = read_text_bundle(folder)
    if manifest["task"] != LANGUAGE_MODEL:
        raise DataError("pretrained: a language model starts from another language model, not from a classifier")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {k: manifest["config"][k] for k in ("emb_sz", "n_hid", "n_layers")}
    return PretrainedLM(state, list(vocab.itos), sizes, f"model:{folder.name}")


def run_language_model(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """Next-token prediction on every text (labelled or not), a random `valid_pct` held out: one-cycle from
    scratch; from pretrained weights, first the embeddings and decoder frozen (freeze_epochs), then unfrozen at
    lr / 10 (epochs) [the course: fit_one_cycle(1, 2e-2); unfreeze(); fit_one_cycle(10, 2e-3)]."""
    timer = PhaseTimer()
    device = pick_device(spec.device)
    tokens = tokens_of(items, spec, timer)
    with timer.phase("build"):
        pretrained = _pretrained_lm(spec)
        valid_flags = split_by_rand_pct(items.keys, spec.valid_pct, spec.seed)
        train_tokens = [t for t, v in zip(tokens, valid_flags, strict=True) if not v]
        vocab = Vocab.build(train_tokens, min_freq=spec.min_freq, max_vocab=spec.max_vocab)
        overrides = check_arch_config(spec.arch_config)
        if pretrained is not None and pretrained.config:
            overrides = {**pretrained.config, **overrides}
        config = AWDConfig.language_model(spec.drop_mult if spec.drop_mult is not None else LM_DROP_MULT, overrides)
        ids = [vocab.numericalize(t) for t in tokens]
        train = [i for i, v in zip(ids, valid_flags, strict=True) if not v]
        valid = [i for i, v in zip(ids, valid_flags, strict=True) if v]
        if not valid or not train:
            raise DataError(f"valid_pct {spec.valid_pct:g} leaves no {'validation' if not valid else 'training'} text")
        samples: list[dict[str, Any]] = []

        def sample(epoch: int, text: str) -> None:
            samples.append({"epoch": epoch, "text": text})
            _write_json(ctx, "samples.json", samples)

        learn = lm_learner(vocab, train, valid, config, _data(spec), device, _callbacks(spec, ctx, device))
        learn.add_cbs([SampleText(vocab, SAMPLE_PROMPT, sample)])
        if pretrained is not None:
            state = dict(pretrained.state)
            match_embeddings(state, pretrained.itos, vocab.itos)
            try:
                learn.model.load_state_dict(state)
            except RuntimeError as exc:
                from core.engine.errors import WeightsMismatch

                raise WeightsMismatch(f"the pretrained language model does not fit: {str(exc)[:300]}") from exc
            lm = cast(LanguageModel, learn.model)
            cast(LinearDecoder, lm[1]).decoder.weight = lm.encoder.encoder.weight
    phases: list[tuple[str, int, bool]] = []  # (tag, epochs, frozen)
    if pretrained is not None:
        if spec.freeze_epochs:
            phases.append(("stage1", spec.freeze_epochs, True))
        if spec.epochs:
            phases.append(("stage2", spec.epochs, False))
    else:
        phases.append(("train", spec.freeze_epochs + spec.epochs, False))
    resume = ctx.latest_checkpoint()
    start = _resume_from(resume, learn, [p[0] for p in phases])
    if pretrained is not None:
        learn.freeze()
    base_lr = _base_lr(spec, ctx, learn, sum(p[1] for p in phases), timer)
    lrs: dict[str, Any] = {"base_lr": base_lr}
    for i, (tag, epochs, frozen) in enumerate(phases):
        rate = base_lr if frozen or pretrained is None else base_lr / 10
        lrs[tag] = [rate] * len(learn.groups)
        if i < start:
            continue
        if frozen:
            learn.freeze()
        else:
            learn.unfreeze()
        with timer.phase(f"fit:{tag}"):
            learn.fit_one_cycle(epochs, rate, resume=resume if i == start else None, tag=tag)
    lrs["last"] = {
        "low": lrs[phases[-1][0]][0],
        "high": lrs[phases[-1][0]][-1],
        "epochs": phases[-1][1],
        "frozen": phases[-1][2],
    }
    counts = Counter(w for t in train_tokens for w in t)
    unigram = _unigram_perplexity(counts, [t for t, v in zip(tokens, valid_flags, strict=True) if v], vocab)
    with timer.phase("export"):
        export_text_bundle(
            ctx.artifact_path("export"),
            LANGUAGE_MODEL,
            learn.model,
            vocab,
            config,
            spec.seq_len,
            extra={"pretrained": pretrained.source if pretrained else "none"},
        )
        ctx.artifact_written("export")
    return _finish(
        spec,
        ctx,
        learn,
        items,
        timer,
        lrs,
        LANGUAGE_MODEL,
        "perplexity",
        extra={
            "vocab_size": len(vocab),
            "n_tokens": int(sum(len(t) for t in tokens)),
            "unigram_perplexity": unigram,
            "pretrained": pretrained.source if pretrained else "none",
            "samples": samples,
        },
    )


def _unigram_perplexity(counts: Counter[str], valid_tokens: list[list[str]], vocab: Vocab) -> float:
    """The perplexity on the validation texts of a model that knows only each token's training frequency (add-one
    smoothed over the vocabulary): the baseline a language model must beat."""
    ids = Counter(int(i) for t in valid_tokens for i in vocab.numericalize(t))
    by_id: Counter[int] = Counter()
    for w, n in counts.items():
        by_id[int(vocab.numericalize([w])[0])] += n
    total = sum(by_id.values()) + len(vocab)
    n = sum(ids.values())
    if not n:
        return float("nan")
    nll = -sum(c * np.log((by_id[i] + 1) / total) for i, c in ids.items()) / n
    return float(np.exp(nll))


# ----- the classifier ---------------------------------------------------------------------------------------------
def _classifier_start(spec: TrainSpec) -> tuple[str, dict[str, Any] | None, Any, Vocab | None]:
    """What a classifier starts from: ('lm', manifest, state, vocab) a language model's encoder; ('classifier', ...)
    a text classifier's full weights (stage 2, a retrain); ('none', None, None, None) a random encoder."""
    source = spec.init_bundle or (spec.pretrained if spec.pretrained not in ("none", "imagenet", "wt103") else None)
    if source is None:
        return "none", None, None, None
    manifest, model, vocab = read_text_bundle(Path(source))
    kind = "lm" if manifest["task"] == LANGUAGE_MODEL else "classifier"
    return kind, manifest, {k: v.clone() for k, v in model.state_dict().items()}, vocab


def _targets(items: TextItems, indices: list[int]) -> torch.Tensor:
    if items.multi_label:
        out = torch.zeros(len(indices), len(items.classes))
        for row, i in enumerate(indices):
            for c in items.label_set(i):
                out[row, items.class_index[c]] = 1.0
        return out
    return torch.tensor([items.class_index[items.labels[i]] for i in indices], dtype=torch.long)


def gradual_phases(spec: TrainSpec, lr: float, start: str) -> list[tuple[str, int, int, slice | float]]:
    """(tag, epochs, freeze_to, rates): the course's gradual unfreezing — the head at lr; freeze_to(-2) at
    slice(lr/2/2.6^4, lr/2); freeze_to(-3) at slice(lr/4/2.6^4, lr/4); unfrozen for `epochs` at
    slice(lr/20/2.6^4, lr/20). A classifier continuing from a classifier (stage 2, retrain) trains unfrozen only;
    one from a random encoder trains every group at lr (nothing to protect)."""
    if start == "none":
        return [("train", spec.freeze_epochs + spec.epochs, 0, lr)]
    if start == "classifier":
        return [("unfrozen", spec.epochs, 0, slice(lr / 20 / GRADUAL_DIV, lr / 20))]
    phases: list[tuple[str, int, int, slice | float]] = []
    if spec.freeze_epochs:
        phases += [
            ("head", spec.freeze_epochs, -1, lr),
            ("freeze_to-2", 1, -2, slice(lr / 2 / GRADUAL_DIV, lr / 2)),
            ("freeze_to-3", 1, -3, slice(lr / 4 / GRADUAL_DIV, lr / 4)),
        ]
    if spec.epochs:
        phases.append(("unfrozen", spec.epochs, 0, slice(lr / 20 / GRADUAL_DIV, lr / 20)))
    return phases


def run_classifier(
    spec: TrainSpec, ctx: JobContext, items: TextItems, phases: Literal["all", "head", "rest", "sweep"] = "all"
) -> dict[str, Any]:
    """The classifier on the labelled texts (the unlabelled ones are the language model's), from a language model's
    encoder and vocabulary (its parent, or `pretrained` = its model), by gradual unfreezing: `phases` "all" (a
    fine_tune), "head" (stage 1: the head alone for `epochs`), "rest" (stage 2 from a stage-1 classifier: the other
    steps), "sweep" (lr_find alone, on the model as its next stage would train it)."""
    timer = PhaseTimer()
    device = pick_device(spec.device)
    train_idx, valid_idx = items.labelled(valid=False), items.labelled(valid=True)
    if not train_idx or not valid_idx:
        raise DataError(
            f"the classifier needs labelled texts in both splits; this split has {len(train_idx)} training and "
            f"{len(valid_idx)} validation texts with a label (raise valid_pct, or label more texts)"
        )
    tokens = tokens_of(items, spec, timer)
    with timer.phase("build"):
        start, manifest, state, vocab = _classifier_start(spec)
        if vocab is None:
            vocab = Vocab.build([tokens[i] for i in train_idx], min_freq=spec.min_freq, max_vocab=spec.max_vocab)
        overrides = check_arch_config(spec.arch_config)
        if manifest is not None:
            overrides = {k: manifest["config"][k] for k in ("emb_sz", "n_hid", "n_layers")}
        config = AWDConfig.classifier(spec.drop_mult if spec.drop_mult is not None else CLASSIFIER_DROP_MULT, overrides)
        if start == "classifier" and manifest is not None and list(manifest["classes"]) != items.classes:
            raise DataError(
                f"the parent classifier knows classes {manifest['classes']}, this dataset has {items.classes}; "
                "start a new classifier from the language model"
            )
        ids = [vocab.numericalize(t) for t in tokens]
        metric_names = ["accuracy_multi", "fbeta"] if items.multi_label else ["accuracy", "error_rate"]
        learn = classifier_learner(
            vocab,
            ([ids[i] for i in train_idx], _targets(items, train_idx)),
            ([ids[i] for i in valid_idx], _targets(items, valid_idx)),
            len(items.classes),
            items.multi_label,
            config,
            _data(spec),
            device,
            [get_metric(m) for m in metric_names],
            _callbacks(spec, ctx, device),
        )
        if start == "lm":
            load_encoder(learn.model, state)  # type: ignore[arg-type]
        elif start == "classifier":
            learn.model.load_state_dict(state)
    if phases == "sweep":
        learn.freeze_to(-1 if start == "lm" else 0)
        with timer.phase("lr_find"):
            result = find_lr(learn, ctx, spec.epochs)
        return {
            "suggestions": result.suggestions,
            "n_steps": len(result.lrs),
            "frozen": learn.frozen_to > 0,
            "timings": timer.as_dict(),
        }
    if phases == "head":  # stage 1: `epochs` of the head
        spec = spec.model_copy(update={"freeze_epochs": spec.epochs, "epochs": 0})
    resume = ctx.latest_checkpoint()  # read once: its base rate now, its phase once the phases are known
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
    if spec.lr == "auto":  # stage 2 after stage 1: the stage-1 rate the parent used
        learn.extra.setdefault("base_lr", spec.stage1_lr or TEXT_LR)
    base_lr = _base_lr(spec, ctx, learn, spec.freeze_epochs + spec.epochs, timer)
    steps = gradual_phases(spec, base_lr, "lm" if phases == "rest" else start)
    if phases == "head":
        steps = steps[:1]
    elif phases == "rest":
        steps = [s for s in steps if s[0] != "head"]
    if isinstance(spec.lr, tuple) and start == "classifier":  # a retrain's [low, high]: the unfrozen rates
        steps = [("unfrozen", spec.epochs, 0, slice(*spec.lr))]
    if not steps:
        raise DataError("nothing to train: freeze_epochs and epochs are both 0")
    phases_ = steps
    first = _resume_from(resume, learn, [p[0] for p in phases_])
    lrs: dict[str, Any] = {"base_lr": base_lr}
    for i, (tag, epochs, freeze_to, rates) in enumerate(phases_):
        lrs[tag] = learn.lrs_for_groups(rates)
        if i < first:
            continue
        learn.freeze_to(freeze_to)
        with timer.phase(f"fit:{tag}"):
            learn.fit_one_cycle(epochs, rates, resume=resume if i == first else None, tag=tag)
    last = phases_[-1]
    lrs["last"] = {"low": lrs[last[0]][0], "high": lrs[last[0]][-1], "epochs": last[1], "frozen": last[2] != 0}
    task: TextTask = TEXT_MULTILABEL if items.multi_label else TEXT_CLASSIFICATION
    with timer.phase("interpretation"):
        summary = interpret_classifier(learn, items, valid_idx)
        _write_json(ctx, "interpretation.json", summary)
    with timer.phase("export"):
        export_text_bundle(
            ctx.artifact_path("export"),
            task,
            learn.model,
            vocab,
            config,
            spec.seq_len,
            items.classes,
            thresholds=[0.5] * len(items.classes) if items.multi_label else None,
            extra={"pretrained": start},
        )
        ctx.artifact_written("export")
    return _finish(
        spec,
        ctx,
        learn,
        items,
        timer,
        lrs,
        task,
        metric_names[0],
        extra={
            "encoder": start,
            "vocab_size": len(vocab),
            **({"error_rate": summary["error_rate"]} if "error_rate" in summary else {}),
        },
    )


def interpret_bundle(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """An interpret job on texts: the parent classifier's answers on the labelled validation texts, interpreted."""
    from core.engine.text.bundle import TextPredictor
    from core.engine.text.interpret import interpret_outputs

    timer = PhaseTimer()
    if not spec.init_bundle:
        raise DataError("an interpret job reads its parent's model: name its parent_job_id")
    predictor = TextPredictor(spec.init_bundle)
    if predictor.is_language_model:
        raise DataError("interpret reads a text classifier; this parent is a language model")
    if predictor.classes != items.classes:
        raise DataError(f"the parent classifier knows classes {predictor.classes}, this dataset has {items.classes}")
    valid_idx = items.labelled(valid=True)
    with timer.phase("interpretation"):
        answers = [
            p.probs
            for s in range(0, len(valid_idx), 64)
            for p in predictor.predict_texts([items.texts[i] for i in valid_idx[s : s + 64]])
        ]
        probs = torch.tensor(answers)
        logits = torch.logit(probs.clamp(1e-7, 1 - 1e-7)) if items.multi_label else probs.clamp_min(1e-12).log()
        targets = _targets(items, valid_idx)
        summary = interpret_outputs(logits, targets, items, valid_idx)
        _write_json(ctx, "interpretation.json", summary)
    result: dict[str, Any] = {k: summary[k] for k in ("error_rate", "per_class_error") if k in summary}
    if spec.folds >= 2:
        result["suspects_note"] = "the cleaner's out-of-fold suspects are for images; texts: not yet"
    return result | {"timings": timer.as_dict()}


def _finish(
    spec: TrainSpec,
    ctx: JobContext,
    learn: Learner,
    items: TextItems,
    timer: PhaseTimer,
    lrs: dict[str, Any],
    task: str,
    main_metric: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    plot_losses(list(learn.recorder.batches), list(learn.recorder.epochs), ctx.artifact_path("plots/losses.png"))
    ctx.artifact_written("plots/losses.png")
    last = learn.recorder.epochs[-1] if learn.recorder.epochs else {}
    metrics = {
        "task": task,
        "modality": "text",
        "main_metric": main_metric,
        **{k: v for k, v in last.items() if k not in ("epoch", "tag", "seconds")},
        **extra,
        "epochs": learn.recorder.epochs,
        "lrs": lrs,
        "classes": items.classes,
        "counts": items.counts(),
        "n_unlabelled": items.n_unlabelled,
        "rejected": [r.__dict__ for r in items.rejected],
        "spec": spec.summary(),
        "timings": timer.as_dict(),
    }
    _write_json(ctx, "metrics.json", metrics)
    return metrics


__all__ = ["detokenize", "gradual_phases", "run_classifier", "run_language_model"]
