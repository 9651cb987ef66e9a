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


def test_prometheus_scrapes_the_ports_the_services_serve_and_alerts_on_metrics_that_exist() -> None:
    from api.metrics import HTTP_REQUESTS, PREDICT_SECONDS
    from worker.metrics import HEARTBEAT, JOBS_DONE

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    worker_port = compose["services"]["worker"]["environment"]["FITCYCLE_WORKER_METRICS_PORT"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape["scrape_configs"]}
    assert targets == {"fitcycle-api": ["api:8000"], "fitcycle-worker": [f"worker:{worker_port}"]}
    k8s = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "fitcycle.yaml").read_text())}
    container = k8s["fitcycle-worker"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FITCYCLE_WORKER_METRICS_PORT"] == str(container["ports"][0]["containerPort"]) == worker_port
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exposed = {"fitcycle_queue_depth", "fitcycle_jobs"}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    for metric in (HTTP_REQUESTS, PREDICT_SECONDS, HEARTBEAT, JOBS_DONE):
        exposed |= {f.name + s for f in metric.collect() for s in suffixes[f.type]}
    for rule in rules:
        used = set(re.findall(r"fitcycle_\w+", rule["expr"]))
        assert used <= exposed, (rule["alert"], used - exposed)
