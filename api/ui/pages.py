"""The web UI's pages: server-rendered from the same services the REST API answers with (no business logic
here or in the templates); what changes state is done by the page's script calling the REST API with the
session cookie and the CSRF token (see session.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.errors import Problem
from api.guard import SESSION_COOKIE
from api.schemas import MAX_TEXT_CHARS, DatasetPublic, JobPublic, ModelPublic, RegistryEntry, SearchPublic
from api.services import datasets as datasets_service
from api.services import drift_report
from api.services import feedback as feedback_service
from api.services import jobs as jobs_service
from api.services import models as models_service
from api.services import registry as registry_service
from api.services import searches as searches_service
from api.services import versions as versions_service
from api.state import AppState
from api.ui.drift_chart import chart
from api.ui.session import (
    PageCaller,
    app_state,
    caller_of,
    csrf_token,
    form_ok,
    key_caller,
    local_path,
    remember_csrf,
    sessions_of,
    sign_in,
    sign_out,
    sign_out_everywhere,
)
from core.db import domain
from core.engine.interpret import heatmap_artifact
from core.engine.rules import TEXT_RULES
from core.engine.tasks import TASKS
from core.engine.text.manifest import LANGUAGE_MODEL, TEXT_TASKS
from core.jobs.kinds import KINDS, get_kind
from core.jobs.spec import DEFAULT_ARCH, JobSettings

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)
ITEMS_PER_PAGE = 48
MAX_ARTIFACT_JSON = 8 * 1024**2
CLEANER_CARDS = 60  # the cleaner page shows this many of the most doubted items
SEARCHES_PER_PAGE = 20


def shown(value: Any) -> str:
    """A searched field's value or an objective as a page shows it (and as static/search.js does): numbers to 4
    significant digits, booleans as JSON writes them."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


templates.env.filters["shown"] = shown


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the CSRF token in its meta tag and forms (and its cookie set when new)."""
    context.setdefault("caller", None)
    response = templates.TemplateResponse(
        request, template, {"csrf": csrf_token(request), **context}, status_code=status
    )
    response.headers["Cache-Control"] = "no-store"  # nothing of a project's stays in the cache after sign-out
    remember_csrf(request, response)
    return response


# Links to the REST API's downloads and images are paths on this site (never an absolute http:// URL behind a
# TLS proxy), with every user-chosen part percent-encoded.
def bundle_url(request: Request) -> Callable[[str], str]:
    return lambda model_id: str(request.app.url_path_for("download_bundle", model_id=quote(model_id, safe="")))


def artifact_url(request: Request, job_id: str) -> Callable[[str], str]:
    return lambda name: str(request.app.url_path_for("download_artifact", job_id=job_id, name=quote(name)))


def item_url(request: Request, dataset_id: str, version: int) -> Callable[[str], str]:
    """An item's (or its mask's) image in one version of a dataset, through the REST API."""

    def url(key: str) -> str:
        path = request.app.url_path_for("item_image", dataset_id=dataset_id, key=quote(key))
        return f"{path}?version={version}"

    return url


HEATMAPS = heatmap_artifact(0).rsplit("/", 1)[0] + "/"  # the folder of an interpretation's top-loss heatmaps


def is_plot(name: str) -> bool:
    """Whether a job's artifact is a picture to show as a plot: a PNG, but not a top loss's heatmap (the
    interpretation page lays those over their items' images)."""
    return name.endswith(".png") and not name.startswith(HEATMAPS)


def holds_texts(dataset: DatasetPublic) -> bool:
    """Whether a dataset's items are texts (its labelling rule made texts, not images)."""
    return dataset.labels.get("kind") in TEXT_RULES


def answer_mode(model: ModelPublic | None) -> str:
    """How the UI asks a model: 'image' (an image model), 'text' (a text classifier) or 'generate' (a language
    model), from the task its job recorded."""
    task = model.metrics.get("task") if model else None
    if task == LANGUAGE_MODEL:
        return "generate"
    return "text" if task in TEXT_TASKS else "image"


def explains(model: ModelPublic | None) -> bool:
    """Whether a model's answers can carry a heatmap (its task's `explains`: an image classifier's)."""
    task = TASKS.get(str(model.metrics.get("task"))) if model else None
    return task is not None and task.explains


# ----- signing in and out ------------------------------------------------------------------------------
@router.get("/")
def home(request: Request) -> Response:
    caller = caller_of(app_state(request), request.cookies.get(SESSION_COOKIE))
    return RedirectResponse("/datasets" if caller else "/signin", status_code=303)


@router.get("/signin")
def signin_page(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    return render(request, "signin.html", title="Sign in", next=local_path(next), error=None)


@router.post("/signin")
def signin(
    request: Request,
    key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/datasets",
) -> Response:
    if not form_ok(request, csrf):
        return render(request, "signin.html", 403, title="Sign in", next=local_path(next), error=CSRF_MESSAGE)
    caller = key_caller(app_state(request), key.strip())
    if caller is None:
        error = (
            "That key was not accepted: it is revoked, expired, or was never issued. Check it, or make one with "
            "'fitcycle keys create --project NAME'."
        )
        return render(request, "signin.html", 401, title="Sign in", next=local_path(next), error=error)
    response = RedirectResponse(local_path(next), status_code=303)
    sign_in(request, response, caller)
    return response


CSRF_MESSAGE = "This form has expired (its security token did not match): reload the page and send it again."


@router.get("/signout")
def signout_page(request: Request) -> Response:
    caller = caller_of(app_state(request), request.cookies.get(SESSION_COOKIE))
    if caller is None:
        return RedirectResponse("/signin", status_code=303)
    return render(request, "signout.html", title="Sign out", caller=caller)


@router.post("/signout")
def signout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    if not form_ok(request, csrf):
        return render(request, "error.html", 403, title="Refused", message=CSRF_MESSAGE)
    response = RedirectResponse("/signin", status_code=303)
    sign_out(request, response)
    return response


@router.get("/sessions")
def sessions_page(request: Request, caller: PageCaller) -> Response:
    """The signed-in key's sessions (this browser's marked), and a button that ends them all."""
    found = sessions_of(request, caller)
    return render(request, "sessions.html", title="Sessions", caller=caller, sessions=found)


@router.post("/sessions/signout-everywhere")
def signout_everywhere(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    """End every session of the signed-in key, in every browser, this one too."""
    if not form_ok(request, csrf):
        return render(request, "error.html", 403, title="Refused", message=CSRF_MESSAGE)
    caller = caller_of(app_state(request), request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/signin", status_code=303)
    if caller is None:  # this browser's sign-in is over already: nothing it may end but its own cookie
        sign_out(request, response)
    else:
        sign_out_everywhere(request, response, caller)
    return response


# ----- datasets ----------------------------------------------------------------------------------------
@router.get("/datasets")
def datasets_page(request: Request, caller: PageCaller) -> Response:
    found = datasets_service.list_all(app_state(request), caller.project)
    return render(request, "datasets.html", title="Datasets", caller=caller, datasets=found.data)


@router.get("/datasets/{dataset_id}")
def dataset_page(
    request: Request,
    caller: PageCaller,
    dataset_id: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    state, project = app_state(request), caller.project
    dataset = datasets_service.get(state, project, dataset_id, version)
    items = datasets_service.items(
        state, project, dataset_id, dataset.version, (page - 1) * ITEMS_PER_PAGE, ITEMS_PER_PAGE
    )
    versions = versions_service.list_versions(state, project, dataset_id).data
    diffs = {
        v.version: versions_service.version_diff(state, project, dataset_id, v.version, None)
        for v in versions
        if v.parent_version is not None and v.version == dataset.version
    }
    pages = max(1, -(-items.count // ITEMS_PER_PAGE))
    return render(
        request,
        "dataset.html",
        title=dataset.name,
        caller=caller,
        dataset=dataset,
        items=items.data,
        n_items=items.count,
        page=page,
        pages=pages,
        versions=versions,
        diffs=diffs,
        image_url=item_url(request, dataset_id, dataset.version),
        is_text=holds_texts(dataset),
        n_unlabelled=items.n_unlabelled,
        per_page=ITEMS_PER_PAGE,
    )


# ----- jobs --------------------------------------------------------------------------------------------
@router.get("/jobs")
def jobs_page(request: Request, caller: PageCaller, page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> Response:
    state, project = app_state(request), caller.project
    found = jobs_service.list_all(state, project, (page - 1) * 50, 50)
    datasets = datasets_service.list_all(state, project).data
    models = models_service.list_all(state, project, bundle_url(request)).data
    return render(
        request,
        "jobs.html",
        title="Jobs",
        caller=caller,
        jobs=found.data,
        count=found.count,
        page=page,
        datasets=datasets,
        models=models,
        kinds=[k for k in KINDS.values() if not k.internal],
        parents=[j for j in found.data if j.model_id],
        defaults=JobSettings().model_dump() | {"arch": DEFAULT_ARCH},
        texts={d.id for d in datasets if holds_texts(d)},
        modes={m.id: answer_mode(m) for m in models},
    )


def _artifact_json(state: AppState, project: domain.Project, job_id: str, name: str) -> Any:
    """One of the job's own JSON artifacts (written by fitcycle, read with a size cap), or None."""
    try:
        artifact, chunks = jobs_service.open_artifact(state, project, job_id, name)
    except Problem:
        return None
    if artifact.size > MAX_ARTIFACT_JSON:
        return None
    return json.loads(b"".join(chunks))


def _estimate_of(state: AppState, project: domain.Project, job: JobPublic) -> dict[str, Any] | None:
    """A job's own estimate (a dry run's probe), or the estimate of the dry run it followed, with the actual
    seconds of each phase beside it once it has them (its timings)."""
    found: dict[str, Any] | None = job.result.get("estimate") if get_kind(job.kind).internal else None
    probe_id = job.spec.get("estimate_job_id")
    if found is None and probe_id:
        try:
            found = jobs_service.get(state, project, str(probe_id)).result.get("estimate")
        except Problem:
            found = None
    if not isinstance(found, dict) or not isinstance(found.get("phases"), dict):
        return None
    actual = job.result.get("timings") or {}
    rows = [
        {"phase": p, "estimate": float(s), "actual": actual.get(p)}
        for p, s in [*found["phases"].items(), ("total", found.get("total_seconds", 0.0))]
    ]
    rows += [{"phase": p, "estimate": None, "actual": s} for p, s in actual.items() if p not in found["phases"]]
    rows = [r for r in rows if r["phase"] != "total"] + [r for r in rows if r["phase"] == "total"][:1]
    return {**found, "rows": rows, "probe_id": probe_id or job.id, "own": probe_id is None}


@router.get("/jobs/{job_id}")
def job_page(request: Request, caller: PageCaller, job_id: str) -> Response:
    state, project = app_state(request), caller.project
    job = jobs_service.get(state, project, job_id)
    metrics = jobs_service.metrics(state, project, job_id)
    artifacts = jobs_service.artifacts(state, project, job_id, artifact_url(request, job_id))
    kind = get_kind(job.kind)
    lr_find = _artifact_json(state, project, job_id, "lr_find.json") if kind.page == "sweep" else None
    names = {a.name for a in artifacts.data}
    samples = _artifact_json(state, project, job_id, "samples.json") if "samples.json" in names else None
    version = datasets_service.version_by_id(state, project, job.dataset_version_id)
    estimate = _estimate_of(state, project, job)
    return render(
        request,
        "job.html",
        estimate=estimate,
        title=f"Job {job.kind}",
        caller=caller,
        job=job,
        kind=kind,
        epochs=metrics.epochs,
        artifacts=artifacts.data,
        lr_find=lr_find,
        samples=samples,
        interpreted="interpretation.json" in names,
        dataset_id=version.dataset_id,
        plots=[a for a in artifacts.data if is_plot(a.name)],
        cleaner_cards=CLEANER_CARDS,
    )


@router.get("/jobs/{job_id}/interpretation")
def interpretation_page(request: Request, caller: PageCaller, job_id: str) -> Response:
    state, project = app_state(request), caller.project
    job = jobs_service.get(state, project, job_id)
    summary = _artifact_json(state, project, job_id, "interpretation.json")
    artifacts = jobs_service.artifacts(state, project, job_id, artifact_url(request, job_id))
    version = datasets_service.version_by_id(state, project, job.dataset_version_id)
    return render(
        request,
        "interpretation.html",
        title="Interpretation",
        caller=caller,
        job=job,
        summary=summary,
        plots=[a for a in artifacts.data if a.name.startswith("plots/") or is_plot(a.name)],
        image_url=item_url(request, version.dataset_id, version.version),
        artifact_url=artifact_url(request, job_id),
    )


@router.get("/jobs/{job_id}/cleaner")
def cleaner_page(request: Request, caller: PageCaller, job_id: str) -> Response:
    state, project = app_state(request), caller.project
    job = jobs_service.get(state, project, job_id)

    def image_url(dataset_id: str, key: str, version: int) -> str:
        return item_url(request, dataset_id, version)(key)

    found = jobs_service.suspects(state, project, job_id, CLEANER_CARDS, image_url)
    dataset = datasets_service.get(state, project, found.dataset_id, found.version)
    return render(
        request,
        "cleaner.html",
        title="Cleaner",
        caller=caller,
        job=job,
        suspects=found.data,
        count=found.count,
        dataset=dataset,
    )


# ----- hyperparameter searches -------------------------------------------------------------------------
def _done(search: SearchPublic) -> int:
    """How many of its trials have ended (succeeded, failed, cancelled or pruned)."""
    return sum(n for state, n in search.counts.items() if state in domain.TERMINAL_STATES)


@router.get("/searches")
def searches_page(request: Request, caller: PageCaller, page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> Response:
    state, project = app_state(request), caller.project
    found = searches_service.list_all(state, project, (page - 1) * SEARCHES_PER_PAGE, SEARCHES_PER_PAGE)
    return render(
        request,
        "searches.html",
        title="Searches",
        caller=caller,
        searches=found.data,
        done={s.id: _done(s) for s in found.data},
        count=found.count,
        page=page,
        per_page=SEARCHES_PER_PAGE,
    )


@router.get("/searches/{search_id}")
def search_page(request: Request, caller: PageCaller, search_id: str) -> Response:
    """A search: its header, its trials, the best so far over time, the fields against the objective (parallel
    coordinates) and each field's importance; live from the search's events while it runs."""
    state, project = app_state(request), caller.project
    search = searches_service.get(state, project, search_id)
    importance = searches_service.importance(state, project, search_id)
    return render(
        request,
        "search.html",
        title="Search",
        caller=caller,
        search=search,
        done=_done(search),
        importance=importance,
        page_data={
            "search": search.model_dump(mode="json"),
            "importance": importance.model_dump(mode="json"),
            "params": list(search.space),  # in the search's order (tojson sorts an object's keys)
            "final": list(domain.TERMINAL_STATES),
        },
    )


# ----- models and the registry -------------------------------------------------------------------------
@router.get("/models")
def models_page(request: Request, caller: PageCaller) -> Response:
    state, project = app_state(request), caller.project
    names = registry_service.list_all(state, project).data
    models = models_service.list_all(state, project, bundle_url(request)).data
    drifts = drift_report.checked(state, project, [(m.id, m.name) for m in models])
    charts = {i: chart(d.history, d.alarm_at or d.threshold, 160, 32) for i, d in drifts.items()}
    return render(
        request, "models.html", title="Models", caller=caller, names=names, models=models, drifts=drifts, charts=charts
    )


@router.get("/registry/{name}")
def registry_page(request: Request, caller: PageCaller, name: str) -> Response:
    state, project = app_state(request), caller.project
    entry = registry_service.get(state, project, name, bundle_url(request))
    drift = drift_report.report(state, project, entry.champion_id) if entry.champion_id else None
    drift_chart = chart(drift.history, drift.alarm_at or drift.threshold) if drift is not None else None
    return render(
        request, "registry.html", title=name, caller=caller, entry=entry, drift=drift, drift_chart=drift_chart
    )


# ----- serving and feedback ----------------------------------------------------------------------------
@router.get("/playground")
def playground_page(
    request: Request,
    caller: PageCaller,
    model: Annotated[str | None, Query(max_length=36)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    state, project = app_state(request), caller.project
    names = registry_service.list_all(state, project).data
    models = models_service.list_all(state, project, bundle_url(request)).data
    feedback = feedback_service.count_feedback(state, project)
    return render(
        request,
        "playground.html",
        title="Playground",
        caller=caller,
        names=names,
        models=models,
        chosen_model=model,
        chosen_name=name,
        feedback_count=feedback,
        modes=_modes(models, names),
        heatmap_classes=_heatmap_classes(models, names),
        max_text_chars=MAX_TEXT_CHARS,
    )


def _modes(models: list[ModelPublic], names: list[RegistryEntry]) -> dict[str, str]:
    """How the playground asks each of its choices ('model:ID', 'name:NAME': the name's champion)."""
    by_id = {m.id: m for m in models}
    modes = {f"model:{m.id}": answer_mode(m) for m in models}
    return modes | {f"name:{n.name}": answer_mode(by_id.get(n.champion_id or "")) for n in names}


def _heatmap_classes(models: list[ModelPublic], names: list[RegistryEntry]) -> dict[str, list[str]]:
    """The classes a heatmap can be asked for, for each of the playground's choices whose model explains."""
    by_id = {m.id: m for m in models}
    choices = {f"model:{m.id}": m for m in models} | {f"name:{n.name}": by_id.get(n.champion_id or "") for n in names}
    return {choice: m.classes for choice, m in choices.items() if m is not None and explains(m)}


async def answers_logged(request: Request) -> None:
    """Before a page lists predictions: what this API process has answered so far is in the log (it is written
    behind the answers: api/prediction_queue.py)."""
    await app_state(request).prediction_queue.written()


@router.get("/predictions", dependencies=[Depends(answers_logged)])
def predictions_page(
    request: Request,
    caller: PageCaller,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    state, project = app_state(request), caller.project
    found = feedback_service.list_predictions(state, project, name, None, "uncertainty", 40, True)
    models = {m.id: m for m in models_service.list_all(state, project, bundle_url(request)).data}
    names = registry_service.list_all(state, project).data
    return render(
        request,
        "predictions.html",
        title="Predictions",
        caller=caller,
        predictions=found.data,
        models=models,
        names=names,
        name=name,
    )
