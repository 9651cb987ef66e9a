"""The attacker's view: a project of its own with one small dataset that every attack must leave exactly as
it was, a second API process with tight quotas (so hitting them does not disturb the other tests), and a
helper that reads an API process's resident memory."""

from __future__ import annotations

import hashlib
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.platform.services import Client, Process, free_port, start, wait_for
from tests.platform.stack import Stack
from tests.security.attacks import good_members, write_zip


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class Victim:
    """Project C: one stored dataset, and a fingerprint of everything the project holds."""

    client: Client
    project_id: str
    dataset: dict[str, Any]
    stack: Stack

    def fingerprint(self) -> dict[str, Any]:
        store = self.stack.store()
        objects = {
            k: hashlib.sha256(store.get_bytes(k)).hexdigest() for k in store.list(f"projects/{self.project_id}/")
        }
        return {
            "objects": objects,
            "datasets": self.client.get("/datasets").json(),
            "jobs": self.client.get("/jobs").json(),
        }


@pytest.fixture(scope="session")
def victim(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Victim:
    client, project_id = stack.new_project("gamma")
    archive = write_zip(tmp_path_factory.mktemp("victim") / "pets.zip", good_members())
    res = client.upload("pets", archive)
    assert res.status_code == 201, res.text
    return Victim(client, project_id, res.json(), stack)


@pytest.fixture(scope="session")
def victim_model(victim: Victim) -> str:
    """A model of project C, trained on its dataset (a second or two of CPU)."""
    job = victim.client.submit(
        kind="fine_tune",
        dataset_id=victim.dataset["id"],
        arch="resnet18",
        pretrained="none",
        size=32,
        bs=8,
        freeze_epochs=0,
        epochs=1,
        lr=5e-3,
    )
    done = victim.client.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    return str(done["model_id"])


@pytest.fixture
def unchanged(victim: Victim) -> Iterator[Victim]:
    """Fails the test if anything the project holds changed while it ran."""
    before = victim.fingerprint()
    yield victim
    assert victim.fingerprint() == before, "the attack changed what the project stores"


class DripHandler(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a 1 MB Content-Length, then drips one byte every 0.4 s (each read looks alive)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(1024**2))
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.4)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def drip_server() -> Iterator[str]:
    port = free_port()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), DripHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{port}"
    server.shutdown()


@dataclass
class Tight:
    """An API process of the same fleet with small quotas, and project D's client on it."""

    api: Process
    client: Client
    project_id: str


@pytest.fixture(scope="session")
def tight(stack: Stack, drip_server: str) -> Iterator[Tight]:
    env = {
        **stack.env,
        "FITCYCLE_MAX_ACTIVE_JOBS": "2",
        "FITCYCLE_MAX_EVENT_STREAMS": "1",
        "FITCYCLE_MAX_STORED_BYTES": str(200 * 1024),
        "FITCYCLE_REQUESTS_PER_MINUTE": "40",
        "FITCYCLE_QUEUES": json.dumps(["fitcycle", "parked"]),  # nothing listens on 'parked'
        "FITCYCLE_URL_FETCH_TIMEOUT_SECONDS": "1.5",
        "FITCYCLE_URL_FETCH_ALLOW_HOSTS": json.dumps([drip_server]),
    }
    port = free_port()
    api = start("tight-api", ["serve", "--no-worker", "--port", str(port)], env, stack.workdir)
    client, project_id = stack.new_project("delta")
    client = Client(f"http://127.0.0.1:{port}/api/v1", client.key)
    try:
        wait_for(lambda: client.get("/health").status_code == 200, 90, "the tight API to answer")
        yield Tight(api, client, project_id)
    finally:
        api.stop()
