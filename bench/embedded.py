"""A `fitcycle serve` on the embedded default in a scratch folder, for a benchmark: a project key, the API
answering, and everything stopped and removed afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.platform.services import Client, fitcycle, free_port, start, wait_for


@dataclass
class Served:
    tmp: Path  # the scratch folder (the data dir is tmp/data)
    base: str  # http://127.0.0.1:PORT
    key: str
    client: Client  # the REST API with the key


@contextmanager
def served_embedded(prefix: str = "fitcycle-bench-") -> Iterator[Served]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env.update(PYTHONUNBUFFERED="1", FITCYCLE_DATA_DIR=str(tmp / "data"))
    serve = None
    try:
        key = fitcycle("keys", "create", "--project", "bench", env=env).splitlines()[-1]
        port = free_port()
        serve = start("serve", ["serve", "--port", str(port)], env, tmp)
        base = f"http://127.0.0.1:{port}"
        client = Client(f"{base}/api/v1", key)
        wait_for(lambda: client.get("/health").status_code == 200, 120, "the API")
        yield Served(tmp, base, key, client)
    finally:
        if serve is not None:
            serve.stop()
        shutil.rmtree(tmp, ignore_errors=True)
