"""The fleet's weights store over REST: an admin key uploads a pretrained weights file (torchvision's ResNet ImageNet
files, fastai's WikiText-103 model) once for every worker; any key lists what the fleet has. The store belongs to no
project, so a name keeps its first file: the same file again is a no-op, another one a 409."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from api.errors import Problem
from api.schemas import WeightsListPublic, WeightsPublic
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.architectures import ARCHITECTURES, imagenet_weights
from core.engine.errors import WeightsRefused
from core.engine.weights_files import KnownFile, check_sha256, known_file, known_names, prepare
from core.jobs.fleet_weights import (
    WeightsRecord,
    imagenet_in_store,
    list_records,
    read_record,
    sha256_of,
    store_weights,
    stored_names,
    wt103_in_store,
)
from core.storage.layout import fleet_weights_file

CHUNK = 1 << 20
T = TypeVar("T")
LEASE_SECONDS = 600.0  # one upload's store writes; a crashed upload's lease lapses after this


def upload(state: AppState, caller: domain.Caller, filename: str, file: BinaryIO) -> tuple[WeightsPublic, bool]:
    """Check and store one weights file; returns its public record and whether it was stored now (False: the same
    file was there already)."""
    if caller.project.name not in state.settings.fleet_weights_projects:
        raise Problem(
            403,
            "Forbidden",
            "the fleet's weights serve every project: an operator names the projects that may add to them "
            "(FITCYCLE_FLEET_WEIGHTS_PROJECTS); this one is not among them",
        )
    known = _known(Path(filename).name)
    uploads = state.settings.cache_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="weights-", dir=uploads))
    try:
        path, sha256, size = _spool(file, folder / "upload", state.settings.max_weights_bytes)
        _refused_as_422(lambda: check_sha256(known, sha256))
        existing = read_record(state.store, known.name)
        if existing is not None:
            return _same_file(existing, sha256, caller), False
        stored = _refused_as_422(lambda: prepare(known, path, folder))
        record = WeightsRecord(
            name=known.name,
            kind=known.kind,
            arch=known.arch,
            sha256=sha256,
            size=size,
            stored_key=fleet_weights_file(known.stored_as),
            stored_sha256=sha256 if stored == path else sha256_of(stored),
            stored_size=stored.stat().st_size,
            uploaded_at=datetime.now(UTC).isoformat(),
            project_id=caller.project.id,
            key_id=caller.key.id,
        )
        with _upload_lease(state, known.name):
            existing = read_record(state.store, known.name)  # another upload may have finished meanwhile
            if existing is not None:
                return _same_file(existing, sha256, caller), False
            store_weights(state.store, record, stored)
        return public(record, caller), True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def list_all(state: AppState, caller: domain.Caller) -> WeightsListPublic:
    """Every file the fleet's store holds."""
    data = [public(r, caller) for r in list_records(state.store)]
    return WeightsListPublic(data=data, count=len(data))


def imagenet_available(state: AppState) -> dict[str, bool]:
    """For each architecture, whether pretrained='imagenet' works: its weights are on this server, or in the fleet's
    store (a worker fetches them)."""
    local = {a.name: imagenet_weights(a) is not None for a in ARCHITECTURES.values()}
    if all(local.values()):
        return local
    names = stored_names(state.store)
    return {a.name: local[a.name] or imagenet_in_store(a, names) is not None for a in ARCHITECTURES.values()}


def wt103_available(state: AppState) -> bool:
    """Whether the fleet's store holds fastai's WikiText-103 model (both files)."""
    return wt103_in_store(stored_names(state.store))


def public(record: WeightsRecord, caller: domain.Caller) -> WeightsPublic:
    """A record as any project sees it (who uploaded it is kept in the store, for operators)."""
    return WeightsPublic(
        name=record.name,
        kind=record.kind,
        arch=record.arch,
        size=record.size,
        sha256=record.sha256,
        uploaded_at=datetime.fromisoformat(record.uploaded_at),
        uploaded_by_this_project=record.project_id == caller.project.id,
    )


def _known(name: str) -> KnownFile:
    if not name:
        raise Problem(
            422, "Weights refused", "file: the upload has no file name; send the file under its own name", field="file"
        )
    try:
        return known_file(name)
    except WeightsRefused as exc:
        raise Problem(422, "Weights refused", f"file: {exc}", field="file", options=known_names()) from None


def _refused_as_422(check: Callable[[], T]) -> T:
    """A check's WeightsRefused as a 422 naming the file field."""
    try:
        return check()
    except WeightsRefused as exc:
        raise Problem(422, "Weights refused", f"file: {exc}", field="file") from None


def _spool(file: BinaryIO, path: Path, limit: int) -> tuple[Path, str, int]:
    """The upload copied to a file of its own (torch maps it), with its sha256 and size; 413 past `limit`."""
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        while chunk := file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise Problem(
                    413,
                    "Request too large",
                    f"the weights file is over {limit:,} bytes (FITCYCLE_MAX_WEIGHTS_BYTES); raise it on the API "
                    "servers for a larger one",
                )
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise Problem(422, "Weights refused", "file: the file is empty; upload it as downloaded", field="file")
    return path, digest.hexdigest(), size


def _same_file(existing: WeightsRecord, sha256: str, caller: domain.Caller) -> WeightsPublic:
    """An upload of a name the store holds: the same file is a no-op; another one is refused (a 409)."""
    if existing.sha256 != sha256:
        raise Problem(
            409,
            "Conflict",
            f"the fleet's weights store already holds a different {existing.name} (sha256 {existing.sha256[:12]}..., "
            f"uploaded {existing.uploaded_at[:10]}; this file's is {sha256[:12]}...). The store serves every project "
            "and keeps a name's first file, so it cannot be replaced over REST; if the stored one is wrong, an "
            "operator deletes it from the object store (docs/operations.md) and uploads the right one",
            field="file",
        )
    return public(existing, caller)


@contextmanager
def _upload_lease(state: AppState, name: str) -> Iterator[None]:
    """Hold the fleet lease of one file name while its file and record are written, so that two uploads of a name
    (from two API processes) cannot both write; the second is a 409 and may try again."""
    lease, owner = f"weights:{name}", f"upload-{uuid.uuid4().hex}"
    with session_scope(state.sessions) as s:
        held = repos.hold_fleet_lease(s, lease, owner, LEASE_SECONDS)
    if not held:
        raise Problem(
            409,
            "Conflict",
            f"another upload of {name} is being stored right now; list the weights (GET /weights) in a minute, and "
            "upload again if it is not there",
            field="file",
        )
    try:
        yield
    finally:
        with session_scope(state.sessions) as s:
            repos.release_fleet_lease(s, lease, owner)
