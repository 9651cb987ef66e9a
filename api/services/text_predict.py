"""Text models' answers: a classifier's for each of up to 64 texts [fastai: learn.predict(text)], a language model's
continuation of a prompt [fastai: learn.predict(TEXT, N_WORDS, temperature=0.75)]. Each answer is logged like an
image's (the text kept as the input when the project keeps inputs), so the uncertainty queue and the prediction log
show texts too."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.errors import Problem
from api.schemas import Generated, GenerateRequest, PredictTexts, TextAnswer, TextAnswers
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.storage.layout import prediction_prefix


def _log(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    text: str,
    answer: dict[str, Any],
    uncertainty: float,
    source: str,
) -> str:
    """One answer in the prediction log, with its text kept (and counted toward the quota) as the project says."""
    prediction_id = repos.new_id()
    data = text.encode()
    input_key = None
    stored = len(data) if project.keep_inputs else 0
    if stored:
        state.stored.check(project.id, stored, fresh=False)
        input_key = f"{prediction_prefix(project.id, prediction_id)}.txt"
        state.store.put_bytes(input_key, data, "text/plain; charset=utf-8")
        state.stored.wrote(project.id, stored)
    with session_scope(state.sessions) as s:
        repos.record_prediction(
            s,
            id=prediction_id,
            project_id=project.id,
            model_id=model.id,
            name=model.name,
            source=source,
            filename=text[:120],
            input_key=input_key,
            answer=answer,
            uncertainty=uncertainty,
            stored_bytes=stored,
        )
    return prediction_id


def _classify(state: AppState, project: domain.Project, model: domain.Model, body: PredictTexts) -> TextAnswers:
    predictor = state.predictors.get_text(model)
    if predictor.is_language_model:
        raise Problem(
            422, "Language model", f"model {model.id} is a language model: POST /api/v1/models/{model.id}/generate"
        )
    answers = predictor.predict_texts(body.texts)
    results = []
    for text, p in zip(body.texts, answers, strict=True):
        answer = p.answer()
        logged = {k: v for k, v in answer.items() if k != "words"}
        if body.explain:
            answer["words"] = predictor.word_weights(text)
        prediction_id = _log(state, project, model, text, logged, float(p.uncertainty), "text")
        results.append(TextAnswer.model_validate({"task": predictor.task, **answer, "prediction_id": prediction_id}))
    return TextAnswers(results=results)


def _generate(state: AppState, project: domain.Project, model: domain.Model, body: GenerateRequest) -> Generated:
    predictor = state.predictors.get_text(model)
    if not predictor.is_language_model:
        raise Problem(
            422, "Text classifier", f"model {model.id} classifies texts: POST /api/v1/models/{model.id}/predict-text"
        )
    text = predictor.generate(body.prompt, body.words, body.temperature, body.seed)
    prediction_id = _log(state, project, model, body.prompt, {"text": text}, 0.0, "generate")
    return Generated(text=text, prediction_id=prediction_id)


async def classify(state: AppState, project: domain.Project, model: domain.Model, body: PredictTexts) -> TextAnswers:
    return await run_in_threadpool(_classify, state, project, model, body)


async def generate(state: AppState, project: domain.Project, model: domain.Model, body: GenerateRequest) -> Generated:
    return await run_in_threadpool(_generate, state, project, model, body)
