"""Datasets. Uploads: the archive is extracted straight from the request's own spool (the guard capped the
body before it was read), ingested into the store, then the version is recorded in one transaction. A bad
archive is a 4xx and leaves nothing behind. Then: list and read them, their items, labels and a batch; delete."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Problem, not_found
from api.schemas import DatasetPublic, DatasetsPublic, Deleted, ItemPublic, ItemsPublic, LabelsPublic
from api.services import page
from api.state import AppState
from core.datasets.archives import Limits
from core.datasets.ingest import ingest_archive
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.errors import DataError
from core.engine.labelling import Rejected
from core.engine.rules import TEXT_RULES, LabelRule
from core.engine.splits import lopsided_classes
from core.storage.layout import dataset_version_prefix


def check_quota(state: AppState, project: domain.Project, adding: int) -> None:
    """413 when `adding` more bytes would take the project past its storage quota (read from the database now)."""
    state.stored.check(project.id, adding, fresh=True)


MAX_REJECTED_LISTED = 1000


def _capped(rejected: list[Rejected]) -> list[dict[str, str]]:
    """The rejected files as stored and answered: the first 1,000, then one line for the rest."""
    out = [{"key": r.key[:300], "reason": r.reason[:300]} for r in rejected[:MAX_REJECTED_LISTED]]
    if len(rejected) > MAX_REJECTED_LISTED:
        out.append({"key": "...", "reason": f"{len(rejected) - MAX_REJECTED_LISTED:,} more files rejected"})
    return out


def upload(
    state: AppState,
    project: domain.Project,
    name: str,
    filename: str,
    src: BinaryIO,
    rule: LabelRule,
    valid_pct: float,
    seed: int,
) -> DatasetPublic:
    """Create a new version of dataset `name` from an uploaded archive."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Problem(422, "Invalid request", "name: give the dataset a name of 1 to 200 characters")
    settings = state.settings
    src.seek(0, 2)
    check_quota(state, project, src.tell())
    src.seek(0)
    with session_scope(state.sessions) as s:
        existing = next((d for d in repos.list_datasets(s, project.id) if d.name == name), None)
        dataset_id = existing.id if existing else repos.new_id()
        version = repos.next_version_number(s, existing.id) if existing else 1
    prefix = dataset_version_prefix(project.id, dataset_id, version)
    limits = Limits(settings.max_archive_files, settings.max_extracted_bytes, settings.max_archive_ratio)
    try:
        result = ingest_archive(src, filename, rule, state.store, prefix, limits, valid_pct, seed)
    except DataError as exc:
        raise Problem(422, "Unusable dataset", str(exc)) from exc
    try:
        check_quota(state, project, result.n_bytes)
        with session_scope(state.sessions) as s:
            if existing is None:
                repos.create_dataset(s, dataset_id, project.id, name)
            items = result.items
            row = repos.add_dataset_version(
                s,
                id=repos.new_id(),
                dataset_id=dataset_id,
                version=version,
                labels=rule.as_dict() | {"valid_pct": valid_pct, "seed": seed},  # the split's settings too
                split=result.split,
                classes=items.classes,
                counts=items.counts(),
                n_items=len(items),
                rejected=_capped(result.rejected),
                prefix=prefix,
                n_bytes=result.n_bytes,
            )
            dataset = repos.get_dataset(s, project.id, dataset_id)
            assert dataset is not None
            versions = [v.version for v in repos.dataset_versions(s, dataset_id)]
    except IntegrityError as exc:
        state.store.delete_prefix(prefix + "/")
        raise Problem(409, "Conflict", f"another upload of '{name}' finished first; upload again") from exc
    except BaseException:
        state.store.delete_prefix(prefix + "/")
        raise
    return version_public(dataset, row, versions)


def version_public(dataset: domain.Dataset, v: domain.DatasetVersion, versions: list[int]) -> DatasetPublic:
    """The version as answered, under its dataset's id and name."""
    warnings = lopsided_classes(v.counts, float(v.labels.get("valid_pct", 0.2))) if v.split == "random" else []
    return DatasetPublic.of(v, id=dataset.id, name=dataset.name, version_id=v.id, versions=versions, warnings=warnings)


def find_version(
    s: Session, project: domain.Project, dataset_id: str, version: int | None
) -> tuple[domain.Dataset, domain.DatasetVersion, list[int]]:
    """A dataset of this project and one of its versions (default: the latest)."""
    dataset = repos.get_dataset(s, project.id, dataset_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    versions = repos.dataset_versions(s, dataset_id)
    chosen = versions[-1] if version is None else next((v for v in versions if v.version == version), None)
    if chosen is None:
        raise Problem(
            404, "Not Found", f"dataset '{dataset_id}' has no version {version}; it has {[v.version for v in versions]}"
        )
    return dataset, chosen, [v.version for v in versions]


def _version(state: AppState, project: domain.Project, dataset_id: str, version: int | None) -> domain.DatasetVersion:
    with session_scope(state.sessions) as s:
        return find_version(s, project, dataset_id, version)[1]


def version_by_id(state: AppState, project: domain.Project, version_id: str) -> domain.DatasetVersion:
    """A version by its id (a job's), when its dataset is this project's."""
    with session_scope(state.sessions) as s:
        version = repos.get_version(s, version_id)
        if version is None or repos.get_dataset(s, project.id, version.dataset_id) is None:
            raise not_found("dataset version", version_id)
        return version


def list_all(state: AppState, project: domain.Project, offset: int = 0, limit: int | None = None) -> DatasetsPublic:
    """The project's datasets (a page of them with offset and limit), each at its latest version (two queries,
    however many datasets); count: all of them."""
    out = []
    with session_scope(state.sessions) as s:
        every = repos.project_versions(s, project.id)
        for d in repos.list_datasets(s, project.id):
            versions = every.get(d.id, [])
            if versions:
                out.append(version_public(d, versions[-1], [v.version for v in versions]))
    return DatasetsPublic(data=page(out, offset, limit), count=len(out))


def get(state: AppState, project: domain.Project, dataset_id: str, version: int | None) -> DatasetPublic:
    with session_scope(state.sessions) as s:
        return version_public(*find_version(s, project, dataset_id, version))


def labels(state: AppState, project: domain.Project, dataset_id: str, version: int | None) -> LabelsPublic:
    return LabelsPublic.of(_version(state, project, dataset_id, version))


MAX_ITEM_TEXT = 2000  # a text item's characters in a listing (a page of 1,000 stays a few MB)


def items(
    state: AppState, project: domain.Project, dataset_id: str, version: int | None, offset: int, limit: int
) -> ItemsPublic:
    """A page of the version's items as its manifest holds them (a text: its first MAX_ITEM_TEXT characters)."""
    v = _version(state, project, dataset_id, version)
    manifest: dict[str, Any] = json.loads(state.store.get_bytes(f"{v.prefix}/manifest.json"))
    rows = manifest["items"]
    data = [
        ItemPublic(**(r | {"text": r["text"][:MAX_ITEM_TEXT]} if "text" in r else r))
        for r in rows[offset : offset + limit]
    ]
    return ItemsPublic(data=data, count=len(rows), n_unlabelled=manifest.get("n_unlabelled"))


def show_batch(
    state: AppState,
    project: domain.Project,
    dataset_id: str,
    version: int | None,
    size: int,
    seed: int,
    valid_pct: float | None = None,
) -> bytes:
    """show_batch_png, each picture made once per process (by its version and parameters) and paid for from the
    project's CPU budget for renders (429 with Retry-After when it is spent)."""
    chosen = _version(state, project, dataset_id, version)
    if chosen.labels.get("kind") in TEXT_RULES:
        raise Problem(
            422,
            "No picture",
            f"dataset '{dataset_id}' holds texts (labels={chosen.labels['kind']}): show_batch draws images; "
            f"read its texts with GET /api/v1/datasets/{dataset_id}/items",
        )

    def render() -> bytes:
        with state.render_budget.spend(project.id):
            return show_batch_png(state, chosen, size, seed, valid_pct)

    return state.renders.get_or_make((chosen.id, size, seed, valid_pct), render)


def show_batch_png(
    state: AppState, version: domain.DatasetVersion, size: int, seed: int, valid_pct: float | None = None
) -> bytes:
    """A PNG of one augmented training batch, as the engine would train on it (cached in the store). A random
    split is drawn with `valid_pct` (default: the upload's), as a job with that valid_pct would draw it."""
    uploaded = float(version.labels.get("valid_pct", 0.2))
    valid_pct = uploaded if valid_pct is None else valid_pct
    # Only the default picture is kept in the store: any other size, seed or split is drawn anew, so that a
    # loop over seeds cannot fill the project's storage outside its quota.
    default = (size, seed, valid_pct) == (128, 42, uploaded)
    key = f"{version.prefix}/show_batch-{size}-{seed}.png" if default else None
    if key is not None and state.store.exists(key):
        return state.store.get_bytes(key)
    from core.datasets.materialize import materialize
    from core.engine.data import DataConfig, ImageDataLoaders
    from core.engine.items import split_problem, stored_items
    from core.engine.plots import show_batch
    from core.engine.transforms import get_transforms

    folder, manifest = materialize(state.store, version.prefix, state.settings.cache_dir / "datasets")
    problem = split_problem(manifest, valid_pct, seed, training_only=True)
    if problem is not None:
        raise Problem(422, "Invalid request", f"valid_pct: {problem}", field="valid_pct")
    labelled = stored_items(folder / "files", manifest, valid_pct, seed)
    dls = ImageDataLoaders(labelled, DataConfig(size=size, bs=16, augment=get_transforms(), seed=seed))
    out = Path(tempfile.mkdtemp()) / "batch.png"
    try:
        show_batch(dls, out)
        data = out.read_bytes()
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    if key is not None:
        state.store.put_bytes(key, data, "image/png")
    return data


IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def item_image(
    state: AppState, project: domain.Project, dataset_id: str, key: str, version: int | None
) -> tuple[str, Iterator[bytes]]:
    """An item's image, or a segmentation item's mask: only a key the version's manifest lists (no other object
    of the store)."""
    chosen = _version(state, project, dataset_id, version)
    manifest = json.loads(state.store.get_bytes(f"{chosen.prefix}/manifest.json"))
    if not any(r["key"] == key or r.get("mask") == key for r in manifest["items"]):
        raise not_found("item", key[:200])
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return IMAGE_TYPES.get(suffix, "application/octet-stream"), state.store.open(f"{chosen.prefix}/files/{key}")


def delete(state: AppState, project: domain.Project, dataset_id: str, version: int | None) -> Deleted:
    """Delete one version, or the whole dataset, with its files; 409 while any job was made on it."""
    with session_scope(state.sessions) as s:
        dataset, chosen, numbers = find_version(s, project, dataset_id, version)
        targets = [chosen] if version is not None else repos.dataset_versions(s, dataset_id)
        gold = repos.lock_project(s, project.id).gold  # a gold set chosen meanwhile waits for this delete
        if gold and gold["version_id"] in {v.id for v in targets}:
            raise Problem(
                409,
                "Dataset in use",
                f"dataset '{dataset.name}' version {gold['version']} is the project's gold set; "
                'unset it first: PATCH /project {"gold": null}',
            )
        jobs = repos.jobs_on_versions(s, [v.id for v in targets])
        if jobs:
            active = [j for j in jobs if not j.is_terminal]
            listed = ", ".join(f"{j.id} ({j.kind}, {j.state})" for j in (active or jobs)[:5])
            more = f" and {len(jobs) - 5} more" if len(jobs) > 5 else ""
            why = "is in use by running or queued jobs" if active else "is the record of jobs that trained on it"
            raise Problem(
                409,
                "Dataset in use",
                f"dataset '{dataset.name}'{f' version {version}' if version else ''} {why}: {listed}{more}; "
                + ("cancel them and wait for them to stop" if active else "delete those jobs (and their models) first"),
                jobs=[j.id for j in jobs],
            )
        if version is not None and len(numbers) > 1:
            repos.delete_dataset_version(s, chosen.id)
            what = f"dataset '{dataset.name}' version {version}"
        else:
            repos.delete_dataset(s, dataset_id)
            what = f"dataset '{dataset.name}' (versions {', '.join(map(str, numbers))})"
    objects = sum(state.store.delete_prefix(v.prefix + "/") for v in targets)
    return Deleted(deleted=what, objects=objects, bytes=sum(v.n_bytes for v in targets))
