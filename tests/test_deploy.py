"""The deploy files ship no passwords, publish no admin console and run nothing as root."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_takes_every_secret_from_the_environment_without_a_default() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env = compose["x-fitcycle-env"]
    assert re.search(r":\$\{FITCYCLE_DB_PASSWORD:\?[^}]*\}@", env["FITCYCLE_DATABASE_URL"])
    assert env["FITCYCLE_S3_SECRET_KEY"].startswith("${FITCYCLE_S3_SECRET_KEY:?")
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${FITCYCLE_DB_PASSWORD:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${FITCYCLE_S3_SECRET_KEY:?")
    assert "ports" not in services["minio"] and "--console-address" not in services["minio"]["command"]
    assert [s for s, spec in services.items() if "ports" in spec] == ["api"]


def test_images_and_pods_run_unprivileged() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "fitcycle.yaml").read_text()):
        pod = doc["spec"]["template"]["spec"] if doc["kind"] in ("Job", "Deployment") else None
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
