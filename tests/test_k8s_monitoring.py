"""Monitoring in the cluster, checked on the render of every overlay (kubectl kustomize).

Selectors that select: every ServiceMonitor/PodMonitor finds a Service/Pod of the same render,
every Service finds pods of a workload on the port it forwards to, and every address in the
namespace's Prometheus configuration and in the settings ConfigMap names an existing Service
and port. Locked down: a small evaluator of the rendered NetworkPolicies says which pods may
open which port of which pod. Alertmanager and the Grafana dashboard ConfigMap are shipped from
copies of monitoring/ files and must equal them.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pipelines.diffurec_pipeline import SETTINGS_CONFIG_MAP, SETTINGS_KEYS
from test_deploy import BIN, OVERLAYS, REPO, by_kind, render

Object = dict[str, Any]
# Where `kubectl apply` puts an object that names no namespace: the context's namespace, which is
# not the one the manifests' Services live in.
UNSET_NAMESPACE = "<kubectl context namespace>"
# Kubeflow Pipelines v2 labels every pod of a run so (the Argo Workflow's podMetadata, set in
# kubeflow/pipelines backend/src/v2/compiler/argocompiler/argo.go).
KFP_POD_LABELS = {
    "pipelines.kubeflow.org/v2_component": "true",
    "workflows.argoproj.io/workflow": "diffurec-x1",
}
# kube-prometheus-stack's Prometheus pod (labels set by the Prometheus Operator) and Grafana pod.
OPERATOR_PROMETHEUS_LABELS = {
    "app.kubernetes.io/name": "prometheus",
    "app.kubernetes.io/managed-by": "prometheus-operator",
    "operator.prometheus.io/name": "kube-prometheus-stack-prometheus",
}
MONITORING_NAMESPACE = "monitoring"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number
    namespace_labels: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Object]]:
    if not (BIN / "kubectl").exists():
        pytest.fail(f"{BIN / 'kubectl'} missing: run scripts/setup.sh (requirements-dev.txt)")
    assert OVERLAYS, "no overlay in k8s/overlays"
    return {overlay: render(overlay) for overlay in OVERLAYS}


def namespace_of(obj: Object) -> str:
    return str(obj["metadata"].get("namespace", UNSET_NAMESPACE))


# --- label selectors (metav1.LabelSelector) ---------------------------------------------------


def selects(selector: Object, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics: every matchLabels pair and every matchExpression."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator}")
    return True


def test_selects_follows_kubernetes_label_selector_semantics() -> None:
    labels = {"app": "a", "tier": "web"}
    assert selects({}, labels) and selects({}, {})
    assert selects({"matchLabels": {"app": "a"}}, labels)
    assert not selects({"matchLabels": {"app": "a", "zone": "x"}}, labels)
    assert selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}, labels)
    assert not selects(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, labels
    )
    assert selects({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["x"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, labels)
    # matchLabels and matchExpressions are ANDed.
    both = {"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "zone", "operator": "Exists"}]}
    assert not selects(both, labels)


# --- the pods a render makes ------------------------------------------------------------------


def pod_templates(objects: list[Object]) -> list[tuple[str, str, Object]]:
    """(name, namespace, pod template) of every Deployment, StatefulSet and PyTorchJob replica."""
    templates = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            templates.append((obj["metadata"]["name"], namespace_of(obj), obj["spec"]["template"]))
        elif obj["kind"] == "PyTorchJob":
            for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                name = f"{obj['metadata']['name']}-{replica.lower()}"
                templates.append((name, namespace_of(obj), spec["template"]))
    return templates


def rendered_pods(objects: list[Object]) -> list[Pod]:
    namespaces = {
        o["metadata"]["name"]: o["metadata"].get("labels", {}) for o in by_kind(objects, "Namespace")
    }
    pods = []
    for name, namespace, template in pod_templates(objects):
        ports = {
            port["name"]: port["containerPort"]
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
            if "name" in port
        }
        labels = template.get("metadata", {}).get("labels", {})
        # The API server labels every namespace with its name.
        namespace_labels = {**namespaces.get(namespace, {}), "kubernetes.io/metadata.name": namespace}
        pods.append(Pod(name, namespace, labels, ports, namespace_labels))
    return pods


def outside_pod(name: str, namespace: str, labels: dict[str, str]) -> Pod:
    """A pod that the manifests do not make (Kubeflow's, another team's, the monitoring stack's)."""
    return Pod(name, namespace, labels, {}, {"kubernetes.io/metadata.name": namespace})


# --- selectors that select ---------------------------------------------------------------------


def target_port_exists(service_port: Object, pod: Pod) -> bool:
    target = service_port.get("targetPort", service_port["port"])
    return target in pod.ports if isinstance(target, str) else target in pod.ports.values()


def service_problems(objects: list[Object]) -> list[str]:
    """Services that select no workload's pods, or forward to a port those pods do not have."""
    problems = []
    pods = rendered_pods(objects)
    for service in by_kind(objects, "Service"):
        name = service["metadata"]["name"]
        chosen = [
            pod
            for pod in pods
            if pod.namespace == namespace_of(service)
            and selects({"matchLabels": service["spec"]["selector"]}, pod.labels)
        ]
        if not chosen:
            problems.append(f"Service {name} selects no pod")
        for port in service["spec"]["ports"]:
            if not all(target_port_exists(port, pod) for pod in chosen):
                problems.append(f"Service {name} port {port['port']}: target port missing on its pods")
    return problems


def monitor_namespaces(monitor: Object) -> set[str] | None:
    """The namespaces a ServiceMonitor/PodMonitor looks in; None for all of them."""
    selector = monitor["spec"].get("namespaceSelector", {})
    if selector.get("any"):
        return None
    return set(selector.get("matchNames", [])) or {namespace_of(monitor)}


def monitor_problems(objects: list[Object]) -> list[str]:
    """ServiceMonitors/PodMonitors that select nothing, or name an endpoint port nobody has."""
    problems = []
    for monitor in by_kind(objects, "ServiceMonitor"):
        namespaces = monitor_namespaces(monitor)
        services = [
            s
            for s in by_kind(objects, "Service")
            if (namespaces is None or namespace_of(s) in namespaces)
            and selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        name = f"ServiceMonitor {monitor['metadata']['name']}"
        if not services:
            problems.append(f"{name} selects no Service")
            continue
        for endpoint in monitor["spec"]["endpoints"]:
            if not any(endpoint["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                problems.append(f"{name}: no selected Service has a port named {endpoint['port']}")
    for monitor in by_kind(objects, "PodMonitor"):
        namespaces = monitor_namespaces(monitor)
        pods = [
            p
            for p in rendered_pods(objects)
            if (namespaces is None or p.namespace in namespaces)
            and selects(monitor["spec"]["selector"], p.labels)
        ]
        name = f"PodMonitor {monitor['metadata']['name']}"
        if not pods:
            problems.append(f"{name} selects no Pod")
            continue
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            if not any(endpoint["port"] in p.ports for p in pods):
                problems.append(f"{name}: no selected Pod has a port named {endpoint['port']}")
    return problems


SERVICE_ADDRESS = re.compile(
    r"^(?P<service>[a-z0-9-]+)(\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?)?:(?P<port>\d+)$"
)


def address_problem(address: str, objects: list[Object], namespace: str) -> str | None:
    """None when `address` (service[.namespace.svc[.cluster.local]]:port) is a port of a Service;
    a short name is looked up where a pod of `namespace` resolves it: in that namespace."""
    match = SERVICE_ADDRESS.match(address)
    if not match:
        return f"{address}: not a Service address"
    service_namespace = match["namespace"] or namespace
    for service in by_kind(objects, "Service"):
        if service["metadata"]["name"] == match["service"] and namespace_of(service) == service_namespace:
            if int(match["port"]) in {p["port"] for p in service["spec"]["ports"]}:
                return None
            return f"{address}: Service {match['service']} has no port {match['port']}"
    return f"{address}: no Service {match['service']} in namespace {service_namespace}"


def prometheus_config_map(objects: list[Object]) -> Object:
    (config,) = [
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("prometheus-config")
    ]
    return config


def prometheus_config(objects: list[Object]) -> Object:
    return dict(yaml.safe_load(prometheus_config_map(objects)["data"]["prometheus.yml"]))


def prometheus_target_problems(objects: list[Object]) -> list[str]:
    """Scrape targets and Alertmanagers of the namespace's Prometheus that are no Service port."""
    config = prometheus_config(objects)
    namespace = namespace_of(prometheus_config_map(objects))  # Prometheus' pod's
    groups = [*config["scrape_configs"], *config.get("alerting", {}).get("alertmanagers", [])]
    problems = []
    for group in groups:
        discovery = set(group) & {k for k in group if k.endswith("_sd_configs")}
        if discovery:
            problems.append(f"{sorted(discovery)}: only static_configs are checked here")
        for static in group.get("static_configs", []):
            problems.extend(p for t in static["targets"] if (p := address_problem(t, objects, namespace)))
    return problems


def settings_map(objects: list[Object]) -> Object:
    (config,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == SETTINGS_CONFIG_MAP]
    return config


def settings(objects: list[Object]) -> dict[str, str]:
    return dict(settings_map(objects)["data"])


def test_monitors_and_services_select_what_the_render_makes(rendered):
    for overlay, objects in rendered.items():
        assert by_kind(objects, "ServiceMonitor") or by_kind(objects, "PodMonitor"), overlay
        assert monitor_problems(objects) == [], overlay
        assert service_problems(objects) == [], overlay


def test_the_checks_see_the_selectors_that_select_nothing(rendered):
    # The bug of issue 14: the Pushgateway Service without the label the ServiceMonitor selects.
    objects = copy.deepcopy(rendered[OVERLAYS[0]])
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "pushgateway"]
    del service["metadata"]["labels"]["app.kubernetes.io/name"]
    assert monitor_problems(objects) == ["ServiceMonitor pushgateway selects no Service"]
    # A ServiceMonitor without a namespace lands in kubectl's namespace and looks only there.
    objects = copy.deepcopy(rendered[OVERLAYS[0]])
    del by_kind(objects, "ServiceMonitor")[0]["metadata"]["namespace"]
    assert monitor_problems(objects) == ["ServiceMonitor pushgateway selects no Service"]
    by_kind(objects, "ServiceMonitor")[0]["spec"]["namespaceSelector"] = {"any": True}
    assert monitor_problems(objects) == []
    by_kind(objects, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] = "metrics"
    assert monitor_problems(objects) == [
        "ServiceMonitor pushgateway: no selected Service has a port named metrics"
    ]
    # A PodMonitor is checked against the workloads' pod labels and container port names.
    objects.append(
        {
            "kind": "PodMonitor",
            "metadata": {"name": "pg", "namespace": "diffurec"},
            "spec": {
                "selector": {
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["pushgateway"]}
                    ]
                },
                "podMetricsEndpoints": [{"port": "http"}],
            },
        }
    )
    by_kind(objects, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] = "http"
    assert monitor_problems(objects) == []
    objects[-1]["spec"]["selector"]["matchExpressions"][0]["values"] = ["pushgw"]
    assert monitor_problems(objects) == [
        "PodMonitor pg selects no Pod",
    ]
    objects[-1]["spec"]["selector"]["matchExpressions"][0]["values"] = ["pushgateway"]
    objects[-1]["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"
    assert monitor_problems(objects) == ["PodMonitor pg: no selected Pod has a port named metrics"]
    # A Service whose selector matches no pod template, or forwards to a missing port.
    objects = copy.deepcopy(rendered[OVERLAYS[0]])
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "prometheus"]
    service["spec"]["ports"][0]["targetPort"] = "web"
    assert service_problems(objects) == ["Service prometheus port 9090: target port missing on its pods"]
    service["spec"]["selector"] = {"app.kubernetes.io/name": "prom"}
    assert service_problems(objects) == ["Service prometheus selects no pod"]


def test_prometheus_scrapes_and_alerts_existing_services(rendered):
    for overlay, objects in rendered.items():
        config = prometheus_config(objects)
        assert config["scrape_configs"] and config["alerting"]["alertmanagers"], overlay
        assert prometheus_target_problems(objects) == [], overlay
        (alertmanagers,) = config["alerting"]["alertmanagers"]
        assert SERVICE_ADDRESS.match(alertmanagers["static_configs"][0]["targets"][0])["service"] == (
            "alertmanager"
        ), overlay
    objects = copy.deepcopy(rendered[OVERLAYS[0]])
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "alertmanager"]
    service["spec"]["ports"][0]["port"] = 80
    assert prometheus_target_problems(objects) == ["alertmanager:9093: Service alertmanager has no port 9093"]
    objects.remove(service)
    assert prometheus_target_problems(objects) == [
        "alertmanager:9093: no Service alertmanager in namespace diffurec"
    ]


def test_settings_name_existing_services(rendered):
    for overlay, objects in rendered.items():
        values = settings(objects)
        # The gate's Prometheus, the steps' Pushgateway (host:port) and the tracking server.
        assert urlsplit(values["DIFFUREC_PROMETHEUS"]).scheme == "http"
        assert urlsplit(values["DIFFUREC_PROMETHEUS"]).path in ("", "/")
        for address in (
            urlsplit(values["DIFFUREC_PROMETHEUS"]).netloc,
            values["DIFFUREC_PUSHGATEWAY"],
            urlsplit(values["MLFLOW_TRACKING_URI"]).netloc,
        ):
            # The steps that read the settings run in the ConfigMap's namespace.
            assert address_problem(address, objects, namespace_of(settings_map(objects))) is None, (
                overlay,
                address,
            )
        assert SERVICE_ADDRESS.match(urlsplit(values["DIFFUREC_PROMETHEUS"]).netloc)["service"] == (
            "prometheus"
        ), overlay


# --- locked down: which pod may open which port --------------------------------------------------


def peer_admits(peer: Object, policy_namespace: str, pod: Pod) -> bool:
    """One NetworkPolicyPeer: podSelector (the policy's namespace unless namespaceSelector says
    otherwise) and namespaceSelector together are ANDed."""
    if "ipBlock" in peer:
        raise ValueError("ipBlock peers are not modelled: pods are matched by labels only")
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def rule_admits(
    rule: Object, peers_key: str, policy_namespace: str, peer: Pod, server: Pod, port: int
) -> bool:
    """One ingress/egress rule: any of its peers (none listed: everyone) on any of its ports
    (none listed: every port); a named port is the server's container port of that name."""
    peers = rule.get(peers_key) or []
    if peers and not any(peer_admits(p, policy_namespace, peer) for p in peers):
        return False
    ports = rule.get("ports") or []
    for allowed in ports:
        if allowed.get("protocol", "TCP") != "TCP":
            continue
        number = allowed.get("port")
        if number is None:
            return True
        if isinstance(number, str):
            number = server.ports.get(number)
        if number is not None and number <= port <= allowed.get("endPort", number):
            return True
    return not ports


def policy_types(policy: Object) -> list[str]:
    # Without policyTypes: Ingress, plus Egress when the policy has egress rules.
    return list(
        policy["spec"].get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in policy["spec"] else [])]
    )


def may_connect(policies: list[Object], client: Pod, server: Pod, port: int) -> bool:
    """Whether `client` may open TCP `port` on `server` under these NetworkPolicies."""

    def allowed(direction: str, pod: Pod, rules_key: str, peers_key: str, other: Pod) -> bool:
        isolating = [
            p
            for p in policies
            if namespace_of(p) == pod.namespace
            and direction in policy_types(p)
            and selects(p["spec"]["podSelector"], pod.labels)
        ]
        return not isolating or any(
            rule_admits(rule, peers_key, namespace_of(p), other, server, port)
            for p in isolating
            for rule in p["spec"].get(rules_key, [])
        )

    return allowed("Ingress", server, "ingress", "from", client) and allowed(
        "Egress", client, "egress", "to", server
    )


def test_may_connect_follows_network_policy_semantics() -> None:
    server = Pod("db", "a", {"app": "db"}, {"pg": 5432}, {"kubernetes.io/metadata.name": "a", "team": "x"})
    friend = Pod("api", "a", {"app": "api"}, {}, {"kubernetes.io/metadata.name": "a", "team": "x"})
    stranger = Pod("api", "b", {"app": "api"}, {}, {"kubernetes.io/metadata.name": "b", "team": "x"})

    def policy(spec: Object, namespace: str = "a") -> Object:
        return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}

    assert may_connect([], stranger, server, 1)  # no policy: everything is open
    deny_all = policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not may_connect([deny_all], friend, server, 5432)
    assert may_connect(
        [policy({"podSelector": {}}, namespace="b")], friend, server, 5432
    )  # another namespace's
    same_namespace = policy(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
        }
    )
    assert may_connect([same_namespace], friend, server, 5432)
    assert not may_connect([same_namespace], stranger, server, 5432)  # podSelector alone: own namespace
    # namespaceSelector and podSelector in one peer: AND; in two peers: OR.
    both = {
        "namespaceSelector": {"matchLabels": {"team": "x"}},
        "podSelector": {"matchLabels": {"app": "db"}},
    }
    assert not may_connect(
        [policy({"podSelector": {}, "ingress": [{"from": [both]}]})], stranger, server, 5432
    )
    either = [
        {"namespaceSelector": {"matchLabels": {"team": "x"}}},
        {"podSelector": {"matchLabels": {"app": "db"}}},
    ]
    assert may_connect([policy({"podSelector": {}, "ingress": [{"from": either}]})], stranger, server, 5432)
    # Ports: by number, by the server's container port name, ranges; other ports stay closed.
    for ports in ([{"port": 5432}], [{"port": "pg"}], [{"port": 5000, "endPort": 6000}]):
        open_port = policy({"podSelector": {}, "ingress": [{"ports": ports}]})
        assert may_connect([open_port], stranger, server, 5432), ports
        assert not may_connect([open_port], stranger, server, 8080), ports
    assert not may_connect(
        [policy({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})], friend, server, 5432
    )
    # Egress isolates the client.
    no_egress = policy({"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Egress"]})
    assert not may_connect([no_egress], friend, server, 5432)
    assert may_connect([no_egress], stranger, server, 5432)


def cast(objects: list[Object]) -> dict[str, Pod]:
    """Every pod of the render plus the pods around it, by name."""
    pods = {pod.name: pod for pod in rendered_pods(objects)}
    namespace = pods["pushgateway"].namespace
    for pod in (
        outside_pod("kfp-step", namespace, KFP_POD_LABELS),
        outside_pod("notebook", namespace, {"app": "notebook"}),
        outside_pod("kfp-step-elsewhere", "team-b", KFP_POD_LABELS),
        outside_pod("fake-prometheus", "team-b", {"app.kubernetes.io/name": "prometheus"}),
        outside_pod("operator-prometheus", MONITORING_NAMESPACE, OPERATOR_PROMETHEUS_LABELS),
        outside_pod("grafana", MONITORING_NAMESPACE, {"app.kubernetes.io/name": "grafana"}),
    ):
        pods[pod.name] = pod
    return pods


def clients_of(objects: list[Object], server: str, port: int) -> set[str]:
    pods = cast(objects)
    policies = by_kind(objects, "NetworkPolicy")
    return {
        name
        for name, pod in pods.items()
        if name != server and may_connect(policies, pod, pods[server], port)
    }


def test_only_pipeline_pods_push_and_only_prometheus_scrapes_the_pushgateway(rendered):
    for overlay, objects in rendered.items():
        operator = bool(by_kind(objects, "ServiceMonitor"))
        writers = {"kfp-step", "diffurec-train-ddp-master", "diffurec-train-ddp-worker"}
        scrapers = {"prometheus"} | ({"operator-prometheus"} if operator else set())
        assert clients_of(objects, "pushgateway", 9091) == writers | scrapers, overlay
        assert clients_of(objects, "pushgateway", 9092) == set(), overlay


def test_prometheus_and_alertmanager_are_reachable_only_from_what_needs_them(rendered):
    for overlay, objects in rendered.items():
        # The gate step queries Prometheus; Grafana (namespace "monitoring") shows it.
        assert clients_of(objects, "prometheus", 9090) == {"kfp-step", "grafana"}, overlay
        assert clients_of(objects, "alertmanager", 9093) == {"prometheus"}, overlay
        assert clients_of(objects, "mlflow-postgres", 5432) == {"mlflow"}, overlay


def test_the_policy_checks_fail_without_the_policies(rendered):
    objects = [o for o in rendered[OVERLAYS[0]] if o["kind"] != "NetworkPolicy"]
    assert "notebook" in clients_of(objects, "pushgateway", 9091)
    assert "fake-prometheus" in clients_of(objects, "prometheus", 9090)


def container(objects: list[Object], deployment: str) -> Object:
    (obj,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == deployment]
    (main,) = obj["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_no_lifecycle_api_and_configuration_changes_roll_the_pods(rendered):
    for overlay, objects in rendered.items():
        for _, _, template in pod_templates(objects):
            for c in template["spec"]["containers"]:
                assert "--web.enable-lifecycle" not in c.get("args", []), (overlay, c["name"])
        # Hash-suffixed ConfigMap names: a changed configuration is a new name, so a new pod.
        for deployment in ("prometheus", "alertmanager"):
            (obj,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == deployment]
            (config,) = [
                v["configMap"]["name"] for v in obj["spec"]["template"]["spec"]["volumes"] if "configMap" in v
            ]
            assert re.fullmatch(rf"{deployment}-config-[a-z0-9]{{10}}", config), (overlay, config)


# --- Alertmanager and the dashboard: shipped copies of monitoring/ ------------------------------


def config_map(objects: list[Object], prefix: str) -> Object:
    (found,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith(prefix)]
    return found


def test_alertmanager_runs_the_shipped_configuration(rendered):
    copy_path = REPO / "k8s/base/monitoring/alertmanager.yml"
    for overlay, objects in rendered.items():
        main = container(objects, "alertmanager")
        image, _, tag = main["image"].rpartition(":")
        assert image == "docker.io/prom/alertmanager" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), main["image"]
        args = dict(a.split("=", 1) for a in main["args"])
        config = config_map(objects, "alertmanager-config")
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        directory, _, key = args["--config.file"].rpartition("/")
        assert mounts[directory] == "config" and config["data"][key] == copy_path.read_text(), overlay
        assert args["--cluster.listen-address"] == ""  # one replica: no gossip port to open
        routing = yaml.safe_load(config["data"][key])
        receivers = {r["name"] for r in routing["receivers"]}
        assert routing["route"]["receiver"] in receivers
        assert {r["receiver"] for r in routing["route"].get("routes", [])} <= receivers


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool (Debian prometheus-alertmanager) not installed"
)
def test_shipped_alertmanager_configuration_passes_amtool():
    copy_path = REPO / "k8s/base/monitoring/alertmanager.yml"
    check = subprocess.run(["amtool", "check-config", str(copy_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_copy_equals_monitoring_alertmanager_yml():
    source = REPO / "monitoring/alertmanager.yml"
    if not source.exists():
        pytest.skip("monitoring/alertmanager.yml does not exist yet (engineer A writes it)")
    assert (REPO / "k8s/base/monitoring/alertmanager.yml").read_text() == source.read_text(), (
        "copy monitoring/alertmanager.yml to k8s/base/monitoring/alertmanager.yml"
    )


def test_dashboard_config_map_carries_the_sidecar_label_and_the_dashboard(rendered):
    copy_path = REPO / "k8s/base/monitoring/grafana/diffurec-dashboard.json"
    for overlay, objects in rendered.items():
        (dashboard,) = [
            c
            for c in by_kind(objects, "ConfigMap")
            if c["metadata"].get("labels", {}).get("grafana_dashboard")
        ]
        # The label and value kube-prometheus-stack's Grafana sidecar watches (in all namespaces).
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", overlay
        # A fixed name: a new version replaces the ConfigMap instead of adding a second dashboard.
        assert dashboard["metadata"]["name"] == "diffurec-dashboard", overlay
        (text,) = dashboard["data"].values()
        assert text == copy_path.read_text(), overlay
        parsed = json.loads(text)
        assert parsed["title"] and parsed["uid"] and isinstance(parsed["panels"], list), overlay
        # kubectl apply (client side) copies the object into an annotation of at most 256 KiB.
        assert len(text.encode()) < 256 * 1024 - 4096, overlay


def test_dashboard_copy_equals_monitoring_dashboard():
    source = REPO / "monitoring/grafana/diffurec-dashboard.json"
    if not source.exists():
        pytest.skip("monitoring/grafana/diffurec-dashboard.json does not exist yet (engineer C writes it)")
    assert (REPO / "k8s/base/monitoring/grafana/diffurec-dashboard.json").read_text() == source.read_text(), (
        "copy monitoring/grafana/diffurec-dashboard.json to k8s/base/monitoring/grafana/"
    )


def test_the_settings_config_map_holds_every_key_the_pipeline_reads(rendered):
    for overlay, objects in rendered.items():
        assert set(SETTINGS_KEYS) <= set(settings(objects)), overlay
