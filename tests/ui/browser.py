"""What the browser tests share: Debian's Chromium and its flags, where screenshots go, a fresh `fitcycle serve`
(SQLite, a local store, the filesystem broker and its worker) with a project key, and the page helpers."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page

from tests.platform.services import Client, Process, fitcycle, free_port, start, wait_for

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).parent / "screenshots"
# As the machine's notes say: no sandbox as root, and none of Chromium's own calls to the network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Served:
    """A running `fitcycle serve`: its address, a key of its project and a client with it."""

    base: str
    key: str
    client: Client
    process: Process


@contextmanager
def fresh_serve(tmp: Path, project: str, **env: str) -> Iterator[Served]:
    """`fitcycle serve` on a fresh data dir under `tmp` with a new key of `project` (extra FITCYCLE_ settings in
    `env`), answering /health; its log's tail is printed when the block fails, and it stops after."""
    data_dir = tmp / "fitcycle"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    environ.update(PYTHONUNBUFFERED="1", **env)
    key = fitcycle("keys", "create", "--project", project, "--data-dir", str(data_dir), env=environ).splitlines()[-1]
    port = free_port()
    serve = start("serve", ["serve", "--data-dir", str(data_dir), "--port", str(port)], environ, tmp)
    base = f"http://127.0.0.1:{port}"
    client = Client(f"{base}/api/v1", key)
    try:
        wait_for(lambda: client.get("/health").status_code == 200, 90, "fitcycle serve to answer /health")
        yield Served(base, key, client, serve)
    except BaseException:
        print(serve.tail(8000))
        raise
    finally:
        serve.stop()


def shoot(page: Page, name: str) -> None:
    """The page at 1280 px and at a 390 px phone width."""
    SHOTS.mkdir(exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def drop_file(page: Page, zone: str, path: Path, mime: str) -> None:
    """Drop a file on a drop zone, as dragging it from the desktop does."""
    transfer = page.evaluate_handle(
        """([name, b64, type]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
            return dt;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode(), mime],
    )
    page.dispatch_event(zone, "drop", {"dataTransfer": transfer})
