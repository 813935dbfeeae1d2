"""components/secure (and overlays/secure): TLS and bearer tokens from Secrets, probes that speak TLS.

The manifests are checked as rendered: the Secrets are mounted read-only as files (never as
environment variables), the server gets the two flags pointing into those mounts, the probes run
the TLS health probe on the same services as the native probes. Then the probe script, as the
rendered ConfigMap carries it, is run against a real server started with those flags (TLS and
mutual TLS), and the SSLConfig helper script is run as the README tells users to run it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from serving import codec
from serving.config import parse_ssl_text
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.k8s.manifests import (
    K8S,
    REPO,
    SECURE_TARGETS,
    STACKS,
    TARGETS,
    Obj,
    all_containers,
    container,
    flag_values,
    of_kind,
    one,
    pod_templates,
    render,
    server_deployment,
)
from tests.k8s.secrets import SSL_CONFIG_SCRIPT, TOKEN, ssl_config
from tests.k8s.test_k8s_policy import TLS_PROBE_SCRIPT, mount_for
from tests.serving.fixtures import reference_probabilities, start_server, write_tiny_version

ALL_TARGETS = (*TARGETS, *STACKS)
PLAIN = {"secure": "cpu", "gpu-secure": "gpu"}  # each secure render and the render it secures
# server flag -> (the Secret mounted for it, its key)
SECRETS = {
    "ssl_config_file": ("model-server-tls", "ssl.config"),
    "auth_token_file": ("model-server-tokens", "tokens"),
}
PROBE_CONFIGMAP = "model-server-tls-probe"


def _server(target: str) -> tuple[Obj, Obj]:
    pod = server_deployment(render(target))["spec"]["template"]["spec"]
    return pod, container(pod, "server")


@pytest.mark.parametrize("target", SECURE_TARGETS)
def test_secrets_are_mounted_read_only_as_files(target: str) -> None:
    pod, server = _server(target)
    flags = flag_values(server["args"])
    for flag, (secret_name, key) in SECRETS.items():
        path = flags[flag]
        mount, volume = mount_for(pod, server, path)
        assert mount.get("readOnly") is True, flag
        assert "subPath" not in mount, f"{flag}: a subPath mount never sees a rotated Secret"
        secret = volume["secret"]
        assert secret["secretName"] == secret_name
        assert [item["key"] for item in secret["items"]] == [key]
        assert path == f"{mount['mountPath']}/{secret['items'][0]['path']}"
        # Owner (root) and group (the pod's fsGroup, the server's group) may read; nobody else,
        # nobody may write or execute.
        assert secret["defaultMode"] in (0o400, 0o440), oct(secret["defaultMode"])
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_no_secret_reaches_an_environment_variable(target: str) -> None:
    for owner, template in pod_templates(render(target)):
        for spec in all_containers(template["spec"]):
            where = f"{owner['metadata']['name']}/{spec['name']}"
            for item in spec.get("env", []):
                assert "secretKeyRef" not in item.get("valueFrom", {}), where
            assert not any("secretRef" in source for source in spec.get("envFrom", [])), where


@pytest.mark.parametrize("target", SECURE_TARGETS)
def test_secrets_are_made_outside_the_manifests_and_documented(target: str) -> None:
    """No Secret object (so no key material) in the render; the README says how to make each one,
    with the names and keys the Deployment mounts."""
    objects = render(target)
    assert not of_kind(objects, "Secret")
    readme = (K8S / "README.md").read_text()
    for secret_name, key in SECRETS.values():
        create = rf"kubectl -n model-serving create secret generic {secret_name} \\\n?\s*(.*)"
        command = re.search(create, readme)
        assert command, f"k8s/README.md does not show how to create {secret_name}"
        assert f"--from-file={key}" in command[1], command[1]


@pytest.mark.parametrize("target", SECURE_TARGETS)
def test_secure_overlays_add_exactly_the_security_flags(target: str) -> None:
    _, server = _server(target)
    _, plain = _server(PLAIN[target])
    flags, plain_flags = flag_values(server["args"]), flag_values(plain["args"])
    assert {k: v for k, v in flags.items() if k not in plain_flags} == {
        "ssl_config_file": "/etc/model-serving-tls/ssl.config",
        "auth_token_file": "/etc/model-serving-auth/tokens",
        "auth_exempt": "health,metrics",  # the probes and Prometheus carry no token
    }
    assert {k: v for k, v in flags.items() if k in plain_flags} == plain_flags
    annotations = server_deployment(render(target))["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"


@pytest.mark.parametrize("target", SECURE_TARGETS)
def test_probes_ask_the_health_services_over_tls(target: str) -> None:
    """Same services as the native probes (see test_server_probes_use_grpc_health), through the
    TLS probe; the thresholds of the overlay underneath are kept."""
    from serving.server import LIVENESS_SERVICE

    objects = render(target)
    pod, server = _server(target)
    _, plain = _server(PLAIN[target])
    ssl_flag = flag_values(server["args"])["ssl_config_file"]
    wanted = {"startupProbe": LIVENESS_SERVICE, "readinessProbe": "", "livenessProbe": LIVENESS_SERVICE}
    for kind, service in wanted.items():
        probe = server[kind]
        assert set(probe) - {"exec"} == set(plain[kind]) - {"grpc"}, kind
        assert probe["exec"]["command"] == [
            "python",
            TLS_PROBE_SCRIPT,
            f"--ssl_config_file={ssl_flag}",
            f"--service={service}",
        ], kind
        assert probe["timeoutSeconds"] >= 3, "a Python process starts in each probe"
    assert server["startupProbe"]["failureThreshold"] == plain["startupProbe"]["failureThreshold"]
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert "initialDelaySeconds" not in server["livenessProbe"]
    # The script is mounted from the ConfigMap, which holds the repository's file as it is.
    mount, volume = mount_for(pod, server, TLS_PROBE_SCRIPT)
    assert mount.get("readOnly") is True and volume["configMap"]["name"] == PROBE_CONFIGMAP
    configmap = one(objects, "ConfigMap", PROBE_CONFIGMAP)
    script = (K8S / "components" / "secure" / "tls_health_probe.py").read_text()
    assert configmap["data"] == {Path(TLS_PROBE_SCRIPT).name: script}


def test_ssl_config_script_writes_what_the_server_parses(tmp_path: Path) -> None:
    for client_verify in (False, True):
        tls = parse_ssl_text(ssl_config(tmp_path, client_verify))
        assert tls.server_key == (tmp_path / "server.key").read_bytes()
        assert tls.server_cert == (tmp_path / "server.pem").read_bytes()
        assert tls.custom_ca == (tmp_path / "ca.pem").read_bytes()
        assert tls.client_verify is client_verify
    usage = subprocess.run(
        ["sh", str(SSL_CONFIG_SCRIPT), "only-one"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


# ---- the probe against a real server ---------------------------------------------------------------


def _probe_command(
    objects: tuple[Obj, ...], kind: str, script: Path, ssl_file: Path, port: int
) -> list[str]:
    """The rendered probe command, run here: this interpreter, local copies of the mounted files."""
    server = container(server_deployment(objects)["spec"]["template"]["spec"], "server")
    command = list(server[kind]["exec"]["command"])
    assert command[0] == "python" and command[1] == TLS_PROBE_SCRIPT
    command[0], command[1] = sys.executable, str(script)
    command = [
        f"--ssl_config_file={ssl_file}" if arg.startswith("--ssl_config_file=") else arg for arg in command
    ]
    return [*command, f"--port={port}", "--server_name=localhost"]  # the test certificate's name


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("client_verify", [False, True], ids=["tls", "mutual tls"])
def test_tls_probe_and_tokens_on_a_real_server(tmp_path: Path, client_verify: bool) -> None:
    objects = render("secure")
    script = tmp_path / "tls_health_probe.py"
    script.write_text(one(objects, "ConfigMap", PROBE_CONFIGMAP)["data"][script.name])
    ssl_file = tmp_path / "ssl.config"
    ssl_file.write_text(ssl_config(tmp_path, client_verify))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n")
    base = tmp_path / "models" / "tiny"
    version_dir = write_tiny_version(base, 1)
    server = start_server(
        [
            "--model_name=tiny",
            f"--model_base_path={base}",
            f"--ssl_config_file={ssl_file}",
            f"--auth_token_file={tokens}",
            "--auth_exempt=health,metrics",
        ],
        tmp_path / "server.log",
        wait_serving=False,  # the launcher's own health check is plaintext
    )
    try:
        readiness = _probe_command(objects, "readinessProbe", script, ssl_file, server.grpc_port)
        deadline = time.monotonic() + 60
        while (result := _run(readiness)).returncode != 0:
            assert result.returncode == 1 and "unhealthy" in result.stderr, result
            assert time.monotonic() < deadline, f"{result.stderr}\n{server.log()}"
            time.sleep(0.2)
        for kind in ("startupProbe", "livenessProbe"):
            result = _run(_probe_command(objects, kind, script, ssl_file, server.grpc_port))
            assert result.returncode == 0, (kind, result.stderr)
        # A certificate that does not carry the name asked for: the probe fails, saying why.
        wrong_name = _run([*readiness, "--server_name=model-server.elsewhere.svc"])
        assert wrong_name.returncode == 1 and "UNAVAILABLE" in wrong_name.stderr, wrong_name

        # The API wants a token over TLS; health and metrics do not.
        root = (tmp_path / "ca.pem").read_bytes()
        key, cert = (tmp_path / "server.key").read_bytes(), (tmp_path / "server.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(
            root, key if client_verify else None, cert if client_verify else None
        )
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        images = np.zeros((1, 28, 28, 1), np.float32)
        request.inputs["image"].CopyFrom(codec.from_numpy(images))
        with grpc.secure_channel(f"localhost:{server.grpc_port}", credentials) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = stub.Predict(request, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")])
        np.testing.assert_allclose(
            codec.to_numpy(response.outputs["probabilities"]),
            reference_probabilities(version_dir, images),
            atol=1e-5,
        )
        client_cert = (str(tmp_path / "server.pem"), str(tmp_path / "server.key")) if client_verify else None
        metrics = requests.get(
            f"https://localhost:{server.rest_port}/monitoring/prometheus/metrics",
            verify=str(tmp_path / "ca.pem"),
            cert=client_cert,
            timeout=10,
        )
        assert metrics.status_code == 200 and ":tensorflow:serving:request_count" in metrics.text
    finally:
        assert server.stop() == 0, server.log()
