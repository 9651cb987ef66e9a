"""The prediction log (the active-learning queue) and feedback on predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import CallerDep, ProjectDep, StateDep
from api.schemas import FeedbackCreate, FeedbackList, FeedbackPublic, PredictionsPublic
from api.services import feedback as service

router = APIRouter(tags=["feedback"])


@router.get("/predictions")
async def list_predictions(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    model_id: Annotated[str | None, Query(max_length=36)] = None,
    order: Annotated[str, Query(pattern="^(uncertainty|recent)$")] = "recent",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    unlabelled: bool = False,
) -> PredictionsPublic:
    """Logged predictions, most uncertain (order=uncertainty: label these first) or most recent first."""
    return await run_in_threadpool(service.list_predictions, state, project, name, model_id, order, limit, unlabelled)


@router.get(
    "/predictions/{prediction_id}/image", response_class=Response, responses={200: {"content": {"image/*": {}}}}
)
async def prediction_image(state: StateDep, project: ProjectDep, prediction_id: str) -> Response:
    """The image a prediction answered (kept when the project's keep_inputs is on)."""
    media_type, data = await run_in_threadpool(service.input_image, state, project, prediction_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


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
    stored, created = await run_in_threadpool(service.give, state, caller, prediction_id, body, idempotency_key)
    if not created:
        response.status_code = 200
    return stored


@router.get("/feedback")
async def list_feedback(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    unused: bool = False,
) -> FeedbackList:
    """Feedback, oldest first (`unused`: not yet in a dataset version)."""
    return await run_in_threadpool(service.list_feedback, state, project, name, unused)


@router.delete("/feedback/{feedback_id}", status_code=204, response_class=Response)
async def delete_feedback(state: StateDep, project: ProjectDep, feedback_id: str) -> None:
    """Take back feedback that no dataset version has used yet (409 once one has)."""
    await run_in_threadpool(service.delete, state, project, feedback_id)
