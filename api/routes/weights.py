"""The fleet's weights store: pretrained weights every worker fetches before a job that needs them (torchvision's
ResNet ImageNet files, fastai's WikiText-103 language model). Uploading needs an admin key; any key lists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminDep, CallerDep, StateDep
from api.schemas import WeightsListPublic, WeightsPublic
from api.services import weights as service

router = APIRouter(prefix="/weights", tags=["weights"])


@router.post(
    "",
    status_code=201,
    responses={200: {"model": WeightsPublic, "description": "The store already holds this very file: nothing changed"}},
)
async def upload_weights(
    state: StateDep,
    admin: AdminDep,
    response: Response,
    file: Annotated[
        UploadFile,
        File(
            description="the file under its published name: torchvision's (e.g. resnet34-b627a593.pth; its sha256 "
            "must begin with the name's hex digits), lstm_fwd.pth or itos_wt103.pkl (fastai's WikiText-103)"
        ),
    ],
) -> WeightsPublic:
    """Store a pretrained weights file for the whole fleet (201; 200 when the same file is there already). A name
    keeps its first file: another file under it is a 409. Checked before it is stored: the name, torchvision's hash,
    that it loads as tensors only (never unpickled), and that it fits its model. Needs an admin key."""
    stored, created = await run_in_threadpool(service.upload, state, admin, file.filename or "", file.file)
    if not created:
        response.status_code = 200
    return stored


@router.get("")
async def list_weights(state: StateDep, caller: CallerDep) -> WeightsListPublic:
    """The pretrained weights the fleet's store holds (pretrained='imagenet' works for their architectures)."""
    return await run_in_threadpool(service.list_all, state, caller)
