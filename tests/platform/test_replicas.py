"""Two API replicas of one fleet (the shared stack's API, A, and a second process, B, on the same PostgreSQL, Redis
and S3 server). Each keeps a key's caller and a model's row a moment instead of asking the database on every
request; B keeps them the longest allowed (FITCYCLE_LOOKUP_CACHE_SECONDS=2), so what it refuses within a second
it heard of over Redis, not waited out: a key revoked through A, a model deleted through A, a project's settings
changed through A. And a prediction B answered is readable through A at once, though B writes its log behind the
answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from core.datasets.samples import write_sample
from core.db import repos
from core.db.session import make_engine, make_sessionmaker, session_scope
from tests.platform.services import Client, free_port, start, wait_for
from tests.platform.stack import Stack, make_zip

PUSH_BOUND = 1.0  # seconds: a change made through one replica is seen by every other within this


@pytest.fixture(scope="module")
def replica_b(stack: Stack) -> Iterator[str]:
    """A second API process of the stack's fleet; its base URL."""
    env = {**stack.env, "FITCYCLE_LOOKUP_CACHE_SECONDS": "2", "FITCYCLE_LOOP_INTERVAL_SECONDS": "0"}
    port = free_port()
    api = start("api-b", ["serve", "--no-worker", "--port", str(port)], env, stack.workdir)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 90, "replica B to answer /health")
        yield base
    except BaseException:
        print(f"--- api-b ---\n{api.tail()}")
        raise
    finally:
        api.stop()


@pytest.fixture(scope="module")
def fleet(stack: Stack, replica_b: str) -> tuple[Client, Client]:
    """An admin key of a project of its own, through replica A and through replica B."""
    a, _ = stack.new_project("replicas")
    return a, Client(replica_b, a.key)


def until(check: Callable[[], bool], within: float) -> float:
    """Ask `check` every 20 ms until it holds; the seconds that took (fails past `within` plus a margin)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within + 5, f"still not so after {within + 5} s"
        time.sleep(0.02)  # a few dozen requests a second: well under the project's rate limit
    return time.monotonic() - started


def test_replica_b_keeps_a_callers_lookup_a_moment(stack: Stack, fleet: tuple[Client, Client]) -> None:
    """The premise of the tests below: B really serves a caller from memory. A key revoked in the database behind
    the API's back (nothing announces it) still works on B right after, and is refused once B's 2 s are up."""
    a, b = fleet
    made = a.post("/keys", json={"name": "behind-the-back"}).json()
    member = Client(b.base, made["key"])
    assert member.get("/datasets").status_code == 200  # B reads the caller, and keeps it
    engine = make_engine(stack.env["FITCYCLE_DATABASE_URL"])
    with session_scope(make_sessionmaker(engine)) as s:
        repos.revoke_api_key(s, made["id"])
    engine.dispose()
    assert member.get("/datasets").status_code == 200  # from B's memory
    waited = until(lambda: member.get("/datasets").status_code == 401, 2.0)
    assert waited <= 2.0 + 0.5


def test_a_key_revoked_through_a_is_refused_by_b_within_a_second(fleet: tuple[Client, Client]) -> None:
    a, b = fleet
    made = a.post("/keys", json={"name": "robot"}).json()
    robot = Client(b.base, made["key"])
    assert robot.get("/datasets").status_code == 200  # B keeps the caller from here on
    started = time.monotonic()
    assert a.http.delete(f"/keys/{made['id']}").status_code == 200
    refused = until(lambda: robot.get("/datasets").status_code == 401, PUSH_BOUND)
    assert time.monotonic() - started < PUSH_BOUND, f"B refused the key {refused:.2f} s after A answered"
    assert "revoked" in robot.get("/datasets").json()["detail"]


def test_a_projects_new_settings_reach_b_within_a_second(fleet: tuple[Client, Client]) -> None:
    a, b = fleet
    assert b.get("/project").json()["settings"]["input_retention_days"] is None  # B keeps the project as it was
    started = time.monotonic()
    assert a.http.patch("/project", json={"input_retention_days": 30}).status_code == 200
    until(lambda: b.get("/project").json()["settings"]["input_retention_days"] == 30, PUSH_BOUND)
    assert time.monotonic() - started < PUSH_BOUND
    assert a.http.patch("/project", json={"input_retention_days": None}).status_code == 200


@pytest.fixture(scope="module")
def model(fleet: tuple[Client, Client], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A model of the fleet's project (an untrained ResNet-18, one epoch at 32 px) and an image to ask it about."""
    a, _ = fleet
    tmp = tmp_path_factory.mktemp("replicas")
    data = write_sample("fashion-mnist", tmp / "data", per_class=12, size=32, classes=["bag", "trouser"])
    ds = a.upload("replicas", make_zip(data, tmp / "replicas.zip")).json()
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 8, "freeze_epochs": 0, "epochs": 1}
    job = a.wait(a.submit(kind="fine_tune", dataset_id=ds["id"], **spec)["id"])
    assert job["state"] == "succeeded", job["error"]
    return str(job["model_id"]), next(Path(data, "bag").glob("*.png")).read_bytes()


def test_a_prediction_b_answered_is_readable_through_a_at_once(
    fleet: tuple[Client, Client], model: tuple[str, bytes]
) -> None:
    a, b = fleet
    model_id, image = model
    answer = b.post(f"/models/{model_id}/predict", files={"file": ("bag.png", image, "image/png")})
    assert answer.status_code == 200, answer.text
    prediction_id = answer.json()["prediction_id"]
    kept = a.get(f"/predictions/{prediction_id}/image")  # B's writer may not have written it yet: A waits for it
    assert kept.status_code == 200 and kept.content == image
    feedback = a.post(f"/predictions/{prediction_id}/feedback", json={"label": "bag"})
    assert feedback.status_code == 201, feedback.text


def test_a_model_deleted_through_a_is_not_served_by_b_within_a_second(
    fleet: tuple[Client, Client], model: tuple[str, bytes]
) -> None:
    a, b = fleet
    model_id, image = model

    def predict() -> int:
        return b.post(f"/models/{model_id}/predict", files={"file": ("bag.png", image, "image/png")}).status_code

    assert predict() == 200  # B keeps the model's row and its Predictor from here on
    started = time.monotonic()
    assert a.http.delete(f"/models/{model_id}").status_code == 200
    until(lambda: predict() == 404, PUSH_BOUND)
    assert time.monotonic() - started < PUSH_BOUND
