"""The deploy files ship no passwords, publish nothing but the API (and Flower on 127.0.0.1), run nothing as root,
and say only what the code does: settings it has, commands it runs, routes and ports it serves, metrics it
exposes. The Kubernetes manifests are checked against the API's schemas (kubernetes-validate, offline).

And least privilege: the metrics answer on a port of their own that nothing publishes (the API's port answers
404 there), NetworkPolicies let only fitcycle's pods reach PostgreSQL, Redis and MinIO, the API believes forwarded
headers from the configured proxies only (so its session cookie stays Secure behind TLS), the root credentials
reach the init steps only (their scripts run here against a real PostgreSQL and a stand-in `mc`), every image is
pinned, and the API docs carry a CSP and frame headers that a real browser enforces while the docs still work."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import time
import tomllib
import uuid
from http.cookies import SimpleCookie
from importlib.metadata import entry_points, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pytest
import yaml

from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30"  # the Kubernetes API the manifests are written for
KEDA = "keda.sh/v1alpha1"

Doc = dict[str, Any]


def compose() -> Doc:
    loaded: Doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def k8s_docs() -> list[Doc]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "fitcycle.yaml").read_text()) if d]


def k8s_named(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def containers(doc: Doc) -> list[Doc]:
    pod: Doc = doc["spec"]["template"]["spec"]
    found: list[Doc] = pod["containers"]
    return found


def env_entries(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def env_values(container: Doc) -> dict[str, str | None]:
    return {name: e.get("value") for name, e in env_entries(container).items()}


def gpu_worker() -> Doc:
    """The one Deployment whose pods ask for a GPU."""
    gpu = [
        d
        for d in k8s_named("Deployment").values()
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in containers(d))
    ]
    assert len(gpu) == 1, [d["metadata"]["name"] for d in gpu]
    return gpu[0]


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD\s+(\[.*\])\s*$", (DEPLOY / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD"
    cmd: list[str] = json.loads(match.group(1))
    return cmd


def interpolated(value: str) -> str:
    """A compose value with ${VAR:-default} replaced by its default and ${VAR:?message} by a placeholder."""
    return re.sub(
        r"\$\{\w+(?::([-?])([^}]*))?\}", lambda m: m.group(2) if m.group(1) == "-" else "placeholder-secret", value
    )


def exposed_samples(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every sample name the API and the worker expose: each metric their modules register, and what the
    API's PlatformCollector yields (run against a stand-in database and broker)."""
    from prometheus_client.metrics import MetricWrapperBase

    import api.metrics
    import worker.metrics

    families = [
        family
        for module in (api.metrics, worker.metrics)
        for metric in vars(module).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.collect()
    ]
    monkeypatch.setattr(api.metrics, "session_scope", lambda sessions: contextlib.nullcontext(None))
    monkeypatch.setattr(api.metrics.repos, "job_counts", lambda session: [("queued", "train", 1)])
    monkeypatch.setattr(api.metrics, "queue_depth", lambda celery, queue: 0)
    monkeypatch.setattr(api.metrics.repos, "drift_states", lambda session, **kw: [])
    state = SimpleNamespace(sessions=None, settings=Settings(), celery=None)
    platform = list(api.metrics.PlatformCollector(state).collect())
    assert {f.name for f in platform} == {
        "fitcycle_jobs",
        "fitcycle_queue_depth",
        "fitcycle_drift_score",
        "fitcycle_drift_alarm",
    }
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {f.name + s for f in [*families, *platform] for s in suffixes[f.type]}


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $__ variables stand for a duration)."""
    parsed = promql_parser.parse(re.sub(r"\$__\w+", "5m", expr))
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or "{__name__ matcher}")  # a selector without a plain name: not checkable

    promql_parser.walk(parsed, visit)
    return names


def port_number(container: Doc, port: int | str) -> int:
    """A probe's port, named or numbered, as one of the container's containerPorts."""
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    number = named.get(port) if isinstance(port, str) else port
    assert number in {p["containerPort"] for p in container.get("ports", [])}, (container["name"], port)
    assert isinstance(number, int)
    return number


def parses_as_cli(argv: list[str]) -> Any:
    """argv as the `fitcycle` console script parses it (argparse exits on an unknown verb or option)."""
    from cli.main import build_parser

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"not a fitcycle command: {argv}")


def check_command(argv: list[str]) -> None:
    """A command our image runs: the fitcycle CLI, or Celery's with a subcommand a package installs."""
    if argv[0] == "fitcycle":
        parses_as_cli(argv)
        return
    assert argv[0] == "celery", argv
    assert [e.name for e in entry_points(group="console_scripts", name="celery")] == ["celery"]
    sub = argv[1]
    assert sub in {e.name for e in entry_points(group="celery.commands")}, f"no celery subcommand {sub!r} installed"
    if sub == "flower":
        from flower.options import options as flower_options

        for arg in argv[2:]:
            assert arg.startswith("--") and arg[2:].split("=", 1)[0] in flower_options, arg


# --- compose -------------------------------------------------------------------------------------------------


def test_compose_takes_every_secret_from_the_environment_without_a_default() -> None:
    spec = compose()
    env = spec["x-fitcycle-env"]
    assert re.search(r":\$\{FITCYCLE_DB_PASSWORD:\?[^}]*\}@", env["FITCYCLE_DATABASE_URL"])
    assert env["FITCYCLE_S3_SECRET_KEY"].startswith("${FITCYCLE_S3_SECRET_KEY:?")
    services = spec["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${FITCYCLE_DB_ROOT_PASSWORD:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${FITCYCLE_S3_ROOT_PASSWORD:?")
    migrate_url = services["migrate"]["environment"]["FITCYCLE_DATABASE_URL"]
    assert re.search(r":\$\{FITCYCLE_DB_MIGRATE_PASSWORD:\?[^}]*\}@", migrate_url)
    for name in ("db-init", "s3-init"):
        for key, value in services[name]["environment"].items():
            if "PASSWORD" in key or "SECRET" in key:
                assert re.fullmatch(r"\$\{FITCYCLE_\w+:\?[^}]*\}", value), (name, key)
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FITCYCLE_FLOWER_AUTH:?")
    assert "--console-address" not in services["minio"]["command"]


def test_compose_publishes_the_api_where_asked_and_flower_on_127_0_0_1_only() -> None:
    """The rule: the API is published on the address FITCYCLE_API_BIND names (127.0.0.1 by default); any other
    published port (Flower, behind basic auth) binds the literal 127.0.0.1; the data services publish nothing."""
    services = compose()["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    assert set(published) == {"api", "flower"}
    assert published["api"] == ["${FITCYCLE_API_BIND:-127.0.0.1}:8000:8000"]
    for name, ports in published.items():
        if name != "api":
            assert all(p.startswith("127.0.0.1:") and "$" not in p for p in ports), (name, ports)


def test_compose_runs_flower_against_the_broker_from_the_image_that_installs_it() -> None:
    from celery import Celery

    services = compose()["services"]
    service = services["flower"]
    assert service["build"] == services["api"]["build"] == services["worker"]["build"]
    assert service["command"][:2] == ["celery", "flower"]
    check_command(service["command"])
    # The broker: the one the API and the workers use, handed over as CELERY_BROKER_URL, which Celery reads.
    broker = service["environment"]["CELERY_BROKER_URL"]
    assert broker == compose()["x-fitcycle-env"]["FITCYCLE_BROKER_URL"] and broker.startswith("redis://")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELERY_BROKER_URL", interpolated(broker))
        assert Celery(set_as_current=False).conf.broker_url == interpolated(broker)
    # Flower reads FLOWER_<option> from its environment: basic_auth must be one of its options.
    from flower.options import options as flower_options

    assert all(
        k.startswith("FLOWER_") and k[7:].lower() in flower_options
        for k in service["environment"]
        if k != "CELERY_BROKER_URL"
    )
    # The healthcheck asks a path Flower serves (without auth).
    import flower.urls

    paths = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in flower.urls.handlers]
    assert "/healthcheck" in paths and "/healthcheck" in " ".join(service["healthcheck"]["test"])
    # The image installs the `ops` extra, which pins the Flower the tests check (the dev extra's).
    assert re.search(r'pip install [^\n]*-e "\.\[ops\]"', (DEPLOY / "Dockerfile").read_text())
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ops"] == ["flower==2.2.0"] and "flower==2.2.0" in extras["dev"]
    assert version("flower") == "2.2.0"


def test_compose_sets_only_settings_that_exist_and_runs_commands_that_exist() -> None:
    spec = compose()
    fields = Settings.model_fields
    environments = [spec["x-fitcycle-env"], *(s.get("environment", {}) for s in spec["services"].values())]
    fitcycle_env = {k: v for env in environments for k, v in env.items() if k.startswith("FITCYCLE_")}
    assert fitcycle_env, "compose sets no FITCYCLE_ variable"
    unknown = {k for k in fitcycle_env if k.removeprefix("FITCYCLE_").lower() not in fields}
    assert not unknown, f"not fields of core.config.Settings: {unknown}"
    values = {k.removeprefix("FITCYCLE_").lower(): interpolated(str(v)) for k, v in fitcycle_env.items()}
    Settings.model_validate(values)  # and every value is one Settings accepts
    ours = {name: s for name, s in spec["services"].items() if "build" in s}
    assert set(ours) == {"migrate", "api", "worker", "flower"}
    for service in ours.values():
        check_command(service.get("command", dockerfile_cmd()))


# --- Kubernetes --------------------------------------------------------------------------------------------------


def test_images_and_pods_run_unprivileged() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for doc in k8s_docs():
        pod = doc["spec"]["template"]["spec"] if doc["kind"] in ("Job", "Deployment") else None
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]


def test_k8s_manifests_validate_against_the_kubernetes_api_schemas() -> None:
    docs = k8s_docs()
    checked = []
    for doc in docs:
        if doc["apiVersion"] == KEDA:  # a CRD: no schema bundled; checked structurally below
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked.append(doc["kind"])
    api, workers, flower = (
        ["Deployment", "Service", "PodDisruptionBudget"],
        ["Deployment", "PodDisruptionBudget"],
        ["Deployment", "Service"],
    )
    policies = ["NetworkPolicy"] * 5  # postgres, redis, minio; the API's and the workers' metrics ports
    assert sorted(checked) == sorted(["ConfigMap", "Job", *api, *workers, *flower, *policies])
    # The validator does refuse a wrong manifest (strict: unknown fields too), so a pass means something.
    broken = copy.deepcopy(k8s_named("Deployment")["fitcycle-api"])
    containers(broken)[0]["readinessProbe"]["httpGet"]["paht"] = "/api/v1/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_k8s_sets_only_settings_that_exist_and_runs_commands_that_exist() -> None:
    for doc in [*k8s_named("Deployment").values(), *k8s_named("Job").values()]:
        for container in containers(doc):
            unknown = {
                n
                for n in env_entries(container)
                if n.startswith("FITCYCLE_") and n[9:].lower() not in Settings.model_fields
            }
            assert not unknown, (doc["metadata"]["name"], unknown)
            check_command(container.get("command", dockerfile_cmd()))


def test_the_gpu_worker_runs_one_job_at_a_time_on_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GPU per pod, and one job per pod: `fitcycle worker` (it has no concurrency option) always starts
    Celery with --concurrency=1 and prefetch 1 — run its real code path up to Celery's argv to see it."""
    import worker.app
    from cli.platform import cmd_worker

    container = containers(gpu_worker())[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    argv = container["command"]
    args = parses_as_cli(argv)
    assert args.verb == "worker" and args.pool == "solo"

    celery_argv: list[str] = []
    fake_celery = SimpleNamespace(worker_main=celery_argv.extend)
    # Stand-ins for what needs a database, a port or threads (any signature: only Celery's argv matters here).
    monkeypatch.setattr(worker.app, "_quiet_start_up", lambda *a, **kw: None)
    monkeypatch.setattr(worker.app, "build_worker", lambda settings, *a, **kw: (fake_celery, SimpleNamespace()))
    monkeypatch.setattr(worker.app, "serve_metrics", lambda *a, **kw: None)
    monkeypatch.setattr(worker.app, "start_reaper", lambda *a, **kw: None)
    assert cmd_worker(args) == 0
    assert {"--concurrency=1", "--prefetch-multiplier=1", "--pool=solo"} <= set(celery_argv), celery_argv
    assert f"--queues={Settings.model_fields['default_queue'].default}" in celery_argv


def test_probes_ask_routes_and_ports_that_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from wsgiref.util import setup_testing_defaults

    from prometheus_client import make_wsgi_app

    import worker.metrics
    from api.guard import OPEN_PATHS
    from api.main import API_PREFIX, create_app

    app = create_app(Settings(data_dir=tmp_path))
    # GET paths: the OpenAPI document's (routers included under the prefix) and the app's own routes.
    get_paths = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    get_paths |= {getattr(r, "path", "") for r in app.routes if "GET" in (getattr(r, "methods", None) or set())}
    api = containers(k8s_named("Deployment")["fitcycle-api"])[0]
    # Readiness: GET /api/v1/health, which answers without a key (the Guard lets it through) and says 503
    # when a dependency is down.
    ready = api["readinessProbe"]["httpGet"]
    assert ready["path"] == f"{API_PREFIX}/health" and ready["path"] in get_paths
    assert ready["path"].removeprefix(API_PREFIX) in OPEN_PATHS
    # Liveness: GET /api/v1/live, which asks no dependency (never /health: a database outage would restart every
    # replica) and no key.
    live = api["livenessProbe"]["httpGet"]
    assert live["path"] == f"{API_PREFIX}/live" and live["path"] in get_paths
    assert live["path"].removeprefix(API_PREFIX) in OPEN_PATHS
    serve = parses_as_cli(api["command"])
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        action = probe.get("httpGet") or probe["tcpSocket"]
        assert port_number(api, action["port"]) == serve.port
    # The Service sends traffic to that port too.
    service = k8s_named("Service")["fitcycle-api"]
    assert all(port_number(api, p["targetPort"]) == serve.port for p in service["spec"]["ports"])

    # The worker: /metrics on FITCYCLE_WORKER_METRICS_PORT, which serve_metrics hands to prometheus_client.
    container = containers(gpu_worker())[0]
    metrics_port = int(env_values(container)["FITCYCLE_WORKER_METRICS_PORT"] or 0)
    assert worker.metrics.start_http_server.__module__ == "prometheus_client.exposition"
    started: list[int] = []
    monkeypatch.setattr(worker.metrics, "start_http_server", started.append)
    worker.metrics.serve_metrics(metrics_port)
    assert started == [metrics_port]
    statuses: list[str] = []
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert port_number(container, probe["httpGet"]["port"]) == metrics_port
        environ: dict[str, Any] = {"PATH_INFO": probe["httpGet"]["path"]}
        setup_testing_defaults(environ)
        body = b"".join(make_wsgi_app()(environ, lambda status, headers: statuses.append(status)))
        assert statuses[-1].startswith("200") and b"fitcycle_worker_heartbeat_timestamp_seconds" in body


def test_k8s_runs_flower_against_the_workers_redis_behind_auth_and_inside_the_cluster() -> None:
    import flower.urls
    from flower.options import options as flower_options

    (container,) = containers(k8s_named("Deployment")["fitcycle-flower"])
    api, worker = containers(k8s_named("Deployment")["fitcycle-api"])[0], containers(gpu_worker())[0]
    # The image that installs the `ops` extra (the API's, as in compose), and Celery's own flower command.
    assert container["image"] == api["image"] and container["command"][:2] == ["celery", "flower"]
    check_command(container["command"])
    # The broker: built from the same address and password Secret as the workers' FITCYCLE_BROKER_URL.
    env, worker_env = env_entries(container), env_entries(worker)
    assert env["CELERY_BROKER_URL"]["value"] == worker_env["FITCYCLE_BROKER_URL"]["value"]
    for name in ("REDIS_ADDRESS", "REDIS_PASSWORD"):
        assert env[name] == worker_env[name]
    # Basic auth from a Secret, never a literal; every FLOWER_ variable is an option Flower reads.
    assert env["FLOWER_BASIC_AUTH"] == {
        "name": "FLOWER_BASIC_AUTH",
        "valueFrom": {"secretKeyRef": {"name": "fitcycle-flower", "key": "auth"}},
    }
    assert all(n[7:].lower() in flower_options for n in env if n.startswith("FLOWER_"))
    # Probes ask a path Flower serves without auth, on the port it listens on.
    paths = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in flower.urls.handlers]
    port = int(next(a for a in container["command"] if a.startswith("--port=")).split("=")[1])
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/healthcheck" and "/healthcheck" in paths
        assert port_number(container, probe["httpGet"]["port"]) == port
    # Reachable inside the cluster only (port-forward): a ClusterIP Service, and no Ingress in the manifest.
    service = k8s_named("Service")["fitcycle-flower"]
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == {"app": "fitcycle-flower"}
    assert all(port_number(container, p["targetPort"]) == port for p in service["spec"]["ports"])
    assert not [d for d in k8s_docs() if d["kind"] == "Ingress"]


def test_pod_disruption_budgets_cover_the_api_and_the_gpu_workers() -> None:
    deployments = k8s_named("Deployment")
    pdbs = k8s_named("PodDisruptionBudget")
    covered = {}
    for pdb in pdbs.values():
        selected = [
            name
            for name, d in deployments.items()
            if pdb["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, (pdb["metadata"]["name"], selected)
        covered[selected[0]] = pdb["spec"]
    assert set(covered) == {"fitcycle-api", gpu_worker()["metadata"]["name"]}
    assert 1 <= covered["fitcycle-api"]["minAvailable"] < deployments["fitcycle-api"]["spec"]["replicas"]
    assert covered[gpu_worker()["metadata"]["name"]] == {
        "maxUnavailable": 1,
        "selector": gpu_worker()["spec"]["selector"],
    }


def test_keda_scales_the_gpu_workers_on_their_queue_in_the_redis_they_use() -> None:
    """KEDA's CRDs are not in the bundled schemas: their shape, and that they agree with the worker's."""
    scaled = [d for d in k8s_docs() if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1 and scaled[0]["apiVersion"] == KEDA
    spec = scaled[0]["spec"]
    worker = gpu_worker()
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert "replicas" not in worker["spec"], "KEDA owns the replica count: an apply would reset it"
    assert spec["minReplicaCount"] in (0, 1) and spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])
    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["redis"]
    meta = triggers[0]["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    assert int(meta["listLength"]) >= 1

    # The list is the queue the worker consumes: Settings.default_queue, named by its --queues.
    container = containers(worker)[0]
    queue = Settings.model_fields["default_queue"].default
    assert meta["listName"] == queue == parses_as_cli(container["command"]).queues

    # The Redis is the worker's: the address KEDA reads from the container's env is the broker URL's host:port,
    # a full cluster DNS name (KEDA's operator runs in its own namespace), and the database index is the URL's.
    entries, values = env_entries(container), env_values(container)
    raw = values["FITCYCLE_BROKER_URL"]
    assert raw is not None
    order = list(entries)
    for ref in re.findall(r"\$\((\w+)\)", raw):  # Kubernetes expands $(VAR) from variables defined before it
        assert ref in order and order.index(ref) < order.index("FITCYCLE_BROKER_URL"), ref
    address = values[meta["addressFromEnv"]] if "addressFromEnv" in meta else meta["address"]
    assert address is not None and address.split(":")[0].endswith(".svc.cluster.local")
    url = urlsplit(re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)] or "secret", raw))
    assert url.scheme == "redis" and f"{url.hostname}:{url.port}" == address
    assert url.path == f"/{meta.get('databaseIndex', '0')}"

    # The URL carries a password: KEDA gets the same Secret key through a TriggerAuthentication.
    password = urlsplit(raw).password
    assert password is not None
    ref = re.fullmatch(r"\$\((\w+)\)", password)
    assert ref, "the broker password comes from a Secret, not the manifest"
    secret = entries[ref.group(1)]["valueFrom"]["secretKeyRef"]
    auths = k8s_named("TriggerAuthentication")
    auth = auths[triggers[0]["authenticationRef"]["name"]]
    assert auth["apiVersion"] == KEDA
    assert {"parameter": "password", "name": secret["name"], "key": secret["key"]} in auth["spec"]["secretTargetRef"]

    # The API enqueues on the same broker, built the same way.
    api = containers(k8s_named("Deployment")["fitcycle-api"])[0]
    for name in ("REDIS_ADDRESS", ref.group(1), "FITCYCLE_BROKER_URL"):
        assert env_entries(api)[name] == entries[name], name


# --- Prometheus and Grafana ------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_ports_the_services_serve_and_alerts_on_metrics_that_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker_port = compose()["services"]["worker"]["environment"]["FITCYCLE_WORKER_METRICS_PORT"]
    api_port = compose()["services"]["api"]["environment"]["FITCYCLE_METRICS_PORT"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape["scrape_configs"]}
    assert targets == {"fitcycle-api": [f"api:{api_port}"], "fitcycle-worker": [f"worker:{worker_port}"]}
    container = containers(k8s_named("Deployment")["fitcycle-worker"])[0]
    env = env_values(container)
    assert env["FITCYCLE_WORKER_METRICS_PORT"] == str(container["ports"][0]["containerPort"]) == worker_port
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exposed = exposed_samples(monkeypatch)
    for rule in rules:
        used = metrics_in(rule["expr"])
        assert used and used <= exposed, (rule["alert"], used - exposed)


def test_the_grafana_dashboard_plots_metrics_the_code_exposes(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "fitcycle.json").read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "fitcycle"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exposed = exposed_samples(monkeypatch)
    used: dict[str, set[str]] = {}
    exprs = []
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
            names = metrics_in(target["expr"])  # raises on a PromQL syntax error
            assert names and names <= exposed, (panel["title"], names - exposed)
            used.setdefault(panel["title"], set()).update(names)
            exprs.append(target["expr"])
    everything = set().union(*used.values())
    assert {
        "fitcycle_jobs",
        "fitcycle_queue_depth",
        "fitcycle_job_seconds_bucket",
        "fitcycle_epoch_seconds_bucket",
        "fitcycle_images_per_second",
        "fitcycle_worker_heartbeat_timestamp_seconds",
        "fitcycle_predict_seconds_bucket",
        "fitcycle_http_requests_total",
    } <= everything

    def quantiles(metric: str) -> set[str]:
        return {m.group(1) for e in exprs for m in re.finditer(rf"histogram_quantile\(([\d.]+), .*{metric}\b", e)}

    assert {"0.5", "0.95"} <= quantiles("fitcycle_job_seconds_bucket")
    assert {"0.5", "0.95", "0.99"} <= quantiles("fitcycle_predict_seconds_bucket")
    assert any('status=~"5.."' in e for e in exprs), "no 5xx panel"
    assert any("by (route, status)" in e and "fitcycle_http_requests_total" in e for e in exprs)
    assert "grafana/fitcycle.json" in (DEPLOY / "README.md").read_text()


# --- Least privilege: metrics port, network, proxies, credentials, images, docs headers --------------------------

PG_ADMIN_HOST = "127.0.0.1"  # the machine's PostgreSQL, as the platform tests use it (tests/platform/services.py)
CHROMIUM = Path("/usr/bin/chromium")
DATA_SERVICES = {"postgres": 5432, "redis": 6379, "minio": 9000}  # the app label of each one's pods, and its port


def pod_labels(doc: Doc) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"].get("metadata", {}).get("labels", {})
    return labels


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) selects pods with these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def workloads() -> dict[str, Doc]:
    """Every Deployment and Job, by name."""
    return {**k8s_named("Deployment"), **k8s_named("Job")}


def all_containers(doc: Doc) -> list[Doc]:
    pod = doc["spec"]["template"]["spec"]
    found: list[Doc] = [*pod.get("initContainers", []), *pod["containers"]]
    return found


def secrets_read(container: Doc) -> set[tuple[str, str]]:
    """(Secret, key) pairs a container reads; key '*' for a whole Secret (envFrom)."""
    read = {(e["secretRef"]["name"], "*") for e in container.get("envFrom", []) if "secretRef" in e}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            read.add((ref["name"], ref["key"]))
    return read


def expanded(container: Doc, name: str, secrets: dict[str, str]) -> str:
    """An env value with Kubernetes' $(VAR) references expanded (Secret keys from `secrets`, by key)."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        raw = secrets[ref["key"]] if ref else entry["value"]
        values[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], raw)
    return values[name]


def published_ports(service: Doc) -> list[int]:
    """The container ports a compose service publishes on the host."""
    return [int(interpolated(str(p)).rsplit(":", 1)[1].split("/")[0]) for p in service.get("ports", [])]


def test_the_api_and_worker_metrics_have_ports_of_their_own_that_nothing_publishes() -> None:
    services = compose()["services"]
    # compose: the API's metrics on FITCYCLE_METRICS_PORT, not its published port, and published by nobody.
    api_env = services["api"]["environment"]
    metrics_port = int(api_env["FITCYCLE_METRICS_PORT"])
    worker_port = int(services["worker"]["environment"]["FITCYCLE_WORKER_METRICS_PORT"])
    assert metrics_port and metrics_port != 8000 and metrics_port != worker_port
    for name, service in services.items():
        assert not {metrics_port, worker_port} & set(published_ports(service)), name
        assert "expose" not in service, name
    # Kubernetes: the same ports, named `metrics`, set as the settings; no Service sends traffic to them.
    api = containers(k8s_named("Deployment")["fitcycle-api"])[0]
    worker = containers(gpu_worker())[0]
    assert env_values(api)["FITCYCLE_METRICS_PORT"] == str(metrics_port) == str(port_number(api, "metrics"))
    assert env_values(worker)["FITCYCLE_WORKER_METRICS_PORT"] == str(worker_port) == str(port_number(worker, "metrics"))
    for service in k8s_named("Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        for deployment in k8s_named("Deployment").values():
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment)):
                for port in service["spec"]["ports"]:
                    target = port_number(containers(deployment)[0], port["targetPort"])
                    assert target not in (metrics_port, worker_port), service["metadata"]["name"]
    assert not [d for d in k8s_docs() if d["kind"] in ("Ingress", "Gateway", "HTTPRoute")]
    # Pods tell a discovering Prometheus where their metrics are; the static scrape config agrees (checked above).
    for doc, port in ((k8s_named("Deployment")["fitcycle-api"], metrics_port), (gpu_worker(), worker_port)):
        notes = doc["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(port)
    # Only the monitoring namespace reaches the metrics ports; the API's http port stays open to its clients.
    policies = k8s_named("NetworkPolicy")
    for doc, name in ((k8s_named("Deployment")["fitcycle-api"], "fitcycle-api"), (gpu_worker(), "fitcycle-worker")):
        policy = policies[name]["spec"]
        assert selects(policy["podSelector"], pod_labels(doc)) and "Ingress" in policy["policyTypes"]
        opened = set()
        for rule in policy["ingress"]:
            ports = {port_number(containers(doc)[0], p["port"]) for p in rule["ports"]}  # a rule names its ports
            opened |= ports
            if ports & {metrics_port, worker_port}:
                assert rule["from"] == [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ]
            else:
                assert name == "fitcycle-api" and ports == {8000}, (name, rule)  # the API's clients
        assert opened == ({8000, metrics_port} if name == "fitcycle-api" else {worker_port}), name


def test_the_api_serves_metrics_on_the_metrics_port_and_not_on_its_own(tmp_path: Path) -> None:
    """With FITCYCLE_METRICS_PORT set, /metrics on the API's port is a 404, and the metrics port answers what it
    used to: the process's metrics and the platform's (jobs, queue depth). Unset, /metrics stays where it was."""
    import httpx
    from fastapi.testclient import TestClient

    from api.admin import prepare_database
    from api.main import create_app
    from tests.platform.services import free_port

    port = free_port()
    settings = Settings(data_dir=tmp_path, metrics_port=port, loop_interval_seconds=0)
    prepare_database(settings)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/live").status_code == 200
        public = client.get("/metrics")
        assert public.status_code == 404 and "fitcycle_" not in public.text
        internal = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert internal.status_code == 200 and internal.headers["content-type"].startswith("text/plain")
        for name in ("fitcycle_http_request_seconds", "fitcycle_jobs", "fitcycle_queue_depth"):
            assert f"# TYPE {name} " in internal.text, name
        assert re.search(r'^fitcycle_http_requests_total\{[^}]*route="/api/v1/live"', internal.text, re.MULTILINE)
    with pytest.raises(httpx.ConnectError):  # the server went with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    embedded = Settings(data_dir=tmp_path, loop_interval_seconds=0)
    with TestClient(create_app(embedded)) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 200 and "fitcycle_jobs" in answer.text


def test_network_policies_let_only_fitcycle_reach_postgres_redis_and_minio() -> None:
    """PostgreSQL: the API, the workers and the migration Job (its db-init and the migration). Redis: the API, the
    workers, Flower and KEDA (its own namespace). MinIO: the API, the workers and the migration Job (s3-init). Each
    data service also hears its own pods; nothing else."""
    policies = k8s_named("NetworkPolicy")
    expected = {
        "postgres": {"fitcycle-api", "fitcycle-worker", "fitcycle-migrate"},
        "redis": {"fitcycle-api", "fitcycle-worker", "fitcycle-flower"},
        "minio": {"fitcycle-api", "fitcycle-worker", "fitcycle-migrate"},
    }
    for service, port in DATA_SERVICES.items():
        guarding = [p for p in policies.values() if selects(p["spec"]["podSelector"], {"app": service})]
        assert len(guarding) == 1, (service, [p["metadata"]["name"] for p in guarding])
        spec = guarding[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        reaching, namespaces = set(), []
        for rule in spec["ingress"]:
            assert rule.get("from"), (service, "a rule without `from` admits everyone")
            peers = rule["from"]
            if peers == [{"podSelector": {"matchLabels": {"app": service}}}]:
                continue  # its own pods: replicas, a distributed MinIO
            assert [(p.get("port"), p.get("protocol")) for p in rule["ports"]] == [(port, "TCP")], service
            for peer in peers:
                if "namespaceSelector" in peer:
                    namespaces.append(peer["namespaceSelector"])
                    continue
                hit = {name for name, doc in workloads().items() if selects(peer["podSelector"], pod_labels(doc))}
                assert hit, (service, peer)
                reaching |= hit
        assert reaching == expected[service], service
        assert namespaces == ([{"matchLabels": {"kubernetes.io/metadata.name": "keda"}}] if service == "redis" else [])
    # The labels those rules rely on are the pods' own, one workload each; and the pods that reach a service are
    # the ones that use it (the Redis address every broker URL names; the init steps of the Job).
    labels = [pod_labels(doc).get("app") for doc in workloads().values()]
    assert len(labels) == len(set(labels)) and None not in labels
    for name in expected["redis"]:
        env = env_values(containers(workloads()[name])[0])
        assert env["REDIS_ADDRESS"] and env["REDIS_ADDRESS"].endswith(f":{DATA_SERVICES['redis']}")
    job = k8s_named("Job")["fitcycle-migrate"]
    assert [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]] == ["db-init", "s3-init"]


def test_forwarded_headers_are_believed_from_the_configured_proxies_so_the_session_cookie_stays_secure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compose trusts its network's gateway (where the host's TLS proxy connects from), Kubernetes its pod
    network. `fitcycle serve`, run as the manifests run it, hands the setting to uvicorn: a sign-in through the
    proxy (X-Forwarded-Proto: https) gets a Secure session cookie; the same header from anyone else is ignored."""
    import uvicorn
    from fastapi.testclient import TestClient

    import cli.serve
    import core.logs
    from api.admin import create_key
    from api.guard import CSRF_COOKIE, SESSION_COOKIE

    spec = compose()
    gateway = spec["networks"]["default"]["ipam"]["config"][0]["gateway"]
    subnet = ipaddress.ip_network(spec["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(gateway) in subnet
    allowed = interpolated(spec["services"]["api"]["environment"]["FITCYCLE_FORWARDED_ALLOW_IPS"])
    assert allowed == gateway
    api = containers(k8s_named("Deployment")["fitcycle-api"])[0]
    in_cluster = env_values(api)["FITCYCLE_FORWARDED_ALLOW_IPS"]
    assert in_cluster and "*" not in in_cluster
    for item in in_cluster.split(","):
        assert ipaddress.ip_network(item.strip()).is_private, item

    for name in [n for n in os.environ if n.startswith("FITCYCLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FITCYCLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FITCYCLE_LOOP_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("FITCYCLE_FORWARDED_ALLOW_IPS", allowed)
    ran: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setattr(cli.serve, "_announce", lambda *a: None)  # it would poll the API that never starts
    monkeypatch.setattr(core.logs, "setup_logging", lambda *a, **kw: None)  # keep pytest's logging
    assert cli.serve.cmd_serve(parses_as_cli(api["command"])) == 0  # k8s's command: the API only, no worker
    assert ran["forwarded_allow_ips"] == allowed and ran.get("proxy_headers", True)
    config = uvicorn.Config(ran.pop("app"), **ran)
    config.load()  # uvicorn wraps the app in its ProxyHeadersMiddleware here, as the server does
    _, _, key = create_key(Settings(data_dir=tmp_path), "behind-a-proxy")

    def session_cookie_secure(peer: str) -> bool:
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
        with TestClient(config.loaded_app, client=(peer, 43210), follow_redirects=False) as browser:
            page = browser.get("/signin", headers=forwarded)
            found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
            assert page.status_code == 200 and found, page.text
            browser.cookies.clear()  # cookies go back by hand: the client's jar keeps Secure ones off http
            res = browser.post(
                "/signin",
                data={"key": key, "csrf": found.group(1)},
                headers={**forwarded, "Sec-Fetch-Site": "same-origin", "Cookie": f"{CSRF_COOKIE}={found.group(1)}"},
            )
            assert res.status_code == 303, res.text
            jar: SimpleCookie = SimpleCookie()
            for header in res.headers.get_list("set-cookie"):
                jar.load(header)
            return bool(jar[SESSION_COOKIE]["secure"])

    assert session_cookie_secure(gateway)  # through the proxy
    assert not session_cookie_secure("203.0.113.9")  # a client that says https itself is not believed


def test_root_credentials_reach_only_the_init_steps_and_the_app_runs_with_the_restricted_ones() -> None:
    """Compose: the superuser's and MinIO's root passwords are in the data services and their init steps only; the
    migration logs in as the schema's owner, the API and the worker as the restricted role and S3 user the init
    steps make, and start once they are made. Kubernetes: the root Secret is read by the Job's initContainers,
    and of it the migration reads the owner's keys only; no Deployment reads it."""
    spec = compose()
    services = spec["services"]
    roots = ("FITCYCLE_DB_ROOT_PASSWORD", "FITCYCLE_S3_ROOT_PASSWORD", "FITCYCLE_DB_ROOT_USER", "FITCYCLE_S3_ROOT_USER")
    for name, service in services.items():
        text = json.dumps(service)
        if any(root in text for root in roots):
            assert name in ("postgres", "minio", "db-init", "s3-init"), name
    db_init, s3_init = services["db-init"], services["s3-init"]
    for service, script in ((db_init, "db-init.sh"), (s3_init, "s3-init.sh")):
        assert service["entrypoint"] == ["/bin/sh", f"/init/{script}"]
        assert service["volumes"] == ["./init:/init:ro"] and (DEPLOY / "init" / script).is_file()
    assert db_init["image"] == services["postgres"]["image"]  # the server's own psql
    assert db_init["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert db_init["environment"]["PGUSER"] == services["postgres"]["environment"]["POSTGRES_USER"]
    assert s3_init["environment"]["S3_ROOT_PASSWORD"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert s3_init["environment"]["S3_ROOT_USER"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    # The roles and user the init steps make are the ones the steps after them log in as.
    app_url = urlsplit(interpolated(spec["x-fitcycle-env"]["FITCYCLE_DATABASE_URL"]))
    owner_url = urlsplit(interpolated(services["migrate"]["environment"]["FITCYCLE_DATABASE_URL"]))
    assert app_url.username == db_init["environment"]["DB_APP_USER"]
    assert owner_url.username == db_init["environment"]["DB_OWNER"] != app_url.username
    assert app_url.password == interpolated(db_init["environment"]["DB_APP_PASSWORD"])
    assert owner_url.password == interpolated(db_init["environment"]["DB_OWNER_PASSWORD"])
    assert app_url.username not in ("postgres", interpolated(services["postgres"]["environment"]["POSTGRES_USER"]))
    assert app_url.path == owner_url.path == f"/{db_init['environment']['PGDATABASE']}"
    s3 = spec["x-fitcycle-env"]
    assert s3["FITCYCLE_S3_ACCESS_KEY"] == s3_init["environment"]["S3_APP_ACCESS_KEY"]
    assert s3["FITCYCLE_S3_SECRET_KEY"] == s3_init["environment"]["S3_APP_SECRET_KEY"]
    assert s3["FITCYCLE_S3_BUCKET"] == s3_init["environment"]["S3_BUCKET"]
    assert interpolated(s3["FITCYCLE_S3_ACCESS_KEY"]) != interpolated(
        services["minio"]["environment"]["MINIO_ROOT_USER"]
    )
    for name in ("api", "worker", "flower"):
        env = {**spec["x-fitcycle-env"], **services[name].get("environment", {})}
        assert env.get("FITCYCLE_DATABASE_URL", spec["x-fitcycle-env"]["FITCYCLE_DATABASE_URL"]).startswith(
            f"postgresql+psycopg://{app_url.username}:"
        )
    assert services["migrate"]["depends_on"]["db-init"] == {"condition": "service_completed_successfully"}
    for name in ("api", "worker"):
        after = services[name]["depends_on"]
        assert after["migrate"] == after["s3-init"] == {"condition": "service_completed_successfully"}

    # Kubernetes.
    job = k8s_named("Job")["fitcycle-migrate"]
    pod = job["spec"]["template"]["spec"]
    scripts = k8s_named("ConfigMap")["fitcycle-init"]["data"]
    for script in ("db-init.sh", "s3-init.sh"):
        assert scripts[script] == (DEPLOY / "init" / script).read_text(), f"{script} differs from deploy/init/"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["initContainers"]:
        assert container["command"] == ["/bin/sh", f"/init/{container['name']}.sh"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/init")
        assert volumes[mount["name"]]["configMap"]["name"] == "fitcycle-init"
        assert secrets_read(container) == {("fitcycle-bootstrap", "*")}
    assert pod["initContainers"][0]["image"].startswith("postgres:")
    assert pod["initContainers"][1]["image"].startswith("minio/mc:")
    (migrate,) = pod["containers"]
    read = secrets_read(migrate)
    assert {key for name, key in read if name == "fitcycle-bootstrap"} == {
        "DB_OWNER",
        "DB_OWNER_PASSWORD",
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
    }
    keys = {
        "DB_OWNER": "fitcycle_owner",
        "DB_OWNER_PASSWORD": "pw",
        "PGHOST": "pg",
        "PGPORT": "5432",
        "PGDATABASE": "db",
    }
    assert expanded(migrate, "FITCYCLE_DATABASE_URL", keys) == "postgresql+psycopg://fitcycle_owner:pw@pg:5432/db"
    order = [e["name"] for e in migrate["env"]]
    assert all(order.index(k) < order.index("FITCYCLE_DATABASE_URL") for k in keys)
    for name, doc in k8s_named("Deployment").items():
        for container in all_containers(doc):
            assert not {s for s, _ in secrets_read(container)} & {"fitcycle-bootstrap"}, name
            assert "FITCYCLE_DATABASE_URL" not in env_entries(container), name  # fitcycle-env's: the restricted role


@pytest.fixture
def postgres_admin() -> Any:
    """The machine's PostgreSQL as its superuser (trust on 127.0.0.1, as the platform tests use it)."""
    from sqlalchemy import create_engine, text

    if shutil.which("psql") is None:
        pytest.fail("psql is missing: the machine's PostgreSQL client (apt-get install postgresql-client)")
    admin = create_engine(f"postgresql+psycopg://postgres@{PG_ADMIN_HOST}:5432/postgres", isolation_level="AUTOCOMMIT")
    made: list[tuple[str, str]] = []  # (kind, name) to drop afterwards, databases first
    yield admin, made
    with admin.connect() as c:
        for kind, name in sorted(made, key=lambda m: m[0] != "DATABASE"):
            if kind == "DATABASE":
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP {kind} IF EXISTS "{name}"'))
    admin.dispose()


def test_db_init_makes_a_schema_owner_and_an_app_role_that_changes_rows_only(postgres_admin: Any) -> None:
    """deploy/init/db-init.sh against a real PostgreSQL, twice (it runs at every `up`): on a fresh database, and on
    one an older deployment migrated as the superuser. Migrations then run as the owner, and the app's role reads
    and writes rows (a key made, a job table read) but creates, alters, drops and truncates nothing."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    from api.admin import create_key
    from core.db.session import upgrade

    admin, made = postgres_admin
    tag = uuid.uuid4().hex[:8]
    owner, app = f"fc_owner_{tag}", f"fc_app_{tag}"
    made += [("ROLE", owner), ("ROLE", app)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DB_"))}
    env.update(PGHOST=PG_ADMIN_HOST, PGPORT="5432", PGUSER="postgres", DB_OWNER=owner, DB_APP_USER=app)
    env.update(DB_OWNER_PASSWORD="o'wner pass", DB_APP_PASSWORD='a"pp pass')  # quoting is psql's, not ours

    def init(database: str) -> None:
        for _ in range(2):  # idempotent
            run = subprocess.run(
                ["sh", str(DEPLOY / "init" / "db-init.sh")],
                env={**env, "PGDATABASE": database},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, run.stderr

    for older in (False, True):
        database = f"fc_init_{tag}_{int(older)}"
        made.append(("DATABASE", database))
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{database}"'))
        url = f"postgresql+psycopg://{{}}@{PG_ADMIN_HOST}:5432/{database}"
        if older:
            upgrade(url.format("postgres"))  # the old layout: tables the superuser made
        init(database)
        upgrade(url.format(owner))  # the migrate step
        with create_engine(url.format("postgres")).connect() as c:
            owners = set(c.scalars(text("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")))
            flags = c.execute(
                text("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname IN (:o, :a)"),
                {"o": owner, "a": app},
            ).all()
        assert owners == {owner} and flags == [(False, False, False)] * 2
        _, _, key = create_key(Settings(database_url=url.format(app)), "restricted")
        assert key
        engine = create_engine(url.format(app))
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        for ddl in (
            "CREATE TABLE intruder (i int)",
            "ALTER TABLE jobs ADD COLUMN x int",
            "DROP TABLE jobs",
            "TRUNCATE projects",
            "CREATE ROLE intruder",
        ):
            with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), engine.begin() as c:
                c.execute(text(ddl))
        engine.dispose()


def test_s3_init_makes_the_bucket_and_a_user_limited_to_it(tmp_path: Path) -> None:
    """deploy/init/s3-init.sh against a stand-in `mc` that records each call (no MinIO here): it waits for MinIO,
    makes the bucket, a policy on that bucket alone, the app's user, and attaches the policy — a second run, whose
    attach MinIO refuses as 'already in effect', succeeds too. The policy allows every call core/storage/s3.py makes
    (the bucket itself exists: the app never needs to create one)."""
    log, bin_dir = tmp_path / "calls.jsonl", tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mc"
    fake.write_text(
        f"""#!{shutil.which("python3") or "/usr/bin/python3"}
import json, os, sys, shutil
args = sys.argv[1:]
assert args[:2] == ["--config-dir", os.environ["MC_DIR"]], args
args = args[2:]
state = os.environ["MC_DIR"] + "/state"
with open({str(log)!r}, "a") as out:
    out.write(json.dumps(args) + "\\n")
if args[:2] == ["alias", "set"] and not os.path.exists(state + ".up"):
    open(state + ".up", "w").close()  # MinIO answers from the second try on
    sys.exit("mc: <ERROR> Unable to initialize new alias: connection refused")
if args[:3] == ["admin", "policy", "create"]:
    shutil.copy(args[-1], {str(tmp_path / "policy.json")!r})
if args[:3] == ["admin", "policy", "attach"]:
    if os.path.exists(state + ".attached"):
        sys.exit("mc: <ERROR> The specified policy change is already in effect.")
    open(state + ".attached", "w").close()
"""
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MC_DIR": str(tmp_path / "mc"),
        "S3_URL": "http://minio:9000",
        "S3_ROOT_USER": "root-user",
        "S3_ROOT_PASSWORD": "root-password",
        "S3_BUCKET": "fitcycle",
        "S3_APP_ACCESS_KEY": "fitcycle-app",
        "S3_APP_SECRET_KEY": "app-secret",
    }
    script = ["sh", str(DEPLOY / "init" / "s3-init.sh")]
    started = time.monotonic()
    for _ in range(2):
        run = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    assert time.monotonic() - started < 30
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    policy_name = "fitcycle-fitcycle"
    once = [
        ["mb", "--ignore-existing", "root/fitcycle"],
        ["admin", "policy", "create", "root", policy_name, str(tmp_path / "mc" / "policy.json")],
        ["admin", "user", "add", "root", "fitcycle-app", "app-secret"],
        ["admin", "policy", "attach", "root", policy_name, "--user", "fitcycle-app"],
    ]
    alias = ["alias", "set", "root", "http://minio:9000", "root-user", "root-password"]
    assert calls == [alias, alias, *once, alias, *once]
    # Another failure of the attach is one.
    (tmp_path / "mc" / "state.attached").unlink()
    broken = fake.read_text().replace("The specified policy change is already in effect.", "Access Denied.")
    fake.write_text(broken.replace('if os.path.exists(state + ".attached"):', "if True:"))
    assert subprocess.run(script, env=env, capture_output=True, timeout=60).returncode != 0

    # The policy: that bucket and its objects, and the actions the store's calls need, no more.
    statements = json.loads((tmp_path / "policy.json").read_text())["Statement"]
    allowed = {(a, r) for st in statements if st["Effect"] == "Allow" for a in st["Action"] for r in st["Resource"]}
    assert {r for _, r in allowed} == {"arn:aws:s3:::fitcycle", "arn:aws:s3:::fitcycle/*"}
    assert not any("*" in a for a, _ in allowed)
    bucket, objects = "arn:aws:s3:::fitcycle", "arn:aws:s3:::fitcycle/*"
    needs = {  # each minio client call S3Store makes -> what S3 asks for it
        "bucket_exists": {("s3:ListBucket", bucket)},
        "make_bucket": set(),  # only when the bucket is missing: s3-init made it
        "fput_object": {("s3:PutObject", objects), ("s3:AbortMultipartUpload", objects)},
        "put_object": {("s3:PutObject", objects)},
        "copy_object": {("s3:GetObject", objects), ("s3:PutObject", objects)},
        "get_object": {("s3:GetObject", objects)},
        "stat_object": {("s3:GetObject", objects)},
        "list_objects": {("s3:ListBucket", bucket)},
        "remove_object": {("s3:DeleteObject", objects)},
        "remove_objects": {("s3:DeleteObject", objects)},
    }
    used = set(re.findall(r"self\.client\.(\w+)\(", (ROOT / "core" / "storage" / "s3.py").read_text()))
    assert used <= set(needs), f"a call the policy was not checked for: {used - set(needs)}"
    for call in used:
        assert needs[call] <= allowed, call
    assert ("s3:GetBucketLocation", bucket) in allowed  # the client asks the bucket's region first


def test_every_image_is_pinned_to_a_version() -> None:
    """No `:latest` and no untagged image anywhere; fitcycle's own images carry the package's version; the
    Dockerfile's base is pinned to a patch release."""
    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images: list[tuple[str, str]] = []
    for name, service in compose()["services"].items():
        assert "image" in service, f"compose service {name} names no image (tag)"
        images.append((f"compose {name}", service["image"]))
        if "build" in service:
            assert service["image"] == f"fitcycle:{project_version}", name
    for doc in [*k8s_named("Deployment").values(), *k8s_named("Job").values()]:
        for container in all_containers(doc):
            images.append((f"k8s {doc['metadata']['name']}/{container['name']}", container["image"]))
            if container["image"].split(":")[0] in ("fitcycle", "fitcycle-gpu"):
                assert container["image"].endswith(f":{project_version}"), container["name"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases
    images += [("Dockerfile", b) for b in bases]
    for where, image in images:
        name, _, tag = image.rpartition("@")[0].rpartition(":") if "@" in image else image.rpartition(":")
        assert name and "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{where}: {image} is not pinned to a version"
    for base in bases:
        assert re.search(r":\d+\.\d+\.\d+", base), f"the Dockerfile's base {base} is not a patch release"
    assert ":latest" not in (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "k8s" / "fitcycle.yaml").read_text()


def docs_app(tmp_path: Path) -> Any:
    from api.admin import prepare_database
    from api.main import create_app

    settings = Settings(data_dir=tmp_path, loop_interval_seconds=0)
    prepare_database(settings)
    return create_app(settings)


def test_the_api_docs_answer_with_a_csp_and_frame_headers(tmp_path: Path) -> None:
    """/docs and /redoc: a policy of this site's assets only, the inline script of Swagger UI's page allowed by
    its hash, no framing (CSP and X-Frame-Options), nosniff; and every asset the pages name is this site's and
    is served."""
    from fastapi.testclient import TestClient

    with TestClient(docs_app(tmp_path)) as client:
        for path in ("/docs", "/redoc"):
            page = client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            policy = dict(
                [*d.split(" ", 1), ""][:2]
                for d in (p.strip() for p in page.headers["content-security-policy"].split(";"))
            )
            assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
            assert policy["base-uri"] == "'none'" and "'unsafe-eval'" not in policy["script-src"]
            assert "'unsafe-inline'" not in policy["script-src"]
            for directive in ("script-src", "connect-src", "img-src", "style-src", "font-src"):
                assert not re.search(r"https?:|(^|\s)\*", policy[directive]), (directive, policy[directive])
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            inline = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
            hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline}
            assert set(re.findall(r"'sha256-[^']+'", policy["script-src"])) == hashes
            assert len(inline) == (1 if path == "/docs" else 0)
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert assets
            for asset in assets:
                assert asset.startswith("/docs-assets/"), asset
                assert client.get(asset).status_code == 200, asset
        assert "validator.swagger.io" not in client.get("/docs").text


def test_the_api_docs_work_in_a_browser_under_their_policy(tmp_path: Path) -> None:
    """Chromium enforces the policy and the docs still work: Swagger UI lists the routes and runs one (Try it
    out), ReDoc renders and searches (its worker). Nothing is blocked but ReDoc's Redocly logo from its CDN. And
    the policy does bite: the same page with its inline script changed renders nothing."""
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from tests.platform.services import free_port, wait_for

    assert CHROMIUM.exists(), "Chromium is missing: 'make setup' installs Debian's chromium (apt-get install chromium)"
    import httpx

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(docs_app(tmp_path), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
    try:
        wait_for(lambda: httpx.get(f"{base}/api/v1/live").status_code == 200, 30, "the API to answer")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=flags)
            try:

                def open_page(path: str) -> tuple[Any, list[str]]:
                    page = browser.new_page()
                    blocked: list[str] = []
                    page.on(
                        "console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None
                    )
                    page.goto(base + path)
                    return page, blocked

                page, blocked = open_page("/docs")
                live = "#operations-health-live_api_v1_live_get"  # GET /api/v1/live: Try it out, Execute
                page.wait_for_selector(live, timeout=30_000)
                page.click(f"{live} .opblock-summary")
                page.click(f"{live} button.try-out__btn")
                page.click(f"{live} button.execute")
                status = f"{live} .live-responses-table tr.response td.response-col_status"
                page.wait_for_selector(status, timeout=15_000)
                assert page.locator(status).first.inner_text().strip().startswith("200")
                assert blocked == [], blocked

                page, blocked = open_page("/redoc")
                page.wait_for_selector("[role=search] input", timeout=30_000)
                assert page.get_by_text("Upload Dataset").count() >= 1
                page.fill("[role=search] input", "upload")
                wait_for(
                    lambda: page.locator("[data-role='search:results'] li, [role=search] + div li").count() > 0,
                    15,
                    "ReDoc's search",
                )
                time.sleep(0.5)
                assert all("cdn.redoc.ly" in m for m in blocked), blocked

                # The control: the inline script no longer matches its hash; the policy blocks it.
                tampered = browser.new_page()
                notes: list[str] = []
                tampered.on("console", lambda m: notes.append(m.text))

                def changed(route: Any) -> None:
                    original = route.fetch()
                    route.fulfill(response=original, body=original.text().replace("const ui", "const ui2"))

                tampered.route(f"{base}/docs", changed)
                tampered.goto(f"{base}/docs")
                wait_for(lambda: any("Content Security Policy" in n for n in notes), 15, "a CSP violation")
                assert tampered.locator(".opblock").count() == 0
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
