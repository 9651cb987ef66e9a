"""The text learners [fastai: language_model_learner, text_classifier_learner, TextLearner]: the engine's Learner
with an AWD-LSTM, fastai's layer groups, and the callbacks text needs — the hidden state reset at each pass
(ModelResetter), activation and temporal activation regularization (RNNRegularizer: alpha 2, beta 1), the language
model's accuracy and perplexity per epoch, and a generated sample after each epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.engine.events import Callback
from core.engine.learner import Learner
from core.engine.metrics import Metric
from core.engine.text.awd_lstm import (
    PAD_INDEX,
    AWDConfig,
    LanguageModel,
    TextClassifier,
    classifier_groups,
    lm_groups,
)
from core.engine.text.data import LMLoader, SortedLoader, TextDataConfig, TextDataLoaders
from core.engine.text.tokenizer import BOS, EOS, UNK, Vocab

MAX_TOKENS = 72 * 20  # the classifier reads at most a text's last 1,440 tokens (fastai's max_len)
TEXT_MOMS = (0.8, 0.7, 0.8)  # fastai's TextLearner: its language models and classifiers alike


class RNNReset(Callback):
    """A new pass starts with no hidden state [fastai: ModelResetter]."""

    order = 5

    def _reset(self) -> None:
        model = self.learn.model
        for m in model.modules():
            if hasattr(m, "reset") and m is not model and callable(m.reset):
                m.reset()

    def before_train(self) -> None:
        self._reset()

    def before_validate(self) -> None:
        self._reset()

    def after_fit(self) -> None:
        self._reset()


class RNNRegularizer(Callback):
    """Adds alpha * mean(dropped top output^2) and beta * mean((h_t - h_{t-1})^2) of the raw top output to the
    training loss [fastai: RNNRegularizer, AR and TAR of Merity et al.]."""

    order = 25

    def __init__(self, alpha: float = 2.0, beta: float = 1.0) -> None:
        self.alpha, self.beta = alpha, beta

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        raw, dropped = regularized_outputs(learn.model)
        if raw is None or dropped is None:
            return
        extra = self.alpha * dropped.float().pow(2).mean()
        if raw.shape[1] > 1:
            extra = extra + self.beta * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        learn.loss_grad = learn.loss_grad + extra


def regularized_outputs(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(raw, dropped) top-layer outputs of the last forward pass: a language model's LSTM output and its decoder's
    dropped input; a classifier's encoder output (both)."""
    inner = getattr(model, "module", model)  # a compiled or DDP-wrapped model
    if isinstance(inner, LanguageModel):
        return inner.encoder.last_raw, cast(Any, inner[1]).last_dropped
    if isinstance(inner, TextClassifier):
        raw = inner.awd.last_raw
        return raw, raw
    return None, None


class LMMetrics(Callback):
    """The language model's accuracy (next token right) and perplexity (exp of the validation loss) in each epoch's
    row, counted batch by batch: its logits over the whole vocabulary are never kept."""

    order = 55  # after the Recorder (50) wrote the row, before the ReportCallback (65) sends it
    run_in_lr_find = False

    def before_validate(self) -> None:
        self.hits, self.n = 0, 0

    def after_batch(self) -> None:
        learn = self.learn
        if learn.training:
            return
        self.hits += int((learn.pred.argmax(dim=-1) == learn.yb).sum().item())
        self.n += learn.yb.numel()

    def after_epoch(self) -> None:
        rows = self.learn.recorder.epochs
        if rows and "valid_loss" in rows[-1] and self.n:
            rows[-1]["accuracy"] = self.hits / self.n
            rows[-1]["perplexity"] = math.exp(min(50.0, rows[-1]["valid_loss"]))


class SampleText(Callback):
    """After each epoch, a few words the language model writes after `prompt`, handed to `sink(epoch, text)`."""

    order = 60
    run_in_lr_find = False

    def __init__(self, vocab: Vocab, prompt: str, sink: Callable[[int, str], None], words: int = 20) -> None:
        self.vocab, self.prompt, self.sink, self.words = vocab, prompt, sink, words

    def after_epoch(self) -> None:
        learn = self.learn
        model = cast(LanguageModel, getattr(learn.model, "module", learn.model))
        text = generate(model, self.vocab, self.prompt, self.words, temperature=0.75, seed=learn.epoch)
        model.reset()
        self.sink(learn.epoch, text)


def flat_cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position of a (bs, seq_len, vocab) output [fastai: CrossEntropyLossFlat]."""
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1))


def lm_learner(
    vocab: Vocab,
    train: Sequence[np.ndarray],
    valid: Sequence[np.ndarray],
    config: AWDConfig,
    data: TextDataConfig,
    device: torch.device,
    cbs: Sequence[Callback] = (),
) -> Learner:
    """A language model on these token streams [fastai: language_model_learner], wd 0.01, moms (0.8, 0.7, 0.8). The
    weights start from torch's generator seeded with the data's seed, as an image learner's do."""
    dls = TextDataLoaders(
        LMLoader(train, data.bs, data.seq_len, True, data.seed, device),
        LMLoader(valid, data.bs, data.seq_len, False, data.seed, device),
        device,
        data,
    )
    torch.manual_seed(data.seed)
    model = LanguageModel(len(vocab), config)
    learn = Learner(
        cast(Any, dls),
        model,
        flat_cross_entropy,
        [],
        None,
        moms=TEXT_MOMS,
        cbs=[RNNReset(), RNNRegularizer(), LMMetrics(), *cbs],
    )
    learn.groups = [list(g) for g in lm_groups(model)]
    return learn


def classifier_learner(
    vocab: Vocab,
    train: tuple[Sequence[np.ndarray], torch.Tensor],
    valid: tuple[Sequence[np.ndarray], torch.Tensor],
    n_out: int,
    multi_label: bool,
    config: AWDConfig,
    data: TextDataConfig,
    device: torch.device,
    metrics: Sequence[Metric],
    cbs: Sequence[Callback] = (),
) -> Learner:
    """A classifier [fastai: text_classifier_learner]: concat pooling head on an AWD-LSTM encoder, cross-entropy
    (or binary cross-entropy per class for multi-label), moms (0.8, 0.7, 0.8)."""
    dls = TextDataLoaders(
        SortedLoader(train[0], train[1], data.bs, True, data.seed, device, MAX_TOKENS),
        SortedLoader(valid[0], valid[1], data.bs, False, data.seed, device, MAX_TOKENS),
        device,
        data,
    )
    torch.manual_seed(data.seed)
    model = TextClassifier(len(vocab), n_out, config, bptt=data.seq_len)
    loss: nn.Module = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
    learn = Learner(
        cast(Any, dls), model, loss, metrics, None, moms=TEXT_MOMS, cbs=[RNNReset(), RNNRegularizer(), *cbs]
    )
    learn.groups = [list(g) for g in classifier_groups(model)]
    return learn


def load_encoder(classifier: TextClassifier, lm_state: dict[str, torch.Tensor]) -> None:
    """The language model's encoder weights into the classifier's AWD-LSTM [fastai: load_encoder]."""
    own = classifier.awd.state_dict()
    state = {k[2:]: v for k, v in lm_state.items() if k.startswith("0.")}
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        from core.engine.errors import WeightsMismatch

        raise WeightsMismatch(
            f"the language model's encoder does not fit this classifier: {len(missing)} missing (first {missing[:2]}), "
            f"{len(wrong)} of another shape (first {wrong[:2]}); train both with the same arch_config"
        )
    classifier.awd.load_state_dict({k: state[k] for k in own})


def match_embeddings(state: dict[str, torch.Tensor], old_itos: Sequence[str], new_itos: Sequence[str]) -> None:
    """A pretrained language model's embedding (and tied decoder rows and bias) re-ordered for a new vocabulary:
    a word both know keeps its row, a new word starts at the mean row [fastai: match_embeds]."""
    old_index = {w: i for i, w in enumerate(old_itos)}
    for key in ("0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight", "1.decoder.bias"):
        if key not in state:
            continue
        old = state[key]
        mean = old.mean(0)
        new = old.new_empty((len(new_itos), *old.shape[1:]))
        for i, w in enumerate(new_itos):
            j = old_index.get(w)
            new[i] = old[j] if j is not None else mean
        state[key] = new


@torch.inference_mode()
def generate(
    model: LanguageModel,
    vocab: Vocab,
    prompt: str,
    words: int,
    temperature: float = 0.75,
    seed: int | None = None,
    tokens: Sequence[str] | None = None,
) -> str:
    """`words` more tokens after `prompt`, each drawn from the softmax of the logits / temperature, never xxunk or
    xxpad [fastai: LMLearner.predict with no_unk]. Returns the prompt as given and its continuation as text."""
    from core.engine.text.tokenizer import tokenize

    was_training = model.training
    model.eval()
    model.reset()
    toks = list(tokens) if tokens is not None else tokenize(prompt)
    ids = vocab.numericalize(toks)
    ids = ids[ids != vocab.stoi.get(EOS, -1)] if len(ids) > 1 else ids
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    device = next(model.parameters()).device
    out: list[str] = []
    banned = [vocab.stoi[t] for t in (UNK,) if t in vocab.stoi] + [PAD_INDEX]
    logits = model(torch.as_tensor(ids, device=device)[None])[0, -1]
    for _ in range(words):
        scores = logits.float().cpu()
        scores[banned] = -float("inf")
        if temperature > 0:
            probs = torch.softmax(scores / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen).item())
        else:
            nxt = int(scores.argmax().item())
        out.append(vocab.itos[nxt])
        logits = model(torch.tensor([[nxt]], device=device))[0, -1]
    model.reset()
    model.train(was_training)
    continuation = detokenize(out)
    glue = "" if not continuation or continuation[0] in ".,!?;:)'" else " "
    return prompt.rstrip() + glue + continuation if tokens is None else detokenize([*toks, *out])


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens back to readable text: xxbos dropped, xxmaj capitalizes and xxup upper-cases the next word, xxrep n c
    repeats, xxwrep n w repeats a word [fastai: decode_spec_tokens]; then spaces before punctuation removed."""
    out: list[str] = []
    i = 0
    toks = [t for t in tokens if t not in (BOS, EOS, "xxpad", "xxfld")]
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t == "xxmaj" and nxt:
            out.append(nxt.capitalize())
            i += 2
        elif t == "xxup" and nxt:
            out.append(nxt.upper())
            i += 2
        elif t in ("xxrep", "xxwrep") and i + 2 < len(toks) and toks[i + 1].isdigit():
            n, w = int(toks[i + 1]), toks[i + 2]
            out.append(w * n if t == "xxrep" else " ".join([w] * n))
            i += 3
        else:
            out.append(t)
            i += 1
    text = " ".join(out)
    for p in (" .", " ,", " !", " ?", " ;", " :", " 's", " n't", " 're", " 've", " 'll", " 'm", " 'd", " )"):
        text = text.replace(p, p[1:])
    return text.replace("( ", "(")
