"""Dataset versions cut from others: feedback added, items relabelled or removed (core.datasets.versions does
the cutting). One cut at a time per dataset (its row is locked), so concurrent cuts get distinct numbers and
no feedback goes into two versions or none."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy.exc import IntegrityError

from api.errors import Problem
from api.schemas import MAX_EDITS_PER_CALL, DatasetPublic, DatasetsPublic, VersionCreate, VersionDiff
from api.services import page
from api.services.datasets import check_quota, find_version, version_public
from api.services.feedback import check_known_classes, correction_of
from api.state import AppState
from core.datasets.versions import PINNED, Edits, NewItem, cut_version, dataset_task, diff
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.errors import DataError
from core.engine.tasks import Correction
from core.engine.text.manifest import TEXT_TASKS
from core.storage.layout import dataset_version_prefix


def _manifest(state: AppState, version: domain.DatasetVersion) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(state.store.get_bytes(f"{version.prefix}/manifest.json"))
    return manifest


def list_versions(
    state: AppState, project: domain.Project, dataset_id: str, offset: int = 0, limit: int | None = None
) -> DatasetsPublic:
    """A page of the dataset's versions, oldest first, each with what it changed; count: all of them."""
    with session_scope(state.sessions) as s:
        dataset, _, numbers = find_version(s, project, dataset_id, None)
        every = repos.dataset_versions(s, dataset_id)
        data = [version_public(dataset, v, numbers) for v in page(every, offset, limit)]
    return DatasetsPublic(data=data, count=len(every))


def version_diff(
    state: AppState, project: domain.Project, dataset_id: str, version: int, against: int | None
) -> VersionDiff:
    """What changed from `against` (default: the version it was cut from, else the one before) to `version`."""
    with session_scope(state.sessions) as s:
        _, new, numbers = find_version(s, project, dataset_id, version)
        base_number = against or new.parent_version or max([n for n in numbers if n < version], default=version)
        _, old, _ = find_version(s, project, dataset_id, base_number)
    changes = diff(_manifest(state, old), _manifest(state, new))
    return VersionDiff(version=version, against=old.version, **changes)


def _feedback_items(
    state: AppState, project: domain.Project, dataset: domain.Dataset, manifest: dict[str, Any], wanted: str | list[str]
) -> tuple[list[NewItem], list[str], list[str]]:
    """The feedback to add as new items (the latest per prediction), its ids, and what was left out and why."""
    with session_scope(state.sessions) as s:
        if wanted == "all":
            rows = repos.list_feedback(s, project.id, unused=True)
        else:
            rows = repos.list_feedback(s, project.id, prediction_ids=list(wanted))
            missing = set(wanted) - {p.id for _, p in rows}
            if missing:
                raise Problem(
                    422, "Invalid version", f"add_feedback: no feedback on predictions {sorted(missing)[:10]}"
                )
        versions = {v.id for v in repos.dataset_versions(s, dataset.id)}
        models = {m.id: m for m in repos.list_models(s, project.id)}
    latest: dict[str, tuple[domain.Feedback, domain.PredictionRecord]] = {}
    for f, p in rows:  # oldest first: a later correction of the same prediction wins
        model = models.get(p.model_id)
        if wanted == "all" and (model is None or model.dataset_version_id not in versions):
            continue  # feedback on another dataset's models
        latest[p.id] = (f, p)
    task = dataset_task(manifest)
    items, used, skipped = [], [], []
    for f, p in latest.values():
        if p.input_key is None:
            skipped.append(f"prediction {p.id}: its image was not kept")
            continue
        if (p.source == "text") != (task.name in TEXT_TASKS):  # a text's correction belongs to texts, an image's not
            skipped.append(f"prediction {p.id}: its input is {'a text' if p.source == 'text' else 'an image'}")
            continue
        body = dict(f.target)
        for name in task.file_fields():  # a file (a mask) is stored beside the feedback, by its key
            if isinstance(body.get(name), str):
                body[name] = state.store.get_bytes(body[name])
        try:
            correction = correction_of(state, task.name, manifest, body, state.store.get_bytes(p.input_key))
            task.record(correction.target, manifest)  # e.g. a label holding the delimiter
        except Problem as exc:
            skipped.append(f"prediction {p.id}: {exc.detail}")
            continue
        except DataError as exc:
            skipped.append(f"prediction {p.id}: {exc}")
            continue
        suffix = p.input_key.rsplit(".", 1)[-1]
        items.append(NewItem(f"feedback/{p.id}.{suffix}", p.input_key, correction, p.id))
        used.append(f.id)
    return items, used, skipped


def _served_texts(
    state: AppState, project: domain.Project, dataset: domain.Dataset, manifest: dict[str, Any], task_name: str
) -> list[NewItem]:
    """The texts this dataset's models answered, kept as inputs and not yet in the version (under their own key or
    as feedback), as unlabelled items: what the next language model learns from [the course: the language model
    reads every text there is]."""
    if task_name not in TEXT_TASKS:
        raise Problem(422, "Invalid version", "add_served_texts: only a dataset of texts takes served texts")
    have = {r["key"].rsplit("/", 1)[-1].split(".", 1)[0] for r in manifest["items"]}  # prediction ids already in
    with session_scope(state.sessions) as s:
        versions = {v.id for v in repos.dataset_versions(s, dataset.id)}
        models = {m.id for m in repos.list_models(s, project.id) if m.dataset_version_id in versions}
        found: list[domain.PredictionRecord] = []
        for model_id in models:
            found += repos.list_predictions(s, project.id, None, model_id, "newest", MAX_EDITS_PER_CALL, False)
    unlabelled = Correction({"label": ""})  # a text with no label: the language model's, not the classifier's
    items = [
        NewItem(f"served/{p.id}.txt", p.input_key, unlabelled, p.id)
        for p in sorted(found, key=lambda p: p.created_at, reverse=True)
        if p.input_key and p.input_key.endswith(".txt") and p.source == "text" and p.id not in have
    ]
    return items[:MAX_EDITS_PER_CALL]


def _refuse_repeats(body: VersionCreate) -> None:
    """422 for an item relabelled twice, removed twice, or both: each edit costs a read of its item, so a small
    body naming one big item thousands of times must not make the API read it thousands of times."""
    relabelled = Counter(edit.item for edit in body.relabel)
    removed = Counter(body.remove)
    for field, counts in (("relabel", relabelled), ("remove", removed)):
        repeated = sorted(k for k, n in counts.items() if n > 1)
        if repeated:
            raise Problem(
                422,
                "Invalid version",
                f"{field}: {len(repeated)} item(s) named more than once, e.g. '{repeated[0][:200]}'; name each item "
                "once (the last relabel of an item is the one you want)",
            )
    both = sorted(set(relabelled) & set(removed))
    if both:
        raise Problem(422, "Invalid version", f"'{both[0][:200]}' is both relabelled and removed; do one or the other")


def cut(state: AppState, project: domain.Project, dataset_id: str, body: VersionCreate) -> DatasetPublic:
    """A new version from `from_version` (default: the latest) with the edits; 201 with its counts and changes."""
    with session_scope(state.sessions) as s:
        dataset, parent, _ = find_version(s, project, dataset_id, body.from_version)
    manifest = _manifest(state, parent)
    task_name = dataset_task(manifest).name
    relabels: list[tuple[str, Correction]] = []
    keys = {r["key"] for r in manifest["items"]}
    _refuse_repeats(body)
    for edit in body.relabel:  # each item once (repeats are refused above), so each image is read once
        if edit.item not in keys:
            raise Problem(422, "Invalid version", f"relabel: no item '{edit.item[:200]}' in version {parent.version}")
        target = edit.model_dump(exclude={"item", "new_class"}, exclude_none=True)
        # An image is read for its size (a point or a mask is checked against it); a text has no file.
        image = b"" if task_name in TEXT_TASKS else state.store.get_bytes(f"{parent.prefix}/files/{edit.item}")
        correction = correction_of(state, task_name, manifest, target, image)
        check_known_classes(correction.target, list(manifest.get("classes") or []), edit.new_class, "relabel: ")
        relabels.append((edit.item, correction))
    add, used, skipped = (
        ([], [], [])
        if body.add_feedback is None
        else _feedback_items(state, project, dataset, manifest, body.add_feedback)
    )
    if body.add_served_texts:
        add += _served_texts(state, project, dataset, manifest, task_name)
    if not (add or relabels or body.remove):
        raise Problem(
            422,
            "Invalid version",
            "nothing to change: give add_feedback, relabel, remove or (texts) add_served_texts"
            + (f" ({len(skipped)} feedback left out: {skipped[0]})" if skipped else ""),
        )
    edits = Edits(remove=list(body.remove), relabel=relabels, add=add, note=body.note)
    valid_pct, seed = float(parent.labels.get("valid_pct", 0.2)), int(parent.labels.get("seed", 42))
    check_quota(state, project, parent.n_bytes)  # a cut copies its parent's files
    with session_scope(state.sessions) as s:
        # One cut of a dataset at a time: the dataset's row is locked until this version is recorded.
        repos.lock_dataset(s, dataset.id)
        number = repos.next_version_number(s, dataset.id)
        # Its own prefix, even for the same number: a cut that loses a race (SQLite takes no row lock) deletes
        # only what it wrote, never the winner's files.
        prefix = f"{dataset_version_prefix(project.id, dataset.id, number)}-{repos.new_id()[:8]}"
        if used:  # feedback taken by a cut that finished first is left to it
            taken = {f.id for f, _ in repos.list_feedback(s, project.id) if f.used_in is not None}
            add = [a for a, f in zip(add, used, strict=True) if f not in taken]
            used = [f for f in used if f not in taken]
            edits.add = add
        try:
            result = cut_version(state.store, parent.prefix, manifest, prefix, edits, valid_pct, seed)
        except DataError as exc:
            raise Problem(422, "Invalid version", str(exc)) from None
        try:
            row = repos.add_dataset_version(
                s,
                id=repos.new_id(),
                dataset_id=dataset.id,
                version=number,
                labels=parent.labels,
                split=PINNED,
                classes=result.classes,
                counts=result.counts,
                n_items=result.n_items,
                rejected=[{"key": "", "reason": r} for r in skipped[:1000]],
                prefix=prefix,
                n_bytes=result.n_bytes,
                parent_version=parent.version,
                note=body.note,
                changes={**result.changes, "feedback": len(used), "feedback_left_out": len(skipped)},
            )
            repos.mark_feedback_used(s, used, row.id)
            numbers = [v.version for v in repos.dataset_versions(s, dataset.id)]
        except IntegrityError as exc:  # SQLite takes no row lock: a cut that raced this one took the number
            state.store.delete_prefix(prefix + "/")
            raise Problem(409, "Conflict", f"version {number} was cut at the same moment; send this again") from exc
        except BaseException:
            state.store.delete_prefix(prefix + "/")
            raise
    return version_public(dataset, row, numbers)
