"""A person's label for a text, in the shape the feedback loop speaks (the image classifiers' {"label"} and
{"labels"}): checked, confirmed from an answer, and written as a text version's manifest fields. The text itself
travels with its row, so a relabel keeps it and an added item brings it from the prediction's kept input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.engine.errors import DataError
from core.engine.tasks.base import Correction, check_label
from core.engine.text.manifest import TEXT_CLASSIFICATION, TEXT_MULTILABEL


@dataclass(frozen=True)
class TextLabels:
    """The feedback side of a text classifier: single-label (`{"label"}`) or multi-label (`{"labels"}`)."""

    name: str

    @property
    def multi_label(self) -> bool:
        return self.name == TEXT_MULTILABEL

    def file_fields(self) -> list[str]:
        return []  # a text's target holds no file

    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        """The target in this task's shape, checked (image_size is the image tasks'; a text has none)."""
        if self.multi_label:
            labels = body.get("labels")
            if not isinstance(labels, list) or len(labels) > 1000:
                raise DataError('labels: a multi-label text target is {"labels": [CLASS, ...]} (new classes allowed)')
            return Correction({"labels": sorted({check_label(c, "labels") for c in labels})})
        if "label" not in body:
            raise DataError('label: a text classifier\'s target is {"label": CLASS} (a new class is allowed)')
        return Correction({"label": check_label(body["label"], "label")})

    def confirmed(self, answer: dict[str, Any]) -> Correction:
        if self.multi_label:
            return Correction({"labels": list(answer.get("labels", []))})
        return Correction({"label": answer["top"][0]})

    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest fields of the target (its text is the row's own)."""
        if self.multi_label:
            delim = manifest["labels"].get("label_delim") or " "
            if any(delim in c for c in target["labels"]):
                raise DataError(f"labels: a class name cannot hold the dataset's label delimiter {delim!r}")
            return {"label": delim.join(target["labels"])}
        return {"label": target["label"]}


def text_labels(manifest_or_task: dict[str, Any] | str) -> TextLabels:
    """The feedback side for a model's task name, or for a text dataset version's manifest."""
    if isinstance(manifest_or_task, str):
        return TextLabels(manifest_or_task)
    multi = bool(manifest_or_task.get("labels", {}).get("label_delim"))
    return TextLabels(TEXT_MULTILABEL if multi else TEXT_CLASSIFICATION)
