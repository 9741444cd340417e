"""Dynamic batching: merge concurrent requests along dim 0 into one model call.

Used by the model server (one :class:`DynamicBatcher` per model version and
signature) and reusable by the stream processor. Configured with TF Serving's
batching parameters (``--batching_parameters_file``).

How a request travels:

1. ``submit`` (on the event loop) puts the request into the *open batch* of its
   shape class: same input names, dtypes and trailing dims (only the rank when
   ``pad_variable_length_inputs``). A request that does not fit closes the open
   batch and starts a new one.
2. A batch runs (in a worker thread, so the loop never blocks) when a worker is
   free and the batch is full or its ``batch_timeout_micros`` has passed (to within
   half a millisecond, the granularity of uvloop's timers). As in
   TF Serving, an open batch keeps growing while every worker is busy, so batches
   get bigger exactly when the load is high.
3. Inputs are concatenated (padded to the next ``allowed_batch_sizes`` entry by
   repeating the first row), run once, and outputs are sliced back per caller.
   If the merged call fails, each member is run alone so one caller's bad input
   cannot fail the others.

A request with more rows than ``max_batch_size`` runs alone as its own batch
(it is not split); requests whose inputs cannot be batched (scalars, inputs
disagreeing on dim 0) run alone too. When ``max_enqueued_batches`` batches are
already waiting, ``submit`` raises :class:`ResourceExhausted` at once instead of
queueing without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamserve.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from streamserve.repository import Handle
    from streamserve.runtimes.base import Servable

Tensors = dict[str, np.ndarray]
RunBatch = Callable[[Tensors], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters`` (session_bundle_config.proto), with our defaults."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = max(1, min(4, os.cpu_count() or 1))
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidArgument("batching: max_batch_size must be >= 1")
        if self.batch_timeout_micros < 0:
            raise InvalidArgument("batching: batch_timeout_micros must be >= 0")
        if self.max_enqueued_batches < 1 or self.num_batch_threads < 1:
            raise InvalidArgument(
                "batching: max_enqueued_batches and num_batch_threads must be >= 1"
            )
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise InvalidArgument("batching: allowed_batch_sizes must be strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise InvalidArgument(
                    "batching: the last allowed_batch_sizes entry must equal max_batch_size "
                    f"({sizes[-1]} != {self.max_batch_size})"
                )


_WRAPPED_INT_FIELDS = (
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
)


def parse_batching_parameters(
    text: str, base: BatchingParameters | None = None
) -> BatchingParameters:
    """Parse TF Serving's text-format ``BatchingParameters`` (``max_batch_size { value: 32 }``,
    repeated ``allowed_batch_sizes: 8``, ``pad_variable_length_inputs: true``).

    Fields the text does not set keep ``base``'s values (or the defaults). TF Serving
    fields with no meaning here (``thread_pool_name``, large-batch splitting) are
    accepted and ignored; malformed text raises :class:`InvalidArgument`.
    """
    from google.protobuf import text_format

    from streamserve.protos.gen.tensorflow_serving.servables.tensorflow import (
        session_bundle_config_pb2,
    )

    message = session_bundle_config_pb2.BatchingParameters()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid batching parameters: {exc}") from None
    values: dict[str, Any] = {
        name: getattr(message, name).value for name in _WRAPPED_INT_FIELDS if message.HasField(name)
    }
    if message.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    if message.pad_variable_length_inputs:
        values["pad_variable_length_inputs"] = True
    return dataclasses.replace(base or BatchingParameters(), **values)


def parse_batching_parameters_file(
    path: str | Path, base: BatchingParameters | None = None
) -> BatchingParameters:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read batching parameters file {path}: {exc}") from exc
    try:
        return parse_batching_parameters(text, base)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc.message}") from None


class _Member:
    __slots__ = ("future", "inputs", "rows")

    def __init__(self, inputs: Tensors, rows: int, future: asyncio.Future[Tensors]) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future


class _Batch:
    __slots__ = ("deadline", "key", "members", "rows")

    def __init__(self, key: object, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        self.members: list[_Member] = []
        self.rows = 0


_UNBATCHABLE = object()  # key of requests that must run alone
# uvloop rounds timer delays to whole milliseconds (under 0.5 ms it runs the callback
# at once), so a batch within half a millisecond of its deadline counts as due.
_TIMER_SLACK_S = 0.0005


@dataclass
class BatcherStats:
    """Counters for tests and metrics (read on the loop thread)."""

    batches: int = 0  # merged executions started
    runtime_calls: int = 0  # calls of run_batch, including isolated retries
    requests: int = 0


class DynamicBatcher:
    """Batch concurrent ``submit`` calls into ``run_batch`` calls.

    ``run_batch`` gets ``{name: array}`` with all rows and must return outputs
    whose dim 0 equals the rows it got; it runs in one of ``num_batch_threads``
    worker threads. ``submit`` must always be awaited on the same event loop.
    ``on_batch(rows)`` (optional) is called on the loop for every merged
    execution, e.g. to feed a batch-size histogram. Several batchers may share
    one ``executor``; each still runs at most ``num_batch_threads`` batches at once.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        params: BatchingParameters | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
        name: str = "batcher",
    ) -> None:
        self._run_batch = run_batch
        self.params = params or BatchingParameters()
        self._on_batch = on_batch
        self._timeout_s = self.params.batch_timeout_micros / 1e6
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=self.params.num_batch_threads, thread_name_prefix=name
        )
        self._free_workers = self.params.num_batch_threads
        self._open: dict[object, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        # uvloop answers call_at with a plain Handle (no .when()) for a past deadline,
        # so the armed deadline is kept here.
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.queued_rows = 0
        self.stats = BatcherStats()

    # -- public API -------------------------------------------------------------------------

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run ``inputs`` (as part of a batch) and return this caller's output rows."""
        if self._closed:
            raise ResourceExhausted("batcher is shut down")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        key, rows = self._shape_class(inputs)
        batch = self._batch_for(key, rows, loop)
        future: asyncio.Future[Tensors] = loop.create_future()
        batch.members.append(_Member(dict(inputs), rows, future))
        batch.rows += rows
        self.queued_rows += rows
        self.stats.requests += 1
        if key is _UNBATCHABLE or batch.rows >= self.params.max_batch_size:
            self._close(batch)
        self._pump()
        return await future

    def close(self) -> None:
        """Stop accepting work; batches already running finish in their threads."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        loop_open = self._loop is not None and not self._loop.is_closed()
        for batch in [*self._ready, *self._open.values()]:
            for member in batch.members:
                if loop_open and not member.future.done():
                    member.future.set_exception(ResourceExhausted("batcher is shut down"))
        self._ready.clear()
        self._open.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=False)

    # -- queueing (loop thread) -------------------------------------------------------------

    def _shape_class(self, inputs: Mapping[str, np.ndarray]) -> tuple[object, int]:
        rows = -1
        parts = []
        pad = self.params.pad_variable_length_inputs
        for name in sorted(inputs):
            array = inputs[name]
            shape = array.shape
            if not shape or (rows >= 0 and shape[0] != rows):
                return _UNBATCHABLE, max(rows, 1)
            rows = shape[0]
            parts.append((name, array.dtype, len(shape) if pad else shape[1:]))
        if rows <= 0 or rows > self.params.max_batch_size:
            return _UNBATCHABLE, max(rows, 0)
        return tuple(parts), rows

    def _batch_for(self, key: object, rows: int, loop: asyncio.AbstractEventLoop) -> _Batch:
        batch = self._open.get(key) if key is not _UNBATCHABLE else None
        if batch is not None and batch.rows + rows <= self.params.max_batch_size:
            return batch
        if batch is not None:
            self._close(batch)
        if len(self._ready) + len(self._open) >= self.params.max_enqueued_batches:
            raise ResourceExhausted(
                f"batching queue is full ({self.params.max_enqueued_batches} batches waiting)"
            )
        batch = _Batch(key, loop.time() + self._timeout_s)
        if key is not _UNBATCHABLE:
            self._open[key] = batch
        return batch

    def _close(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        self._ready.append(batch)

    def _pump(self) -> None:
        """Start runnable batches on free workers; arm the timer for the next deadline."""
        loop = self._loop
        assert loop is not None
        while self._free_workers > 0:
            batch = self._next_runnable(loop.time() + _TIMER_SLACK_S)
            if batch is None:
                break
            self._start(batch, loop)
        if self._free_workers > 0 and self._open:
            self._arm_timer(loop)

    def _next_runnable(self, now: float) -> _Batch | None:
        if self._ready:
            return self._ready.popleft()
        due = None
        for batch in self._open.values():
            if batch.deadline <= now and (due is None or batch.deadline < due.deadline):
                due = batch
        if due is not None:
            del self._open[due.key]
        return due

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = min(batch.deadline for batch in self._open.values())
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._pump()

    def _start(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        self._free_workers -= 1
        self.queued_rows -= batch.rows
        self.stats.batches += 1
        if self._on_batch is not None:
            self._on_batch(batch.rows)
        done = loop.run_in_executor(self._executor, self._execute, batch.members)
        done.add_done_callback(lambda fut: self._finish(batch, fut))

    def _finish(self, batch: _Batch, done: asyncio.Future[tuple[list[object], int]]) -> None:
        self._free_workers += 1
        if done.cancelled():
            results: list[object] = [ResourceExhausted("batch was cancelled")] * len(batch.members)
        elif done.exception() is not None:
            results = [done.exception()] * len(batch.members)
        else:
            results, calls = done.result()
            self.stats.runtime_calls += calls
        for member, result in zip(batch.members, results, strict=True):
            if member.future.done():
                continue  # the caller went away
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)  # type: ignore[arg-type]
        if not self._closed:
            self._pump()

    # -- execution (worker thread) ----------------------------------------------------------

    def _execute(self, members: list[_Member]) -> tuple[list[object], int]:
        """Run the members as one call; on failure, run each alone to isolate the culprit.

        Returns one result (outputs or exception) per member and the number of
        ``run_batch`` calls made.
        """
        if len(members) == 1:
            return [self._run_one(members[0].inputs)], 1
        try:
            merged, total = self._merge(members)
        except Exception:
            return [self._run_one(member.inputs) for member in members], len(members)
        try:
            outputs = self._run_batch(merged)
            return self._split(outputs, members, total), 1
        except Exception:
            return [self._run_one(member.inputs) for member in members], 1 + len(members)

    def _run_one(self, inputs: Tensors) -> object:
        try:
            return dict(self._run_batch(inputs))
        except Exception as exc:
            return exc

    def _merge(self, members: list[_Member]) -> tuple[Tensors, int]:
        rows = sum(member.rows for member in members)
        target = self._padded_size(rows)
        merged: Tensors = {}
        for name in members[0].inputs:
            parts = [member.inputs[name] for member in members]
            if self.params.pad_variable_length_inputs:
                parts = _pad_trailing(parts)
            if target > rows:
                parts.append(np.repeat(parts[0][:1], target - rows, axis=0))
            merged[name] = np.concatenate(parts, axis=0)
        return merged, target

    def _padded_size(self, rows: int) -> int:
        for size in self.params.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    @staticmethod
    def _split(
        outputs: Mapping[str, np.ndarray], members: list[_Member], total: int
    ) -> list[object]:
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise ValueError(f"output {name!r} has no batch dimension of size {total}")
        results: list[object] = []
        start = 0
        for member in members:
            stop = start + member.rows
            results.append({name: array[start:stop] for name, array in outputs.items()})
            start = stop
        return results


def _pad_trailing(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pad every dim after the first to the largest size among ``parts`` (zeros / b"")."""
    target = tuple(max(dims) for dims in zip(*(part.shape[1:] for part in parts), strict=True))
    padded = []
    for part in parts:
        if part.shape[1:] == target:
            padded.append(part)
            continue
        widths = [(0, 0)] + [
            (0, want - have) for have, want in zip(part.shape[1:], target, strict=True)
        ]
        fill: object = b"" if part.dtype == object else 0
        padded.append(np.pad(part, widths, constant_values=fill))  # type: ignore[call-overload]
    return padded


class BatchMetrics(Protocol):
    """What :class:`BatchingRunner` reports to (``ServerMetrics`` implements it)."""

    def batch_observer(self, model: str, version: str) -> Callable[[int], None]: ...

    def track_queue(self, model: str, version: str, depth: Callable[[], int]) -> None: ...

    def untrack_queue(self, model: str, version: str) -> None: ...


ParamsFor = Callable[[str, int], "BatchingParameters | None"]
_BatcherKey = tuple[str, int, str, tuple[str, ...]]  # model, version, signature, outputs


class BatchingRunner:
    """A model runner that batches calls per model version, signature and output filter.

    Fits ``InferenceCore``'s runner seam: ``run(handle, signature_name, inputs,
    output_filter)`` where ``handle`` has ``.name``, ``.version`` and ``.servable``.
    ``params_for(model, version)`` may return per-model parameters (None = the
    default ``params``). Call :meth:`forget` when a version is unloaded (END) so its
    batchers go away; it is safe to call from any thread.
    """

    def __init__(
        self,
        params: BatchingParameters | None = None,
        *,
        params_for: ParamsFor | None = None,
        metrics: BatchMetrics | None = None,
    ) -> None:
        self.params = params or BatchingParameters()
        self._params_for = params_for
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(
            max_workers=self.params.num_batch_threads, thread_name_prefix="batch"
        )
        self._batchers: dict[_BatcherKey, tuple[Servable, DynamicBatcher]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(
        self,
        handle: Handle,
        signature_name: str,
        inputs: Tensors,
        output_filter: Sequence[str],
    ) -> Tensors:
        key = (handle.name, handle.version, signature_name, tuple(output_filter))
        entry = self._batchers.get(key)
        if entry is None or entry[0] is not handle.servable:
            entry = self._add(key, handle)
        return await entry[1].submit(inputs)

    def _add(self, key: _BatcherKey, handle: Handle) -> tuple[Servable, DynamicBatcher]:
        self._loop = asyncio.get_running_loop()
        name, version, signature_name, output_filter = key
        servable = handle.servable
        wanted = list(output_filter) or None

        def run_batch(arrays: Tensors) -> Mapping[str, np.ndarray]:
            return servable.predict(arrays, signature_name, wanted)

        params = (self._params_for(name, version) if self._params_for else None) or self.params
        on_batch = self._metrics.batch_observer(name, str(version)) if self._metrics else None
        batcher = DynamicBatcher(
            run_batch, params, on_batch=on_batch, executor=self._executor, name=f"batch-{name}"
        )
        self._batchers[key] = entry = (servable, batcher)
        if self._metrics is not None:
            self._metrics.track_queue(name, str(version), lambda: self._queued(name, version))
        return entry

    def _queued(self, name: str, version: int) -> int:
        return sum(
            batcher.queued_rows
            for key, (_, batcher) in list(self._batchers.items())
            if key[0] == name and key[1] == version
        )

    def forget(self, name: str, version: int) -> None:
        """Drop the batchers of an unloaded version (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._forget_now, name, version)

    def _forget_now(self, name: str, version: int) -> None:
        for key in [k for k in self._batchers if k[0] == name and k[1] == version]:
            self._batchers.pop(key)[1].close()
        if self._metrics is not None:
            self._metrics.untrack_queue(name, str(version))

    def close(self) -> None:
        for _, batcher in self._batchers.values():
            batcher.close()
        self._batchers.clear()
        self._executor.shutdown(wait=True)


PER_MODEL_PARAMS_FILE = "batching_params.pbtxt"  # TF Serving's per-model file name


def per_model_parameters(
    base_path_of: Callable[[str], Path], base: BatchingParameters
) -> ParamsFor:
    """``params_for`` reading ``batching_params.pbtxt`` from ``<base_path>/<version>/``,
    else ``<base_path>/``; fields it does not set keep ``base``'s values.

    A malformed file raises :class:`InvalidArgument` naming the file, for every
    request to that version, so the mistake is visible rather than silently ignored.
    """
    cache: dict[tuple[str, int], BatchingParameters | None] = {}

    def params_for(name: str, version: int) -> BatchingParameters | None:
        if (name, version) not in cache:
            root = Path(base_path_of(name))
            candidates = (root / str(version) / PER_MODEL_PARAMS_FILE, root / PER_MODEL_PARAMS_FILE)
            found = next((path for path in candidates if path.is_file()), None)
            cache[(name, version)] = parse_batching_parameters_file(found, base) if found else None
        return cache[(name, version)]

    return params_for
