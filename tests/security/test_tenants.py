"""One project cannot fill, slow or overrule what the others share: what predicting keeps counts toward the
storage quota and is refused past it (and deleting predictions gives the room back); a costly picture is paid
from the project's own CPU budget (so is a heatmap), and asking again for the same one is free; a small body
cannot make the API read one big item thousands of times; and a member key cannot touch the promotion gate
(policy, promotion by hand) or where the project's events go (webhooks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from core.db import repos
from core.db.session import make_sessionmaker, session_scope
from tests.platform.services import Client, Process, free_port, start, wait_for
from tests.platform.stack import Stack
from tests.security.attacks import good_members, noise_png, write_zip
from tests.security.conftest import Victim


@dataclass
class Metered:
    """An API process of the same fleet whose quota leaves project C `room` bytes, and C's client on it."""

    api: Process
    client: Client
    room: int
    stored: Callable[[], int]


@pytest.fixture(scope="module")
def metered(stack: Stack, victim: Victim, victim_model: str) -> Iterator[Metered]:
    engine = create_engine(stack.env["FITCYCLE_DATABASE_URL"])
    sessions = make_sessionmaker(engine)

    def stored() -> int:
        with session_scope(sessions) as s:
            return repos.stored_bytes(s, victim.project_id)

    room = 50_000
    env = {
        **stack.env,
        "FITCYCLE_MAX_STORED_BYTES": str(stored() + room),
        "FITCYCLE_RENDER_CPU_SECONDS": "0.5",
        "FITCYCLE_EXPLAIN_CPU_SECONDS": "0.2",
        "FITCYCLE_LOOP_INTERVAL_SECONDS": "0",
        "FITCYCLE_WEBHOOK_POLL_SECONDS": "0",
    }
    port = free_port()
    api = start("metered-api", ["serve", "--no-worker", "--port", str(port)], env, stack.workdir)
    client = Client(f"http://127.0.0.1:{port}/api/v1", victim.client.key)
    try:
        wait_for(lambda: client.get("/health").status_code == 200, 90, "the metered API to answer")
        yield Metered(api, client, room, stored)
    finally:
        api.stop()
        engine.dispose()


def test_predicting_stores_nothing_past_the_quota(metered: Metered, victim_model: str) -> None:
    c, before = metered.client, metered.stored()
    quota = before + metered.room
    statuses = []
    for i in range(12):  # ~10 KB a kept input: the quota's 50 KB of room holds four or five
        res = c.post(f"/models/{victim_model}/predict", files={"file": (f"{i}.png", noise_png(100, i))})
        statuses.append(res.status_code)
        if res.status_code == 413:
            assert "FITCYCLE_MAX_STORED_BYTES" in res.json()["detail"]
            assert "input_retention_days" in res.json()["detail"]  # and says how to make room
    assert statuses[0] == 200 and 413 in statuses and set(statuses) == {200, 413}, statuses
    assert before < metered.stored() <= quota  # the kept inputs were counted, and nothing passed the quota

    # Deleting the predictions (by age, in batches) removes their rows and kept inputs: the room comes back.
    res = c.http.delete("/predictions", params={"before": datetime.now(UTC).isoformat()})
    assert res.status_code == 200 and res.json()["deleted"] >= statuses.count(200) and not res.json()["more"]
    assert metered.stored() <= before
    again = c.post(f"/models/{victim_model}/predict", files={"file": ("again.png", noise_png(100, 99))})
    assert again.status_code == 200, again.text
    one = again.json()["prediction_id"]
    assert c.get(f"/predictions/{one}/image").status_code == 200
    assert c.http.delete(f"/predictions/{one}").status_code == 204
    assert c.get(f"/predictions/{one}/image").status_code == 404
    assert c.http.delete(f"/predictions/{one}").status_code == 404


def test_show_batch_is_paid_from_the_projects_cpu_budget(
    stack: Stack, metered: Metered, victim: Victim, tmp_path: Path
) -> None:
    c, ds = metered.client, victim.dataset["id"]
    first = c.get(f"/datasets/{ds}/show_batch", params={"seed": 7, "size": 256})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    # The same picture again is made once: free, however often it is asked for.
    assert all(
        c.get(f"/datasets/{ds}/show_batch", params={"seed": 7, "size": 256}).status_code == 200 for _ in range(5)
    )
    # New pictures spend the project's 0.5 CPU-seconds a minute until it answers 429 with Retry-After.
    answers = [c.get(f"/datasets/{ds}/show_batch", params={"seed": 100 + i, "size": 256}) for i in range(20)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.status_code in (200, 429) for a in answers), [a.status_code for a in answers]
    assert int(refused[0].headers["Retry-After"]) >= 1 and "CPU" in refused[0].json()["detail"]
    # Another project on the same process still gets its pictures: the budget is per project.
    other = Client(c.base, stack.new_project("theta")[0].key)
    ds_other = other.upload("pets", write_zip(tmp_path / "pets.zip", good_members())).json()["id"]
    assert other.get(f"/datasets/{ds_other}/show_batch", params={"seed": 5, "size": 256}).status_code == 200
    # Asked for together, a project's new pictures are made one at a time: the rest wait their turn (429).
    with ThreadPoolExecutor(4) as pool:
        burst = list(
            pool.map(
                lambda seed: other.get(f"/datasets/{ds_other}/show_batch", params={"seed": seed, "size": 256}),
                range(10, 14),
            )
        )
    assert sum(r.status_code == 200 for r in burst) <= 1 and all(r.status_code in (200, 429) for r in burst)


def test_heatmaps_are_paid_from_the_projects_cpu_budget(metered: Metered, victim_model: str) -> None:
    """Explained answers (Grad-CAM on PyTorch) spend the project's heatmap seconds (0.2 a minute here) until they are
    a 429 with Retry-After; plain answers go on."""
    c = metered.client
    image = ("x.png", noise_png(16, 0))  # small: its 60 kept inputs fit in the quota's room
    answers = [c.post(f"/models/{victim_model}/predict?explain=true", files={"file": image}) for _ in range(60)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.status_code in (200, 429) for a in answers), [a.status_code for a in answers]
    assert int(refused[0].headers["Retry-After"]) >= 1 and "heatmaps" in refused[0].json()["detail"]
    assert c.post(f"/models/{victim_model}/predict", files={"file": image}).status_code == 200
    assert c.http.delete("/predictions", params={"before": datetime.now(UTC).isoformat()}).status_code == 200


def test_duplicate_relabels_are_refused_before_any_item_is_read(unchanged: Victim) -> None:
    c, ds = unchanged.client, unchanged.dataset["id"]
    item = c.get(f"/datasets/{ds}/items", params={"limit": 1}).json()["data"][0]["key"]
    body = {"relabel": [{"item": item, "label": "dogs"}] * 5000}
    started = time.perf_counter()
    res = c.post(f"/datasets/{ds}/versions", json=body)
    took = time.perf_counter() - started
    assert res.status_code == 422 and "more than once" in res.json()["detail"] and item in res.json()["detail"]
    assert took < 10  # refused from the body alone, not after 5,000 reads
    both = c.post(f"/datasets/{ds}/versions", json={"relabel": [{"item": item, "label": "dogs"}], "remove": [item]})
    assert both.status_code == 422 and "both relabelled and removed" in both.json()["detail"]
    over = c.post(f"/datasets/{ds}/versions", json={"remove": [f"x{i}" for i in range(10_001)]})
    assert over.status_code == 422


def test_a_member_key_cannot_change_the_gate_or_the_webhooks(
    stack: Stack, unchanged: Victim, victim_model: str
) -> None:
    admin = unchanged.client
    made = admin.post("/keys", json={"name": "member"})
    member = Client(admin.base, made.json()["key"])
    name = admin.get(f"/models/{victim_model}").json()["name"]
    attempts = {
        "policy": member.http.put(f"/registry/{name}/policy", json={"min_improvement": -1, "auto_promote": True}),
        "promote": member.post(f"/registry/{name}/promote", json={"model_id": victim_model, "reason": "mine"}),
        "webhook": member.post(
            "/webhooks", json={"url": "https://example.com/h", "events": ["job.succeeded"], "secret": "s" * 16}
        ),
        "delete webhook": member.http.delete("/webhooks/anything"),
    }
    for what, res in attempts.items():
        assert res.status_code == 403, (what, res.text)
        assert "admin" in res.json()["detail"], what
    # A webhook's URL can hold a receiver's token: a member does not see them. It may still read the registry.
    assert member.get("/webhooks").status_code == 403
    assert member.get(f"/registry/{name}").status_code == 200
    assert admin.http.delete(f"/keys/{made.json()['id']}").status_code == 200


def test_every_list_is_paged_and_bounded(victim: Victim, victim_model: str) -> None:
    c = victim.client
    name = c.get(f"/models/{victim_model}").json()["name"]
    lists = [
        "/datasets",
        f"/datasets/{victim.dataset['id']}/versions",
        f"/datasets/{victim.dataset['id']}/items",
        "/jobs",
        "/models",
        "/registry",
        f"/registry/{name}/decisions",
        "/predictions",
        "/feedback",
        "/keys",
    ]
    for path in lists:
        page = c.get(path, params={"limit": 1, "offset": 0})
        assert page.status_code == 200, (path, page.text)
        assert len(page.json()["data"]) <= 1 <= page.json()["count"] or page.json()["count"] == 0, path
        for bad in ({"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"offset": 2**63}):
            assert c.get(path, params=bad).status_code == 422, (path, bad)


def test_a_members_model_waits_for_an_admin_to_promote_it(stack: Stack, tmp_path: Path) -> None:
    admin, _ = stack.new_project("iota")
    member = Client(admin.base, admin.post("/keys", json={"name": "member"}).json()["key"])
    ds = admin.upload("pets", write_zip(tmp_path / "pets.zip", good_members())).json()["id"]
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 8, "freeze_epochs": 0, "epochs": 1}
    first = admin.wait(admin.submit(kind="fine_tune", dataset_id=ds, **spec)["id"])
    assert first["state"] == "succeeded", first["error"]
    # A policy that lets any retrain of newer data through: the gate would promote the member's challenger.
    policy = {"min_improvement": -1, "max_class_drop": 1, "auto_promote": True}
    assert admin.http.put("/registry/pets/policy", json=policy).status_code == 200
    item = member.get(f"/datasets/{ds}/items", params={"limit": 1}).json()["data"][0]["key"]
    assert member.post(f"/datasets/{ds}/versions", json={"remove": [item]}).status_code == 201
    mine = member.wait(member.submit(kind="retrain", dataset_id=ds, epochs=1)["id"])
    assert mine["state"] == "succeeded", mine["error"]
    decision = mine["result"]["decision"]
    assert decision["action"] == "approved" and "a member key queued this job" in decision["reason"], decision
    assert admin.get("/registry/pets").json()["champion_id"] == first["model_id"]
    # The admin looks and promotes it by hand.
    promoted = admin.post("/registry/pets/promote", json={"model_id": mine["model_id"], "reason": "checked"})
    assert promoted.status_code == 200 and admin.get("/registry/pets").json()["champion_id"] == mine["model_id"]
