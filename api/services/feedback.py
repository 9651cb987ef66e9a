"""The prediction log as an active-learning queue, and feedback: a person's correction (or confirmation) of a
prediction, checked by the model's task like an upload's target and stored with who sent it and when."""

from __future__ import annotations

import difflib
import io
from typing import Any

from PIL import Image

from api.errors import Problem, not_found
from api.schemas import FeedbackCreate, FeedbackList, FeedbackPublic, PredictionPublic, PredictionsPublic
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.errors import DataError
from core.engine.tasks import Correction, Task, get_task
from core.engine.text.labels import TextLabels, text_labels
from core.engine.text.manifest import LANGUAGE_MODEL, TEXT_TASKS
from core.storage.layout import feedback_prefix

ORDERS = ("uncertainty", "recent")


def _public(p: domain.PredictionRecord) -> PredictionPublic:
    return PredictionPublic.of(p, has_input=p.input_key is not None)


def list_predictions(
    state: AppState,
    project: domain.Project,
    name: str | None,
    model_id: str | None,
    order: str,
    limit: int,
    unlabelled: bool,
    offset: int = 0,
) -> PredictionsPublic:
    """A page of predictions, most uncertain (or most recent) first; `unlabelled` leaves out those that already
    have feedback; count: how many match in all."""
    with session_scope(state.sessions) as s:
        rows = repos.list_predictions(s, project.id, name, model_id, order, limit, unlabelled, offset)
        count = repos.count_predictions(s, project.id, name, model_id, unlabelled)
    return PredictionsPublic(data=[_public(p) for p in rows], count=count)


def input_image(state: AppState, project: domain.Project, prediction_id: str) -> tuple[str, bytes]:
    """A logged prediction's kept input image and its media type (from its first bytes)."""
    with session_scope(state.sessions) as s:
        record = repos.get_prediction(s, project.id, prediction_id)
    if record is None:
        raise not_found("prediction", prediction_id)
    if record.input_key is None:
        raise Problem(404, "No image", f"prediction {prediction_id} kept no image (the project's keep_inputs was off)")
    data = state.store.get_bytes(record.input_key)
    return media_type_of(data), data


def media_type_of(data: bytes) -> str:
    """An image's media type from its signature (never from a name a user chose)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def check_known_classes(target: dict[str, Any], known: list[str], new_class: bool, where: str = "") -> None:
    """A label or label set naming a class outside `known` is refused (422: a typo such as 'zebr' would quietly
    become a class of one item in the next version) unless the request says new_class: true."""
    named = [target["label"]] if isinstance(target.get("label"), str) else list(target.get("labels") or [])
    unknown = sorted({c for c in named if c not in set(known)})
    if not unknown or new_class:
        return
    field = "label" if "label" in target else "labels"
    shown = ", ".join(known[:30]) + (f" and {len(known) - 30} more" if len(known) > 30 else "")
    close = difflib.get_close_matches(unknown[0][:100], known, n=1)
    meant = f"; did you mean '{close[0]}'?" if close else "."
    raise Problem(
        422,
        "Unknown class",
        f"{where}{field}: {', '.join(repr(c[:100]) for c in unknown[:5])} is not one of the classes ({shown}){meant} "
        'Check the spelling, or send "new_class": true (CLI: --new-class) to add it as a new class',
        field=field,
    )


def feedback_task(name: str) -> Task | TextLabels:
    """What checks and records a correction for a model of task `name` (a text classifier's labels too)."""
    if name == LANGUAGE_MODEL:
        raise Problem(
            422, "Invalid feedback", "a language model's text is not corrected; correct a classifier's answer"
        )
    return text_labels(name) if name in TEXT_TASKS else get_task(name)


def correction_of(
    state: AppState, task_name: str, manifest: dict[str, Any], body: dict[str, Any], image: bytes
) -> Correction:
    """A target in the task's shape for this image (or text), checked (422 naming the field otherwise)."""
    try:
        if task_name in TEXT_TASKS:
            return text_labels(task_name).correction(body, manifest, (0, 0))
        with Image.open(io.BytesIO(image)) as img:
            size = img.size
        return get_task(task_name).correction(body, manifest, size)
    except DataError as exc:
        raise Problem(422, "Invalid feedback", str(exc)) from None


def give(
    state: AppState, caller: domain.Caller, prediction_id: str, body: FeedbackCreate, idempotency_key: str | None
) -> tuple[FeedbackPublic, bool]:
    """Store feedback on a prediction; the same Idempotency-Key again answers the stored one (and False)."""
    project = caller.project
    given = body.model_dump(exclude_none=True, exclude={"new_class"})
    if len(given) != 1:
        raise Problem(
            422,
            "Invalid feedback",
            "send exactly one of label, labels, points, values, mask or correct (got "
            f"{', '.join(sorted(given)) or 'none'})",
        )
    with session_scope(state.sessions) as s:
        prediction = repos.get_prediction(s, project.id, prediction_id)
        if prediction is None:
            raise not_found("prediction", prediction_id)
        model = repos.get_model(s, prediction.model_id, project.id)
        known = list(model.classes) if model is not None else []
        version = repos.get_version(s, model.dataset_version_id) if model and model.dataset_version_id else None
        if version is not None:  # and those of its dataset's latest version (a class added since)
            latest = repos.dataset_versions(s, version.dataset_id)
            known += [c for c in (latest[-1].classes if latest else []) if c not in known]
    if model is None:
        raise Problem(409, "Model deleted", f"the model that made prediction {prediction_id} was deleted")
    if prediction.input_key is None:
        raise Problem(
            409,
            "Input not kept",
            f"prediction {prediction_id}'s image was not kept (the project's keep_inputs was off), so a correction "
            "of it cannot become a training item",
        )
    task = feedback_task(model.task)
    manifest = state.predictors.get_any(model).manifest
    if body.correct is not None:
        if not body.correct:
            raise Problem(422, "Invalid feedback", 'correct: send {"correct": true}, or the right target instead')
        answer = dict(prediction.answer)
        for name in task.file_fields():  # the log keeps each file (a mask) in the store, by its key
            if isinstance(answer.get(name), str):
                answer[name] = state.store.get_bytes(answer[name])
        correction = task.confirmed(answer)
    else:
        correction = correction_of(state, task.name, manifest, given, state.store.get_bytes(prediction.input_key))
        check_known_classes(correction.target, known, body.new_class)
    feedback_id = repos.new_id()
    target = dict(correction.target)
    stored_bytes = 0
    if correction.mask_png is not None:
        stored_bytes = len(correction.mask_png)
        state.stored.check(project.id, stored_bytes, fresh=False)  # a mask counts toward the quota too
        target["mask"] = f"{feedback_prefix(project.id, feedback_id)}.mask.png"
        state.store.put_bytes(target["mask"], correction.mask_png, "image/png")
        state.stored.wrote(project.id, stored_bytes)
    with session_scope(state.sessions) as s:
        stored, created = repos.add_feedback(
            s,
            id=feedback_id,
            project_id=project.id,
            prediction_id=prediction_id,
            target=target,
            key_id=caller.key.id,
            idempotency_key=idempotency_key,
            stored_bytes=stored_bytes,
        )
    if not created and correction.mask_png is not None:
        state.store.delete(target["mask"])
    if not created and stored.prediction_id != prediction_id:
        raise Problem(
            409,
            "Idempotency-Key reused",
            f"this Idempotency-Key was sent with feedback on prediction {stored.prediction_id}; use a new key",
        )
    return FeedbackPublic.of(stored), created


def list_feedback(
    state: AppState, project: domain.Project, name: str | None, unused: bool, offset: int = 0, limit: int = 100
) -> FeedbackList:
    """One page of feedback, oldest first; `count` is how many there are in all (counted in SQL), as for jobs."""
    with session_scope(state.sessions) as s:
        rows = repos.list_feedback(s, project.id, name=name, unused=unused, limit=limit, offset=offset)
        count = repos.count_feedback(s, project.id, name=name, unused=unused)
    return FeedbackList(data=[FeedbackPublic.of(f) for f, _ in rows], count=count)


def count_feedback(state: AppState, project: domain.Project, name: str | None = None, unused: bool = False) -> int:
    """How much feedback the project has (of a name; unused only), without loading any of it."""
    with session_scope(state.sessions) as s:
        return repos.count_feedback(s, project.id, name=name, unused=unused)


def delete(state: AppState, project: domain.Project, feedback_id: str) -> None:
    """Take back feedback that no dataset version has used yet (its mask too); the prediction's earlier feedback,
    if any, is what the next version then takes. Used feedback is part of a version: 409 saying so."""
    with session_scope(state.sessions) as s:
        found = repos.get_feedback(s, project.id, feedback_id)
        if found is None:
            raise not_found("feedback", feedback_id)
        if found.used_in is not None or not repos.delete_unused_feedback(s, project.id, feedback_id):
            raise Problem(
                409,
                "Feedback already used",
                f"feedback {feedback_id} is in a dataset version already; to undo it, cut a new version that "
                "relabels or removes its item",
            )
    if "mask" in found.target:
        state.store.delete(found.target["mask"])
