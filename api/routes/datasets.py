"""Datasets: upload an archive as a new version; list, read, browse items and labels, show a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from api.deps import LimitQuery, OffsetQuery, ProjectDep, StateDep
from api.errors import Problem
from api.openapi import IMAGE_TYPES, binary
from api.schemas import (
    MAX_INT,
    DatasetPublic,
    DatasetsPublic,
    Deleted,
    ItemsPublic,
    LabelsPublic,
    VersionCreate,
    VersionDiff,
)
from api.services import datasets as service
from api.services import versions as versions_service
from core.engine.rules import RULE_FIELDS, LabelRule, RuleKind
from core.engine.splits import MAX_SEED, SEED, VALID_PCT, VALID_PCT_RANGE

router = APIRouter(prefix="/datasets", tags=["datasets"])
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_INT, description="default: the latest")]


@router.post("", status_code=201)
async def upload_dataset(
    state: StateDep,
    project: ProjectDep,
    name: Annotated[str, Form()],
    archive: Annotated[
        UploadFile, File(description=".zip, .tar or .tar.gz of images (or of texts); labels=text_csv: also a bare .csv")
    ],
    labels: Annotated[RuleKind, Form()] = "folder",
    csv: Annotated[str | None, Form(description="labels=csv: the CSV file inside the archive")] = None,
    fn_col: Annotated[str | None, Form(description="csv: the file-name column (default: name, else the first)")] = None,
    label_col: Annotated[str | None, Form(description="csv: the label column (default: label, else the next)")] = None,
    valid_col: Annotated[str | None, Form()] = None,
    label_delim: Annotated[str | None, Form()] = None,
    pattern: Annotated[str | None, Form(description="labels=name_re: group 1 is the label")] = None,
    codes: Annotated[
        str | None, Form(description="labels=masks: mask value names in order, comma-separated (default: codes.txt)")
    ] = None,
    void: Annotated[str | None, Form(description="labels=masks: the code the loss and metrics ignore")] = None,
    images_dir: Annotated[
        str | None,
        Form(description="labels=masks without csv: the images' folder (default images); csv: the file names' folder"),
    ] = None,
    mask_template: Annotated[
        str | None, Form(description="labels=masks without csv: each image's mask (default masks/{stem}.png)")
    ] = None,
    mask_col: Annotated[str | None, Form(description="labels=masks with csv: the mask column (default mask)")] = None,
    text_col: Annotated[str | None, Form(description="labels=text_csv: the texts' column (default text)")] = None,
    valid_pct: Annotated[float, Form(ge=VALID_PCT_RANGE[0], le=VALID_PCT_RANGE[1])] = VALID_PCT,
    seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = SEED,
) -> DatasetPublic:
    """Upload an archive of images as a new immutable version of dataset `name`."""
    code_list = [c.strip() for c in codes.split(",")] if codes else None
    fields = {
        "csv": csv,
        "fn_col": fn_col,
        "label_col": label_col,
        "valid_col": valid_col,
        "pattern": pattern,
        "label_delim": label_delim,
        "codes": code_list,
        "void": void,
        "images_dir": images_dir,
        "mask_template": mask_template,
        "mask_col": mask_col,
        "text_col": text_col,
    }
    unused = sorted(k for k, v in fields.items() if v is not None and k not in RULE_FIELDS[labels])
    if unused:
        raise Problem(
            422,
            "Invalid upload",
            f"{unused[0]}: labels={labels} does not use it ({', '.join(unused)} given); leave it out, or choose the "
            "labelling rule that reads it",
            field=unused[0],
        )
    rule = LabelRule.of(labels, fields)
    return await run_in_threadpool(
        service.upload, state, project, name, archive.filename or "", archive.file, rule, valid_pct, seed
    )


@router.delete("/{dataset_id}")
async def delete_dataset(
    state: StateDep, project: ProjectDep, dataset_id: str, version: VersionQuery = None
) -> Deleted:
    """Delete the dataset (or one `version`) with its stored files; 409 while jobs were made on it."""
    return await run_in_threadpool(service.delete, state, project, dataset_id, version)


@router.get("")
async def list_datasets(
    state: StateDep, project: ProjectDep, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> DatasetsPublic:
    """Every dataset of the project, each at its latest version."""
    return await run_in_threadpool(service.list_all, state, project, offset, limit)


@router.get("/{dataset_id}")
async def get_dataset(
    state: StateDep, project: ProjectDep, dataset_id: str, version: VersionQuery = None
) -> DatasetPublic:
    """One dataset at a version (default: the latest)."""
    return await run_in_threadpool(service.get, state, project, dataset_id, version)


@router.get("/{dataset_id}/items", response_model_exclude_none=True)
async def list_items(
    state: StateDep,
    project: ProjectDep,
    dataset_id: str,
    version: VersionQuery = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ItemsPublic:
    """The version's items: key, label, and the fixed split flag."""
    return await run_in_threadpool(service.items, state, project, dataset_id, version, offset, limit)


@router.get("/{dataset_id}/labels")
async def get_labels(
    state: StateDep, project: ProjectDep, dataset_id: str, version: VersionQuery = None
) -> LabelsPublic:
    """Classes and counts per class and split."""
    return await run_in_threadpool(service.labels, state, project, dataset_id, version)


@router.get("/{dataset_id}/show_batch", response_class=Response, responses=binary("image/png"))
async def show_batch(
    state: StateDep,
    project: ProjectDep,
    dataset_id: str,
    version: VersionQuery = None,
    size: Annotated[int, Query(ge=16, le=512)] = 128,
    seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = SEED,
    valid_pct: Annotated[
        float | None,
        Query(
            ge=VALID_PCT_RANGE[0],
            le=VALID_PCT_RANGE[1],
            description="a random split's validation share (default: the upload's)",
        ),
    ] = None,
) -> Response:
    """A PNG of one augmented training batch with its labels (augmented as training would: points never warp)."""
    png = await run_in_threadpool(service.show_batch, state, project, dataset_id, version, size, seed, valid_pct)
    return Response(png, media_type="image/png")


@router.post("/{dataset_id}/versions", status_code=201)
async def cut_version(state: StateDep, project: ProjectDep, dataset_id: str, body: VersionCreate) -> DatasetPublic:
    """A new immutable version cut from `from_version` (default: the latest): `add_feedback` ("all" unused
    feedback on this dataset's models, or prediction ids), `relabel` ([{"item": KEY, "label"|"labels"|"points"|
    "values"|"mask": ...}]), `remove` ([KEY, ...]), `note`. Items keep their split; new ones get their own."""
    return await run_in_threadpool(versions_service.cut, state, project, dataset_id, body)


@router.get("/{dataset_id}/versions")
async def list_versions(
    state: StateDep, project: ProjectDep, dataset_id: str, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> DatasetsPublic:
    """Every version, oldest first, with counts and what each cut changed."""
    return await run_in_threadpool(versions_service.list_versions, state, project, dataset_id, offset, limit)


@router.get("/{dataset_id}/versions/{version}/diff")
async def version_diff(
    state: StateDep,
    project: ProjectDep,
    dataset_id: str,
    version: Annotated[int, Path(ge=1, le=MAX_INT)],
    against: Annotated[int | None, Query(ge=1, le=MAX_INT, description="default: the version it was cut from")] = None,
) -> VersionDiff:
    """Items added, removed and relabelled from `against` to `version`."""
    return await run_in_threadpool(versions_service.version_diff, state, project, dataset_id, version, against)


@router.get(
    "/{dataset_id}/items/{key:path}/image",
    name="item_image",
    response_class=StreamingResponse,
    responses=binary(*IMAGE_TYPES),
)
async def item_image(
    state: StateDep,
    project: ProjectDep,
    dataset_id: str,
    key: str,
    version: VersionQuery = None,
) -> StreamingResponse:
    """One item's image (an item of the version's manifest; default: the latest version)."""
    content_type, chunks = await run_in_threadpool(service.item_image, state, project, dataset_id, key, version)
    return StreamingResponse(chunks, media_type=content_type)
