"""Datasets: upload an archive as a new version; list, read, browse items and labels, show a batch."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.deps import ProjectDep, SessionDep, StateDep
from api.schemas import DatasetPublic, DatasetsPublic, Deleted, ItemsPublic, LabelsPublic
from api.services import datasets as service
from core.datasets.ingest import LabelRule
from core.db import repos

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=201)
async def upload_dataset(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str, Form()],
    archive: Annotated[UploadFile, File(description=".zip, .tar or .tar.gz of images")],
    labels: Annotated[Literal["folder", "csv", "name_re", "points", "values", "masks"], Form()] = "folder",
    csv: Annotated[str | None, Form(description="labels=csv: the CSV file inside the archive")] = None,
    fn_col: Annotated[str, Form()] = "name",
    label_col: Annotated[str, Form()] = "label",
    valid_col: Annotated[str | None, Form()] = None,
    label_delim: Annotated[str | None, Form()] = None,
    pattern: Annotated[str | None, Form(description="labels=name_re: group 1 is the label")] = None,
    codes: Annotated[
        str | None, Form(description="labels=masks: mask value names in order, comma-separated (default: codes.txt)")
    ] = None,
    void: Annotated[str | None, Form(description="labels=masks: the code the loss and metrics ignore")] = None,
    images_dir: Annotated[str, Form(description="labels=masks without csv: the images' folder")] = "images",
    mask_template: Annotated[str, Form(description="labels=masks without csv: each image's mask")] = "masks/{stem}.png",
    mask_col: Annotated[str, Form(description="labels=masks with csv: the mask column")] = "mask",
    valid_pct: Annotated[float, Form(gt=0, lt=1)] = 0.2,
    seed: Annotated[int, Form()] = 42,
) -> DatasetPublic:
    """Upload an archive of images as a new immutable version of dataset `name`."""
    code_list = [c.strip() for c in codes.split(",")] if codes else None
    rule = LabelRule(
        labels,
        csv,
        fn_col,
        label_col,
        valid_col,
        pattern,
        label_delim,
        code_list,
        void,
        images_dir,
        mask_template,
        mask_col,
    )
    return await run_in_threadpool(
        service.upload, state, project, name, archive.filename or "", archive.file, rule, valid_pct, seed
    )


@router.delete("/{dataset_id}")
async def delete_dataset(
    state: StateDep, project: ProjectDep, dataset_id: str, version: Annotated[int | None, Query(ge=1)] = None
) -> Deleted:
    """Delete the dataset (or one `version`) with its stored files; 409 while jobs were made on it."""
    return await run_in_threadpool(service.delete, state, project, dataset_id, version)


@router.get("")
def list_datasets(session: SessionDep, project: ProjectDep) -> DatasetsPublic:
    """Every dataset of the project, each at its latest version."""
    out = []
    for d in repos.list_datasets(session, project.id):
        versions = repos.dataset_versions(session, d.id)
        if versions:
            out.append(service.to_public(d, versions[-1], [v.version for v in versions]))
    return DatasetsPublic(data=out, count=len(out))


@router.get("/{dataset_id}")
def get_dataset(
    session: SessionDep, project: ProjectDep, dataset_id: str, version: Annotated[int | None, Query(ge=1)] = None
) -> DatasetPublic:
    """One dataset at a version (default: the latest)."""
    return service.to_public(*service.get_version(session, project, dataset_id, version))


@router.get("/{dataset_id}/items", response_model_exclude_none=True)
def list_items(
    state: StateDep,
    session: SessionDep,
    project: ProjectDep,
    dataset_id: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ItemsPublic:
    """The version's items: key, label, and the fixed split flag."""
    _, v, _ = service.get_version(session, project, dataset_id, version)
    data, count = service.items(state, v, offset, limit)
    return ItemsPublic(data=data, count=count)


@router.get("/{dataset_id}/labels")
def get_labels(
    session: SessionDep, project: ProjectDep, dataset_id: str, version: Annotated[int | None, Query(ge=1)] = None
) -> LabelsPublic:
    """Classes and counts per class and split."""
    _, v, _ = service.get_version(session, project, dataset_id, version)
    return LabelsPublic(classes=v.classes, counts=v.counts)


@router.get("/{dataset_id}/show_batch", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def show_batch(
    state: StateDep,
    session: SessionDep,
    project: ProjectDep,
    dataset_id: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    size: Annotated[int, Query(ge=16, le=512)] = 128,
    seed: int = 42,
) -> Response:
    """A PNG of one augmented training batch with its labels."""
    _, v, _ = service.get_version(session, project, dataset_id, version)
    png = await run_in_threadpool(service.show_batch_png, state, v, size, seed)
    return Response(png, media_type="image/png")
