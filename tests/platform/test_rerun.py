"""The same weights again (issue 27, part 4), over the stack: the same seeded job queued twice trains bit-identical
weights (its draws come from its spec, not its id); every job records what made them; POST /jobs/{id}/rerun queues
it again and its page says whether the weights are identical, and if not, which recorded fact differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.platform.services import fitcycle
from tests.platform.stack import Stack

SPEC: dict[str, Any] = {
    "kind": "fine_tune",
    "arch": "resnet18",
    "pretrained": "none",  # a body from random init, whose draws all come from the job's seeds
    "size": 32,
    "bs": 16,
    "freeze_epochs": 0,
    "epochs": 2,
    "lr": 3e-3,
    "seed": 0,
}


def test_same_job_same_weights_and_rerun_says_what_differs(stack: Stack, fashion_zip: Path) -> None:
    c, _ = stack.new_project("rerun")
    ds = c.upload("rerun", fashion_zip).json()
    first = c.wait(c.submit(dataset_id=ds["id"], **SPEC)["id"])
    second = c.wait(c.submit(dataset_id=ds["id"], **SPEC)["id"])
    assert first["state"] == second["state"] == "succeeded", (first["error"], second["error"])
    # Two jobs of one spec, as a user queues them: the same weights, the same accuracy.
    assert first["result"]["weights_sha256"] == second["result"]["weights_sha256"]
    assert first["result"]["accuracy"] == second["result"]["accuracy"]

    facts = first["result"]["provenance"]
    assert facts["spec"]["seed"] == 0 and facts["seeds"]["data_seed"] == first["spec"]["data_seed"]
    assert facts["dataset"]["version_id"] == first["dataset_version_id"] and len(facts["dataset"]["sha256"]) == 64
    assert facts["versions"]["torch"] and facts["device"]["type"] == "cpu" and facts["device"]["threads"] >= 1
    assert facts["precision"] in ("bf16", "fp32") and facts["deterministic"] is False
    assert "commit" in facts["code"] and facts["code"]["package"]
    assert "data" not in facts["spec"]  # a worker's local paths are no fact of the job

    # A rerun: the same job again, and its page says so.
    res = c.post(f"/jobs/{first['id']}/rerun")
    assert res.status_code == 202, res.text
    again = c.wait(res.json()["id"])
    assert again["state"] == "succeeded", again["error"]
    assert again["rerun"]["of"] == first["id"]
    assert again["rerun"]["identical"] is True, again["rerun"]
    assert again["rerun"]["differences"] == []

    # A rerun with another seed (through the CLI): other weights, and the seed is named as what differs.
    env = {**stack.env, "FITCYCLE_URL": c.base.removesuffix("/api/v1"), "FITCYCLE_KEY": c.key}
    out = fitcycle("jobs", "rerun", first["id"][:8], "--seed", "1", "--deterministic", "--watch", env=env, timeout=300)
    changed_id = out.strip().splitlines()[0]
    changed = c.get(f"/jobs/{changed_id}").json()
    assert changed["state"] == "succeeded", changed["error"]
    assert changed["rerun"]["identical"] is False
    facts_differing = {d["fact"]: (d["before"], d["after"]) for d in changed["rerun"]["differences"]}
    assert facts_differing["spec.seed"] == (0, 1) and facts_differing["seeds.seed"] == (0, 1)
    assert facts_differing["deterministic"] == (False, True)
    assert "seeds.data_seed" in facts_differing
    assert "spec.seed" in out and "the weights differ" in out

    # What cannot be rerun says why.
    running = c.submit(dataset_id=ds["id"], **SPEC)
    res = c.post(f"/jobs/{running['id']}/rerun", json={"seed": 2})
    assert res.status_code in (202, 409), res.text  # 202 only when it finished in between
    if res.status_code == 409:
        assert "rerun it once it has ended" in res.json()["detail"]
    assert c.post(f"/jobs/{first['id']}/rerun", json={"epochs": 9}).status_code == 422  # only seed, deterministic
    assert c.post(f"/jobs/{first['id']}/rerun", json={"queue": "nowhere"}).status_code == 422
    c.wait(running["id"])
