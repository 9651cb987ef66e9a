"""The API fuzzed from its own OpenAPI document by Schemathesis (tests/api/openapi_fuzz.py), inside a network
namespace that has loopback only, so that no URL the fuzzing makes the server fetch (predict-url, a webhook) can
reach another machine: every operation, with an admin key, a member key and none, a bounded number of examples
each; no 5xx, no undocumented status code or content type, no body outside its schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def isolating_prefix() -> list[str] | None:
    """`unshare` with a new network namespace (as root; else in a user namespace too), when this machine allows."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for prefix in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def test_the_api_keeps_its_openapi_contract_under_fuzzing(tmp_path: Path) -> None:
    prefix = isolating_prefix()
    if prefix is None:
        pytest.skip(
            "needs `unshare --net` (root, or unprivileged user namespaces) and `ip`: the fuzzing makes the "
            "server fetch URLs, and must only ever reach loopback"
        )
    script = f"ip link set lo up && exec {sys.executable} -m tests.api.openapi_fuzz {tmp_path / 'run'}"
    res = subprocess.run([*prefix, "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary_file = tmp_path / "run" / "summary.json"
    assert summary_file.exists(), res.stdout[-5000:] + res.stderr[-10000:]
    summary = json.loads(summary_file.read_text())
    runs = summary["runs"]
    print(
        f"fuzzed: {sum(r['requests'] or 0 for r in runs)} requests ("
        + ", ".join(f"{r['key']} key: {r['requests']} in {r['seconds']} s" for r in runs)
        + f"), {summary['max_examples']} examples per operation and key, seeded in {summary['seed_seconds']} s"
    )
    failed = [r for r in runs if r["exit"] != 0]
    assert not failed, "\n\n".join(f"--- {r['key']} key ---\n{r['output'][-8000:]}" for r in failed)
    assert [r["key"] for r in runs] == ["admin", "member", "none"]
    assert all((r["requests"] or 0) > 1000 for r in runs), runs  # every operation, many times
    assert res.returncode == 0, res.stderr[-5000:]
