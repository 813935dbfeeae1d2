"""The digits training Job as a TensorFlow cluster: the headless Service, pod DNS and TF_CONFIG.

Kubernetes is simulated where it matters: each pod of the Indexed Job gets the environment the
kubelet would give it (`JOB_COMPLETION_INDEX`, downward-API labels, including the
`batch.kubernetes.io/job-name` label the Job controller adds) and the training entry point's own
`training.distributed.cluster_from_environment` turns it into the cluster; the addresses must be
the DNS names Kubernetes gives those pods (`<hostname>.<subdomain>`, hostname `<job>-<index>`).
"""

from __future__ import annotations

import copy
import re

import pytest

from tests.k8s.manifests import Obj, container, label_selector_matches, of_kind, one, render
from training.distributed import Cluster, cluster_from_environment

JOB = "train-digits"
TARGETS = ("jobs", "jobs-multi-worker")


def pod_labels(job: Obj) -> dict[str, str]:
    """The labels of the Job's pods: the template's plus those the Job controller adds."""
    name = job["metadata"]["name"]
    return {
        **job["spec"]["template"]["metadata"]["labels"],
        "batch.kubernetes.io/job-name": name,
        "job-name": name,
        "batch.kubernetes.io/controller-uid": "00000000-0000-0000-0000-000000000000",
    }


def pod_environment(job: Obj, index: int) -> dict[str, str]:
    """The training container's environment in pod `index`, as the kubelet resolves it."""
    train = container(job["spec"]["template"]["spec"], "train")
    labels = pod_labels(job)
    environ = {"JOB_COMPLETION_INDEX": str(index)}
    for item in train.get("env", []):
        if "value" in item:
            environ[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            match = re.fullmatch(r"metadata\.labels\['([^']+)'\]", source["fieldRef"]["fieldPath"])
            assert match, f"unexpected fieldRef {source['fieldRef']['fieldPath']}"
            environ[item["name"]] = labels[match.group(1)]
    return environ


def worker_count(job: Obj) -> int:
    return int(pod_environment(job, 0)["TRAIN_WORKERS"])


@pytest.mark.parametrize("target", TARGETS)
def test_indexed_job_pods_get_tf_config_from_their_index(target: str) -> None:
    objects = render(target)
    job = one(objects, "Job", JOB)
    spec = job["spec"]
    workers = worker_count(job)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers, "every worker runs at once"
    pod = spec["template"]["spec"]
    subdomain = pod["subdomain"]
    service = one(objects, "Service", subdomain)
    ports = {port["name"]: port for port in container(pod, "train")["ports"]}
    clusters: list[Cluster | None] = []
    for index in range(workers):
        environ = pod_environment(job, index)
        cluster = cluster_from_environment(environ)
        clusters.append(cluster)
        if workers == 1:
            assert cluster is None, "one worker: no TF_CONFIG, the plain model.fit path"
            continue
        assert cluster is not None
        hostname = f"{job['metadata']['name']}-{index}"  # what Kubernetes names an Indexed Job's pod
        port = int(environ["TRAIN_PORT"])
        assert cluster.workers[index] == f"{hostname}.{subdomain}:{port}"
        assert len(cluster.workers) == workers and cluster.task_index == index
        assert cluster.is_chief == (index == 0)
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        assert ports[service_port["targetPort"]]["containerPort"] == port
    if workers > 1:
        assert len({c.workers for c in clusters if c}) == 1, "every pod sees the same cluster"
        assert sum(c.is_chief for c in clusters if c) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_headless_service_resolves_every_worker_before_it_is_ready(target: str) -> None:
    objects = render(target)
    job = one(objects, "Job", JOB)
    service = one(objects, "Service", job["spec"]["template"]["spec"]["subdomain"])
    assert service["spec"]["clusterIP"] == "None", "headless: one DNS record per pod"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert label_selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(job))
    # Only this Job's pods: not the other training Jobs, not the server.
    for other in of_kind(objects, "Job"):
        if other is not job:
            assert not label_selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(other))


def test_going_to_n_workers_is_one_patch_of_three_values() -> None:
    """The overlay changes completions, parallelism and TRAIN_WORKERS of train-digits, nothing else."""
    single, multi = render("jobs"), render("jobs-multi-worker")
    assert worker_count(one(single, "Job", JOB)) == 1 and worker_count(one(multi, "Job", JOB)) == 2

    def normalised(objects: tuple[Obj, ...]) -> list[Obj]:
        copies = [copy.deepcopy(obj) for obj in objects]
        for obj in copies:
            if obj["kind"] == "Job" and obj["metadata"]["name"] == JOB:
                obj["spec"]["completions"] = obj["spec"]["parallelism"] = "N"
                for item in container(obj["spec"]["template"]["spec"], "train")["env"]:
                    if item["name"] == "TRAIN_WORKERS":
                        item["value"] = "N"
        return sorted(copies, key=lambda obj: (obj["kind"], obj["metadata"]["name"]))

    assert normalised(single) == normalised(multi)


@pytest.mark.parametrize("model", ["catdog", "sentiment"])
def test_models_without_distributed_training_stay_single_worker(model: str) -> None:
    job = one(render("jobs"), "Job", f"train-{model}")
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
    assert cluster_from_environment(pod_environment(job, 0)) is None
