"""Answering images, and the prediction log: every answer (by model, by registry name, by URL) is stored with
its uncertainty and, when the project keeps inputs, the image itself, so that people can correct the least
certain ones first and their corrections can become training items. They are written behind the answer, in
order, by the process's prediction queue (api/prediction_queue.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from api.errors import Problem, not_found
from api.metrics import PREDICT_SECONDS
from api.prediction_queue import LoggedAnswer, new_prediction_id, queued_entry
from api.schemas import Answer, BatchPredictions, Explain, FileError, FileResult, answer_of, file_answer_of
from api.state import AppState
from core.db import domain, repos
from core.db.models import utcnow
from core.db.session import session_scope
from core.engine.drift import input_stats
from core.engine.images import open_rgb
from core.engine.inference import Predictor
from core.engine.tasks import Prediction
from core.engine.tasks.base import json_ready
from core.storage.layout import prediction_prefix

log = logging.getLogger(__name__)

# Image formats the Predictor decodes -> the extension a kept input is stored (and trained) under.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


async def answer_files(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    files: list[UploadFile],
    source: str,
    explain: Explain | None = None,
) -> Answer | BatchPredictions:
    """One file: its answer (a file that is not an image: 422). Several: one answer or error per file, in order.
    With `explain`, each answer carries its heatmap."""
    settings = state.settings
    if len(files) > settings.max_predict_files:
        raise Problem(413, "Too many files", f"at most {settings.max_predict_files} images per request")
    names = [f.filename or f"file{i}" for i, f in enumerate(files)]
    for f, name in zip(files, names, strict=True):
        if (f.size or 0) > settings.max_predict_file_bytes:
            raise Problem(
                413,
                "Image too large",
                f"'{name[:200]}' is {f.size:,} bytes; the limit is {settings.max_predict_file_bytes:,} per image",
            )
    if len(files) == 1:  # the model is loaded (once, however many requests ask at once) on the way
        return await answer(state, project, model, await files[0].read(), names[0], source, explain)
    await run_in_threadpool(state.predictors.get, model)  # load it once, before the files
    results: list[FileResult] = []
    for f, name in zip(files, names, strict=True):  # one bad file gets its own error; the others their answers
        try:
            one = await answer(state, project, model, await f.read(), name, source, explain)
            results.append(file_answer_of(one, name))
        except Problem as exc:
            results.append(FileError(filename=name, error=exc.detail))
    return BatchPredictions(results=results)


@dataclass
class Pending:
    """An image on its way through the model: its answer comes in `answer`."""

    answer: Future[Prediction]
    task: str  # the model's task: which answer schema the answer takes
    format: str  # the image's format, as PIL names it ("" when it does not say)
    started: float  # time.perf_counter() when it was handed to the model
    heatmap: tuple[str, bytes] | None = None  # an explained answer's class and PNG (made on the request's thread)
    inputs: list[float] | None = None  # the image's cheap statistic (core.engine.drift.input_stats)


async def answer(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    image: bytes,
    filename: str,
    source: str,
    explain: Explain | None = None,
) -> Answer:
    """One image through the model (decoded on its own, so one request holds one decoded image at a time), queued
    for the prediction log; the answer carries its prediction_id. No thread is held while the image waits for its
    batch and its forward pass: with many clients, a pool thread per waiting image would leave none for the next
    requests. An explained answer (`explain`) is computed apart from the batches, by PyTorch (ONNX Runtime has no
    gradients), and carries its heatmap; the log keeps the answer, not the heatmap (GET /predictions/{id}/heatmap
    makes it again from the kept input)."""
    wanted = (explain.heatmap_class or "") if explain is not None and explain.wanted else None
    pending = await run_in_threadpool(start, state, model, image, filename, wanted)
    try:
        prediction = await asyncio.wrap_future(pending.answer)
    except (OSError, ValueError) as exc:
        raise unreadable(filename, exc) from None
    finally:
        PREDICT_SECONDS.labels(source).observe(time.perf_counter() - pending.started)
    public, entry = await run_in_threadpool(
        log_entry, state, project, model, pending, prediction, image, filename, source
    )
    await state.prediction_queue.put(entry)  # written behind the answer (api/prediction_queue.py)
    return public


def start(state: AppState, model: domain.Model, image: bytes, filename: str, explain: str | None = None) -> Pending:
    """Load the model (once; outside the image's own errors: a load failure is not a 422), decode the image and
    hand it to the model; `explain` ("" for the most probable class, else a class) answers here with a heatmap. An
    image that cannot be decoded is a 422 naming the file."""
    predictor = state.predictors.get(model)
    if explain is not None:
        check_explainable(predictor, explain or None)
    started = time.perf_counter()
    try:
        decoded = open_rgb(image)  # first: the decoder refuses bombs and non-images with the reason
        if explain is None:
            answer = submit(state, model, decoded)
        with Image.open(io.BytesIO(image)) as img:
            fmt = img.format or ""
    except (OSError, ValueError) as exc:
        raise unreadable(filename, exc) from None
    inputs = input_stats(decoded)  # what the drift window compares with the model's reference (api/drift.py)
    if explain is None:
        return Pending(answer, predictor.task.name, fmt, started, inputs=inputs)
    prediction, heatmap = explained(state, model.project_id, predictor, decoded, explain or None)
    answer = Future()
    answer.set_result(prediction)
    return Pending(answer, predictor.task.name, fmt, started, heatmap, inputs)


def explained(
    state: AppState, project_id: str, predictor: Predictor, image: Image.Image | bytes, heatmap_class: str | None
) -> tuple[Prediction, tuple[str, bytes]]:
    """The answer and its heatmap (class, PNG), paid from the project's heatmap budget (one at a time, 429 when it
    is spent). The image is decoded already (or was, when it was answered): what fails here is the model's, a 500
    that echoes nothing of it."""
    with state.explain_budget.spend(project_id):
        try:
            prediction, heatmap = predictor.explain(image, heatmap_class)
            return prediction, (heatmap.label, heatmap.png())
        except Exception:
            log.exception("a heatmap of model %s failed", predictor.manifest.get("arch"))
            raise Problem(
                500, "No heatmap", "the model could not make a heatmap of this image; try again, or ask without explain"
            ) from None


def check_explainable(predictor: Predictor, heatmap_class: str | None) -> None:
    """A 422 that names the field when a model cannot explain, or does not know the class asked for."""
    if not predictor.explains:
        raise Problem(
            422,
            "No heatmaps for this model",
            f"explain: heatmaps are for classification and multi-label models; this one is a {predictor.task.name} "
            "model. Leave explain out",
        )
    if heatmap_class is not None and heatmap_class not in predictor.classes:
        known = ", ".join(predictor.classes[:20]) + (", ..." if len(predictor.classes) > 20 else "")
        raise Problem(
            422, "Unknown class", f"heatmap_class: {heatmap_class[:100]!r} is not one of the model's classes ({known})"
        )


def unreadable(filename: str, exc: Exception) -> Problem:
    return Problem(
        422,
        "Unreadable image",
        f"'{filename[:200]}' is not an image we can decode ({str(exc)[:200]})",
        file=filename[:200],
    )


def log_entry(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    pending: Pending,
    p: Prediction,
    image: bytes,
    filename: str,
    source: str,
) -> tuple[Answer, LoggedAnswer]:
    """The public answer with its prediction_id, and what the prediction log keeps of it (the image, when the
    project keeps inputs; the masks it carries), checked against the project's quota first."""
    prediction_id = new_prediction_id()
    prefix = prediction_prefix(project.id, prediction_id)
    answer = p.answer()
    logged = dict(answer)
    files = {name: data for name, data in answer.items() if isinstance(data, bytes)}  # a mask, kept as a PNG
    stored = (len(image) if project.keep_inputs else 0) + sum(len(data) for data in files.values())
    if stored:  # what is kept counts toward the quota: checked before it is queued
        state.stored.check(project.id, stored, fresh=False)
    objects = []
    input_key = None
    if project.keep_inputs:
        fmt = pending.format
        input_key = f"{prefix}{EXTENSIONS.get(fmt, '.png')}"
        objects.append((input_key, image, f"image/{fmt.lower() or 'png'}"))
    for name, data in files.items():  # beside the row, which holds its key
        logged[name] = f"{prefix}.{name}.png"
        objects.append((logged[name], data, "image/png"))
    state.stored.wrote(project.id, stored)
    record = domain.PredictionRecord(
        id=prediction_id,
        project_id=project.id,
        model_id=model.id,
        name=model.name,
        source=source,
        filename=filename[:300],
        input_key=input_key,
        answer=logged,
        uncertainty=float(p.uncertainty),
        created_at=utcnow(),
        stored_bytes=stored,
        inputs=pending.inputs,
    )
    shown = answer if pending.heatmap is None else answer | pending_heatmap(pending.heatmap)
    public = answer_of(pending.task, json_ready(shown), prediction_id)  # JSON: here the mask becomes base64
    return public, queued_entry(state, record, objects)


def logged_heatmap(state: AppState, project: domain.Project, prediction_id: str, heatmap_class: str | None) -> bytes:
    """A logged answer's heatmap (PNG), made again from its kept input by the model that answered: 404 when the
    input was not kept or the model is gone; 422 when the model has no heatmaps or does not know the class."""
    with session_scope(state.sessions) as s:
        record = repos.get_prediction(s, project.id, prediction_id)
        model = repos.get_model(s, record.model_id, project.id) if record is not None else None
    if record is None:
        raise not_found("prediction", prediction_id)
    if model is None:
        raise Problem(404, "Model deleted", f"the model that answered prediction {prediction_id} was deleted")
    predictor = state.predictors.get(model)  # a text model: 422, its words' weights come from predict-text
    check_explainable(predictor, heatmap_class)
    if record.input_key is None:
        raise Problem(404, "No image", f"prediction {prediction_id} kept no image (the project's keep_inputs was off)")
    _, (_, png) = explained(state, project.id, predictor, state.store.get_bytes(record.input_key), heatmap_class)
    return png


def pending_heatmap(heatmap: tuple[str, bytes]) -> dict[str, object]:
    """An explained answer's extra fields (the PNG as bytes, base64 once it is JSON)."""
    label, png = heatmap
    return {"heatmap": png, "heatmap_class": label}


def submit(state: AppState, model: domain.Model, image: bytes | Image.Image) -> Future[Prediction]:
    """The model's answer for one image, to come: with micro-batching on (FITCYCLE_PREDICT_BATCH_WINDOW_MS > 0),
    from one forward pass with the other requests' images that arrive within the window; otherwise computed
    here. An image that cannot be decoded raises ValueError or OSError here, for its own request only."""
    settings = state.settings
    if settings.predict_batch_window_ms > 0 and settings.predict_max_batch > 1:
        batcher = state.predictors.batcher(model, settings.predict_batch_window_ms / 1000, settings.predict_max_batch)
        return batcher.submit(image)
    done: Future[Prediction] = Future()
    done.set_result(state.predictors.get(model).predict(image))
    return done
