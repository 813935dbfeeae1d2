"""Dynamic batching: concurrent requests to one model version and signature share one engine call.

A standalone asyncio class with no RPC knowledge. Each caller awaits its own future; requests are
grouped while the first one waits at most `batch_timeout_micros` (or until `max_batch_size` rows
are queued), concatenated along the batch axis, run once in a worker thread, and split back by row
count (batches are cut only when an engine slot is free, see `_dispatch`, and an engine thread that
finishes a batch takes the next due one itself, see `_work`). A failed batch fails
every caller in it with the cause; a result whose row count does not
match the batch is an error, never a silent mix-up. Only requests whose tensors agree on everything
but the batch dimension share a batch. With `allowed_batch_sizes`, a batch is padded up to the next
allowed size (repeating its last row) so the engine sees only a few shapes.

TF Serving's BatchingParameters, as its batching session reads them:
- `max_batch_size` is the largest request (the data plane refuses bigger ones with TF Serving's
  "Task size N is larger than maximum input batch size M") and, without splitting, the largest batch.
- `enable_large_batch_splitting`: a request bigger than `max_execution_batch_size` (default
  max_batch_size) is split into pieces, the first one filling the room left in the batch being
  formed and the others at most `max_execution_batch_size` rows each; the pieces run in separate
  batches (in parallel when engine slots are free) and the caller gets their outputs joined in order.
  A failed piece fails the request. Batches never exceed `max_execution_batch_size` rows.
- `max_enqueued_batches` x the batch size bounds the rows waiting (RESOURCE_EXHAUSTED beyond);
  `num_batch_threads` engine calls run at once; `batch_timeout_micros` bounds the wait for a batch.
- `pad_variable_length_inputs`: requests whose tensors differ in non-batch dimensions (same name,
  dtype and rank) share a batch; each tensor is padded at the end of every such dimension, with its
  own first element as TF Serving does, to the largest size in the batch, and every caller gets its
  rows of the padded batch's outputs (whose non-batch shape may then be larger than it would be alone).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from serving.accesslog import RequestRecord, computed, current_record
from serving.config import BatchingConfig
from serving.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]
RunBatch = Callable[[Tensors], dict[str, np.ndarray]]
Observer = Callable[[int, int, float], None]  # (rows, padded rows, seconds)
SubmitObserver = Callable[[Tensors], None]  # a request's tensors, as it is submitted
DequeueObserver = Callable[[int, float], None]  # (rows, seconds waited) of a task leaving the queue


def batch_key(inputs: Tensors, pad: bool = False) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Requests batch together only when names, dtypes and non-batch dimensions all agree (with
    `pad`, padding variable-length inputs: names, dtypes and ranks)."""
    if pad:
        return tuple(sorted((name, value.dtype.str, (value.ndim,)) for name, value in inputs.items()))
    return tuple(sorted((name, value.dtype.str, value.shape[1:]) for name, value in inputs.items()))


def pad_to(value: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """`value` grown at the end of each non-batch dimension to `dims`, filled with its first element."""
    if tuple(value.shape[1:]) == tuple(dims):
        return value
    padded = np.full((value.shape[0], *dims), value.flat[0], dtype=value.dtype)
    padded[tuple(slice(0, size) for size in value.shape)] = value
    return padded


def rows_of(inputs: Tensors) -> int:
    return int(next(iter(inputs.values())).shape[0])


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)
    record: RequestRecord | None = field(default_factory=current_record)  # the caller's access-log / trace record


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        config: BatchingConfig,
        executor: Executor | None = None,
        observe: Observer | None = None,
        inline: Callable[[int, int], bool] | None = None,
        on_submit: SubmitObserver | None = None,
        on_dequeue: DequeueObserver | None = None,
        preferred_rows: int = 0,
        on_queue_change: Callable[[], None] | None = None,
        observe_at_once: Observer | None = None,
    ) -> None:
        """`observe` sees every engine call; `on_submit` every request as it is submitted (before the
        queue-full check, where TF Serving's batching session records its input sizes);
        `on_dequeue` every task (a request, or a piece of a split one) as a batch takes it, with the
        time it waited (zero for a request run at once on an idle engine). With `preferred_rows`
        (--preferred_batch_size), requests are merged only up to that many rows, where an engine's
        cost per row stops falling: a batch is full at that size, and a request larger than it still
        runs whole, alone. `on_queue_change` is called on the event loop after a batch taken from
        the queue was answered (`queued_rows` has changed; a request run at once changes nothing).
        `observe_at_once`, if given, sees a request run at once on an idle engine (see `submit`) in
        place of `on_dequeue` (a wait of 0) and `observe`: one call on that hot path. `inline` must
        answer the same for the same arguments (its answers for single requests are kept)."""
        self._run_batch = run_batch
        self.config = config
        self._executor = executor
        self._observe = observe
        self._on_submit = on_submit
        self._on_dequeue = on_dequeue
        self._on_queue_change = on_queue_change
        self._observe_at_once = observe_at_once or self._dequeued_then_observed
        self._inline_alone: dict[int, bool] = {}  # padded rows -> `inline(rows, 1)`
        # (rows, requests) -> whether a batch that size, answering that many requests, is cheap
        # enough to run on the event loop itself.
        self._inline = inline or (lambda rows, requests: False)
        # The queues, `queued_rows` and `_free_slots` are shared with the engine threads (which take
        # the next batch themselves, see `_work`): changed only under `_lock`.
        self._lock = threading.Lock()
        self._queues: dict[tuple[object, ...], list[_Pending]] = {}
        self._timers: dict[tuple[object, ...], asyncio.TimerHandle] = {}
        self._scheduled: set[tuple[object, ...]] = set()
        self._free_slots = config.num_batch_threads
        self._workers: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.queued_rows = 0
        # The most rows of one engine call: max_execution_batch_size with splitting.
        self._limit = config.execution_batch_size
        # The most rows requests are merged into (a batch is full at this size).
        self._merge_limit = min(self._limit, preferred_rows) if preferred_rows > 0 else self._limit
        self._max_queued_rows = self._limit * config.max_enqueued_batches
        # Whether a request may run at once on an idle engine (see `submit`): only with no timeout.
        self._at_once = config.batch_timeout_micros == 0

    async def submit(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Queue one request's tensors; returns its own rows of the batched result."""
        answer = self.begin(inputs)
        return answer if isinstance(answer, dict) else await answer

    def begin(self, inputs: Tensors) -> dict[str, np.ndarray] | Awaitable[dict[str, np.ndarray]]:
        """`submit`, for a caller on the hot path: the outputs themselves when the request ran at
        once (see below), else what to await for them (no coroutine is made for the common case)."""
        rows = rows_of(inputs)
        if self._on_submit is not None:
            self._on_submit(inputs)
        if self.queued_rows + rows > self._max_queued_rows:
            raise ResourceExhausted(
                f"batch queue is full ({self.queued_rows} rows waiting, limit {self._max_queued_rows}); retry later"
            )
        pad = self.config.pad_variable_length_inputs
        if rows > self._limit and self.config.enable_large_batch_splitting:
            return self._submit_split(batch_key(inputs, pad), inputs, rows)
        key = batch_key(inputs, pad) if self._queues else None  # (no queue: none to look up)
        if (
            self._at_once
            and (key is None or key not in self._queues)
            and self._free_slots == self.config.num_batch_threads
        ):
            padded = self._padded(rows)
            inline = self._inline_alone.get(padded)
            if inline is None:
                inline = self._inline(padded, 1)
                if padded <= self._limit:  # (the sizes a batch can have: a bounded set)
                    self._inline_alone[padded] = inline
            if inline:
                # Nothing is waiting to share a batch, no batch is running, and the call is cheap:
                # run it now, exactly as an unbatched request would (a batch of one through the
                # queue costs a future and a loop turn, and gains nothing).
                return self._run_now(inputs, rows, padded)
        return self._enqueue(key if key is not None else batch_key(inputs, pad), inputs, rows)

    def _enqueue(self, key: tuple[object, ...], inputs: Tensors, rows: int) -> asyncio.Future[dict[str, np.ndarray]]:
        pending = _Pending(inputs, rows, asyncio.get_running_loop().create_future())
        with self._lock:
            self._queues.setdefault(key, []).append(pending)
            self.queued_rows += rows
        if key not in self._scheduled:
            # Cut batches at the end of this event-loop turn, so requests decoded in the same turn
            # (several streams arrive in one read) share a batch even on an idle engine.
            self._scheduled.add(key)
            asyncio.get_running_loop().call_soon(self._on_scheduled, key)
        return pending.future

    async def _submit_split(self, key: tuple[object, ...], inputs: Tensors, rows: int) -> dict[str, np.ndarray]:
        """A request over the execution batch size, as pieces in separate batches, joined again."""
        futures = []
        start = 0
        for size in self._piece_sizes(key, rows):
            piece = {name: value[start : start + size] for name, value in inputs.items()}
            futures.append(self._enqueue(key, piece, size))
            start += size
        # Every piece is awaited (none is left with an unretrieved error); the first failure wins.
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        parts = [r for r in results if not isinstance(r, BaseException)]
        names = parts[0].keys()
        if self.config.pad_variable_length_inputs:
            # Pieces ran in different batches, padded to different sizes: join at the largest.
            dims = {n: tuple(max(p[n].shape[a] for p in parts) for a in range(1, parts[0][n].ndim)) for n in names}
            parts = [{n: pad_to(p[n], dims[n]) for n in names} for p in parts]
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    def _piece_sizes(self, key: tuple[object, ...], rows: int) -> list[int]:
        """TF Serving's split: the first piece fills the room left in the batch now being formed
        (the queue's last batch, as `_dispatch` will cut it), the rest are full batches and a tail."""
        fill = 0
        with self._lock:
            for pending in self._queues.get(key, ()):
                fill = pending.rows if fill + pending.rows > self._limit else fill + pending.rows
        room = self._limit - fill if 0 < fill < self._limit else self._limit
        sizes = [min(room, rows)]
        left = rows - sizes[0]
        while left > 0:
            sizes.append(min(self._limit, left))
            left -= sizes[-1]
        return sizes

    def _run_now(self, inputs: Tensors, rows: int, padded: int) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self._concat_and_run([inputs], rows, padded)
        self._observe_at_once(rows, padded, time.perf_counter() - started)
        computed(started, time.perf_counter())
        return {name: value[:rows] for name, value in outputs.items()} if padded > rows else outputs

    def _dequeued_then_observed(self, rows: int, padded: int, seconds: float) -> None:
        """`observe_at_once` when none is given: the two hooks it stands for, a wait of 0."""
        if self._on_dequeue is not None:
            self._on_dequeue(rows, 0.0)
        if self._observe is not None:
            self._observe(rows, padded, seconds)

    def _on_scheduled(self, key: tuple[object, ...]) -> None:
        self._scheduled.discard(key)
        self._dispatch(key)

    def _dispatch(self, key: tuple[object, ...]) -> None:
        """Start batches for `key` while an engine slot is free and a batch is due.

        A batch is due when it is full or its oldest request has waited `batch_timeout_micros`.
        Batches are cut only when a slot is free, so while the engine is busy the queue keeps
        growing into larger batches instead of closed batches waiting in line (Triton's dynamic
        batcher behaves this way; with a zero timeout it never delays a request on an idle engine).
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        while True:
            with self._lock:
                queue = self._queues.get(key)
                if not queue:
                    self._forget(key)
                    return
                if self._free_slots == 0:
                    return  # a busy engine thread takes the next batch when it finishes (`_work`)
                if not self._due(queue, time.perf_counter()):
                    if key not in self._timers:
                        waited = time.perf_counter() - queue[0].enqueued
                        self._timers[key] = loop.call_later(
                            self.config.batch_timeout_micros / 1e6 - waited, self._on_timer, key
                        )
                    return
                batch, rows = self._cut(key, queue)
                inline = self._inline(self._padded(rows), len(batch))
                if not inline:
                    self._free_slots -= 1
            if inline:
                self._execute_inline(batch)
                continue
            worker = loop.run_in_executor(self._executor, self._work, batch)
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    def _due(self, queue: list[_Pending], now: float) -> bool:
        """Whether the queue's next batch may be cut now: full, or its oldest request waited enough."""
        return (
            now - queue[0].enqueued >= self.config.batch_timeout_micros / 1e6
            or sum(p.rows for p in queue) >= self._merge_limit
        )

    def _cut(self, key: tuple[object, ...], queue: list[_Pending]) -> tuple[list[_Pending], int]:
        """Take whole requests from the head of `queue` up to the merge limit (under `_lock`).

        A single request larger than the limit (over max_batch_size the data plane refuses it, or it
        was split; over the preferred size it is simply big) runs on its own.
        """
        batch = [queue.pop(0)]
        rows = batch[0].rows
        while queue and rows + queue[0].rows <= self._merge_limit:
            rows += queue[0].rows
            batch.append(queue.pop(0))
        if not queue:
            self._queues.pop(key, None)
        if self._on_dequeue is not None:
            now = time.perf_counter()
            for pending in batch:
                self._on_dequeue(pending.rows, now - pending.enqueued)
        return batch, rows

    def _forget(self, key: tuple[object, ...]) -> None:
        """`key` has nothing queued: drop its queue and its timer."""
        self._queues.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _on_timer(self, key: tuple[object, ...]) -> None:
        self._timers.pop(key, None)
        self._dispatch(key)

    def _padded(self, rows: int) -> int:
        if not self.config.allowed_batch_sizes:
            return rows
        for size in self.config.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _execute_inline(self, batch: list[_Pending]) -> None:
        """Run a cheap batch right here on the event loop (no thread hop), then answer its callers."""
        try:
            answer = self._compute(batch)
        finally:
            with self._lock:
                self.queued_rows -= sum(p.rows for p in batch)
        answer()

    def _compute(self, batch: list[_Pending]) -> Callable[[], None]:
        """One engine call on the batch's live requests; returns what answers its callers, to be
        called on the event loop (`_deliver` with the outputs, or `_fail` with the engine's error)."""
        started = time.perf_counter()
        live = [p for p in batch if not p.future.cancelled()]
        try:
            rows = sum(p.rows for p in live)
            outputs = self._concat_and_run([p.inputs for p in live], rows, self._padded(rows)) if live else None
        except Exception as exc:
            return functools.partial(self._fail, batch, exc)
        return functools.partial(self._deliver, live, outputs, started, time.perf_counter())

    def _work(self, batch: list[_Pending] | None) -> None:
        """An engine thread: run `batch`, hand its answers to the event loop, and go on with the next
        due batch of any queue (the one whose oldest request waited longest) while there is one.

        Taking the next batch here, instead of returning to the event loop to have it cut, keeps the
        engine busy while the loop is busy reading and answering calls: with 32 callers of 32 digits
        each, batching on was 0.8x batching off before this (the engine waited for the loop).
        """
        loop = self._loop
        assert loop is not None
        waiting = False
        while batch is not None:
            answer = self._compute(batch)
            with self._lock:  # (before the answer: a caller that has its answer sees the rows gone)
                self.queued_rows -= sum(p.rows for p in batch)
                batch = self._next_due()
                if batch is None:
                    self._free_slots += 1
                    waiting = bool(self._queues)
            loop.call_soon_threadsafe(answer)
        if waiting:  # not due yet: the loop arms its timers (or finds them due by now)
            loop.call_soon_threadsafe(self._dispatch_all)

    def _next_due(self) -> list[_Pending] | None:
        """Under `_lock`: the next batch an engine thread may take, from the queue that waited longest."""
        now = time.perf_counter()
        due = [(queue[0].enqueued, key) for key, queue in self._queues.items() if queue and self._due(queue, now)]
        if not due:
            return None
        _, key = min(due, key=lambda entry: entry[0])
        return self._cut(key, self._queues[key])[0]

    def _dispatch_all(self) -> None:
        for key in list(self._queues):
            self._dispatch(key)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """Every caller in the batch learns the cause."""
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _deliver(
        self, live: list[_Pending], outputs: dict[str, np.ndarray] | None, started: float, ended: float
    ) -> None:
        """On the event loop: record the engine call and give each caller its rows of the outputs."""
        if outputs is None:  # every caller had gone
            return
        rows = sum(p.rows for p in live)
        if self._observe is not None:
            self._observe(rows, self._padded(rows), ended - started)
        if self._on_queue_change is not None:
            self._on_queue_change()
        offset = 0
        for pending in live:
            if pending.record is not None:
                pending.record.computed(started, ended)
            part = {name: value[offset : offset + pending.rows] for name, value in outputs.items()}
            offset += pending.rows
            if not pending.future.done():
                pending.future.set_result(part)

    def _concat_and_run(self, parts: list[Tensors], rows: int, padded: int) -> dict[str, np.ndarray]:
        """One engine call on the requests' tensors stacked (and padded to `padded` rows, an allowed
        batch size)."""
        if self.config.pad_variable_length_inputs and len(parts) > 1:
            # Same names, dtypes and ranks (the batch key); non-batch dimensions may differ.
            dims = {
                name: tuple(max(part[name].shape[axis] for part in parts) for axis in range(1, parts[0][name].ndim))
                for name in parts[0]
            }
            parts = [{name: pad_to(value, dims[name]) for name, value in part.items()} for part in parts]
        merged: Tensors
        if len(parts) == 1 and padded == rows:
            merged = parts[0]
        else:
            merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
            if padded > rows:
                merged = {
                    name: np.concatenate([value, np.repeat(value[-1:], padded - rows, axis=0)])
                    for name, value in merged.items()
                }
        outputs = self._run_batch(merged)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != padded:
                raise RuntimeError(
                    f"engine returned {value.shape[0] if value.ndim else 'a scalar'} rows of '{name}' "
                    f"for a batch of {padded}"
                )
        return outputs

    async def close(self) -> None:
        """Wait for running batches; fail what is still queued (the server is shutting down)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        with self._lock:
            queued = [pending for queue in self._queues.values() for pending in queue]
            self.queued_rows -= sum(pending.rows for pending in queued)
            self._queues.clear()
        for pending in queued:
            if not pending.future.done():
                pending.future.set_exception(Unavailable("the model version is being unloaded; retry"))
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
