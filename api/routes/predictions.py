"""The prediction log (the active-learning queue) and feedback on predictions. The log is written behind the
answers (api/prediction_queue.py): a read waits for what it needs of it, so a prediction is readable as soon as
its answer is."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import CallerDep, HeatmapClassQuery, OffsetQuery, ProjectDep, StateDep
from api.openapi import IMAGE_TYPES, binary
from api.prediction_queue import logged
from api.schemas import (
    MAX_INT,
    FeedbackCreate,
    FeedbackList,
    FeedbackPublic,
    PredictionsDeleted,
    PredictionsPublic,
    QueryBool,
)
from api.services import feedback as service
from api.services import predict as predict_service
from api.services import prediction_log

router = APIRouter(tags=["feedback"])


@router.get("/predictions")
async def list_predictions(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    model_id: Annotated[str | None, Query(max_length=36)] = None,
    order: Annotated[str, Query(pattern="^(uncertainty|recent)$")] = "recent",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    unlabelled: QueryBool = False,
    offset: OffsetQuery = 0,
) -> PredictionsPublic:
    """Logged predictions, most uncertain (order=uncertainty: label these first) or most recent first, a page at a
    time: `limit` from `offset`; `count` is how many match in all."""
    await state.prediction_queue.written()  # what this API process answered so far is listed
    return await run_in_threadpool(
        service.list_predictions, state, project, name, model_id, order, limit, unlabelled, offset
    )


@router.delete("/predictions", status_code=200)
async def delete_predictions(
    state: StateDep,
    project: ProjectDep,
    before: Annotated[datetime, Query(description="delete predictions made before this time (ISO 8601)")],
) -> PredictionsDeleted:
    """Delete the predictions made before `before`, oldest first, with their kept inputs, masks and feedback: at
    most 1,000 per call; `more` says whether to call again."""
    await state.prediction_queue.written()  # what this API process answered before is deleted too
    return await run_in_threadpool(prediction_log.delete_before, state, project, before)


@router.delete("/predictions/{prediction_id}", status_code=204, response_class=Response)
async def delete_prediction(state: StateDep, project: ProjectDep, prediction_id: str) -> None:
    """Delete one prediction with its kept input, its masks and its feedback."""
    await logged(state.prediction_queue, state.sessions, project.id, prediction_id)
    await run_in_threadpool(prediction_log.delete_one, state, project, prediction_id)


@router.get("/predictions/{prediction_id}/image", response_class=Response, responses=binary(*IMAGE_TYPES))
async def prediction_image(state: StateDep, project: ProjectDep, prediction_id: str) -> Response:
    """The image a prediction answered (kept when the project's keep_inputs is on)."""
    await logged(state.prediction_queue, state.sessions, project.id, prediction_id)
    media_type, data = await run_in_threadpool(service.input_image, state, project, prediction_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/predictions/{prediction_id}/heatmap", response_class=Response, responses=binary("image/png"))
async def prediction_heatmap(
    state: StateDep, project: ProjectDep, prediction_id: str, heatmap_class: HeatmapClassQuery = None
) -> Response:
    """Where in a logged answer's image the evidence for `heatmap_class` (default: its most probable class) is:
    Grad-CAM by the model that answered, from the kept input (404 when the project's keep_inputs was off), as an
    8-bit greyscale PNG of the image's size. Classification and multi-label models only (others: 422)."""
    await logged(state.prediction_queue, state.sessions, project.id, prediction_id)
    data = await run_in_threadpool(predict_service.logged_heatmap, state, project, prediction_id, heatmap_class)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/predictions/{prediction_id}/feedback", status_code=201)
async def give_feedback(
    response: Response,
    state: StateDep,
    caller: CallerDep,
    prediction_id: str,
    body: FeedbackCreate,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FeedbackPublic:
    """The right answer for a prediction, in its task's shape ({"label"}, {"labels"}, {"points"}, {"values"},
    {"mask": base64 PNG}) or {"correct": true}. A class outside the model's and its dataset's classes is a 422
    unless the body says "new_class": true. Sending feedback again replaces it: the next version takes the latest.
    With an Idempotency-Key header, sending it again stores nothing new (200 with the stored one)."""
    # An answer of a moment ago is written first.
    await logged(state.prediction_queue, state.sessions, caller.project.id, prediction_id)
    stored, created = await run_in_threadpool(service.give, state, caller, prediction_id, body, idempotency_key)
    if not created:
        response.status_code = 200
    return stored


@router.get("/feedback")
async def list_feedback(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    unused: QueryBool = False,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FeedbackList:
    """Feedback, oldest first (`unused`: not yet in a dataset version), a page at a time: `limit` rows from
    `offset`; `count` is how many there are in all."""
    return await run_in_threadpool(service.list_feedback, state, project, name, unused, offset, limit)


@router.delete("/feedback/{feedback_id}", status_code=204, response_class=Response)
async def delete_feedback(state: StateDep, project: ProjectDep, feedback_id: str) -> None:
    """Take back feedback that no dataset version has used yet (409 once one has)."""
    await run_in_threadpool(service.delete, state, project, feedback_id)
