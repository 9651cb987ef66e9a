"""The local object store's disk fills during an upload: the API answers 507 with a clear message, nothing of
that upload is left behind (no partial object, no temporary file), and what was stored before is intact.
The store lives on a small tmpfs, so this needs root (to mount it); it is skipped otherwise."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import FaultStack
from tests.platform.services import Client, fitcycle, free_port, start, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


def noise_zip(dest: Path, per_class: int, size: int, seed: int) -> Path:
    """Incompressible images (random noise PNGs) in two class folders."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for label in ("a", "b"):
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
                z.writestr(f"{label}/{i:03d}.png", buf.getvalue())
    return dest


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_an_upload_is_a_clear_507_and_loses_nothing(
    faults: FaultStack, small_disk: Path, tmp_path: Path
) -> None:
    env = {**faults.stack.env, "FITCYCLE_STORAGE": "local", "FITCYCLE_DATA_DIR": str(small_disk)}
    key = fitcycle("keys", "create", "--project", "small-disk", env=env).strip().splitlines()[-1]
    port = free_port()
    api = start("api-small-disk", ["serve", "--no-worker", "--port", str(port)], env, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/api/v1", key)
        wait_for(lambda: client.get("/health").status_code == 200, 90, "the API on the small disk to answer")
        first = client.upload("fits", noise_zip(tmp_path / "small.zip", per_class=4, size=64, seed=1))
        assert first.status_code == 201, first.text
        objects = small_disk / "objects"
        before = {p: p.read_bytes() for p in objects.rglob("*") if p.is_file()}
        assert len(before) == 9  # 8 images and the manifest

        res = client.upload("too-big", noise_zip(tmp_path / "big.zip", per_class=40, size=128, seed=2))
        assert res.status_code == 507, res.text
        problem = res.json()
        assert problem["title"] == "Insufficient Storage"
        assert "disk is full" in problem["detail"] and str(small_disk) not in res.text

        after = {p: p.read_bytes() for p in objects.rglob("*") if p.is_file()}
        assert after == before  # nothing half-written, nothing earlier touched
        assert not [p for p in small_disk.rglob(".put-*")]
        assert [d["name"] for d in client.get("/datasets").json()["data"]] == ["fits"]
        assert client.get(f"/datasets/{first.json()['id']}/items").json()["count"] == 8
    except BaseException:
        print(api.tail())
        raise
    finally:
        api.stop()
