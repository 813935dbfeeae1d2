"""Every kustomization under k8s/ renders, and every object validates against the Kubernetes schemas.

Validation is offline: `kubernetes-validate` ships the OpenAPI-derived JSON schemas of each
Kubernetes minor version in its wheel. Strict mode rejects unknown fields, so a typo such as
`readinesProbe` fails here rather than being silently dropped by the API server.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.k8s.manifests import NAMESPACE, STACKS, TARGETS, Obj, render, server_deployment

# The oldest Kubernetes the manifests support: the preStop `sleep` action is on by default from 1.30.
MIN_KUBERNETES = "1.30"
VERSIONS = (MIN_KUBERNETES, latest_version())
# Custom resources whose CRD schemas are not bundled; checked by the policy tests instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
ALL_TARGETS = (*TARGETS, *STACKS)


def validate(obj: Obj, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_renders_objects_in_the_namespace(target: str) -> None:
    objects = render(target)
    assert objects, f"{target} rendered nothing"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {target}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", ALL_TARGETS)
def test_objects_validate_against_kubernetes_schemas(target: str, version: str) -> None:
    for obj in render(target):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            validate(obj, version)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{target}: {obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")


def test_only_expected_kinds() -> None:
    """A new kind (or API version) is a conscious change: add it here and to the policy tests."""
    kinds = {(obj["apiVersion"], obj["kind"]) for target in ALL_TARGETS for obj in render(target)}
    expected = {
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("v1", "PersistentVolumeClaim"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        *CUSTOM_KINDS,
    }
    assert kinds == expected


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: c["readinessProbe"]["grpc"].update(port="grpc"), "gRPC probes take a port number"),
        (lambda c: c.update(readinesProbe=c.pop("readinessProbe")), "misspelt field"),
        (lambda c: c["securityContext"]["capabilities"].update(drop="ALL"), "a string, not a list"),
    ],
)
def test_validation_catches_broken_manifests(mutate: object, reason: str) -> None:
    """The schema check is not vacuous: a broken server Deployment is rejected."""
    deployment = copy.deepcopy(server_deployment(render("cpu")))
    validate(deployment, MIN_KUBERNETES)
    assert callable(mutate)
    mutate(deployment["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, MIN_KUBERNETES)
