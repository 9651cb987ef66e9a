"""The deploy files ship no passwords, publish nothing but the API (and Flower on 127.0.0.1), run nothing as root,
and say only what the code does: settings it has, commands it runs, routes and ports it serves, metrics it
exposes. The Kubernetes manifests are checked against the API's schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import tomllib
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
    state = SimpleNamespace(sessions=None, settings=Settings(), celery=None)
    platform = list(api.metrics.PlatformCollector(state).collect())
    assert {f.name for f in platform} == {"fitcycle_jobs", "fitcycle_queue_depth"}
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
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${FITCYCLE_DB_PASSWORD:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${FITCYCLE_S3_SECRET_KEY:?")
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
    assert sorted(checked) == sorted(["Job", *api, *workers, *flower])
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
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape["scrape_configs"]}
    assert targets == {"fitcycle-api": ["api:8000"], "fitcycle-worker": [f"worker:{worker_port}"]}
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
