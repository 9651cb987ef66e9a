"""The API fuzzed from its own OpenAPI document by Schemathesis, meant to run inside a network namespace with
loopback only (tests/api/test_openapi_fuzz.py runs `python -m tests.api.openapi_fuzz WORKDIR` under `unshare -n`):
nothing it makes the server fetch — predict-url, a webhook — can leave the machine.

It starts the embedded default (`fitcycle serve --no-worker`: SQLite, a local store, the filesystem broker) and a
worker, seeds one of everything a path can name (a dataset, a job that trained a model, a prediction with feedback,
a webhook) in a project for the admin key and in another for the member key, stops the worker (jobs the fuzzing
queues stay queued), and runs Schemathesis over every operation three times: with the admin key, the member key,
and none. Checks: no 5xx, only documented status codes and content types,
and every body in its documented schema. It writes `summary.json` (per key: requests, failures, seconds) and exits
non-zero when any check failed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.datasets.samples import write_sample
from tests.platform.services import BIN, fitcycle, free_port, start, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Per operation and key: enough that every operation sees its boundary values (the coverage phase) and some
# random ones, within about a minute per key on two cores.
MAX_EXAMPLES = int(os.environ.get("FITCYCLE_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("FITCYCLE_FUZZ_SEED", "20240622")
HOOK_HOST = "127.0.0.1:9"
TINY_JOB = {
    "kind": "fine_tune",
    "arch": "resnet18",
    "pretrained": "none",
    "size": 32,
    "bs": 8,
    "freeze_epochs": 0,
    "epochs": 1,
    "augment": False,
}


def seed(base: str, key: str, workdir: Path) -> dict[str, Any]:
    """One of everything a path names; returns {path parameter name: a real value}."""
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = write_sample("fashion-mnist", workdir / "sample", per_class=12, size=32, classes=["bag", "sneaker"])
    archive = Path(shutil.make_archive(str(workdir / "sample"), "zip", folder))
    with archive.open("rb") as f:
        res = http.post("/datasets", data={"name": "fuzz"}, files={"archive": ("sample.zip", f)})
    assert res.status_code == 201, res.text
    dataset = res.json()
    res = http.post("/jobs", json={**TINY_JOB, "dataset_id": dataset["id"]})
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    job = wait_for(
        lambda: (j := http.get(f"/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j, 300, "the job"
    )
    assert job["state"] == "succeeded", job
    image = folder / "bag" / "0000.png"
    res = http.post(f"/models/{job['model_id']}/predict", files={"file": ("bag.png", image.read_bytes())})
    assert res.status_code == 200, res.text
    prediction_id = res.json()["prediction_id"]
    assert http.post(f"/predictions/{prediction_id}/feedback", json={"label": "bag"}).status_code == 201
    res = http.post("/webhooks", json={"url": f"http://{HOOK_HOST}/hook", "events": ["job.failed"], "secret": "s" * 16})
    assert res.status_code == 201, res.text
    artifacts = http.get(f"/jobs/{job_id}/artifacts").json()["data"]
    items = http.get(f"/datasets/{dataset['id']}/items").json()["data"]
    return {
        "dataset_id": dataset["id"],
        "version": 1,
        "key": items[0]["key"],
        "job_id": job_id,
        "name": artifacts[0]["name"],  # an artifact's; the registry's name below, by operation
        "registry_name": dataset["name"],
        "model_id": job["model_id"],
        "prediction_id": prediction_id,
        "webhook_id": res.json()["id"],
    }


def fuzz(url: str, key: str | None, ids: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """One Schemathesis run over every operation with this key (None: no Authorization header)."""
    command = [
        str(BIN / "schemathesis"),
        "run",
        url,
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "2",
        "--no-shrink",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        os.environ.get("FITCYCLE_FUZZ_REPORT", "junit"),
        "--report-dir",
        str(workdir / f"report-{label}"),
    ]
    if key is not None:
        command += ["--header", f"Authorization: Bearer {key}"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.api.fuzz_hooks",
        "FITCYCLE_FUZZ_IDS": json.dumps(ids),
        "COLUMNS": "160",
    }
    start_time = time.monotonic()
    res = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start_time
    out = res.stdout + res.stderr
    (workdir / f"schemathesis-{label}.txt").write_text(out)
    generated = re.search(r"Test cases:\s*(\d+) generated", out)
    return {
        "key": label,
        "exit": res.returncode,
        "requests": int(generated.group(1)) if generated else None,
        "seconds": round(seconds, 1),
        "output": out[-20000:],
    }


def main(workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")},  # the embedded default, as shipped
        "PYTHONUNBUFFERED": "1",
        "FITCYCLE_DATA_DIR": str(workdir / "data"),
        "FITCYCLE_REQUESTS_PER_MINUTE": "1000000",  # the fuzzing is one tenant; its 429s are not what is tested
        "FITCYCLE_LOOP_INTERVAL_SECONDS": "0",  # no fleet loop: a policy the fuzzing sets retrains nothing
        "FITCYCLE_REPORT_EVERY_N_BATCHES": "1",
        "FITCYCLE_URL_FETCH_ALLOW_HOSTS": json.dumps([HOOK_HOST]),  # the seeded webhook's: nothing listens there
    }
    fitcycle("db", "upgrade", env=env)

    def key(project: str, *extra: str) -> str:
        return fitcycle("keys", "create", "--project", project, *extra, env=env).strip().splitlines()[-1]

    # A project for each key, seeded alike: what one run deletes (its DELETEs come last) the next still has.
    admin, member_admin, member = key("fuzz-admin"), key("fuzz-member"), key("fuzz-member", "--member")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    api = start("api", ["serve", "--no-worker", "--port", str(port)], env, workdir)
    worker = start("worker", ["worker"], env, workdir)
    results: list[dict[str, Any]] = []
    try:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 120, "the API to answer /health")
        began = time.monotonic()
        ids = {"admin": seed(base, admin, workdir / "admin"), "member": seed(base, member_admin, workdir / "member")}
        seeded = time.monotonic() - began
        worker.stop()
        for label, used, seeds in (("admin", admin, "admin"), ("member", member, "member"), ("none", None, "admin")):
            results.append(fuzz(f"{base}/openapi.json", used, ids[seeds], workdir, label))
    except BaseException:
        print(f"--- api ---\n{api.tail()}\n--- worker ---\n{worker.tail()}", file=sys.stderr)
        raise
    finally:
        worker.stop()
        api.stop()
    (workdir / "api.log").write_text(api.tail(200_000))
    summary = {"seed_seconds": round(seeded, 1), "max_examples": MAX_EXAMPLES, "runs": results}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    for r in results:
        print(f"{r['key']}: exit {r['exit']}, {r['requests']} requests, {r['seconds']} s")
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
