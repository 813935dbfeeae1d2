"""Policies the rendered manifests must keep: probes, resources, hardening, pinning, wiring, config.

The wiring tests resolve names the way Kubernetes does (Service selectors against pod labels,
named target ports against container ports, ConfigMap keys against the files the server opens),
and the configuration tests feed the ConfigMap and the container arguments to the server's own
flag parser, so a flag or file the server does not understand fails here, not in a cluster.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from serving.config import (
    ServerConfig,
    build_parser,
    parse_args,
    parse_model_config_text,
    parse_monitoring_text,
)
from tests.k8s.manifests import (
    NATIVE_PROBE_TARGETS,
    OUR_SERVER_TARGETS,
    REPO,
    SECURE_TARGETS,
    SERVING_TARGETS,
    STACKS,
    TARGETS,
    Obj,
    all_containers,
    container,
    flag_values,
    label_selector_matches,
    of_kind,
    one,
    pod_templates,
    render,
    selector_matches,
    server_deployment,
)
from tests.k8s.secrets import secure_stand_ins

ALL_TARGETS = (*TARGETS, *STACKS)
MODELS = {"digits", "catdog", "sentiment"}
PROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# Flags of the product contract (CONTRACT.md) plus the deployment flags the server adds; the
# thread-pool flag keeps tensorflow_model_server's name.
CONTRACT_FLAGS = {
    "port",
    "rest_api_port",
    "model_base_path",
    "model_name",
    "model_config_file",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "grpc_max_message_bytes",
    "backend",
    "onnx_providers",
    "onnx_require_accelerator",  # GPU overlays: fail a load that got no GPU instead of using the CPU
    "drain_seconds",
    "tensorflow_intra_op_parallelism",
    "grpc_channel_arguments",  # tensorflow_model_server's own flag
    "ssl_config_file",  # security (components/secure)
    "auth_token_file",
    "auth_exempt",  # which endpoints need no token: the probes and Prometheus rely on it
}
# tensorflow_model_server flags the tfserving overlay may use (from TF Serving's main.cc).
TF_SERVING_FLAGS = {
    "port",
    "rest_api_port",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "file_system_poll_wait_seconds",
    "grpc_max_threads",
    "rest_api_num_threads",
    "rest_api_timeout_in_ms",
    "enable_grpc_healthcheck_service",
}
CONFIG_FLAGS = ("model_config_file", "batching_parameters_file", "monitoring_config_file")
# The exec probe of components/secure: the image's Python runs this script, mounted from a ConfigMap.
TLS_PROBE_SCRIPT = "/etc/model-serving-probe/tls_health_probe.py"


# ---- helpers ----


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str | int) -> float:
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def container_ports(spec: Obj) -> dict[str | int, int]:
    """Both the names and the numbers of a container's ports -> the port number."""
    ports: dict[str | int, int] = {}
    for port in spec.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def probe_port(probe: Obj) -> str | int | None:
    """The port a probe connects to; None for the exec probes of the secure component, which run the
    image's own Python on a script mounted beside it (see test_k8s_secure.py)."""
    handlers = [key for key in ("grpc", "httpGet", "tcpSocket", "exec") if key in probe]
    assert len(handlers) == 1, f"a probe needs exactly one handler, found {handlers}"
    if handlers[0] == "exec":
        command = probe["exec"]["command"]
        assert command[:2] == ["python", TLS_PROBE_SCRIPT], (
            f"exec probes depend on binaries in the image; only the TLS health probe is one: {command}"
        )
        return None
    port: str | int = probe[handlers[0]]["port"]
    return port


def configmap_files(objects: tuple[Obj, ...], pod_spec: Obj, spec: Obj) -> dict[str, str]:
    """Absolute path inside the container -> content, for every ConfigMap key the container mounts."""
    configmaps = {cm["metadata"]["name"]: cm for cm in of_kind(objects, "ConfigMap")}
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in spec.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        assert source["name"] in configmaps, f"ConfigMap {source['name']} is not in the render"
        for key, content in configmaps[source["name"]]["data"].items():
            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = content
    return files


def mount_for(pod_spec: Obj, spec: Obj, path: str) -> tuple[Obj, Obj]:
    """The (volumeMount, volume) whose mountPath holds `path`."""
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    candidates = [
        m for m in spec.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert candidates, f"nothing is mounted where {path} lives"
    mount = max(candidates, key=lambda m: len(m["mountPath"]))
    return mount, volumes[mount["name"]]


def drain_seconds(args: list[str]) -> float:
    values = flag_values(args)
    return float(values["drain_seconds"]) if "drain_seconds" in values else ServerConfig.drain_seconds


def server_config_from_manifest(
    objects: tuple[Obj, ...], tmp_path: Path, secret_files: dict[str, str] | None = None
) -> ServerConfig:
    """Run the server's own flag parser on the Deployment's args, the config files taken from the
    ConfigMap (written under tmp_path, with the paths in the args rewritten to point there).

    `secret_files` stands in for Secrets, which are made outside the manifests: {flag: content};
    each such flag must point into a mounted Secret volume."""
    pod_spec = server_deployment(objects)["spec"]["template"]["spec"]
    server = container(pod_spec, "server")
    files = configmap_files(objects, pod_spec, server)
    args = []
    for arg in server["args"]:
        name, _, value = arg[2:].partition("=")
        if name in CONFIG_FLAGS:
            assert value in files, f"--{name}={value}: no ConfigMap key is mounted there"
            local = tmp_path / Path(value).name
            local.write_text(files[value])
            arg = f"--{name}={local}"
        elif secret_files and name in secret_files:
            _, volume = mount_for(pod_spec, server, value)
            assert "secret" in volume, f"--{name}={value} is not in a mounted Secret"
            local = tmp_path / Path(value).name
            local.write_text(secret_files[name])
            arg = f"--{name}={local}"
        args.append(arg)
    return parse_args(args)


# ---- every pod ----


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_every_container_has_requests_and_limits(target: str) -> None:
    for owner, template in pod_templates(render(target)):
        for spec in all_containers(template["spec"]):
            where = f"{owner['metadata']['name']}/{spec['name']}"
            resources = spec.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (
                    f"{where}: {kind} needs cpu and memory"
                )
            assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"]), where
            assert memory_bytes(resources["requests"]["memory"]) <= memory_bytes(
                resources["limits"]["memory"]
            ), where
            # Extended resources (GPUs) cannot be overcommitted: a request must equal the limit.
            gpu_request = resources["requests"].get("nvidia.com/gpu")
            if gpu_request is not None:
                assert gpu_request == resources["limits"].get("nvidia.com/gpu"), where


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_pods_meet_the_restricted_pod_security_standard(target: str) -> None:
    for owner, template in pod_templates(render(target)):
        pod = template["spec"]
        name = owner["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 10001) != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, (
            f"{name}: no pod here talks to the API server"
        )
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for spec in all_containers(pod):
            where = f"{name}/{spec['name']}"
            context = spec.get("securityContext", {})
            assert context.get("runAsNonRoot") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged"), where
            # A read-only root needs somewhere to write temporary files.
            tmp_mount, tmp_volume = mount_for(pod, spec, "/tmp/x")
            assert tmp_mount["mountPath"] == "/tmp" and "emptyDir" in tmp_volume, (
                f"{where}: /tmp is an emptyDir"
            )


def test_namespace_enforces_restricted_pod_security() -> None:
    namespace = one(render("cpu"), "Namespace", "model-serving")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_images_are_pinned(target: str) -> None:
    for owner, template in pod_templates(render(target)):
        for spec in all_containers(template["spec"]):
            image = spec["image"]
            where = f"{owner['metadata']['name']}/{spec['name']}: {image}"
            if "@sha256:" in image:
                assert re.fullmatch(r".+@sha256:[0-9a-f]{64}", image), where
                continue
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{where} has no tag"
            assert tag != "latest" and re.search(r"\d", tag), f"{where}: pin a version"
            if name.startswith("model-serving/"):
                assert tag == PROJECT_VERSION, f"{where}: our images carry the project version"
            assert spec.get("imagePullPolicy") in (None, "IfNotPresent"), where


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_probes_point_at_declared_ports(target: str) -> None:
    for owner, template in pod_templates(render(target)):
        for spec in template["spec"]["containers"]:
            ports = container_ports(spec)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in spec:
                    port = probe_port(spec[kind])
                    assert port is None or port in ports, (
                        f"{owner['metadata']['name']}/{spec['name']} {kind}: port {port} undeclared"
                    )


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_labels_are_consistent(target: str) -> None:
    for obj in render(target):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "model-serving", (
            f"{obj['kind']}/{obj['metadata']['name']}"
        )
        assert "app.kubernetes.io/name" in labels, f"{obj['kind']}/{obj['metadata']['name']}"
    for owner, template in pod_templates(render(target)):
        pod_labels = template["metadata"]["labels"]
        assert (
            pod_labels.get("app.kubernetes.io/name") == owner["metadata"]["labels"]["app.kubernetes.io/name"]
        )
        if owner["kind"] == "Deployment":
            assert selector_matches(owner["spec"]["selector"]["matchLabels"], pod_labels), owner["metadata"][
                "name"
            ]


# ---- the model server ----


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_server_declares_the_api_ports(target: str) -> None:
    server = container(server_deployment(render(target))["spec"]["template"]["spec"], "server")
    assert container_ports(server) == {"grpc": 8500, 8500: 8500, "rest": 8501, 8501: 8501}


@pytest.mark.parametrize("target", NATIVE_PROBE_TARGETS)
def test_server_probes_use_grpc_health(target: str) -> None:
    """Start-up, readiness and liveness all ask grpc.health.v1 on the gRPC port.

    Readiness asks '' (SERVING once every model is loaded); start-up and liveness ask 'liveness'
    (SERVING while the process runs), so an empty models volume makes pods unready, not restarted.
    """
    from serving.server import LIVENESS_SERVICE

    server = container(server_deployment(render(target))["spec"]["template"]["spec"], "server")
    wanted = {"startupProbe": LIVENESS_SERVICE, "readinessProbe": "", "livenessProbe": LIVENESS_SERVICE}
    for kind, service in wanted.items():
        assert server[kind]["grpc"]["port"] == 8500, kind
        assert server[kind]["grpc"].get("service", "") == service, kind
    # Loading and warming may take minutes: the start-up probe allows for it, liveness does not wait.
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert "initialDelaySeconds" not in server["livenessProbe"]


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_termination_outlasts_prestop_and_drain(target: str) -> None:
    pod = server_deployment(render(target))["spec"]["template"]["spec"]
    server = container(pod, "server")
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3, "endpoints need a few seconds to drop the pod"
    drain = drain_seconds(server["args"]) if target in OUR_SERVER_TARGETS else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + 5


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_models_come_read_only_from_the_models_pvc(target: str) -> None:
    objects = render(target)
    pod = server_deployment(objects)["spec"]["template"]["spec"]
    mount, volume = mount_for(pod, container(pod, "server"), "/models/digits")
    assert mount["mountPath"] == "/models" and mount.get("readOnly") is True
    claim = volume["persistentVolumeClaim"]
    assert claim.get("readOnly") is True
    pvc = one(objects, "PersistentVolumeClaim", claim["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "pods on several nodes share the repository"


@pytest.mark.parametrize("target", OUR_SERVER_TARGETS)
def test_server_args_are_contract_flags(target: str) -> None:
    server = container(server_deployment(render(target))["spec"]["template"]["spec"], "server")
    flags = flag_values(server["args"])
    assert set(flags) <= CONTRACT_FLAGS, f"not in the contract: {set(flags) - CONTRACT_FLAGS}"
    known = {action.dest for action in build_parser()._actions}
    assert set(flags) <= known, f"the server does not know {set(flags) - known}"
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    cpu_limit = cpu_cores(server["resources"]["limits"]["cpu"])
    # Absent means auto (sized from the cgroup CPU quota); a set value must fit the limit.
    assert 1 <= int(flags.get("tensorflow_intra_op_parallelism", "1")) <= cpu_limit


@pytest.mark.parametrize("target", OUR_SERVER_TARGETS)
def test_server_parses_its_manifest_configuration(target: str, tmp_path: Path) -> None:
    """The server's own parser accepts the args and the ConfigMap files they point at (and, for the
    secure overlays, stand-ins for the Secrets' files: see test_k8s_secure.py)."""
    objects = render(target)
    secret_files = secure_stand_ins(tmp_path) if target in SECURE_TARGETS else None
    config = server_config_from_manifest(objects, tmp_path, secret_files)
    assert (config.tls is not None) == (target in SECURE_TARGETS)
    assert (config.auth_token_file is not None) == (target in SECURE_TARGETS)
    assert {model.name for model in config.models} == MODELS
    for model in config.models:
        assert model.base_path == Path("/models") / model.name
    assert config.batching is not None and config.batching.max_batch_size >= 1
    assert config.monitoring.enable
    pod_annotations = server_deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["prometheus.io/path"] == config.monitoring.path
    assert pod_annotations["prometheus.io/port"] == str(config.rest_api_port)
    assert pod_annotations["prometheus.io/scrape"] == "true"
    expected_providers = (
        ("CUDAExecutionProvider", "CPUExecutionProvider")
        if target.startswith("gpu")
        else ("CPUExecutionProvider",)
    )
    assert config.onnx_providers == expected_providers
    assert config.onnx_require_accelerator == target.startswith("gpu")


def test_model_config_lists_the_three_models() -> None:
    configmap = of_kind(render("cpu"), "ConfigMap")[0]
    models = parse_model_config_text(configmap["data"]["models.config"])
    assert {model.name: str(model.base_path) for model in models} == {
        name: f"/models/{name}" for name in MODELS
    }
    assert all(model.platform == "tensorflow" for model in models)


def test_configmap_name_is_hashed() -> None:
    """Generated with a content hash, so editing a config file rolls the pods."""
    configmap = of_kind(render("cpu"), "ConfigMap")[0]
    assert re.fullmatch(r"model-server-config-[a-z0-9]{10}", configmap["metadata"]["name"])


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_services_select_server_pods_and_ports(target: str) -> None:
    objects = render(target)
    pod = server_deployment(objects)["spec"]["template"]
    ports = container_ports(container(pod["spec"], "server"))
    services = {service["metadata"]["name"]: service for service in of_kind(objects, "Service")}
    assert set(services) == {"model-server", "model-server-headless"}
    for service in services.values():
        assert selector_matches(service["spec"]["selector"], pod["metadata"]["labels"])
        assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 8500), ("rest", 8501)}
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"]
    assert services["model-server"]["spec"].get("type") == "ClusterIP"
    assert services["model-server"]["spec"].get("clusterIP") is None
    # DNS of the headless Service lists every ready pod: what dns:/// + round_robin clients need.
    assert services["model-server-headless"]["spec"]["clusterIP"] == "None"
    assert not services["model-server-headless"]["spec"].get("publishNotReadyAddresses")


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_autoscaler_and_disruption_budget_target_the_server(target: str) -> None:
    objects = render(target)
    deployment = server_deployment(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = one(objects, "HorizontalPodAutoscaler", "model-server")
    target_ref = hpa["spec"]["scaleTargetRef"]
    assert (target_ref["apiVersion"], target_ref["kind"], target_ref["name"]) == (
        "apps/v1",
        "Deployment",
        "model-server",
    )
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one(objects, "PodDisruptionBudget", "model-server")
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    # With minAvailable >= minReplicas a node drain could never evict a server pod.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0, "a rollout never removes capacity first"


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_network_policy_opens_only_the_api_ports(target: str) -> None:
    objects = render(target)
    pod_labels = server_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    policy = one(objects, "NetworkPolicy", "model-server")
    assert selector_matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {
        (p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["ingress"] for p in rule["ports"]
    }
    assert ports == {(8500, "TCP"), (8501, "TCP")}


CLIENT_LABELS = {"model-serving/client": "true"}
PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})


def admitted_ports(policy: Obj, namespace_labels: dict[str, str], pod_labels: dict[str, str]) -> set[int]:
    """Ports on which `policy` admits a pod with `pod_labels` in a namespace with `namespace_labels`
    (another namespace than the policy's, unless its name label says otherwise)."""
    same_namespace = namespace_labels.get("kubernetes.io/metadata.name") == policy["metadata"]["namespace"]
    ports: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "no address ranges: clients are chosen by label"
            if "namespaceSelector" in peer:
                namespace_ok = label_selector_matches(peer["namespaceSelector"], namespace_labels)
            else:  # a podSelector alone means the policy's own namespace
                namespace_ok = same_namespace
            if namespace_ok and label_selector_matches(peer.get("podSelector", {}), pod_labels):
                ports |= {p["port"] for p in rule["ports"]}
    return ports


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_network_policy_admits_clients_and_prometheus_only(target: str) -> None:
    """Rendered, not as written: kustomize's `labels` rewrite NetworkPolicy selectors."""
    policy = one(render(target), "NetworkPolicy", "model-server")
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
    own_namespace = {"kubernetes.io/metadata.name": "model-serving"}
    other_namespace = {"kubernetes.io/metadata.name": "my-app"}
    # Clients: labelled pods here, any pod of a labelled namespace; both API ports.
    assert admitted_ports(policy, own_namespace, CLIENT_LABELS) == {8500, 8501}
    assert admitted_ports(policy, {**other_namespace, **CLIENT_LABELS}, {"app": "anything"}) == {8500, 8501}
    locust = one(render("loadtest"), "Deployment", "locust-worker")["spec"]["template"]["metadata"]["labels"]
    assert admitted_ports(policy, own_namespace, locust) == {8500, 8501}
    # Prometheus: the metrics are on the REST port, and only there.
    assert admitted_ports(policy, PROMETHEUS[0], PROMETHEUS[1]) == {8501}
    # Nobody else: unlabelled pods here or elsewhere, a client label in the wrong place, Prometheus
    # labels outside the monitoring namespace, the monitoring namespace's other pods.
    assert admitted_ports(policy, own_namespace, {"app": "anything"}) == set()
    assert admitted_ports(policy, other_namespace, CLIENT_LABELS) == set()
    assert admitted_ports(policy, other_namespace, PROMETHEUS[1]) == set()
    assert admitted_ports(policy, PROMETHEUS[0], {"app.kubernetes.io/name": "grafana"}) == set()
    server_labels = server_deployment(render(target))["spec"]["template"]["metadata"]["labels"]
    assert admitted_ports(policy, own_namespace, server_labels) == set()


# ---- overlays ----


@pytest.mark.parametrize("target", ["gpu", "gpu-secure"])
def test_gpu_overlay_requests_a_gpu_on_gpu_nodes(target: str) -> None:
    pod = server_deployment(render(target))["spec"]["template"]["spec"]
    server = container(pod, "server")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"].startswith("model-serving/server-gpu:")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert flag_values(server["args"])["onnx_providers"] == "CUDAExecutionProvider,CPUExecutionProvider"
    assert flag_values(server["args"])["onnx_require_accelerator"] == "true"


def test_cpu_overlay_requests_no_gpu() -> None:
    pod = server_deployment(render("cpu"))["spec"]["template"]["spec"]
    server = container(pod, "server")
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert server["image"].startswith("model-serving/server:")
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_tfserving_overlay_serves_the_same_repository_with_stock_tf_serving() -> None:
    objects = render("tfserving")
    pod = server_deployment(objects)["spec"]["template"]["spec"]
    server = container(pod, "server")
    assert re.fullmatch(r"tensorflow/serving:2\.\d+\.\d+", server["image"])
    assert server["command"] == ["tensorflow_model_server"]
    flags = flag_values(server["args"])
    assert set(flags) <= TF_SERVING_FLAGS, (
        f"not tensorflow_model_server flags: {set(flags) - TF_SERVING_FLAGS}"
    )
    files = configmap_files(objects, pod, server)
    for name in CONFIG_FLAGS:
        assert flags[name] in files, f"--{name} points at no ConfigMap key"
    # Same ConfigMap as our server, byte for byte.
    assert files == configmap_files(
        render("cpu"), server_deployment(render("cpu"))["spec"]["template"]["spec"], server
    )
    # TF Serving's grpc.health.v1 (behind --enable_grpc_healthcheck_service) says SERVING once the
    # port is open: start-up and liveness ask it for "" (it knows no "liveness" service), readiness
    # asks the REST model status.
    from serving.protocol.grpc.server import TF_SERVING_HEALTH_SERVICES

    assert flags["enable_grpc_healthcheck_service"] == "true"
    for kind in ("startupProbe", "livenessProbe"):
        assert server[kind]["grpc"]["port"] == 8500, kind
        assert server[kind]["grpc"].get("service", "") in ("", *TF_SERVING_HEALTH_SERVICES), kind
    assert "grpc" not in server["readinessProbe"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v1/models/digits"


def test_components_add_a_service_monitor_and_bucket_sync(tmp_path: Path) -> None:
    objects = render("components")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    selected = [
        service
        for service in of_kind(objects, "Service")
        if selector_matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"].get("labels", {}))
        and all(
            expression["key"] not in service["metadata"].get("labels", {})
            for expression in monitor["spec"]["selector"].get("matchExpressions", [])
            if expression["operator"] == "DoesNotExist"
        )
    ]
    assert [service["metadata"]["name"] for service in selected] == ["model-server"], "scrape each pod once"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in selected[0]["spec"]["ports"]}
    configmap = of_kind(objects, "ConfigMap")[0]
    assert endpoint["path"] == parse_monitoring_text(configmap["data"]["monitoring.config"]).path

    pod = server_deployment(objects)["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    _, models_volume = mount_for(pod, container(pod, "server"), "/models/digits")
    assert set(models_volume) == {"name", "emptyDir"}, "the PVC source is replaced, not merged"
    fetch_mount, _ = mount_for(pod, fetch, "/models/digits")
    assert fetch_mount["name"] == models_volume["name"] and not fetch_mount.get("readOnly")
    assert fetch["args"][-1] == "/models"
    # The server still parses its configuration with the component applied.
    assert {model.name for model in server_config_from_manifest(objects, tmp_path).models} == MODELS


# ---- training and export jobs ----


@pytest.mark.parametrize("model", sorted(MODELS))
def test_training_jobs_train_each_model_on_a_gpu(model: str) -> None:
    job = one(render("jobs"), "Job", f"train-{model}")
    pod = job["spec"]["template"]["spec"]
    (train,) = pod["containers"]
    assert train["command"] == ["python", "-m", "training", model, "--out", f"/runs/{model}"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["completionMode"] == "Indexed", "JOB_COMPLETION_INDEX feeds TF_CONFIG's task index"
    runs_mount, runs_volume = mount_for(pod, train, f"/runs/{model}/x")
    assert not runs_mount.get("readOnly")
    assert runs_volume["persistentVolumeClaim"]["claimName"] == "training-runs"
    env = {item["name"]: item for item in train.get("env", [])}
    _, data_volume = mount_for(pod, train, f"{env['DATA_DIR']['value']}/mnist")
    assert data_volume["persistentVolumeClaim"]["claimName"] == "training-data"
    # TensorFlow sizes its thread pools from TRAIN_THREADS: the pod's CPU limit, not the node's cores.
    assert env["TRAIN_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"].get("ttlSecondsAfterFinished")


def test_export_job_writes_every_model_to_the_servers_pvc() -> None:
    job = one(render("export"), "Job", "export-models")
    pod = job["spec"]["template"]["spec"]
    (export,) = pod["containers"]
    script = " ".join([*export["command"], *export["args"]])
    assert "python -m export" in script and "--models-dir /models" in script
    assert set(re.findall(r"for model in ([a-z ]+);", script)[0].split()) == MODELS
    models_mount, models_volume = mount_for(pod, export, "/models/digits")
    assert not models_mount.get("readOnly")
    # The very PVC that the server overlays mount.
    server_pod = server_deployment(render("cpu"))["spec"]["template"]["spec"]
    _, server_models = mount_for(server_pod, container(server_pod, "server"), "/models/digits")
    assert (
        models_volume["persistentVolumeClaim"]["claimName"]
        == server_models["persistentVolumeClaim"]["claimName"]
    )
    runs_mount, runs_volume = mount_for(pod, export, "/runs/digits")
    assert runs_mount.get("readOnly") is True
    # Parity checks read the test sets: the same data PVC as training, read-only.
    env = {item["name"]: item.get("value") for item in export.get("env", [])}
    data_mount, data_volume = mount_for(pod, export, f"{env['DATA_DIR']}/mnist")
    assert data_mount.get("readOnly") is True
    assert data_volume["persistentVolumeClaim"]["claimName"] == "training-data"
    training_pvcs = {pvc["metadata"]["name"] for pvc in of_kind(render("jobs"), "PersistentVolumeClaim")}
    assert runs_volume["persistentVolumeClaim"]["claimName"] in training_pvcs


# ---- load test ----


def test_locust_workers_reach_the_master_and_the_master_the_server() -> None:
    objects = render("loadtest")
    master = one(objects, "Deployment", "locust-master")
    worker = one(objects, "Deployment", "locust-worker")
    service = one(objects, "Service", "locust-master")
    master_pod = master["spec"]["template"]
    master_container = container(master_pod["spec"], "locust")
    assert selector_matches(service["spec"]["selector"], master_pod["metadata"]["labels"])
    assert not selector_matches(service["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])
    master_ports = container_ports(master_container)
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    for port in service_ports.values():
        assert master_ports[port["targetPort"]] == port["port"]

    master_args = master_container["args"]
    worker_args = container(worker["spec"]["template"]["spec"], "locust")["args"]
    for args in (master_args, worker_args):
        assert args[:2] == ["-f", "/app/loadtests/locustfile.py"]
    assert "--master" in master_args and "--worker" in worker_args
    assert f"--master-host={service['metadata']['name']}" in worker_args
    assert f"--master-port={service_ports['master']['port']}" in worker_args

    # --host names the model server's Service and its REST port.
    (host,) = [arg.split("=", 1)[1] for arg in master_args if arg.startswith("--host=")]
    url = urlsplit(host)
    server_service = one(render("cpu"), "Service", "model-server")
    assert url.hostname == server_service["metadata"]["name"]
    assert url.port == {p["name"]: p["port"] for p in server_service["spec"]["ports"]}["rest"]
