"""What a text classifier gets wrong on its validation texts [fastai: ClassificationInterpretation, for text]: the
confusion matrix and the most confused pairs, each class's error (multi-label), and the top losses with their
texts, for interpretation.json and the job's interpretation page."""

from __future__ import annotations

from typing import Any, cast

import torch

from core.engine.items import TextItems
from core.engine.learner import Learner
from core.engine.text.data import SortedLoader


def interpret_classifier(learn: Learner, items: TextItems, valid_idx: list[int]) -> dict[str, Any]:
    """interpretation.json: the confusion matrix, the most confused pairs and the top losses with their texts
    (multi-label: each class's errors)."""
    preds, targs = learn.get_preds()
    loader = learn.dls.valid
    order = [int(i) for b in cast(SortedLoader, loader).batches() for i in b]
    return interpret_outputs(preds, targs, items, [valid_idx[i] for i in order])


def interpret_outputs(preds: torch.Tensor, targs: torch.Tensor, items: TextItems, keys: list[int]) -> dict[str, Any]:
    """The summary from a classifier's outputs (logits) and targets on the items `keys`, in that order."""
    classes = items.classes
    summary: dict[str, Any] = {"classes": classes, "n_valid": len(keys)}
    if items.multi_label:
        probs = preds.sigmoid()
        wrong = ((probs > 0.5).float() != targs).float()
        losses = torch.nn.functional.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), targs, reduction="none").mean(1)
        summary["per_class_error"] = dict(zip(classes, wrong.mean(0).tolist(), strict=True))
        predicted = [[c for c, p in zip(classes, row, strict=True) if p > 0.5] for row in probs.tolist()]
        given = [items.label_set(k) for k in keys]
    else:
        probs = preds.softmax(1)
        losses = torch.nn.functional.cross_entropy(preds, targs, reduction="none")
        hits = probs.argmax(1) == targs
        summary["error_rate"] = 1 - hits.float().mean().item()
        n = len(classes)
        cm = torch.zeros(n, n, dtype=torch.long)
        for t, p in zip(targs.tolist(), probs.argmax(1).tolist(), strict=True):
            cm[t, p] += 1
        summary["confusion_matrix"] = cm.tolist()
        summary["most_confused"] = sorted(
            ([classes[a], classes[b], int(cm[a, b])] for a in range(n) for b in range(n) if a != b and cm[a, b] > 0),
            key=lambda r: -cast(int, r[2]),
        )[:20]
        predicted = [[classes[i]] for i in probs.argmax(1).tolist()]
        given = [[items.labels[k]] for k in keys]
    top = torch.argsort(losses, descending=True)[:20].tolist()
    summary["top_losses"] = [
        {
            "item": items.keys[keys[i]],
            "text": items.texts[keys[i]][:1000],
            "given": given[i],
            "predicted": predicted[i],
            "loss": float(losses[i]),
        }
        for i in top
    ]
    return summary
