"""DynamicBatcher: merging, splitting back, padding, queue limits, error isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import InvalidArgument, ResourceExhausted
from streamserve.server.batching import (
    BatchingParameters,
    DynamicBatcher,
    parse_batching_parameters,
    parse_batching_parameters_file,
)

pytestmark = pytest.mark.timeout(60)


class CountingModel:
    """y = 2x (+ a row id echo), counting calls and the batch sizes it saw."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.gate = gate

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        if np.any(x < 0):
            raise InvalidArgument("negative input")
        self.calls.append(x.shape[0])
        return {"y": x * 2, "total": np.full((x.shape[0],), x.shape[0])}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_64_concurrent_single_rows_make_at_most_4_calls_and_get_their_own_rows() -> None:
    model = CountingModel()
    batcher = DynamicBatcher(
        model, BatchingParameters(max_batch_size=32, batch_timeout_micros=5000)
    )

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 3), i, np.float32)}) for i in range(64))
        )

    results = run(main())
    batcher.close()
    assert len(model.calls) <= 4
    assert sum(model.calls) == 64
    assert batcher.stats.runtime_calls == len(model.calls)
    for i, out in enumerate(results):
        assert out["y"].shape == (1, 3)
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i, np.float32))


def test_multi_row_requests_are_split_back_in_order() -> None:
    model = CountingModel()
    batcher = DynamicBatcher(
        model, BatchingParameters(max_batch_size=16, batch_timeout_micros=5000)
    )
    sizes = [1, 3, 2, 5, 4]

    async def main() -> list[dict[str, np.ndarray]]:
        requests = []
        start = 0
        for size in sizes:
            requests.append(np.arange(start, start + size, dtype=np.int64).reshape(size, 1))
            start += size
        return await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))

    results = run(main())
    batcher.close()
    assert model.calls == [15]
    start = 0
    for size, out in zip(sizes, results, strict=True):
        expected = np.arange(start, start + size, dtype=np.int64).reshape(size, 1) * 2
        np.testing.assert_array_equal(out["y"], expected)
        start += size


def test_incompatible_shapes_go_to_separate_batches() -> None:
    model = CountingModel()
    batcher = DynamicBatcher(model, BatchingParameters(max_batch_size=8, batch_timeout_micros=2000))

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            batcher.submit({"x": np.ones((1, 2), np.float32)}),
            batcher.submit({"x": np.ones((1, 3), np.float32)}),
            batcher.submit({"x": np.ones((1, 2), np.float64)}),
            batcher.submit({"x": np.ones((1, 2), np.float32)}),
        )

    results = run(main())
    batcher.close()
    assert sorted(model.calls) == [1, 1, 2]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2), (1, 2)]
    assert results[2]["y"].dtype == np.float64


def test_request_bigger_than_max_batch_size_runs_alone() -> None:
    model = CountingModel()
    batcher = DynamicBatcher(model, BatchingParameters(max_batch_size=4, batch_timeout_micros=1000))

    async def main() -> dict[str, np.ndarray]:
        return await batcher.submit({"x": np.ones((10, 2), np.float32)})

    out = run(main())
    batcher.close()
    assert model.calls == [10]
    assert out["y"].shape == (10, 2)


def test_padding_to_allowed_batch_sizes() -> None:
    model = CountingModel()
    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=2000, allowed_batch_sizes=(2, 4, 8)
    )
    batcher = DynamicBatcher(model, params)

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(3))
        )

    results = run(main())
    batcher.close()
    assert model.calls == [4]  # 3 rows padded up to the next allowed size
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i, np.float32))
        assert out["total"].tolist() == [4]


def test_pad_variable_length_inputs_pads_trailing_dims() -> None:
    seen: list[tuple[int, ...]] = []

    def model(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["tokens"].shape)
        return {"out": inputs["tokens"] + 1}

    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=2000, pad_variable_length_inputs=True
    )
    batcher = DynamicBatcher(model, params)

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            batcher.submit({"tokens": np.array([[1, 2]], np.int32)}),
            batcher.submit({"tokens": np.array([[3, 4, 5, 6]], np.int32)}),
        )

    short, long = run(main())
    batcher.close()
    assert seen == [(2, 4)]
    assert short["out"].tolist() == [[2, 3, 1, 1]]  # zero padding + 1
    assert long["out"].tolist() == [[4, 5, 6, 7]]


def test_string_inputs_are_batched() -> None:
    def model(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"upper": np.array([s.upper() for s in inputs["s"]], dtype=object)}

    batcher = DynamicBatcher(model, BatchingParameters(max_batch_size=4, batch_timeout_micros=2000))

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            batcher.submit({"s": np.array([b"a"], dtype=object)}),
            batcher.submit({"s": np.array([b"b", b"c"], dtype=object)}),
        )

    first, second = run(main())
    batcher.close()
    assert first["upper"].tolist() == [b"A"]
    assert second["upper"].tolist() == [b"B", b"C"]


def test_bad_member_does_not_fail_the_others() -> None:
    model = CountingModel()
    batcher = DynamicBatcher(model, BatchingParameters(max_batch_size=8, batch_timeout_micros=5000))

    async def main() -> list[object]:
        return await asyncio.gather(
            batcher.submit({"x": np.full((1, 2), 1, np.float32)}),
            batcher.submit({"x": np.full((1, 2), -1, np.float32)}),
            batcher.submit({"x": np.full((1, 2), 3, np.float32)}),
            return_exceptions=True,
        )

    good1, bad, good2 = run(main())
    batcher.close()
    assert isinstance(bad, InvalidArgument)
    assert "negative input" in bad.message
    assert good1["y"].tolist() == [[2, 2]]  # type: ignore[index]
    assert good2["y"].tolist() == [[6, 6]]  # type: ignore[index]
    assert batcher.stats.runtime_calls == 4  # one failed merged call + three isolated retries


def test_queue_full_raises_resource_exhausted() -> None:
    gate = threading.Event()
    model = CountingModel(gate)
    params = BatchingParameters(
        max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1
    )
    batcher = DynamicBatcher(model, params)

    async def main() -> tuple[list[object], int]:
        x = np.ones((2, 1), np.float32)  # each request fills a batch on its own
        running = asyncio.ensure_future(batcher.submit({"x": x}))
        await asyncio.sleep(0)  # let it occupy the only worker
        queued = [asyncio.ensure_future(batcher.submit({"x": x})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await batcher.submit({"x": x})
        depth = batcher.queued_rows
        gate.set()
        return await asyncio.gather(running, *queued), depth

    results, depth = run(main())
    batcher.close()
    assert depth == 4
    assert len(results) == 3
    assert model.calls == [2, 2, 2]


def test_batches_grow_while_workers_are_busy() -> None:
    gate = threading.Event()
    model = CountingModel(gate)
    params = BatchingParameters(max_batch_size=32, batch_timeout_micros=0, num_batch_threads=1)
    batcher = DynamicBatcher(model, params, on_batch=lambda rows: sizes.append(rows))
    sizes: list[int] = []

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
        await asyncio.sleep(0)
        rest = [
            asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}))
            for _ in range(10)
        ]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *rest)

    run(main())
    batcher.close()
    assert sizes == [1, 10]


def test_parse_tf_serving_batching_file(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text(
        "# comment\n"
        "max_batch_size { value: 128 }\n"
        "batch_timeout_micros { value: 0 }\n"
        "max_enqueued_batches { value: 1000000 }\n"
        "num_batch_threads { value: 8 }\n"
        "allowed_batch_sizes: 32\nallowed_batch_sizes: 128\n"
        "pad_variable_length_inputs: true\n"
    )
    params = parse_batching_parameters_file(path)
    assert params == BatchingParameters(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1_000_000,
        num_batch_threads=8,
        allowed_batch_sizes=(32, 128),
        pad_variable_length_inputs=True,
    )


def test_parse_overrides_a_base() -> None:
    base = BatchingParameters(max_batch_size=64, allowed_batch_sizes=(8, 64))
    params = parse_batching_parameters("batch_timeout_micros { value: 7 }", base)
    assert params.max_batch_size == 64
    assert params.batch_timeout_micros == 7
    assert params.allowed_batch_sizes == (8, 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size { value: x }", "Invalid batching parameters"),
        ("max_batch_size { 32 }", "Invalid batching parameters"),
        ("max_batch_sise { value: 32 }", "max_batch_sise"),
        ("max_batch_size { value: 0 }", ">= 1"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
        ("allowed_batch_sizes: 8 allowed_batch_sizes: 4", "strictly increasing"),
        ("pad_variable_length_inputs: maybe", "Invalid batching parameters"),
    ],
)
def test_parse_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_batching_parameters(text)


class FakeServable:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, list[str] | None]] = []

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str, output_filter: object
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append((x.shape[0], signature_name, output_filter))  # type: ignore[arg-type]
        return {"y": x + 1}


class FakeHandle:
    def __init__(self, name: str, version: int, servable: FakeServable) -> None:
        self.name, self.version, self.servable = name, version, servable


class RecordingMetrics:
    def __init__(self) -> None:
        self.batches: list[tuple[str, str, int]] = []
        self.queues: dict[tuple[str, str], object] = {}

    def batch_observer(self, model: str, version: str):  # type: ignore[no-untyped-def]
        return lambda rows: self.batches.append((model, version, rows))

    def track_queue(self, model: str, version: str, depth: object) -> None:
        self.queues[(model, version)] = depth

    def untrack_queue(self, model: str, version: str) -> None:
        self.queues.pop((model, version), None)


def test_batching_runner_batches_per_version_and_signature() -> None:
    from streamserve.server.batching import BatchingRunner

    metrics = RecordingMetrics()
    runner = BatchingRunner(
        BatchingParameters(max_batch_size=16, batch_timeout_micros=200_000), metrics=metrics
    )
    v1, v2 = FakeServable(), FakeServable()

    async def main() -> list[dict[str, np.ndarray]]:
        calls = []
        for i in range(8):
            servable, version = (v1, 1) if i % 2 else (v2, 2)
            handle = FakeHandle("m", version, servable)
            x = np.full((1, 2), i, np.float32)
            calls.append(runner.run(handle, "serving_default", {"x": x}, ()))
        calls.append(runner.run(FakeHandle("m", 1, v1), "other", {"x": np.zeros((1, 2))}, ("y",)))
        results = await asyncio.gather(*calls)
        runner.forget("m", 1)
        await asyncio.sleep(0)
        return results

    results = run(main())
    runner.close()
    assert sorted(v1.calls) == [(1, "other", ["y"]), (4, "serving_default", None)]
    assert v2.calls == [(4, "serving_default", None)]
    for i, out in enumerate(results[:8]):
        assert out["y"].tolist() == [[i + 1, i + 1]]
    assert sorted(metrics.batches) == [("m", "1", 1), ("m", "1", 4), ("m", "2", 4)]
    assert list(metrics.queues) == [("m", "2")]  # version 1 forgotten


def test_per_model_parameters_from_files(tmp_path: Path) -> None:
    from streamserve.server.batching import per_model_parameters

    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "a" / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 8 }")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "batching_params.pbtxt").write_text("batch_timeout_micros { value: 9 }")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "batching_params.pbtxt").write_text("max_batch_size { value: }")
    base = BatchingParameters(max_batch_size=32, batch_timeout_micros=100)
    params_for = per_model_parameters(lambda name: tmp_path / name, base)
    assert params_for("a", 1) == BatchingParameters(max_batch_size=8, batch_timeout_micros=100)
    assert params_for("a", 2) is None
    assert params_for("b", 3) == BatchingParameters(max_batch_size=32, batch_timeout_micros=9)
    with pytest.raises(InvalidArgument, match=r"c/batching_params.pbtxt: Invalid batching"):
        params_for("c", 1)


@pytest.mark.parametrize("timeout_micros", [0, 200, 700, 1200, 3000])
def test_uvloop_short_timers_and_staggered_arrivals(timeout_micros: int) -> None:
    """uvloop turns sub-millisecond timers into plain handles; batching must not care."""
    uvloop = pytest.importorskip("uvloop")
    model = CountingModel()
    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=timeout_micros, num_batch_threads=2
    )
    batcher = DynamicBatcher(model, params)

    async def one(i: int) -> dict[str, np.ndarray]:
        await asyncio.sleep((i % 5) * 0.0002)
        return await batcher.submit({"x": np.full((1, 2), i, np.float32)})

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    loop = uvloop.new_event_loop()
    try:
        results = loop.run_until_complete(main())
    finally:
        loop.close()
        batcher.close()
    assert sum(model.calls) == 200
    for i, out in enumerate(results):
        assert out["y"].tolist() == [[2 * i, 2 * i]]
