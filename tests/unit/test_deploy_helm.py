"""The Helm chart (deploy/k8s/llmvox), linted and rendered offline with Helm's own Go SDK
(`helm-python-sdk`), once per values file, and every rendered Kubernetes object validated by
`kubernetes-validate` against the 1.33 schemas in strict mode. The custom resources that
kubernetes-validate has no schema for (KEDA ScaledObject/TriggerAuthentication, Prometheus
Operator ServiceMonitor/PrometheusRule) are checked by shape and by what they must point at.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from llmvox_asr.settings import AsrSettings
from llmvox_gateway.settings import GatewaySettings
from llmvox_llm.settings import LlmSettings
from llmvox_tts.worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "k8s" / "llmvox"
KUBERNETES_VERSION = "1.33.0"
RELEASE, NAMESPACE = "voice", "speech"
PREFIX = f"{RELEASE}-llmvox"
# values file under ci/ (None: the chart's defaults)
VALUES_FILES = {
    "defaults": None,
    "cpu": "cpu-values.yaml",
    "external-redis": "external-redis-values.yaml",
    "keda": "autoscaling-values.yaml",
    "hpa": "autoscaling-hpa-values.yaml",
    "external-llm": "external-llm-values.yaml",
}
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
SETTINGS = {
    "asr": AsrSettings,
    "llm": LlmSettings,
    "tts": WorkerSettings,
    "gateway": GatewaySettings,
}
ENV_PREFIX = {"asr": "ASR", "llm": "LLM", "tts": "TTS", "gateway": "GATEWAY"}
# Settings the chart wires itself (ports, addresses, Redis, names, the API keys Secret).
WIRED = {
    "asr": {"host", "port", "metrics_port"},
    "llm": {"host", "port", "metrics_port"},
    "tts": {"redis_url", "metrics_port", "name"},
    "gateway": {"host", "api_port", "redis_url", "asr_addr", "llm_addr", "api_keys", "llm_api_key"},
}
GRPC_PORTS = {"asr": 50051, "llm": 50052}
METRICS_PORTS = {"asr": 9464, "llm": 9465, "tts": 9101, "gateway": 5003}


@dataclass
class Rendered:
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
        return matches[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"{PREFIX}-{component}")

    def container(self, component: str) -> dict[str, Any]:
        (container,) = self.deployment(component)["spec"]["template"]["spec"]["containers"]
        return container


def load_values(key: str) -> dict[str, Any]:
    file = VALUES_FILES[key]
    return yaml.safe_load((CHART / "ci" / file).read_text()) if file else {}


def render(values: dict[str, Any]) -> dict[str, str]:
    chart = helm.Chart.load(CHART)
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    """Each values file rendered once for the whole module."""
    out = {}
    for key in VALUES_FILES:
        values = load_values(key)
        manifests = render(values)
        objects = [
            doc
            for path, text in sorted(manifests.items())
            if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]
        notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")
        out[key] = Rendered(values, objects, notes)
    return out


def each(rendered: dict[str, Rendered]) -> Iterator[tuple[str, Rendered]]:
    yield from rendered.items()


@pytest.mark.parametrize("key", VALUES_FILES)
def test_chart_lints_clean(key: str) -> None:
    report = helm.lint(CHART, load_values(key), strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_manifest_is_valid_kubernetes(rendered: dict[str, Rendered]) -> None:
    for key, result in each(rendered):
        assert result.objects
        for obj in result.objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{key}: {obj['kind']}/{obj['metadata']['name']}: {error}")


def test_expected_objects_per_values_file(rendered: dict[str, Rendered]) -> None:
    def kinds(key: str) -> set[str]:
        return {o["kind"] for o in rendered[key].objects}

    core = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "ServiceAccount"}
    assert kinds("defaults") == core | {"Secret", "StatefulSet"}
    assert kinds("cpu") == core | {"Secret", "StatefulSet"}
    assert kinds("external-redis") == core | {
        "Secret",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
    }
    # secrets.existingSecret: the chart makes none.
    assert kinds("keda") == core | {"StatefulSet", "ScaledObject", "TriggerAuthentication"}
    assert kinds("hpa") == core | {"Secret", "StatefulSet", "HorizontalPodAutoscaler"}
    assert kinds("external-llm") == core | {"Secret", "StatefulSet"}


def test_gpu_pods_ask_for_one_gpu_each_and_tolerate_gpu_nodes(
    rendered: dict[str, Rendered],
) -> None:
    defaults = rendered["defaults"]
    for component in ("asr", "llm", "tts"):
        limits = defaults.container(component)["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
        pod = defaults.deployment(component)["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    assert "nvidia.com/gpu" not in defaults.container("gateway")["resources"].get("limits", {})
    cpu = rendered["cpu"]
    for component in ("asr", "llm", "tts", "gateway"):
        assert "nvidia.com/gpu" not in cpu.container(component)["resources"].get("limits", {})
        assert "tolerations" not in cpu.deployment(component)["spec"]["template"]["spec"]
    keda = rendered["keda"]
    for component in ("asr", "llm", "tts"):
        pod = keda.deployment(component)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_tts_replicas_spread_over_nodes(rendered: dict[str, Rendered]) -> None:
    pod = rendered["defaults"].deployment("tts")["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    labels = rendered["defaults"].deployment("tts")["spec"]["selector"]["matchLabels"]
    assert spread["labelSelector"]["matchLabels"] == labels


def test_probes(rendered: dict[str, Rendered]) -> None:
    result = rendered["defaults"]
    for component, port in GRPC_PORTS.items():
        container = result.container(component)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (component, probe)
    tts = result.container("tts")
    health = ["llmvox-tts", "health", "--timeout", "5"]
    assert tts["startupProbe"]["exec"]["command"] == health
    assert tts["livenessProbe"]["exec"]["command"] == health
    assert tts["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    gateway = result.container("gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_services_select_their_pods_and_name_real_ports(rendered: dict[str, Rendered]) -> None:
    for key, result in each(rendered):
        pods = {
            o["metadata"]["name"]: o["spec"]["template"]
            for o in result.objects
            if o["kind"] in ("Deployment", "StatefulSet")
        }
        for service in result.of_kind("Service"):
            selector = service["spec"]["selector"]
            matching = [
                t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()
            ]
            assert len(matching) == 1, f"{key}: Service {service['metadata']['name']}"
            port_names = {
                p["name"] for c in matching[0]["spec"]["containers"] for p in c.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in port_names, (key, service["metadata"]["name"], port)


def test_pod_disruption_budgets_cover_every_component(rendered: dict[str, Rendered]) -> None:
    result = rendered["defaults"]
    budgets = {b["metadata"]["name"]: b for b in result.of_kind("PodDisruptionBudget")}
    for component in ("asr", "llm", "tts", "gateway"):
        budget = budgets[f"{PREFIX}-{component}"]
        assert budget["spec"]["maxUnavailable"] == 1
        labels = result.deployment(component)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _config(result: Rendered, component: str) -> dict[str, str]:
    return result.get("ConfigMap", f"{PREFIX}-{component}")["data"]


def test_configmaps_hold_real_settings_only(rendered: dict[str, Rendered]) -> None:
    for key, result in each(rendered):
        for component, prefix in ENV_PREFIX.items():
            if not result.values.get(component, {}).get("enabled", True):
                continue  # not rendered (external-llm: llm.enabled false)
            data = _config(result, component)
            for name, value in data.items():
                assert isinstance(value, str), (key, name)
                setting = name.removeprefix(f"LLMVOX_{prefix}_").lower()
                assert setting in SETTINGS[component].model_fields, f"{key}: {name}"
            container = result.container(component)
            assert container["envFrom"] == [{"configMapRef": {"name": f"{PREFIX}-{component}"}}]
    # Numbers as pydantic reads them: no exponent form for large integers.
    cpu_gateway = _config(rendered["cpu"], "gateway")
    assert cpu_gateway["LLMVOX_GATEWAY_MAX_IMAGE_BYTES"] == "20000000"
    assert cpu_gateway["LLMVOX_GATEWAY_LLM_TEMPERATURE"] == "0.2"
    assert _config(rendered["defaults"], "tts")["LLMVOX_TTS_MAX_BATCH"] == "32"


def test_metrics_ports_match_the_images(rendered: dict[str, Rendered]) -> None:
    result = rendered["defaults"]
    for component in ("asr", "llm", "tts"):
        data = _config(result, component)
        port = METRICS_PORTS[component]
        assert data[f"LLMVOX_{ENV_PREFIX[component]}_METRICS_PORT"] == str(port)
        annotations = result.deployment(component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        ports = {p["name"]: p["containerPort"] for p in result.container(component)["ports"]}
        assert ports["metrics"] == port
    assert _config(result, "gateway")["LLMVOX_GATEWAY_API_PORT"] == "5003"


def test_gateway_is_wired_to_the_services(rendered: dict[str, Rendered]) -> None:
    data = _config(rendered["defaults"], "gateway")
    assert data["LLMVOX_GATEWAY_ASR_ADDR"] == f"{PREFIX}-asr:50051"
    assert data["LLMVOX_GATEWAY_LLM_ADDR"] == f"{PREFIX}-llm:50052"
    disabled = render({"asr": {"enabled": False}, "llm": {"enabled": False}})
    objects = [
        d for p, t in disabled.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d
    ]
    gateway_config = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("gateway")
    )
    assert gateway_config["data"]["LLMVOX_GATEWAY_ASR_ADDR"] == ""
    assert gateway_config["data"]["LLMVOX_GATEWAY_LLM_ADDR"] == ""
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert deployments == {f"{PREFIX}-tts", f"{PREFIX}-gateway"}


def test_redis_url_carries_the_password_from_the_secret(rendered: dict[str, Rendered]) -> None:
    for key, host, scheme in (
        ("defaults", f"{PREFIX}-redis:6379/0", "redis"),
        ("external-redis", "redis.shared.svc.cluster.local:6380/2", "rediss"),
    ):
        result = rendered[key]
        for component in ("tts", "gateway"):
            variable = f"LLMVOX_{ENV_PREFIX[component]}_REDIS_URL"
            env = _env(result.container(component))
            names = [e["name"] for e in result.container(component)["env"]]
            # $(REDIS_PASSWORD) expands only from an entry defined earlier in the list.
            assert names.index("REDIS_PASSWORD") < names.index(variable)
            assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": PREFIX,
                "key": "redis-password",
            }
            assert env[variable]["value"] == f"{scheme}://:$(REDIS_PASSWORD)@{host}"
    redis = rendered["defaults"].get("StatefulSet", f"{PREFIX}-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--requirepass" in container["command"][-1]
    service = rendered["defaults"].get("Service", f"{PREFIX}-redis")["spec"]
    assert service["type"] == "ClusterIP"  # reachable inside the cluster only
    assert all("nodePort" not in port for port in service["ports"])


def test_secret_password_given_generated_or_external(rendered: dict[str, Rendered]) -> None:
    import base64

    generated = rendered["defaults"].get("Secret", PREFIX)["data"]["redis-password"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", base64.b64decode(generated).decode())
    given = render({"redis": {"auth": {"password": "abc123"}}})["llmvox/templates/secret.yaml"]
    data = yaml.safe_load(given)["data"]
    assert base64.b64decode(data["redis-password"]).decode() == "abc123"
    external = rendered["external-redis"].get("Secret", PREFIX)["data"]
    assert {k: base64.b64decode(v).decode() for k, v in external.items()} == {
        "redis-password": "s3cr3t-redis-password",
        "hf-token": "hf_example_token",
        "api-keys": "key-one,key-two",
    }
    # With an existing Secret, every reference points at it.
    keda = rendered["keda"]
    for component in ("tts", "gateway"):
        assert (
            _env(keda.container(component))["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
            == "llmvox-secrets"
        )
    assert _env(keda.container("llm"))["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "llmvox-secrets",
        "key": "hf-token",
        "optional": True,
    }


def test_ingress_keeps_websockets_open(rendered: dict[str, Rendered]) -> None:
    ingress = rendered["external-redis"].get("Ingress", f"{PREFIX}-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{PREFIX}-gateway", "port": {"name": "http"}}


def test_keda_scales_the_pool_on_the_job_stream(rendered: dict[str, Rendered]) -> None:
    result = rendered["keda"]
    (scaled,) = result.of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{PREFIX}-tts",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 16)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert meta["stream"] == "llmvox:tts:jobs"
    assert meta["consumerGroup"] == "tts"
    assert meta["pendingEntriesCount"] == "24"
    assert meta["address"] == f"{PREFIX}-redis:6379"
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    (auth,) = result.of_kind("TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "llmvox-secrets", "key": "redis-password"}
    ]
    # The scaler owns the replica count.
    assert "replicas" not in result.deployment("tts")["spec"]
    # lagCount instead of pendingEntriesCount (Redis 7).
    lag = render({"tts": {"autoscaling": {"keda": {"enabled": True, "lagCount": 5}}}})
    docs = yaml.safe_load_all(lag["llmvox/templates/tts-autoscaling.yaml"])
    (doc,) = [d for d in docs if d and d["kind"] == "ScaledObject"]
    lag_meta = doc["spec"]["triggers"][0]["metadata"]
    assert lag_meta["lagCount"] == "5"
    assert "pendingEntriesCount" not in lag_meta


def test_hpa_alternative(rendered: dict[str, Rendered]) -> None:
    result = rendered["hpa"]
    (hpa,) = result.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{PREFIX}-tts"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "llmvox_tts_jobs_active"
    assert "replicas" not in result.deployment("tts")["spec"]
    assert result.deployment("gateway")["spec"]["replicas"] == 2


def test_keda_and_hpa_together_are_refused() -> None:
    both = {"tts": {"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}}
    with pytest.raises(helm.HelmError, match="not both"):
        render(both)


def test_service_monitor_scrapes_every_component(rendered: dict[str, Rendered]) -> None:
    result = rendered["external-redis"]
    (monitor,) = result.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["jobLabel"] == "app.kubernetes.io/component"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = spec["selector"]["matchLabels"]
    scraped: dict[str, int] = {}
    for service in result.of_kind("Service"):
        if not selector.items() <= service["metadata"]["labels"].items():
            continue
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            if endpoint["port"] in ports:
                component = service["metadata"]["labels"]["app.kubernetes.io/component"]
                scraped[component] = ports[endpoint["port"]]
                assert endpoint["path"] == "/metrics"
    assert scraped == METRICS_PORTS


def test_prometheus_rule_and_dashboard_are_the_deploy_files(rendered: dict[str, Rendered]) -> None:
    result = rendered["external-redis"]
    (rule,) = result.of_kind("PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts
    dashboards = render({"metrics": {"grafanaDashboard": {"enabled": True}}})
    config = yaml.safe_load(dashboards["llmvox/templates/grafana-dashboard.yaml"])
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "llmvox.json").read_text())
    assert json.loads(config["data"]["llmvox.json"]) == source


def test_images_come_from_one_registry_and_tag() -> None:
    manifests = render({"image": {"registry": "ghcr.io/acme/", "tag": "1.2.3"}})
    images = set(re.findall(r"image: (\S+)", "\n".join(manifests.values())))
    assert images == {
        "ghcr.io/acme/llmvox/asr:1.2.3",
        "ghcr.io/acme/llmvox/llm:1.2.3",
        "ghcr.io/acme/llmvox/tts:1.2.3",
        "ghcr.io/acme/llmvox/gateway:1.2.3",
        "redis:7.4.5-alpine",
    }


def test_pods_run_as_the_image_user_with_a_read_only_root(rendered: dict[str, Rendered]) -> None:
    result = rendered["defaults"]
    for component in ("asr", "llm", "tts", "gateway"):
        pod = result.deployment(component)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        container = result.container(component)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/home/llmvox/.cache"} <= mounts
        if component != "gateway":
            assert "/models" in mounts
    claim = rendered["external-redis"].deployment("llm")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "llmvox-models"}} in claim


def test_notes_render(rendered: dict[str, Rendered]) -> None:
    notes = rendered["defaults"].notes
    assert f"svc/{PREFIX}-gateway" in notes
    assert "generated" in notes
    assert "UNTRAINED" in rendered["cpu"].notes
    assert "KEDA" in rendered["keda"].notes
    assert "https://voice.example.com/" in rendered["external-redis"].notes


# -- values.schema.json ---------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


@pytest.mark.parametrize("component", SETTINGS)
def test_schema_lists_every_setting_of_the_service(component: str) -> None:
    """`<component>.settings` takes exactly the service's settings (less the wired ones), so a
    typo fails at install, and a new setting has to be added here."""
    settings = _schema()["properties"][component]["properties"]["settings"]
    assert settings["additionalProperties"] is False
    fields = SETTINGS[component].model_fields
    expected = set(fields) - WIRED[component]
    assert set(settings["properties"]) == expected, (
        f"values.schema.json {component}.settings is out of date with "
        f"{SETTINGS[component].__name__}"
    )
    for name, prop in settings["properties"].items():
        annotation = fields[name].annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        literal = typing.get_origin(annotation) is typing.Literal
        base = args[0] if args and not literal else annotation
        expected_type = {bool: "boolean", int: "integer", float: "number"}.get(base, "string")
        assert prop["type"] == expected_type, (component, name)
        if typing.get_origin(base) is typing.Literal:
            assert prop["enum"] == list(typing.get_args(base))


def test_schema_rejects_unknown_and_invalid_values() -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema({})
    for key in VALUES_FILES:
        chart.validate_schema(load_values(key))
    for bad in (
        {"asr": {"settings": {"modle": "small"}}},
        {"tts": {"settings": {"max_batch": 0}}},
        {"tts": {"settings": {"precision": "fp8"}}},
        {"gateway": {"replica": 3}},
        {"redis": {"image": {"tag": "latest"}}},
        {"redis": {"auth": {"password": "has/slash"}}},
        {"llm": {"settings": {"port": 1234}}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _leaves(inner, (*path, key))
    else:
        yield path


def test_schema_describes_every_default_value() -> None:
    schema = _schema()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _leaves(defaults):
        node = schema
        for key in path:
            if "properties" in node and key in node["properties"]:
                node = node["properties"][key]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]
            else:
                # Only free-form objects (resources, affinity, ...) stop the walk.
                where = f"values.yaml {'.'.join(path)} has no schema"
                assert node.get("type") == "object", where
                assert "additionalProperties" not in node, where
                break


def _redis_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    text = render(values)["llmvox/templates/redis.yaml"]
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_redis_keeps_an_append_only_file_on_a_volume_by_default(
    rendered: dict[str, Rendered],
) -> None:
    """Queued TTS jobs survive a Redis restart: appendonly on a PersistentVolumeClaim; the
    toggle turns both off (emptyDir), and either way the objects are valid Kubernetes."""
    redis = rendered["defaults"].get("StatefulSet", f"{PREFIX}-redis")
    spec = redis["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    command = container["command"][-1]
    assert "--appendonly yes" in command
    assert "--dir /data" in command
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "volumes" not in spec["template"]["spec"]

    off = _redis_objects({"redis": {"persistence": {"enabled": False}}})
    (statefulset,) = [o for o in off if o["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--appendonly no" in container["command"][-1]
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert statefulset["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]

    sized = _redis_objects({"redis": {"persistence": {"size": "5Gi", "storageClass": "fast"}}})
    (statefulset,) = [o for o in sized if o["kind"] == "StatefulSet"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    for obj in [*off, *sized]:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_external_llm_runs_no_llm_and_points_the_gateway_at_it(
    rendered: dict[str, Rendered],
) -> None:
    import base64

    result = rendered["external-llm"]
    names = {o["metadata"]["name"] for o in result.objects}
    assert not any(name.startswith(f"{PREFIX}-llm") for name in names), names
    data = _config(result, "gateway")
    assert data["LLMVOX_GATEWAY_LLM_BACKEND"] == "openai"
    assert data["LLMVOX_GATEWAY_LLM_BASE_URL"].startswith("http://vllm.")
    assert data["LLMVOX_GATEWAY_LLM_MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert data["LLMVOX_GATEWAY_LLM_ADDR"] == ""
    assert "LLMVOX_GATEWAY_LLM_API_KEY" not in data  # a secret: never in a ConfigMap
    key = _env(result.container("gateway"))["LLMVOX_GATEWAY_LLM_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": PREFIX,
        "key": "llm-api-key",
        "optional": True,
    }
    secret = result.get("Secret", PREFIX)["data"]
    assert base64.b64decode(secret["llm-api-key"]).decode() == "sk-example-external-llm-key"
    # Without an external key the Secret has no such entry (the reference is optional).
    assert "llm-api-key" not in rendered["defaults"].get("Secret", PREFIX)["data"]


def test_openai_backend_needs_its_url_and_model() -> None:
    values = {"llm": {"enabled": False}, "gateway": {"settings": {"llm_backend": "openai"}}}
    with pytest.raises(Exception, match="llm_base_url is required"):
        render(values)
