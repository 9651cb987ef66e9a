"""The CLI's client verbs against the running stack, as a user sees them: tables (and --json), a watched job
whose bar ends at 100% with the loss on it, every batch reported when epochs are short, cancel and delete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.platform.services import BIN
from tests.platform.stack import ImageServer, Stack


def run(stack: Stack, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "FITCYCLE_URL": stack.a.base.removesuffix("/api/v1"), "FITCYCLE_KEY": key}
    return subprocess.run([str(BIN / "fitcycle"), *args], env=env, capture_output=True, text=True, timeout=600)


def test_lists_are_tables_and_a_watched_job_reaches_100_percent(
    stack: Stack, fashion_zip: Path, image_server: ImageServer
) -> None:
    client, _ = stack.new_project("cli-user")
    up = run(stack, client.key, "datasets", "upload", "fashion", str(fashion_zip))
    assert up.returncode == 0, up.stderr
    ds = json.loads(up.stdout)

    listing = run(stack, client.key, "datasets", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "VERSION", "ITEMS", "CLASSES", "CREATED"]
    assert listing[1].split()[:5] == [ds["id"], "fashion", "1", "120", "4"]
    assert json.loads(run(stack, client.key, "datasets", "list", "--json").stdout)[0]["id"] == ds["id"]

    # 96 training images in batches of 16: 6 batches an epoch, under ten, so every batch is reported.
    watched = run(
        stack,
        client.key,
        "jobs",
        "submit",
        "stage1",
        "--dataset",
        ds["id"],
        "--watch",
        "--set",
        "arch=resnet18",
        "--set",
        "pretrained=none",
        "--set",
        "size=32",
        "--set",
        "bs=16",
        "--set",
        "epochs=2",
    )
    assert watched.returncode == 0, watched.stderr
    job_id = watched.stdout.splitlines()[0]
    bar_lines = [line for line in watched.stderr.replace("\r", "\n").splitlines() if line.startswith("stage1")]
    assert any("100%" in line and "12/12" in line and "loss=" in line for line in bar_lines), watched.stderr
    assert "stage1 epoch 1: train_loss=" in watched.stderr and "stage1 epoch 2: train_loss=" in watched.stderr
    assert "gate: promoted as fashion v1: the first model of the name" in watched.stderr
    batches = client.get(f"/jobs/{job_id}/metrics").json()["batches"]
    assert [b["iter"] for b in batches] == list(range(12))

    # A finished job watched again, by the 8 characters the web UI shows: its epoch lines, no replayed bar.
    again = run(stack, client.key, "jobs", "watch", job_id[:8])
    assert again.returncode == 0, again.stderr
    assert "stage1 epoch 2: train_loss=" in again.stderr and "batch/s" not in again.stderr, again.stderr
    assert json.loads(again.stdout)["id"] == job_id  # stdout stays JSON for scripts
    missing = run(stack, client.key, "jobs", "show", "ffffffff")
    assert missing.returncode == 2 and "no job in this project has an id starting with 'ffffffff'" in missing.stderr

    jobs = run(stack, client.key, "jobs", "list").stdout.splitlines()
    assert jobs[0].split() == ["ID", "KIND", "STATE", "PROGRESS", "METRIC", "CREATED"]
    assert jobs[1].split()[:3] == [job_id, "stage1", "succeeded"] and "error_rate=" in jobs[1]
    models = run(stack, client.key, "models", "list").stdout.splitlines()
    assert models[0].split() == ["ID", "ARCH", "TASK", "METRIC", "JOB", "CREATED"]
    assert "resnet18" in models[1] and "classification" in models[1] and job_id in models[1]

    cancel = run(stack, client.key, "jobs", "cancel", job_id)
    assert cancel.returncode == 2 and "nothing to cancel" in cancel.stderr
    model_id = models[1].split()[0]
    bundle = fashion_zip.parent / f"bundle-{model_id}"
    got = run(stack, client.key, "models", "download", model_id[:8], "--out", str(bundle))
    assert got.returncode == 0 and got.stdout.startswith(str(bundle)), got.stderr
    assert {p.name for p in bundle.iterdir()} >= {"manifest.json", "weights.safetensors"}

    # Predictions kept, then deleted (one, then all before now); a retention set and switched off again.
    image = next(fashion_zip.parent.rglob("*.png"))  # one of the zip's own pictures
    for _ in range(2):
        assert run(stack, client.key, "models", "predict", model_id, str(image)).returncode == 0
    listed = json.loads(run(stack, client.key, "predictions", "list", "--json").stdout)
    assert len(listed) == 2
    one = run(stack, client.key, "predictions", "delete", listed[0]["id"])
    assert one.returncode == 0 and one.stdout.startswith(f"deleted prediction {listed[0]['id']}"), one.stderr
    rest = run(stack, client.key, "predictions", "delete", "--older-than-days", "0")
    assert rest.returncode == 0 and rest.stdout.startswith("deleted 1 predictions made before"), rest.stderr
    assert json.loads(run(stack, client.key, "predictions", "list", "--json").stdout) == []
    kept = run(stack, client.key, "project", "set", "--input-retention-days", "30")
    assert json.loads(kept.stdout)["settings"]["input_retention_days"] == 30, kept.stderr
    off = run(stack, client.key, "project", "set", "--input-retention-days", "off")
    assert json.loads(off.stdout)["settings"]["input_retention_days"] is None, off.stderr
    bad = run(stack, client.key, "project", "set", "--input-retention-days", "soon")
    assert bad.returncode == 2 and "a whole number of days, or off" in bad.stderr

    # A webhook made, disabled and deleted from the CLI (the URL must be one the SSRF guard lets through).
    made = run(
        stack,
        client.key,
        "webhooks",
        "create",
        f"{image_server.base}/hook",
        "--event",
        "job.failed",
        "--secret",
        "a-secret-of-sixteen-chars",
    )
    assert made.returncode == 0, made.stderr
    hook_id = json.loads(made.stdout)["id"]
    assert run(stack, client.key, "webhooks", "list").stdout.splitlines()[1].split()[:3] == [
        hook_id,
        "on",
        "job.failed",
    ]
    assert json.loads(run(stack, client.key, "webhooks", "disable", hook_id).stdout)["active"] is False
    assert run(stack, client.key, "webhooks", "list").stdout.splitlines()[1].split()[1] == "off"
    assert run(stack, client.key, "webhooks", "deliveries", hook_id).stdout.split() == [
        "ID",
        "EVENT",
        "STATE",
        "TRIES",
        "LAST",
        "ERROR",
    ]
    private = run(
        stack, client.key, "webhooks", "create", "http://10.0.0.1/x", "--event", "job.failed", "--secret", "s" * 16
    )
    assert private.returncode == 2 and "not a public address" in private.stderr, private.stderr
    assert run(stack, client.key, "webhooks", "delete", hook_id).returncode == 0

    gone = run(stack, client.key, "models", "delete", model_id)
    assert gone.returncode == 0 and gone.stdout.startswith(f"deleted model {model_id}"), gone.stderr
