"""Prometheus, its alert rules and the Grafana dashboard, checked against the code.

- Every metric a dashboard panel or an alert rule queries is declared in a service's metrics
  module (names read from the modules' source; histograms add _bucket/_sum/_count, counters are
  declared with their _total names). PromQL is parsed with `promql-parser`.
- The Prometheus config scrapes every metrics port the services expose: the ports come from the
  compose file's environment and the Dockerfiles' defaults (which the smoke test runs).
- The Helm chart's copies of the rules and the dashboard equal the files here.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import promql_parser
import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
METRICS_MODULES = {
    "asr": REPO / "services/asr/llmvox_asr/metrics.py",
    "llm": REPO / "services/llm/llmvox_llm/metrics.py",
    "tts": REPO / "services/tts/llmvox_tts/worker/metrics.py",
    "gateway": REPO / "services/gateway/llmvox_gateway/metrics.py",
}
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llmvox.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
# Series every Prometheus makes itself.
BUILTIN_SERIES = {"up"}
# Compose services per scrape job, and the env var naming each one's metrics port.
JOBS = {
    "asr": (["asr"], "LLMVOX_ASR_METRICS_PORT"),
    "llm": (["llm"], "LLMVOX_LLM_METRICS_PORT"),
    "tts": (["tts-1", "tts-2"], "LLMVOX_TTS_METRICS_PORT"),
    "gateway": (["gateway"], "LLMVOX_GATEWAY_API_PORT"),  # /metrics on the API port
}


def declared_series(path: Path) -> dict[str, set[str]]:
    """Metric name -> the series names it exposes, from `Counter("name", ...)` and the like."""
    series: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind = node.func.id
        if kind not in ("Counter", "Gauge", "Histogram", "Summary") or not node.args:
            continue
        first = node.args[0]
        assert isinstance(first, ast.Constant), f"{path}: metric name is not a literal"
        name = str(first.value)
        if kind == "Histogram":
            series[name] = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "Summary":
            series[name] = {name, f"{name}_sum", f"{name}_count"}
        elif kind == "Counter":
            assert name.endswith("_total"), f"{path}: counter {name} lacks _total"
            series[name] = {name}
        else:
            series[name] = {name}
    return series


def all_series() -> set[str]:
    names: set[str] = set()
    for path in METRICS_MODULES.values():
        declared = declared_series(path)
        assert declared, path
        for exposed in declared.values():
            names |= exposed
    return names


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as plain durations, so the query parses as PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return expr.replace("$__range", "1h")


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name: m.value for m in node.matchers.matchers}
            found.append((node.name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    yield from found


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def prometheus_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_metric_names_are_read_from_every_metrics_module() -> None:
    series = all_series()
    assert "llmvox_time_to_first_audio_seconds_bucket" in series
    assert "llmvox_tts_jobs_waiting" in series
    assert "llmvox_asr_requests_total" in series
    assert "llmvox_llm_time_to_first_token_seconds_count" in series


def test_every_query_parses_and_uses_real_metrics() -> None:
    series = all_series() | BUILTIN_SERIES
    queries = [(f"dashboard: {title}", grafana_to_promql(e)) for title, e in dashboard_queries()]
    queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    assert len(queries) > 20
    for where, expr in queries:
        try:
            used = list(selectors(expr))
        except ValueError as error:
            pytest.fail(f"{where}: not PromQL ({error}): {expr}")
        assert used, where
        for name, labels in used:
            assert name in series, f"{where}: {name} is exposed by no service"
            if name == "up":
                assert labels.get("job") in prometheus_jobs(), f"{where}: job {labels}"


def test_histogram_queries_read_buckets() -> None:
    for title, expr in dashboard_queries():
        if "histogram_quantile" in expr:
            assert all(
                name.endswith("_bucket") for name, _ in selectors(grafana_to_promql(expr))
            ), title


def _compose_services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _environment(services: dict[str, Any], name: str) -> dict[str, str]:
    service = services[name]
    env = dict(service.get("environment") or {})
    # tts-1/tts-2 take theirs from the x-tts anchor (merged by PyYAML's `<<`).
    return {k: str(v) for k, v in env.items()}


def _dockerfile_env(service: str) -> tuple[dict[str, str], set[int]]:
    env: dict[str, str] = {}
    exposed: set[int] = set()
    for command in dockerfile.parse_file(str(DEPLOY / "docker" / f"{service}.Dockerfile")):
        if command.cmd == "FROM":
            env, exposed = {}, set()  # only the final stage counts
        elif command.cmd == "ENV":
            env.update(dict(zip(command.value[::2], command.value[1::2], strict=True)))
        elif command.cmd == "EXPOSE":
            exposed |= {int(p) for p in command.value}
    return env, exposed


def test_prometheus_scrapes_every_metrics_port_the_services_expose() -> None:
    services = _compose_services()
    jobs = prometheus_jobs()
    assert set(JOBS) <= set(jobs)
    for job_name, (compose_names, port_variable) in JOBS.items():
        image = job_name
        image_env, exposed = _dockerfile_env(image)
        targets: set[str] = set()
        job = jobs[job_name]
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
        expected = set()
        for name in compose_names:
            port = _environment(services, name)[port_variable]
            # The compose value is the image's default and an exposed port of the image.
            assert image_env[port_variable] == port, (name, port_variable)
            assert int(port) in exposed, (name, port)
            expected.add(f"{name}:{port}")
        assert targets == expected, job_name
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_every_compose_service_with_metrics_is_scraped() -> None:
    services = _compose_services()
    scraped = {name for names, _ in JOBS.values() for name in names}
    for name in services:
        env = _environment(services, name)
        if any(key.endswith("_METRICS_PORT") for key in env) or name == "gateway":
            assert name in scraped, f"{name} exposes metrics that Prometheus does not scrape"


def test_prometheus_loads_the_mounted_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    mounts = _compose_services()["prometheus"]["volumes"]
    targets = {m.split(":")[1] for m in mounts if m.startswith("./")}
    assert set(config["rule_files"]) <= targets
    assert "/etc/prometheus/prometheus.yml" in targets


def test_alert_rules_cover_backlog_growth_and_ttfa_regression() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    backlog = rules["LLMVoXTTSBacklogGrowing"]
    assert "llmvox_tts_jobs_waiting" in backlog["expr"]
    assert "deriv(" in backlog["expr"]
    regression = rules["LLMVoXTimeToFirstAudioRegression"]
    assert "llmvox_time_to_first_audio_seconds_bucket" in regression["expr"]
    assert "offset" in regression["expr"]
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_dashboard_has_a_fixed_uid_and_a_datasource_variable() -> None:
    data = dashboard()
    assert data["uid"] == "llmvox-overview"
    (variable,) = [v for v in data["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_dashboard_shows_what_operators_watch() -> None:
    queries = " ".join(expr for _, expr in dashboard_queries())
    titles = {p["title"] for p in panels()}
    wanted = {
        "time to first audio p50/p95": "histogram_quantile(0.5, sum by (le) "
        "(rate(llmvox_time_to_first_audio_seconds_bucket",
        "p95": "histogram_quantile(0.95, sum by (le) (rate(llmvox_time_to_first_audio_seconds",
        "real-time factor": "llmvox_tts_realtime_factor",
        "batch size": "llmvox_tts_batch_size_",
        "jobs pending": "llmvox_tts_jobs_pending",
        "jobs waiting": "llmvox_tts_jobs_waiting",
        "sessions": "llmvox_sessions_active",
        "errors": "llmvox_gateway_errors_total",
        "tts errors": "llmvox_tts_errors_total",
    }
    for what, fragment in wanted.items():
        assert fragment in queries, what
    assert {"Time to first audio", "Real-time factor", "Batch size", "Jobs", "Sessions"} <= titles


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = _compose_services()["grafana"]
    mounts = dict(m.rsplit(":", 2)[:2] for m in grafana["volumes"] if m.startswith("./"))
    assert mounts["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/llmvox.yml").read_text())[
        "providers"
    ]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    (source,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/var/lib/grafana/dashboards/{DASHBOARD.name}"


def test_helm_chart_copies_are_identical() -> None:
    files = DEPLOY / "k8s" / "llmvox" / "files"
    assert (files / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "copy deploy/prometheus/alerts.yml to deploy/k8s/llmvox/files/alerts.yml"
    )
    assert (files / "llmvox-dashboard.json").read_bytes() == DASHBOARD.read_bytes(), (
        "copy deploy/grafana/dashboards/llmvox.json to deploy/k8s/llmvox/files/"
    )
