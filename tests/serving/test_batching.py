"""The batcher on its own: grouping, splitting, padding, failures, overload. No RPC layer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from serving.batching import Batcher
from serving.config import BatchingConfig
from serving.errors import ResourceExhausted, Unavailable


class Recorder:
    """An engine that doubles its input and records the batch sizes it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.sizes.append(len(inputs["x"]))
        if self.delay:
            threading.Event().wait(self.delay)
        return {"y": inputs["x"] * 2}


def config(**overrides: int | tuple[int, ...]) -> BatchingConfig:
    values = {
        "max_batch_size": 8,
        "batch_timeout_micros": 20_000,
        "max_enqueued_batches": 4,
        "num_batch_threads": 2,
    }
    values.update(overrides)  # type: ignore[arg-type]
    return BatchingConfig(**values)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    engine = Recorder()
    batcher = Batcher(engine, config())
    requests = [np.full((n, 3), i, np.float32) for i, n in enumerate([1, 2, 3])]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))
    assert engine.sizes == [6]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2)


async def test_full_batch_runs_without_waiting_for_the_timeout() -> None:
    engine = Recorder()
    batcher = Batcher(engine, config(batch_timeout_micros=10_000_000))
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit({"x": np.ones((4, 1), np.float32)}) for _ in range(2))), timeout=2
    )
    assert engine.sizes == [8] and len(results) == 2


async def test_requests_split_at_max_batch_size_and_oversized_run_alone() -> None:
    engine = Recorder()
    batcher = Batcher(engine, config(max_batch_size=4))
    sizes = [3, 3, 9]
    await asyncio.gather(*(batcher.submit({"x": np.ones((n, 1), np.float32)}) for n in sizes))
    assert sorted(engine.sizes) == [3, 3, 9]


async def test_different_shapes_never_share_a_batch() -> None:
    engine = Recorder()
    batcher = Batcher(engine, config())
    a, b = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
    ra, rb = await asyncio.gather(batcher.submit({"x": a}), batcher.submit({"x": b}))
    assert sorted(engine.sizes) == [1, 1]
    assert ra["y"].shape == (1, 3) and rb["y"].shape == (1, 5)


async def test_padding_to_allowed_batch_sizes() -> None:
    engine = Recorder()
    seen: list[tuple[int, int]] = []
    batcher = Batcher(engine, config(allowed_batch_sizes=(4, 8)), observe=lambda r, p, s: seen.append((r, p)))
    results = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(3)))
    assert engine.sizes == [4] and seen == [(3, 4)]
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]


async def test_a_failed_batch_fails_every_caller_with_the_cause() -> None:
    def broken(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError("engine exploded")

    batcher = Batcher(broken, config())
    results = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 1), np.float32)}) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) and "engine exploded" in str(r) for r in results)
    assert batcher.queued_rows == 0


async def test_wrong_row_count_from_engine_is_an_error() -> None:
    batcher = Batcher(lambda inputs: {"y": np.zeros((1, 1))}, config())
    with pytest.raises(RuntimeError, match="returned 1 rows"):
        await asyncio.gather(*(batcher.submit({"x": np.ones((1, 1), np.float32)}) for _ in range(2)))


async def test_full_queue_is_resource_exhausted_and_recovers() -> None:
    engine = Recorder(delay=0.2)
    batcher = Batcher(
        engine, config(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1, batch_timeout_micros=0)
    )
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((2, 1), np.float32)}))
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit({"x": np.ones((1, 1), np.float32)})
    await first
    result = await batcher.submit({"x": np.ones((1, 1), np.float32)})
    assert result["y"].shape == (1, 1)


async def test_requests_arriving_while_the_engine_is_busy_form_one_batch() -> None:
    # Zero timeout: an idle engine takes a request at once; while it is busy the queue grows into
    # one larger batch instead of a line of single-request batches.
    engine = Recorder(delay=0.2)
    batcher = Batcher(engine, config(num_batch_threads=1, batch_timeout_micros=0))
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
    await asyncio.sleep(0.05)
    rest = [batcher.submit({"x": np.full((1, 1), i, np.float32)}) for i in range(5)]
    results = await asyncio.gather(first, *rest)
    assert engine.sizes == [1, 5]
    assert [float(r["y"][0, 0]) for r in results[1:]] == [0.0, 2.0, 4.0, 6.0, 8.0]


async def test_an_engine_thread_takes_the_next_batch_without_the_event_loop() -> None:
    # The engine thread that finishes a batch cuts and runs the next due one itself: the event loop
    # may be busy (reading and answering other calls) and the engine does not wait for it.
    release, second_ran = threading.Event(), threading.Event()
    sizes: list[int] = []

    def engine(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(inputs["x"]))
        if len(sizes) == 1:
            release.wait(10)
        else:
            second_ran.set()
        return {"y": inputs["x"] * 2}

    batcher = Batcher(engine, config(num_batch_threads=1, batch_timeout_micros=0))
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
    while not sizes:  # the first batch is running in the engine thread
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)})) for _ in range(3)]
    await asyncio.sleep(0)  # queued behind the busy slot
    release.set()
    # The event loop is blocked here: only the engine thread can start the second batch.
    assert second_ran.wait(10), "the second batch waited for the event loop"
    results = await asyncio.gather(first, *queued)
    assert sizes == [1, 3] and all(r["y"].shape == (1, 1) for r in results)
    assert batcher.queued_rows == 0


async def test_requests_merge_only_up_to_the_preferred_size() -> None:
    # Past the preferred size (measured at warm-up) the engine's rows get dearer: four requests of
    # one row queued behind a busy engine run as two batches of two; a bigger request still runs whole.
    engine = Recorder(delay=0.05)
    batcher = Batcher(engine, config(num_batch_threads=1, batch_timeout_micros=0), preferred_rows=2)
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((3, 1), np.float32)}))
    while not engine.sizes:
        await asyncio.sleep(0.001)
    rest = await asyncio.gather(*(batcher.submit({"x": np.full((1, 1), i, np.float32)}) for i in range(4)))
    assert (await first)["y"].shape == (3, 1)
    assert engine.sizes == [3, 2, 2]
    assert [float(r["y"][0, 0]) for r in rest] == [0.0, 2.0, 4.0, 6.0]


async def test_close_fails_queued_requests() -> None:
    engine = Recorder(delay=0.2)
    batcher = Batcher(engine, config(num_batch_threads=1, batch_timeout_micros=0))
    running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
    await asyncio.sleep(0)
    await batcher.close()
    assert (await running)["y"].shape == (1, 1)
    with pytest.raises(Unavailable, match="being unloaded"):
        await queued


async def test_same_turn_requests_share_a_batch_on_an_idle_engine_with_zero_timeout() -> None:
    engine = Recorder()
    batcher = Batcher(engine, config(batch_timeout_micros=0))
    requests = [np.full((1, 3), i, np.float32) for i in range(5)]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))
    assert engine.sizes == [5]  # cut at the end of the turn, not one batch per request
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2)


async def test_cheap_batches_run_on_the_event_loop_and_dear_ones_in_a_worker_thread() -> None:
    calls: list[tuple[int, str]] = []

    def engine(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((len(inputs["x"]), threading.current_thread().name))
        return {"y": inputs["x"] * 2}

    here = threading.current_thread().name
    # A batch is inline when its cost per request is low: here, up to 2 rows per request.
    batcher = Batcher(engine, config(batch_timeout_micros=0), inline=lambda rows, requests: rows <= 2 * requests)
    alone = await batcher.submit({"x": np.ones((2, 1), np.float32)})  # nothing queued: run at once, inline
    large = await batcher.submit({"x": np.ones((3, 1), np.float32)})  # too dear: a worker thread
    assert calls == [(2, here), (3, calls[1][1])] and calls[1][1] != here
    assert alone["y"].shape == (2, 1) and large["y"].shape == (3, 1)


async def test_requests_waiting_behind_a_busy_engine_share_a_batch() -> None:
    engine = Recorder(delay=0.05)
    batcher = Batcher(
        engine, config(batch_timeout_micros=0, num_batch_threads=1), inline=lambda rows, requests: rows == 1
    )
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((2, 1), np.float32)}))  # runs in a thread
    await asyncio.sleep(0.01)
    rest = await asyncio.gather(*(batcher.submit({"x": np.ones((1, 1), np.float32)}) for _ in range(4)))
    await first
    assert engine.sizes == [2, 4]  # the four waited for the slot and then ran as one call
    assert all(r["y"].shape == (1, 1) for r in rest)


async def test_an_inline_batch_that_fails_fails_only_its_callers() -> None:
    def engine(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise RuntimeError("engine exploded")
        return {"y": inputs["x"]}

    batcher = Batcher(engine, config(batch_timeout_micros=0), inline=lambda rows, requests: True)
    with pytest.raises(RuntimeError, match="exploded"):
        await batcher.submit({"x": -np.ones((1, 1), np.float32)})
    assert (await batcher.submit({"x": np.ones((1, 1), np.float32)}))["y"].shape == (1, 1)
    assert batcher.queued_rows == 0


# -- TF Serving's enable_large_batch_splitting and pad_variable_length_inputs -------------------


def splitting(**overrides: int | tuple[int, ...]) -> BatchingConfig:
    values: dict[str, object] = {
        "max_batch_size": 12,
        "max_execution_batch_size": 4,
        "enable_large_batch_splitting": True,
        "batch_timeout_micros": 0,
        "max_enqueued_batches": 8,
        "num_batch_threads": 2,
    }
    values.update(overrides)
    return BatchingConfig(**values)  # type: ignore[arg-type]


async def test_a_request_over_the_execution_size_is_split_and_joined_in_order() -> None:
    engine = Recorder(delay=0.01)
    batcher = Batcher(engine, splitting())
    rows = np.arange(12, dtype=np.float32).reshape(12, 1)  # 3 x max_execution_batch_size
    result = await batcher.submit({"x": rows})
    np.testing.assert_array_equal(result["y"], rows * 2)
    assert engine.sizes == [4, 4, 4]
    assert batcher.queued_rows == 0


async def test_the_first_piece_fills_the_batch_being_formed() -> None:
    engine = Recorder()
    batcher = Batcher(engine, splitting(batch_timeout_micros=50_000, num_batch_threads=1))
    small = np.full((3, 1), -1, np.float32)
    big = np.arange(9, dtype=np.float32).reshape(9, 1)
    # Same event-loop turn: the 3-row request is queued first, the 9-row one is split 1 + 4 + 4.
    got_small, got_big = await asyncio.gather(batcher.submit({"x": small}), batcher.submit({"x": big}))
    np.testing.assert_array_equal(got_small["y"], small * 2)
    np.testing.assert_array_equal(got_big["y"], big * 2)
    assert engine.sizes == [4, 4, 4]


async def test_a_failed_piece_fails_the_request_and_leaves_nothing_queued() -> None:
    calls = 0

    def second_fails(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("engine broke")
        return {"y": inputs["x"] * 2}

    batcher = Batcher(second_fails, splitting(num_batch_threads=1))
    with pytest.raises(RuntimeError, match="engine broke"):
        await batcher.submit({"x": np.ones((12, 1), np.float32)})
    assert batcher.queued_rows == 0


async def test_without_splitting_no_batch_is_cut_below_max_batch_size() -> None:
    engine = Recorder()
    batcher = Batcher(engine, splitting(enable_large_batch_splitting=False))
    await batcher.submit({"x": np.ones((12, 1), np.float32)})
    assert engine.sizes == [12]  # max_execution_batch_size is read only with splitting, as in TF Serving


async def test_variable_length_inputs_are_padded_with_their_first_element() -> None:
    seen: list[tuple[int, ...]] = []

    def engine(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"] + 0}

    batcher = Batcher(engine, config(pad_variable_length_inputs=True))
    short = np.array([[7, 1]], np.float32)
    long = np.array([[5, 6, 8, 9]], np.float32)
    got_short, got_long = await asyncio.gather(batcher.submit({"x": short}), batcher.submit({"x": long}))
    assert seen == [(2, 4)]  # one batch
    np.testing.assert_array_equal(got_short["y"], [[7, 1, 7, 7]])  # padded as TF Serving pads
    np.testing.assert_array_equal(got_long["y"], long)


async def test_tasks_are_reported_as_submitted_and_as_each_batch_takes_them() -> None:
    """TF Serving's input_batch_size is read from a request as it is submitted (the whole request,
    refused or not), its queuing_latency from each task (a split request's every piece) as a batch
    takes it: the batcher reports both moments."""
    submitted: list[int] = []
    dequeued: list[tuple[int, float]] = []
    batcher = Batcher(
        Recorder(),
        splitting(batch_timeout_micros=30_000, max_enqueued_batches=3),
        on_submit=lambda tensors: submitted.append(len(tensors["x"])),
        on_dequeue=lambda rows, seconds: dequeued.append((rows, seconds)),
    )
    small = np.zeros((1, 1), np.float32)
    big = np.zeros((9, 1), np.float32)
    await asyncio.gather(batcher.submit({"x": small}), batcher.submit({"x": big}))
    assert submitted == [1, 9]
    # The 1-row request and the first 3-row piece fill one batch of 4, then pieces of 4 and 2: the
    # first two batches are cut at once (enough rows queued), the last 2 rows wait for the timeout.
    assert sorted(rows for rows, _ in dequeued) == [1, 2, 3, 4]
    assert max(seconds for _, seconds in dequeued) >= 0.03
    with pytest.raises(ResourceExhausted):
        await batcher.submit({"x": np.zeros((13, 1), np.float32)})  # over 3 x 4 queued rows
    assert submitted == [1, 9, 13] and len(dequeued) == 4


async def test_the_queue_is_reported_changed_after_queued_batches_not_after_requests_run_at_once() -> None:
    """What the queued-rows gauge is set from: each answered batch that came from the queue; a
    request run at once on an idle engine never entered it."""
    seen: list[tuple[str, int]] = []
    at_once = Batcher(
        Recorder(),
        config(batch_timeout_micros=0),
        observe=lambda rows, padded, seconds: seen.append(("observe", rows)),
        inline=lambda rows, requests: True,
        on_dequeue=lambda rows, seconds: seen.append(("dequeued", rows)),
        on_queue_change=lambda: seen.append(("at once", at_once.queued_rows)),
        observe_at_once=lambda rows, padded, seconds: seen.append(("observe at once", rows)),
    )
    await at_once.submit({"x": np.ones((2, 1), np.float32)})
    assert seen == [("observe at once", 2)]  # in place of dequeued + observe; the queue unchanged
    seen.clear()
    engine = Recorder()
    queued = Batcher(  # (never inline: every request goes through the queue to an engine thread)
        engine, config(batch_timeout_micros=0), on_queue_change=lambda: seen.append(("queued", queued.queued_rows))
    )
    await asyncio.gather(*(queued.submit({"x": np.ones((1, 1), np.float32)}) for _ in range(3)))
    assert engine.sizes == [3] and seen == [("queued", 0)]
