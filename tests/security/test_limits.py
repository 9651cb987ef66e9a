"""Limits before work: the key is checked before the body is read, bodies are capped per route, archives
cannot amplify, and predict holds one decoded image at a time with a pixel cap."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from tests.platform.stack import Stack
from tests.security.attacks import many_entry_zip, png_bytes, png_claiming, raw_post
from tests.security.conftest import Victim, rss_bytes


def spool_files(stack: Stack) -> list[Path]:
    return sorted(Path(stack.env["TMPDIR"]).iterdir())


def test_an_anonymous_gigabyte_is_refused_before_it_is_read(stack: Stack, unchanged: Victim) -> None:
    before = spool_files(stack)
    for headers in ({}, {"Authorization": "Bearer fc_not-a-key"}):
        status, sent = raw_post(stack.a.base, "/datasets", headers, declared=1024**3)
        assert status == 401
        assert sent < 16 * 1024**2, f"{sent:,} bytes went out before the answer"
    assert spool_files(stack) == before


def test_a_declared_body_over_the_cap_is_413_before_it_is_read(stack: Stack, unchanged: Victim) -> None:
    auth = {"Authorization": f"Bearer {unchanged.client.key}"}
    status, sent = raw_post(stack.a.base, "/datasets", auth, declared=3 * 1024**3)
    assert status == 413 and sent < 16 * 1024**2
    status, sent = raw_post(stack.a.base, "/jobs", auth, declared=50 * 1024**2)
    assert status == 413 and sent < 16 * 1024**2


def test_a_chunked_body_over_the_cap_is_stopped_while_it_streams(unchanged: Victim) -> None:
    def body() -> object:
        yield b'{"kind": "stage1", "dataset_id": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    res = unchanged.client.post("/jobs", content=body(), headers={"Content-Type": "application/json"})
    assert res.status_code == 413, res.text
    assert "over 1,048,576 bytes" in res.json()["detail"]


def test_a_zip_of_200k_entries_costs_neither_memory_nor_time(stack: Stack, unchanged: Victim, tmp_path: Path) -> None:
    archive = many_entry_zip(tmp_path / "many.zip", 200_000)
    assert archive.stat().st_size > 15 * 1024**2
    before = rss_bytes(stack.api.proc.pid)
    start = time.monotonic()
    res = unchanged.client.upload("pets", archive)
    assert res.status_code == 422 and "200,000 entries" in res.json()["detail"], res.text
    assert time.monotonic() - start < 10
    grew = rss_bytes(stack.api.proc.pid) - before
    assert grew < 50 * 1024**2, f"the API grew by {grew / 1024**2:.0f} MB"


def test_predict_refuses_bombs_and_oversized_files_by_name(victim: Victim, victim_model: str) -> None:
    model, a = victim_model, victim.client
    bomb = png_claiming(20000, 20000)
    res = a.post(f"/models/{model}/predict", files={"file": ("huge.png", bomb)})
    assert res.status_code == 422 and "'huge.png'" in res.json()["detail"] and "pixel limit" in res.json()["detail"]
    res = a.post(f"/models/{model}/predict", files={"file": ("big.png", b"\0" * (21 * 1024**2))})
    assert res.status_code == 413 and "'big.png'" in res.json()["detail"]
    res = a.post(f"/models/{model}/predict", files=[("file", (f"{i}.png", b"x")) for i in range(17)])
    assert res.status_code == 413 and "at most 16" in res.json()["detail"]
    res = a.post(f"/models/{model}/predict", files={"file": ("notes.txt", b"hello")})
    assert res.status_code == 422 and "'notes.txt'" in res.json()["detail"] and "BytesIO" not in res.text


def test_a_bad_file_in_a_batch_gets_its_own_error(victim: Victim, victim_model: str) -> None:
    files = [("file", ("a.png", png_bytes(value=40))), ("file", ("b.txt", b"hello")), ("file", ("c.png", png_bytes()))]
    res = victim.client.post(f"/models/{victim_model}/predict", files=files)
    assert res.status_code == 200, res.text
    a, b, c = res.json()["results"]
    assert [a["filename"], b["filename"], c["filename"]] == ["a.png", "b.txt", "c.png"]
    assert a["top"] == a["predictions"][0] and c["top"][0] in ("cats", "dogs")
    assert "'b.txt'" in b["error"] and "predictions" not in b


def test_a_zip_whose_end_record_lies_about_its_entries_is_still_refused(
    stack: Stack, unchanged: Victim, tmp_path: Path
) -> None:
    archive = many_entry_zip(tmp_path / "liar.zip", 200_000)
    data = bytearray(archive.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = struct.pack("<HH", 1, 1)  # "one entry", says the end record
    archive.write_bytes(data)
    before = rss_bytes(stack.api.proc.pid)
    res = unchanged.client.upload("pets", archive)
    assert res.status_code == 422 and "entries or more" in res.json()["detail"], res.text
    assert rss_bytes(stack.api.proc.pid) - before < 50 * 1024**2
