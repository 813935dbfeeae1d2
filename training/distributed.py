"""Training past one device: `tf.distribute` strategy, worker roles, and a custom training loop.

* **Cluster** (`Cluster`, `cluster_from_environment`): `TF_CONFIG` as TensorFlow defines it
  (`{"cluster": {"worker": [...], "chief": [...]}, "task": {"type": ..., "index": ...}}`), or, where
  it is unset, built from an Indexed Kubernetes Job's environment (`tf_config_from_indexed_job`):
  `JOB_COMPLETION_INDEX` (set by Kubernetes), `TRAIN_WORKERS` (the worker count), `TRAIN_JOB_NAME`
  and `TRAIN_SERVICE` (the headless Service, the pods' `subdomain`), `TRAIN_PORT` (default 2222).
  Worker *i* is `<job>-<i>.<service>:<port>`, the DNS name Kubernetes gives an Indexed Job's pod
  whose subdomain is a headless Service. Nothing here imports TensorFlow at import time.
* **Strategy** (`select_strategy`): `MultiWorkerMirroredStrategy` when the cluster has more than one
  worker; `MirroredStrategy` over the local GPUs when there are several; the default strategy
  otherwise (one device: callers keep their plain `model.fit` path).
* **Roles** (`output_folder`): the chief (task `chief`, else worker 0) writes the run folder; every
  other worker writes its checkpoints to a temporary folder, deleted when training ends (TensorFlow's
  multi-worker guide: every worker saves, since saving may run collective ops, but only the chief's
  copy is kept).
* **Mixed precision** (`enable_mixed_precision`): `mixed_float16` on GPU only; without a GPU it
  refuses with `DistributionError` (float16 on CPU is slower, not faster).
* **Loop** (`fit_distributed`): `strategy.run` + `tf.GradientTape` + `tf.nn.compute_average_loss`
  over the global batch (per-replica batch x replicas), loss and accuracy summed across replicas
  (and workers), a validation pass per epoch, and the caller's Keras callbacks (best checkpoint by
  the recipe's monitor, early stopping, learning rate on plateau, EMA weight swap) driven exactly as
  `model.fit` drives them. Keras 3's `model.fit` cannot run under `MultiWorkerMirroredStrategy`
  (keras-team/keras#20585), hence this loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TF_CONFIG_ENV = "TF_CONFIG"
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
WORKERS_ENV = "TRAIN_WORKERS"
JOB_NAME_ENV = "TRAIN_JOB_NAME"
SERVICE_ENV = "TRAIN_SERVICE"
PORT_ENV = "TRAIN_PORT"
DEFAULT_PORT = 2222  # TensorFlow's conventional gRPC port for cluster tasks


class DistributionError(ValueError):
    """A cluster description or a distribution request that cannot work; the message says why."""


@dataclass(frozen=True)
class Cluster:
    """The tasks of a multi-worker run and which one this process is."""

    workers: tuple[str, ...]  # "host:port" of every worker task, in task-index order
    task_type: str  # "worker" or "chief"
    task_index: int
    chief: str | None = None  # "host:port" of a separate chief task, when TF_CONFIG names one

    @property
    def num_workers(self) -> int:
        """Every task that trains (the chief trains too)."""
        return len(self.workers) + (1 if self.chief else 0)

    @property
    def is_chief(self) -> bool:
        if self.chief is not None:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def role(self) -> str:
        return f"{self.task_type} {self.task_index} of {self.num_workers}"

    def tf_config(self) -> str:
        """This cluster as a `TF_CONFIG` JSON string."""
        cluster: dict[str, list[str]] = {"worker": list(self.workers)}
        if self.chief is not None:
            cluster["chief"] = [self.chief]
        return json.dumps({"cluster": cluster, "task": {"type": self.task_type, "index": self.task_index}})


def parse_tf_config(text: str | None) -> Cluster | None:
    """Parse a `TF_CONFIG` string; None when it is unset or empty. Raises `DistributionError`."""
    if text is None or not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DistributionError(f"{TF_CONFIG_ENV} is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise DistributionError(f"{TF_CONFIG_ENV} must be a JSON object, got {type(config).__name__}")
    cluster = config.get("cluster")
    task = config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributionError(f'{TF_CONFIG_ENV} needs "cluster" and "task" objects: {text}')
    unknown = set(cluster) - {"worker", "chief"}
    if unknown:
        raise DistributionError(
            f"{TF_CONFIG_ENV} names {sorted(unknown)}: MultiWorkerMirroredStrategy runs only "
            '"worker" and "chief" tasks (no parameter servers or evaluators)'
        )
    workers = cluster.get("worker", [])
    chiefs = cluster.get("chief", [])
    for kind, addresses in (("worker", workers), ("chief", chiefs)):
        if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
            raise DistributionError(f'{TF_CONFIG_ENV}: cluster "{kind}" must be a list of "host:port"')
    if len(chiefs) > 1:
        raise DistributionError(f"{TF_CONFIG_ENV}: at most one chief, got {len(chiefs)}")
    task_type = task.get("type")
    task_index = task.get("index", 0)
    if task_type not in ("worker", "chief"):
        raise DistributionError(f'{TF_CONFIG_ENV}: task type must be "worker" or "chief", got {task_type!r}')
    if not isinstance(task_index, int) or isinstance(task_index, bool):
        raise DistributionError(f"{TF_CONFIG_ENV}: task index must be an integer, got {task_index!r}")
    members = workers if task_type == "worker" else chiefs
    if not 0 <= task_index < len(members):
        raise DistributionError(
            f"{TF_CONFIG_ENV}: task {task_type} {task_index} is not in the cluster ({len(members)} {task_type}s)"
        )
    return Cluster(tuple(workers), task_type, task_index, chiefs[0] if chiefs else None)


def _positive_int(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise DistributionError(f"{name}={text!r} is not an integer") from None
    if value < 0:
        raise DistributionError(f"{name}={text!r} must not be negative")
    return value


def tf_config_from_indexed_job(environ: Mapping[str, str]) -> str | None:
    """`TF_CONFIG` for pod `JOB_COMPLETION_INDEX` of an Indexed Job of `TRAIN_WORKERS` workers, or
    None for a single worker (or no `TRAIN_WORKERS`). Raises `DistributionError` on a bad value."""
    if not environ.get(WORKERS_ENV):
        return None
    count = _positive_int(environ, WORKERS_ENV)
    if count < 1:
        raise DistributionError(f"{WORKERS_ENV} must be at least 1, got {count}")
    if count == 1:
        return None
    missing = [name for name in (INDEX_ENV, JOB_NAME_ENV, SERVICE_ENV) if not environ.get(name)]
    if missing:
        raise DistributionError(
            f"{WORKERS_ENV}={count} needs {', '.join(missing)} to name the workers "
            f"(<{JOB_NAME_ENV}>-<index>.<{SERVICE_ENV}>:<{PORT_ENV}>)"
        )
    index = _positive_int(environ, INDEX_ENV)
    if index >= count:
        raise DistributionError(f"{INDEX_ENV}={index} but {WORKERS_ENV}={count}: raise {WORKERS_ENV}")
    port = _positive_int(environ, PORT_ENV) if environ.get(PORT_ENV) else DEFAULT_PORT
    job, service = environ[JOB_NAME_ENV], environ[SERVICE_ENV]
    workers = tuple(f"{job}-{i}.{service}:{port}" for i in range(count))
    return Cluster(workers, "worker", index).tf_config()


def cluster_from_environment(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster this process belongs to: `TF_CONFIG` when set, else the Indexed Job's variables;
    None for a single-worker run. Raises `DistributionError`."""
    env = os.environ if environ is None else environ
    text = env.get(TF_CONFIG_ENV) or tf_config_from_indexed_job(env)
    cluster = parse_tf_config(text)
    if cluster is not None and cluster.num_workers < 2:
        return None  # a one-task TF_CONFIG is a single-worker run
    return cluster


STRATEGY_NAMES = {
    "default": "default",
    "mirrored": "MirroredStrategy",
    "multi-worker": "MultiWorkerMirroredStrategy",
}


@dataclass(frozen=True)
class Distribution:
    """The strategy chosen for this process and where it stands in the cluster."""

    strategy: Any  # tf.distribute.Strategy
    kind: str  # "default" | "mirrored" | "multi-worker"
    num_replicas: int
    cluster: Cluster | None = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def distributed(self) -> bool:
        """Whether training must use the custom loop (several replicas or several workers)."""
        return self.num_replicas > 1 or self.cluster is not None

    @property
    def num_workers(self) -> int:
        return self.cluster.num_workers if self.cluster else 1

    def global_batch_size(self, per_replica: int) -> int:
        return per_replica * self.num_replicas

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": STRATEGY_NAMES[self.kind],
            "kind": self.kind,
            "replicas": self.num_replicas,
            "workers": self.num_workers,
            "task": self.cluster.role if self.cluster else "single worker",
        }


def select_strategy(cluster: Cluster | None) -> Distribution:
    """`MultiWorkerMirroredStrategy` for a cluster, `MirroredStrategy` for several local GPUs, else
    the default strategy. Call before TensorFlow runs its first op (collectives are configured at
    start-up). For a cluster, `TF_CONFIG` is set in this process's environment (the strategy's
    cluster resolver reads it from there)."""
    import tensorflow as tf

    if cluster is not None:
        os.environ[TF_CONFIG_ENV] = cluster.tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Distribution(strategy, "multi-worker", int(strategy.num_replicas_in_sync), cluster)
    if len(tf.config.list_physical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(strategy, "mirrored", int(strategy.num_replicas_in_sync))
    return Distribution(tf.distribute.get_strategy(), "default", 1)


def enable_mixed_precision(gpus: Sequence[Any] | None = None) -> None:
    """Set Keras's global policy to `mixed_float16`; refuses (`DistributionError`) without a GPU.

    `gpus`: the physical GPUs (default: what TensorFlow finds). Models built afterwards compute in
    float16 and keep float32 variables; their output layer should stay float32."""
    import keras

    if gpus is None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise DistributionError(
            "--mixed-precision needs a GPU and TensorFlow found none: mixed_float16 on a CPU is "
            "slower than float32; train without the flag"
        )
    keras.mixed_precision.set_global_policy("mixed_float16")


@contextlib.contextmanager
def output_folder(out: Path, distribution: Distribution) -> Iterator[Path]:
    """The folder this process writes its checkpoints to: `out` for the chief (created), a fresh
    temporary folder for every other worker (under `$TMPDIR`), removed when the block exits."""
    if distribution.is_chief:
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    assert distribution.cluster is not None
    cluster = distribution.cluster
    scratch = Path(tempfile.mkdtemp(prefix=f"{out.name}-{cluster.task_type}{cluster.task_index}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def weights_digest(model: Any) -> str:
    """sha256 over every weight's bytes, in the model's order: equal on workers in sync."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()


@dataclass
class LoopResult:
    """What `fit_distributed` returns: per-epoch logs like `History.history`, and epoch timings."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0


def distribute(dataset: Any, distribution: Distribution) -> Any:
    """`experimental_distribute_dataset` with data sharding: every worker reads the same pipeline
    (same shuffle seed) and keeps its slice of each global batch, so workers see disjoint examples."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return distribution.strategy.experimental_distribute_dataset(dataset.with_options(options))


def fit_distributed(
    model: Any,
    loss: Any,
    train_dataset: Any,
    val_dataset: Any,
    epochs: int,
    callbacks: Sequence[Any],
    distribution: Distribution,
    global_batch_size: int,
    verbose: int = 2,
) -> LoopResult:
    """Train a compiled `model` (built and compiled inside `distribution.strategy.scope()`).

    `loss`: a Keras loss with `reduction=None` (per-example values). `train_dataset` yields
    (inputs, labels) batches of `global_batch_size` (drop the remainder: every step then averages
    over exactly the global batch); `val_dataset` any batches. Labels are one-hot or class indices.
    The callbacks see the same calls, in the same order, as under `model.fit` (train begin/end,
    epoch begin/end, test begin/end around validation), and the logs `loss`, `accuracy`,
    `val_loss`, `val_accuracy`, `learning_rate`; `model.stop_training` ends the loop.
    """
    import keras
    import tensorflow as tf

    strategy = distribution.strategy
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)  # slots and EMA copies, outside the step
    train_batches = distribute(train_dataset, distribution)
    val_batches = distribute(val_dataset, distribution)

    def correct_count(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(probabilities, axis=-1)  # [B]
        truth = tf.argmax(labels, axis=-1) if labels.shape.rank == probabilities.shape.rank else labels
        return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(truth, predicted.dtype)), tf.float32))

    def train_replica(inputs: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            probabilities = model(inputs, training=True)  # [B,classes]
            per_example = tf.cast(loss(labels, probabilities), tf.float32)  # [B]
            average = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                average += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(average)  # the loss scale under mixed precision, else 1
        gradients = tape.gradient(scaled, model.trainable_variables)
        # Keras's TF optimizer all-reduces (sums) the gradients across replicas before applying them.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.reduce_sum(per_example), correct_count(labels, probabilities), count

    def val_replica(inputs: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        probabilities = model(inputs, training=False)
        per_example = tf.cast(loss(labels, probabilities), tf.float32)
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.reduce_sum(per_example), correct_count(labels, probabilities), count

    def summed(per_replica: Any) -> Any:
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in per_replica]

    @tf.function
    def train_step(batch: Any) -> Any:
        return summed(strategy.run(train_replica, args=batch))

    @tf.function
    def val_step(batch: Any) -> Any:
        return summed(strategy.run(val_replica, args=batch))

    def run_epoch(batches: Any, step: Any) -> tuple[dict[str, float], int]:
        totals = [0.0, 0.0, 0.0]  # loss sum, correct, examples: over every replica of every worker
        steps = 0
        for batch in batches:
            for i, value in enumerate(step(batch)):
                totals[i] += float(value)
            steps += 1
        examples = max(totals[2], 1.0)
        return {"loss": totals[0] / examples, "accuracy": totals[1] / examples}, steps

    callback_list = keras.callbacks.CallbackList(
        list(callbacks), model=model, epochs=epochs, verbose=0, steps=None
    )
    result = LoopResult()
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        train_logs, result.steps_per_epoch = run_epoch(train_batches, train_step)
        callback_list.on_test_begin()
        val_logs, _ = run_epoch(val_batches, val_step)
        callback_list.on_test_end({f"val_{k}": v for k, v in val_logs.items()})
        logs = {
            **train_logs,
            **{f"val_{k}": v for k, v in val_logs.items()},
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
        }
        callback_list.on_epoch_end(epoch, logs)
        result.epoch_seconds.append(time.perf_counter() - started)
        for key, value in logs.items():
            result.history.setdefault(key, []).append(float(value))
        if verbose:
            shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(
                f"epoch {epoch + 1}/{epochs}: {result.steps_per_epoch} steps of {global_batch_size} "
                f"({distribution.num_replicas} replicas), {result.epoch_seconds[-1]:.1f} s - {shown}",
                flush=True,
            )
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return result


def barrier(distribution: Distribution) -> None:
    """Wait until every worker reaches this point (one tiny all-reduce); a no-op on one worker.

    The chief evaluates and writes after training while the others are done: without this, a worker
    that exits first leaves the chief's cluster before the chief has finished."""
    if distribution.cluster is None:
        return
    import tensorflow as tf

    strategy = distribution.strategy

    @tf.function
    def count_workers() -> tf.Tensor:
        ones = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    count_workers()
