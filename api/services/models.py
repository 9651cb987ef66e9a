"""Models: list and read them, zip a bundle for download, and delete one (its bundle goes from storage, and its
row and Predictor from every API process's memory)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from api.errors import Problem, not_found
from api.schemas import Deleted, ModelPublic, ModelsPublic
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope


def find(state: AppState, project: domain.Project, model_id: str) -> domain.Model:
    """The model, read now, or 404 when this project has none by that id."""
    since = state.models.generation()
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, model_id, project.id)
    if model is None:
        raise not_found("model", model_id)
    state.models.put((project.id, model_id), model, [("model", model_id)], since)
    return model


async def served(state: AppState, project: domain.Project, model_id: str) -> domain.Model:
    """The model a predict route answers with: as this process read it less than FITCYCLE_LOOKUP_CACHE_SECONDS ago
    (a deletion drops it on every replica at once: api/lookup_cache.py), else read now."""
    cached = state.models.get((project.id, model_id))
    return cached if cached is not None else await run_in_threadpool(find, state, project, model_id)


def list_all(
    state: AppState,
    project: domain.Project,
    bundle_url: Callable[[str], str],
    offset: int = 0,
    limit: int | None = None,
) -> ModelsPublic:
    """A page of the project's models, oldest first, each with `bundle_url(model id)`; count: all of them."""
    with session_scope(state.sessions) as s:
        models = repos.list_models(s, project.id, offset, limit)
        count = repos.count_models(s, project.id)
    data = [ModelPublic.of(m, bundle_url=bundle_url(m.id)) for m in models]
    return ModelsPublic(data=data, count=count)


def get(state: AppState, project: domain.Project, model_id: str, bundle_url: Callable[[str], str]) -> ModelPublic:
    return ModelPublic.of(find(state, project, model_id), bundle_url=bundle_url(model_id))


def bundle_zip(state: AppState, project: domain.Project, model_id: str) -> str:
    """The export bundle (weights.safetensors + manifest.json) as a zip in a temporary file, streamed from the
    store into it; the caller deletes the file."""
    model = find(state, project, model_id)
    fd, name = tempfile.mkstemp(prefix="fitcycle-bundle-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for key in state.store.list(model.bundle_prefix + "/"):
                with zf.open(key[len(model.bundle_prefix) + 1 :], "w") as member:
                    for block in state.store.open(key):
                        member.write(block)
    except BaseException:
        os.unlink(name)
        raise
    return name


def delete(state: AppState, project: domain.Project, model_id: str) -> Deleted:
    """409 while a queued or running job starts from the model or continues from the job that made it."""
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, model_id, project.id)
        if model is None:
            raise not_found("model", model_id)
        users = repos.jobs_using_model(s, project.id, model_id)
        users += [c for c in repos.children_of(s, model.job_id) if not c.is_terminal]
        if users:
            listed = ", ".join(f"{j.id} ({j.kind}, {j.state})" for j in users[:5])
            raise Problem(
                409, "Model in use", f"model {model_id} is in use by {listed}; cancel those jobs or wait for them"
            )
        entry = repos.model_name(s, project.id, model.name) if model.name else None
        others = repos.models_of_name(s, project.id, model.name) if model.name else []
        if entry is not None and entry.champion_id == model_id and len(others) > 1:
            raise Problem(
                409,
                "Model is a champion",
                f"model {model_id} answers for '{model.name}'; promote another of its models first "
                f"(POST /registry/{model.name}/promote)",
            )
        freed = repos.delete_artifacts(s, model.job_id, "export/")
        if entry is not None and len(others) <= 1:  # the name's last model: the name goes with it
            repos.delete_model_name(s, entry.id)
        repos.delete_model(s, model_id)
    # Every API process forgets its row and its Predictor at once: none answers with it again.
    state.invalidations.publish(("model", model_id))
    objects = state.store.delete_prefix(model.bundle_prefix + "/")
    return Deleted(deleted=f"model {model_id} ({model.arch})", objects=objects, bytes=freed)
