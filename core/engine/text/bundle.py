"""Text export bundles and their Predictor [fastai: learn.export + load_learner, for text]: the weights as
safetensors (tied embedding rows stored once), the vocabulary as JSON, and a manifest naming the task (a language
model, or a single- or multi-label classifier), the AWD-LSTM's configuration and the tokenizer's rules. Nothing in
a bundle is a pickle. The Predictor answers texts in the image classifier's answer shape, and a language model
writes a continuation of a prompt."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.engine.errors import BundleError
from core.engine.text.awd_lstm import ARCH, AWDConfig, LanguageModel, LinearDecoder, TextClassifier
from core.engine.text.data import pad_front
from core.engine.text.manifest import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    LANGUAGE_MODEL,
    MANIFEST_FILE,
    TEXT_MULTILABEL,
    TIED,
    VOCAB_FILE,
    WEIGHTS_FILE,
    TextTask,
    check_text_manifest,
    is_text_manifest,
    sha256_file,
)
from core.engine.text.tokenizer import TOKENIZER_VERSION, Vocab, tokenize

MAX_TEXTS_PER_CALL = 64
# The classifier reads a text's last 1,440 tokens: about 7,000 characters of prose. Tokenizing only the last 10,000
# keeps one request's work bounded whatever it sends (a text built to tokenize slowly costs ~0.3 s per 10,000).
READ_CHARS = 10_000
MAX_GENERATED_WORDS = 500


def export_text_bundle(
    folder: Path,
    task: TextTask,
    model: nn.Module,
    vocab: Vocab,
    config: AWDConfig,
    seq_len: int,
    classes: Sequence[str] = (),
    thresholds: Sequence[float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle (weights, vocabulary, manifest) to `folder`; returns the manifest."""
    import torchvision

    from core.engine.export import fitcycle_version

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in getattr(model, "module", model).state_dict().items()}
    for copy in TIED[task]:
        state.pop(copy, None)
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / VOCAB_FILE).write_text(vocab.to_json())
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "modality": "text",
        "task": task,
        "arch": ARCH,
        "config": config.as_dict(),
        "classes": list(classes),
        "n_out": len(vocab) if task == LANGUAGE_MODEL else len(classes),
        "seq_len": seq_len,
        "activation": "sigmoid" if task == TEXT_MULTILABEL else "softmax",
        **({"thresholds": [float(t) for t in thresholds]} if thresholds is not None else {}),
        "tokenizer": {"rules": "fastai", "version": TOKENIZER_VERSION, "vocab_size": len(vocab)},
        "weights": WEIGHTS_FILE,
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "vocab": VOCAB_FILE,
        "onnx": {"kept": False, "why": "text models are served by PyTorch (ONNX export of the AWD-LSTM: not yet)"},
        "versions": {
            "fitcycle": fitcycle_version(),
            "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0],
        },
        **(extra or {}),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_text_bundle(folder: Path) -> tuple[dict[str, Any], nn.Module, Vocab]:
    """The manifest, the model (weights loaded, tied rows tied again, eval mode) and the vocabulary of a bundle."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder}: no readable {MANIFEST_FILE} ({exc})") from exc
    if not is_text_manifest(manifest):
        raise BundleError(f"{folder}: not a text model's bundle")
    check_text_manifest(manifest, folder)
    vocab = Vocab.from_json((folder / manifest["vocab"]).read_text())
    model = text_model(manifest, len(vocab))
    state = load_file(str(folder / manifest["weights"]), device="cpu")
    for copy, source in TIED[manifest["task"]].items():
        if source in state:
            state[copy] = state[source]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{folder}: the weights do not fit the manifest's model: {str(exc)[:300]}") from exc
    if manifest["task"] == LANGUAGE_MODEL:  # load_state_dict copies: tie the decoder to the embedding again
        lm = model
        assert isinstance(lm, LanguageModel)
        cast(LinearDecoder, lm[1]).decoder.weight = lm.encoder.encoder.weight
    return manifest, model.eval(), vocab


def text_model(manifest: dict[str, Any], vocab_size: int) -> nn.Module:
    """The bundle's model, untrained."""
    config = AWDConfig(**manifest["config"])
    if manifest["task"] == LANGUAGE_MODEL:
        return LanguageModel(vocab_size, config)
    return TextClassifier(vocab_size, int(manifest["n_out"]), config, bptt=int(manifest.get("seq_len", 72)))


@dataclass(frozen=True)
class TextPrediction:
    """One text's answer: every class with its probability, most probable first; multi-label: the classes over
    their thresholds too. The same fields as an image classifier's answer."""

    probs: list[float]
    classes: list[str]
    thresholds: list[float] | None = None
    words: list[tuple[str, float]] = field(default_factory=list)  # each token's weight in the answer, when asked

    def ranked(self) -> list[tuple[str, float]]:
        order = sorted(range(len(self.probs)), key=lambda i: -self.probs[i])
        return [(self.classes[i], self.probs[i]) for i in order]

    def answer(self) -> dict[str, Any]:
        ranked = self.ranked()
        out: dict[str, Any] = {"top": ranked[0], "predictions": ranked}
        if self.thresholds is not None:
            out["labels"] = [c for c, p, t in zip(self.classes, self.probs, self.thresholds, strict=True) if p > t]
        if self.words:
            out["words"] = self.words
        return out

    def public(self) -> dict[str, Any]:
        return self.answer()

    def text(self) -> str:
        if self.thresholds is not None:
            return ", ".join(self.answer()["labels"]) or "(no class)"
        label, p = self.ranked()[0]
        return f"{label} ({p:.3f})"

    @property
    def uncertainty(self) -> float:
        """1 - the margin between the two most probable classes; multi-label: closeness to the thresholds."""
        if self.thresholds is not None:
            return 1.0 - min(abs(p - t) * 2 for p, t in zip(self.probs, self.thresholds, strict=True))
        top = sorted(self.probs, reverse=True)[:2]
        return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))


class TextPredictor:
    """A text bundle's model on the CPU: classifies texts, or (a language model) continues a prompt."""

    def __init__(self, bundle: str | Path, device: str | torch.device = "cpu") -> None:
        self.bundle = Path(bundle)
        self.manifest, model, self.vocab = read_text_bundle(self.bundle)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.task: str = self.manifest["task"]
        self.classes: list[str] = list(self.manifest["classes"])
        self.backend = "torch"
        # The AWD-LSTM keeps its hidden state on the module and word_weights hooks it: one call at a time per model.
        self._lock = threading.Lock()
        thresholds = self.manifest.get("thresholds")
        self.thresholds = [float(t) for t in thresholds] if self.task == TEXT_MULTILABEL and thresholds else None
        if self.task == TEXT_MULTILABEL and self.thresholds is None:
            self.thresholds = [0.5] * len(self.classes)

    @property
    def is_language_model(self) -> bool:
        return self.task == LANGUAGE_MODEL

    def token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's last 1,440 tokens (what the classifier reads), from its last READ_CHARS characters only."""
        return [self.vocab.numericalize(tokenize(t[-READ_CHARS:]))[-72 * 20 :] for t in texts]

    @torch.inference_mode()
    def predict_texts(self, texts: Sequence[str]) -> list[TextPrediction]:
        """Answers for several texts, in one forward pass (padded at the front)."""
        if self.is_language_model:
            raise BundleError("a language model writes text (generate); it does not classify")
        if not texts:
            return []
        ids = self.token_ids(texts)
        with self._lock:
            logits = self.model(pad_front(ids).to(self.device)).float().cpu()
        probs = logits.sigmoid() if self.thresholds is not None else logits.softmax(dim=1)
        return [TextPrediction(p.tolist(), self.classes, self.thresholds) for p in probs]

    def predict(self, text: str) -> TextPrediction:
        return self.predict_texts([text])[0]

    def word_weights(self, text: str) -> list[tuple[str, float]]:
        """Each token's weight in the top answer: the gradient of its score with respect to the token's embedding
        (its norm, scaled to [0, 1]) [fastai: intrinsic_attention]."""
        from core.engine.text.tokenizer import tokenize as tok

        if self.is_language_model:
            raise BundleError("a language model has no answer to weigh words by")
        tokens = tok(text[-READ_CHARS:])[-72 * 20 :]
        ids = torch.as_tensor(self.vocab.numericalize(tokens), device=self.device)[None]
        clf = self.model
        assert isinstance(clf, TextClassifier)
        awd = clf.awd
        emb_out: list[torch.Tensor] = []

        def keep(_: nn.Module, __: Any, out: torch.Tensor) -> torch.Tensor:
            out.retain_grad()
            emb_out.append(out)
            return out

        self._lock.acquire()
        handle = awd.encoder_dp.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                logits = clf(ids)[0]
                logits[int(logits.argmax())].backward()
        finally:
            handle.remove()
            clf.zero_grad(set_to_none=True)
            self._lock.release()
        grads = torch.cat([e.grad[0] for e in emb_out if e.grad is not None], dim=0).norm(dim=1)
        top = float(grads.max()) if len(grads) else 0.0
        weights = (grads / top).tolist() if top > 0 else [0.0] * len(tokens)
        return [(t, round(float(w), 4)) for t, w in zip(tokens, weights, strict=True) if not math.isnan(w)]

    def generate(self, prompt: str, words: int = 40, temperature: float = 0.75, seed: int | None = None) -> str:
        """The prompt and `words` more, as the language model writes them [fastai: learn.predict(TEXT, N_WORDS)]."""
        from core.engine.text.learner import generate

        if not self.is_language_model:
            raise BundleError("a classifier answers texts; only a language model writes them")
        words = max(0, min(int(words), MAX_GENERATED_WORDS))
        assert isinstance(self.model, LanguageModel)
        with self._lock:
            return generate(self.model, self.vocab, prompt, words, temperature, seed)
