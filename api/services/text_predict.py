"""Text models' answers: a classifier's for each of up to 64 texts [fastai: learn.predict(text)], a language model's
continuation of a prompt [fastai: learn.predict(TEXT, N_WORDS, temperature=0.75)]. Each answer is logged like an
image's (the text kept as the input when the project keeps inputs), so the uncertainty queue and the prediction log
show texts too."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.errors import Problem
from api.prediction_queue import LoggedAnswer, new_prediction_id, queued_entry
from api.schemas import Generated, GenerateRequest, PredictTexts, TextAnswer, TextAnswers
from api.state import AppState
from core.db import domain
from core.db.models import utcnow
from core.storage.layout import prediction_prefix


def _log(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    text: str,
    answer: dict[str, Any],
    uncertainty: float,
    source: str,
) -> LoggedAnswer:
    """What the prediction log keeps of one answer, its text kept (and counted toward the quota) as the project says."""
    prediction_id = new_prediction_id()
    data = text.encode()
    input_key = None
    objects = []
    stored = len(data) if project.keep_inputs else 0
    if stored:
        state.stored.check(project.id, stored, fresh=False)
        input_key = f"{prediction_prefix(project.id, prediction_id)}.txt"
        objects.append((input_key, data, "text/plain; charset=utf-8"))
        state.stored.wrote(project.id, stored)
    record = domain.PredictionRecord(
        id=prediction_id,
        project_id=project.id,
        model_id=model.id,
        name=model.name,
        source=source,
        filename=text[:120],
        input_key=input_key,
        answer=answer,
        uncertainty=uncertainty,
        created_at=utcnow(),
        stored_bytes=stored,
    )
    return queued_entry(state, record, objects)


def _classify(
    state: AppState, project: domain.Project, model: domain.Model, body: PredictTexts
) -> tuple[TextAnswers, list[LoggedAnswer]]:
    predictor = state.predictors.get_text(model)
    if predictor.is_language_model:
        raise Problem(
            422, "Language model", f"model {model.id} is a language model: POST /api/v1/models/{model.id}/generate"
        )
    answers = predictor.predict_texts(body.texts)
    results, entries = [], []
    for text, p in zip(body.texts, answers, strict=True):
        answer = p.answer()
        logged = {k: v for k, v in answer.items() if k != "words"}
        if body.explain:
            answer["words"] = predictor.word_weights(text)
        entries.append(_log(state, project, model, text, logged, float(p.uncertainty), "text"))
        prediction_id = entries[-1].record.id
        results.append(TextAnswer.model_validate({"task": predictor.task, **answer, "prediction_id": prediction_id}))
    return TextAnswers(results=results), entries


def _generate(
    state: AppState, project: domain.Project, model: domain.Model, body: GenerateRequest
) -> tuple[Generated, LoggedAnswer]:
    predictor = state.predictors.get_text(model)
    if not predictor.is_language_model:
        raise Problem(
            422, "Text classifier", f"model {model.id} classifies texts: POST /api/v1/models/{model.id}/predict-text"
        )
    text = predictor.generate(body.prompt, body.words, body.temperature, body.seed)
    entry = _log(state, project, model, body.prompt, {"text": text}, 0.0, "generate")
    return Generated(text=text, prediction_id=entry.record.id), entry


async def classify(state: AppState, project: domain.Project, model: domain.Model, body: PredictTexts) -> TextAnswers:
    answers, entries = await run_in_threadpool(_classify, state, project, model, body)
    for entry in entries:  # written after the answers are sent, in order (api/prediction_queue.py)
        await state.prediction_queue.put(entry)
    return answers


async def generate(state: AppState, project: domain.Project, model: domain.Model, body: GenerateRequest) -> Generated:
    generated, entry = await run_in_threadpool(_generate, state, project, model, body)
    await state.prediction_queue.put(entry)
    return generated
