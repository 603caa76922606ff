"""Static checks of the deployment files (no servers, no Docker).

docker-compose.yml, the Dockerfile, Prometheus' config and alert rules and the Grafana
dashboard must agree with each other and with the metrics registered in
:mod:`stream.ops.metrics`. :func:`dashboard_metric_names` is reusable by live-worker tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "customer-ai.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

WORKERS = ("worker-1", "worker-2")
WORKER_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "REDIS_URL": "redis://redis:6379/0",
    "CUSTOMER_AI_CONFIG": "/app/customer-ai.toml",
    "CUSTOMER_AI_WEB_HOST": "0.0.0.0",
    "CUSTOMER_AI_WEB_PORT": "6066",
}

_METRIC_RE = re.compile(r"\bcustomer_ai_[a-zA-Z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


# --- reusable helpers -------------------------------------------------------------------


def promql_metric_names(expr: str) -> set[str]:
    """Names of the ``customer_ai_*`` series a PromQL expression selects.

    Parameters
    ----------
    expr : str
        A PromQL expression.

    Returns
    -------
    set of str
        The names as written, suffixes (``_bucket``, ``_total``...) included.
    """
    return set(_METRIC_RE.findall(expr))


def base_metric_name(name: str) -> str:
    """Strip one exposition suffix (``_bucket``, ``_sum``, ``_count``, ``_total``, ``_created``).

    Parameters
    ----------
    name : str
        A series name such as ``customer_ai_end_to_end_latency_seconds_bucket``.

    Returns
    -------
    str
        The metric family name.
    """
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard (panels, nested rows, variables).

    Returns
    -------
    list of str
        The ``expr`` of every target and the query of every templating variable.
    """
    dash = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield target["expr"]
            yield from walk(panel.get("panels", []))

    exprs = list(walk(dash.get("panels", [])))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and query:
            exprs.append(query)
    return exprs


def dashboard_metric_names() -> set[str]:
    """Names of the ``customer_ai_*`` series used by the Grafana dashboard.

    A live-worker test can check that a worker's ``/metrics`` exposes them (as written or,
    via :func:`base_metric_name`, as a family).

    Returns
    -------
    set of str
        Series names as written in the PromQL (``_bucket``/``_total`` suffixes included).
    """
    names: set[str] = set()
    for expr in dashboard_exprs():
        names |= promql_metric_names(expr)
    return names


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of ``deploy/prometheus/alerts.yml``.

    Returns
    -------
    list of dict
        The rules of all groups.
    """
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_metric_names() -> set[str]:
    """Names of the ``customer_ai_*`` series used by the alert rules.

    Returns
    -------
    set of str
        Series names as written in the rules' PromQL.
    """
    names: set[str] = set()
    for rule in alert_rules():
        names |= promql_metric_names(rule["expr"])
    return names


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def _healthcheck_cmd(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """Map mount target -> source for short-syntax volumes."""
    out: dict[str, str] = {}
    for vol in service.get("volumes", []):
        source, target = vol.split(":")[:2]
        out[target] = source
    return out


# --- docker-compose ---------------------------------------------------------------------


def test_compose_has_the_services() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", *WORKERS, "demo-events", "prometheus", "grafana"} <= set(services)


def test_kafka_is_a_single_kraft_node_with_a_healthcheck() -> None:
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka-topics.sh" in _healthcheck_cmd(kafka)


def test_redis_persists_with_aof_and_has_a_healthcheck() -> None:
    redis = _compose()["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "--appendonly yes" in command
    source = _volumes(redis)["/data"]
    assert source in _compose().get("volumes", {})
    assert "redis-cli ping" in _healthcheck_cmd(redis)


@pytest.mark.parametrize("name", WORKERS)
def test_workers_are_wired_to_kafka_and_redis(name: str) -> None:
    worker = _compose()["services"][name]
    build = worker["build"]
    assert (build if isinstance(build, str) else build["context"]) == "."
    env = _env(worker)
    for key, value in WORKER_ENV.items():
        assert env.get(key) == value, key
    deps = _depends(worker)
    for dep in ("kafka", "redis"):
        assert deps[dep]["condition"] == "service_healthy"


def test_demo_events_is_a_one_shot_generate_then_replay() -> None:
    demo = _compose()["services"]["demo-events"]
    assert demo["restart"] == "no"
    command = demo.get("command", "")
    command = " ".join(command) if isinstance(command, list) else command
    assert re.search(r"customer-ai generate .*&&.*customer-ai replay", command)
    assert _depends(demo)["kafka"]["condition"] == "service_healthy"
    assert _env(demo)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


# --- exposure and secrets ---------------------------------------------------------------

#: a value docker compose takes from its environment, refusing to start without it:
#: ``${NAME:?message}`` (no ``:-default``, no literal)
_REQUIRED_FROM_ENV = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?[^}]*\}$")
#: an environment variable holding a secret
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_AUTH$|CREDENTIAL|API_KEY")
#: a URL with a password (``scheme://user:password@``)
_URL_PASSWORD = re.compile(r"//[^/\s:@]*:[^/\s@]+@")


def _published_ports(service: dict[str, Any]) -> list[str | dict[str, Any]]:
    return list(service.get("ports", []))


def test_every_published_port_is_bound_to_loopback() -> None:
    """Nothing of this stack (Kafka PLAINTEXT, Redis, the views with personal data,
    Prometheus, Grafana) answers on the host's other interfaces."""
    published = 0
    for name, service in _compose()["services"].items():
        for port in _published_ports(service):
            published += 1
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", (name, port)
        assert "network_mode" not in service or service["network_mode"] != "host", name
    assert published >= 6  # kafka, redis, two workers, prometheus, grafana


def test_redis_requires_a_password_from_the_environment() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    env = _env(redis)
    command = redis["command"]
    command = " ".join(command) if isinstance(command, list) else command
    # the server is started with the password of its environment ($$: expanded by the
    # container's shell, not written into the recorded command)
    assert re.search(r'--requirepass "?\$\$\{?REDIS_PASSWORD\b', command), command
    assert _REQUIRED_FROM_ENV.match(env["REDIS_PASSWORD"])["name"] == "REDIS_PASSWORD"
    # its healthcheck authenticates (redis-cli reads REDISCLI_AUTH)
    assert _REQUIRED_FROM_ENV.match(env["REDISCLI_AUTH"])["name"] == "REDIS_PASSWORD"
    for name in (*WORKERS, "demo-events"):
        client = _env(compose["services"][name])
        assert _REQUIRED_FROM_ENV.match(client["REDIS_PASSWORD"])["name"] == "REDIS_PASSWORD"
        assert not _URL_PASSWORD.search(client["REDIS_URL"]), name


def test_kafka_plaintext_stays_on_the_compose_network_and_loopback() -> None:
    kafka = _compose()["services"]["kafka"]
    env = _env(kafka)
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(
        item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for listener, address in advertised.items():
        if protocols[listener] == "PLAINTEXT":
            host = address.rsplit(":", 1)[0]
            assert host in ("kafka", "127.0.0.1", "localhost"), (listener, address)


def test_no_literal_secret_in_the_deployment_files() -> None:
    """Secrets come from the environment of whoever deploys, never from these files."""
    for name, service in _compose()["services"].items():
        for key, value in _env(service).items():
            if _SECRET_NAME.search(key):
                assert _REQUIRED_FROM_ENV.match(value), (name, key, value)
    texts = {COMPOSE: COMPOSE.read_text(), DOCKERFILE: DOCKERFILE.read_text()}
    for path in (PROMETHEUS, ALERTS, *GRAFANA_PROVISIONING.rglob("*.yml")):
        texts[path] = path.read_text()
    for path, text in texts.items():
        assert not _URL_PASSWORD.search(text), path
    # no `${VAR:-default}` / `${VAR-default}`: a default would be a secret in the file
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-", texts[COMPOSE])
    dockerfile_env = " ".join(re.findall(r"^(?:ENV|ARG)\s+(.*)$", texts[DOCKERFILE], re.M))
    assert not _SECRET_NAME.search(dockerfile_env), dockerfile_env


def test_compose_host_paths_exist() -> None:
    for service in _compose()["services"].values():
        for source in _volumes(service).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), source


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and froms[-1] == "python:3.11-slim"
    assert re.search(r'^ENTRYPOINT \["customer-ai"\]$', text, re.M)
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert WORKER_ENV["CUSTOMER_AI_CONFIG"] in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^customer-ai\s*=\s*"stream\.cli\.program:console_main"', pyproject, re.M)


# --- Prometheus -------------------------------------------------------------------------


def test_prometheus_scrapes_both_workers_on_the_web_port() -> None:
    compose = _compose()
    prom_service = compose["services"]["prometheus"]
    assert _volumes(prom_service)["/etc/prometheus"] == "./deploy/prometheus"
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = config["scrape_configs"]
    targets = {
        target
        for job in jobs
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    workers = {name for name in compose["services"] if name.startswith("worker-")}
    port = _env(compose["services"]["worker-1"])["CUSTOMER_AI_WEB_PORT"]
    assert targets == {f"{name}:{port}" for name in workers}
    assert [Path(f).name for f in config["rule_files"]] == [ALERTS.name]
    assert all(f.startswith("/etc/prometheus/") for f in config["rule_files"])


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    used = {base_metric_name(n) for n in alert_metric_names()}
    for needed in (
        "customer_ai_consumer_lag",  # growing lag
        "customer_ai_scores",  # no events scored
        "customer_ai_events_rejected",  # DLQ rate
        "customer_ai_live_auc",  # AUC drop
        "customer_ai_redis_errors",  # Redis errors
    ):
        assert needed in used, needed


# --- Grafana ----------------------------------------------------------------------------


def test_grafana_is_provisioned_with_anonymous_viewer() -> None:
    grafana = _compose()["services"]["grafana"]
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = _volumes(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dashboards_dir = next(t for t, s in mounts.items() if s == "./deploy/grafana/dashboards")

    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "customer-ai.yml").read_text()
    )
    assert providers["providers"][0]["options"]["path"] == dashboards_dir

    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"]
            assert panel["targets"]


def test_dashboard_has_the_required_panels() -> None:
    exprs = dashboard_exprs()
    joined = "\n".join(exprs)
    assert re.search(r"by \(topic, partition\) \(customer_ai_consumer_lag", joined)
    assert "rate(customer_ai_events_in_total" in joined
    assert "rate(customer_ai_scores_total" in joined
    for hist in ("end_to_end", "processing"):
        assert re.search(
            rf"histogram_quantile\(0\.99, .*customer_ai_{hist}_latency_seconds_bucket", joined
        ), hist
    assert "customer_ai_live_auc" in joined
    assert "customer_ai_bucket_size" in joined


def test_global_gauges_are_not_summed_over_workers() -> None:
    """Every worker reports the same global values for these gauges (bucket sizes come
    from SCARD of the shared segment sets, lag from the broker): summing over workers
    would multiply them by the number of workers."""
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    for name in ("customer_ai_bucket_size", "customer_ai_consumer_lag"):
        using = [e for e in exprs if name in e]
        assert using, name
        for expr in using:
            assert not re.search(rf"sum(\s+by\s*\([^)]*\))?\s*\(\s*{name}\b", expr), expr
    assert any(re.search(r"max by \(goal, bucket\) \(customer_ai_bucket_size", e) for e in exprs)


# --- metric names used in PromQL exist in stream.ops.metrics ----------------------------------


def _registered() -> set[str]:
    from stream.ops.metrics import REGISTRY, metric_names

    return metric_names(REGISTRY)


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_promql_metric_is_registered(source: str) -> None:
    names = dashboard_metric_names() if source == "dashboard" else alert_metric_names()
    assert names, f"no customer_ai_* metric found in the {source}"
    registered = _registered()
    missing = sorted(n for n in names if n not in registered)
    assert not missing, f"{source} uses metrics stream.ops.metrics does not define: {missing}"


def test_the_fixed_metric_names_are_registered() -> None:
    registered = _registered()
    for name in (
        "customer_ai_events_in_total",
        "customer_ai_events_rejected_total",
        "customer_ai_scores_total",
        "customer_ai_segment_changes_total",
        "customer_ai_training_examples_total",
        "customer_ai_processing_latency_seconds_bucket",
        "customer_ai_end_to_end_latency_seconds_bucket",
        "customer_ai_consumer_lag",
        "customer_ai_consumer_end_offset",
        "customer_ai_consumer_committed_offset",
        "customer_ai_model_version",
        "customer_ai_live_auc",
        "customer_ai_live_logloss",
        "customer_ai_live_base_rate",
        "customer_ai_live_ece",
        "customer_ai_redis_errors_total",
        "customer_ai_redis_latency_seconds_bucket",
        "customer_ai_bucket_size",
        "customer_ai_partitions_assigned",
    ):
        assert name in registered, name


def test_promql_parses() -> None:
    parser = pytest.importorskip("promql_parser")
    for expr in dashboard_exprs() + [rule["expr"] for rule in alert_rules()]:
        if expr.startswith("label_values("):
            continue  # a Grafana templating function, not PromQL
        parser.parse(expr.replace("$group", "x"))


def test_render_exposes_the_registry() -> None:
    from stream.ops import metrics

    metrics.SCORES.labels(goal="deploy-test").inc()
    metrics.observe_processing(batch_seconds=0.03, n_events=3)
    metrics.observe_end_to_end(produced_at=100.0, now=100.25)
    with pytest.raises(ConnectionError), metrics.redis_timer("deploy-test"):
        raise ConnectionError("down")
    payload, content_type = metrics.render()
    text = payload.decode()
    assert content_type.startswith("text/plain")
    assert 'customer_ai_scores_total{goal="deploy-test"} 1.0' in text
    assert 'customer_ai_redis_errors_total{kind="connection",op="deploy-test"} 1.0' in text
    assert 'customer_ai_end_to_end_latency_seconds_bucket{le="0.25"}' in text
    assert "customer_ai_processing_latency_seconds_count" in text
    assert "process_resident_memory_bytes" in text or "python_info" in text
