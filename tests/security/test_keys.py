"""Keys can be listed, revoked and can expire; a revoked or expired key is refused on its next request."""

from __future__ import annotations

import time

from tests.platform.services import Client, fitcycle, wait_for
from tests.platform.stack import Stack
from tests.security.conftest import Victim


def test_an_admin_key_makes_lists_and_revokes_keys(victim: Victim) -> None:
    admin = victim.client
    made = admin.post("/keys", json={"name": "ci robot"})
    assert made.status_code == 201, made.text
    robot = Client(admin.base, made.json()["key"])
    assert robot.get("/datasets").status_code == 200
    assert robot.post("/keys", json={}).status_code == 403  # a member key manages no keys
    listed = admin.get("/keys").json()["data"]
    entry = next(k for k in listed if k["id"] == made.json()["id"])
    assert entry["name"] == "ci robot" and entry["state"] == "active" and "key" not in entry
    assert all(made.json()["key"] != k["prefix"] for k in listed)
    after = admin.http.delete(f"/keys/{entry['id']}")
    assert after.status_code == 200
    assert next(k for k in after.json()["data"] if k["id"] == entry["id"])["state"] == "revoked"
    refused = robot.get("/datasets")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_an_expired_key_is_refused(victim: Victim) -> None:
    made = victim.client.post("/keys", json={"name": "short-lived", "expires_in_days": 2 / 86400})
    assert made.status_code == 201
    short = Client(victim.client.base, made.json()["key"])
    assert short.get("/datasets").status_code == 200
    wait_for(lambda: short.get("/datasets").status_code == 401, 10, "the key to expire")


def test_keys_list_and_revoke_from_the_cli(stack: Stack) -> None:
    out = fitcycle("keys", "create", "--project", "epsilon", "--name", "laptop", env=stack.env).strip().splitlines()
    key = out[-1]
    client = Client(stack.a.base, key)
    assert client.get("/jobs").status_code == 200
    listing = fitcycle("keys", "list", "--project", "epsilon", env=stack.env)
    assert "laptop" in listing and key[:10] in listing and key not in listing and "active" in listing
    revoked = fitcycle("keys", "revoke", key[:10], env=stack.env)
    assert "revoked" in revoked
    start = time.monotonic()
    assert client.get("/jobs").status_code == 401
    assert time.monotonic() - start < 5
    assert "revoked" in fitcycle("keys", "list", "--project", "epsilon", env=stack.env)
