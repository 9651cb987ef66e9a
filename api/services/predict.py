"""Answering images, and the prediction log: every answer (by model, by registry name, by URL) is stored with
its uncertainty and, when the project keeps inputs, the image itself, so that people can correct the least
certain ones first and their corrections can become training items."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from api.errors import Problem
from api.metrics import PREDICT_SECONDS
from api.schemas import Answer, BatchPredictions, FileError, FileResult, answer_of, file_answer_of
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.tasks import Prediction
from core.engine.tasks.base import json_ready
from core.storage.layout import prediction_prefix

# Image formats the Predictor decodes -> the extension a kept input is stored (and trained) under.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


async def answer_files(
    state: AppState, project: domain.Project, model: domain.Model, files: list[UploadFile], source: str
) -> Answer | BatchPredictions:
    """One file: its answer (a file that is not an image: 422). Several: one answer or error per file, in order."""
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
        return await answer(state, project, model, await files[0].read(), names[0], source)
    await run_in_threadpool(state.predictors.get, model)  # load it once, before the files
    results: list[FileResult] = []
    for f, name in zip(files, names, strict=True):  # one bad file gets its own error; the others their answers
        try:
            one = await answer(state, project, model, await f.read(), name, source)
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


async def answer(
    state: AppState, project: domain.Project, model: domain.Model, image: bytes, filename: str, source: str
) -> Answer:
    """One image through the model (decoded on its own, so one request holds one decoded image at a time),
    logged; the answer carries its prediction_id. No thread is held while the image waits for its batch and its
    forward pass: with many clients, a pool thread per waiting image would leave none for the next requests."""
    pending = await run_in_threadpool(start, state, model, image, filename)
    try:
        prediction = await asyncio.wrap_future(pending.answer)
    except (OSError, ValueError) as exc:
        raise unreadable(filename, exc) from None
    finally:
        PREDICT_SECONDS.labels(source).observe(time.perf_counter() - pending.started)
    return await run_in_threadpool(record_answer, state, project, model, pending, prediction, image, filename, source)


def start(state: AppState, model: domain.Model, image: bytes, filename: str) -> Pending:
    """Load the model (once; outside the image's own errors: a load failure is not a 422), decode the image and
    hand it to the model. An image that cannot be decoded is a 422 naming the file."""
    task = state.predictors.get(model).task.name
    started = time.perf_counter()
    try:
        answer = submit(state, model, image)  # first: its decoder refuses bombs and non-images with the reason
        with Image.open(io.BytesIO(image)) as img:
            fmt = img.format or ""
        return Pending(answer, task, fmt, started)
    except (OSError, ValueError) as exc:
        raise unreadable(filename, exc) from None


def unreadable(filename: str, exc: Exception) -> Problem:
    return Problem(
        422,
        "Unreadable image",
        f"'{filename[:200]}' is not an image we can decode ({str(exc)[:200]})",
        file=filename[:200],
    )


def record_answer(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    pending: Pending,
    p: Prediction,
    image: bytes,
    filename: str,
    source: str,
) -> Answer:
    """Store the answer in the prediction log (with the image, when the project keeps inputs); the public answer
    with its prediction_id."""
    prediction_id = repos.new_id()
    prefix = prediction_prefix(project.id, prediction_id)
    answer = p.answer()
    logged = dict(answer)
    files = {name: data for name, data in answer.items() if isinstance(data, bytes)}  # a mask, kept as a PNG
    stored = (len(image) if project.keep_inputs else 0) + sum(len(data) for data in files.values())
    if stored:  # what is kept counts toward the quota: checked before it is written
        state.stored.check(project.id, stored, fresh=False)
    input_key = None
    if project.keep_inputs:
        fmt = pending.format
        input_key = f"{prefix}{EXTENSIONS.get(fmt, '.png')}"
        state.store.put_bytes(input_key, image, f"image/{fmt.lower() or 'png'}")
    for name, data in files.items():  # beside the row, which holds its key
        logged[name] = f"{prefix}.{name}.png"
        state.store.put_bytes(logged[name], data, "image/png")
    state.stored.wrote(project.id, stored)
    with session_scope(state.sessions) as s:
        repos.record_prediction(
            s,
            id=prediction_id,
            project_id=project.id,
            model_id=model.id,
            name=model.name,
            source=source,
            filename=filename[:300],
            input_key=input_key,
            answer=logged,
            uncertainty=float(p.uncertainty),
            stored_bytes=stored,
        )
    return answer_of(pending.task, json_ready(answer), prediction_id)  # JSON: here the mask becomes base64


def submit(state: AppState, model: domain.Model, image: bytes) -> Future[Prediction]:
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
