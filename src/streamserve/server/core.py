"""The transport-neutral data plane every protocol adapter calls.

:class:`InferenceCore` wraps one :class:`~streamserve.repository.ModelManager`:
predict, classify, regress, model metadata, model status and config reload, on numpy
arrays and plain Python values. Adapters (TF Serving gRPC/REST, KServe V2 gRPC/REST)
only translate wire formats to these calls and :class:`~streamserve.errors.StreamserveError`
codes to wire statuses.

Concurrency contract:

- Calls are made on one asyncio event loop. Model code never runs on the loop: a
  :class:`Runner` runs it in worker threads (ONNX Runtime releases the GIL).
- A request holds a servable handle from signature lookup until its model call has
  finished, even when the caller gives up (timeout, disconnect): the version stays
  loaded until then, so an unload never races a running call.
- :meth:`InferenceCore._run` is the single place where model code is invoked, so a
  dynamic batcher plugs in there by passing another :class:`Runner`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.repository import (
    Handle,
    ModelConfig,
    ModelManager,
    ServableHandle,
    VersionStatus,
)
from streamserve.repository.routing import RoutingKey
from streamserve.runtimes.base import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    Signature,
    Tensors,
    platform_of,
)
from streamserve.runtimes.validation import (
    check_inputs,
    checked_inputs,
    get_signature,
    resolve_outputs,
)
from streamserve.server import examples as ex

log = logging.getLogger(__name__)

T = TypeVar("T")
# (model, version, protocol, api, status code name, seconds) — e.g. metrics
RequestObserver = Callable[[str, str, str, str, str, float], None]
InputDecoder = Callable[[Signature], Mapping[str, np.ndarray]]


class ModelRef(NamedTuple):  # NamedTuple: one per request, built faster than a dataclass
    """Which model a request addresses: a version, a label, or neither (latest / A-B split)."""

    name: str
    version: int | None = None
    label: str | None = None
    routing_key: RoutingKey = None  # or a function giving it, called only for A/B splits


class PredictResult(NamedTuple):  # one per request, as ModelRef
    outputs: Tensors
    model_name: str
    version: int
    signature_name: str


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    signatures: Mapping[str, Signature]
    platform: str = ""  # the runtime's own name when it has one (e.g. "python", "sklearn")


@dataclass(frozen=True)
class ClassifyResult:
    """Per example, a list of (label, score)."""

    classifications: list[list[tuple[str, float]]]
    model_name: str
    version: int
    signature_name: str


@dataclass(frozen=True)
class RegressResult:
    values: list[float]
    model_name: str
    version: int
    signature_name: str


class Runner(Protocol):
    """Runs one signature of a held servable off the event loop."""

    async def run(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors: ...

    def close(self) -> None: ...


# A call this fast is cheaper on the event loop than the hand-off to a worker thread
# (eventfd, futex and a future per request cost more than a tiny model's predict).
INLINE_MAX_SECONDS = 200e-6
INLINE_MAX_INPUT_BYTES = 64 * 1024
# How fast a call "is": the fastest recent call, drifting up by this factor per slower call,
# so a few calls stretched by preemption on a busy host do not send a tiny model to threads.
FLOOR_DRIFT = 1.05
_NO_TIMES: dict[str, float] = {}


class InlineRunner(Protocol):
    """A :class:`Runner` that may run a call synchronously, on the event loop."""

    def run_inline(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors | None:
        """The outputs, or ``None`` (nothing run) when the call must go through ``run``."""
        ...


class ThreadPoolRunner:
    """The default runner: one call per request, in a bounded thread pool unless the
    signature has proved fast (its typical duration, see :data:`FLOOR_DRIFT`, under
    ``INLINE_MAX_SECONDS``) and the inputs are small, in which case it runs inline on the
    event loop."""

    def __init__(self, threads: int = 0) -> None:
        workers = threads or max(2, os.cpu_count() or 2)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
        # id(servable) → signature → typical seconds; an entry goes with its servable
        self._typical_seconds: dict[int, dict[str, float]] = {}

    async def run(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors:
        outputs = self.run_inline(handle, signature_name, inputs, output_filter)
        if outputs is not None:
            return outputs
        call = (handle.servable, inputs, signature_name, list(output_filter) or None)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed_predict, *call)

    def run_inline(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors | None:
        servable = handle.servable
        typical = self._typical_seconds.get(id(servable), _NO_TIMES).get(signature_name)
        if typical is None or typical > INLINE_MAX_SECONDS:
            return None
        if _nbytes(inputs) > INLINE_MAX_INPUT_BYTES:
            return None
        return self._timed_predict(servable, inputs, signature_name, list(output_filter) or None)

    def _timed_predict(
        self, servable: Any, inputs: Tensors, signature_name: str, output_filter: list[str] | None
    ) -> Tensors:
        started = time.perf_counter()
        outputs: Tensors = servable.predict(inputs, signature_name, output_filter)
        self._record(servable, signature_name, time.perf_counter() - started)
        return outputs

    def _record(self, servable: object, signature_name: str, seconds: float) -> None:
        typical = self._typical_seconds.get(id(servable))
        if typical is None:
            try:
                weakref.finalize(servable, self._typical_seconds.pop, id(servable), None)
            except TypeError:  # a servable that cannot be weakly referenced: never inline
                return
            typical = self._typical_seconds[id(servable)] = {}
        previous = typical.get(signature_name)
        drifted = seconds if previous is None else previous * FLOOR_DRIFT
        typical[signature_name] = min(seconds, drifted)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _nbytes(inputs: Tensors) -> int:
    size = 0
    for array in inputs.values():
        size += array.nbytes
    return size


class InferenceCore:
    def __init__(self, manager: ModelManager, runner: Runner | None = None) -> None:
        self.manager = manager
        self.runner: Runner = runner or ThreadPoolRunner()
        self._run_inline: Callable[..., Tensors | None] | None = getattr(
            self.runner, "run_inline", None
        )  # see InlineRunner
        self._inflight: set[asyncio.Future[Any]] = set()
        self._observers: list[RequestObserver] = []

    # -- request observation (adapters report, metrics listen) -----------------------------

    def add_request_observer(self, observer: RequestObserver) -> None:
        self._observers.append(observer)

    @property
    def observed(self) -> bool:
        return bool(self._observers)

    def observe_request(
        self, model: str, version: str, protocol: str, api: str, status: str, started: float
    ) -> None:
        """Report one finished request; ``started`` is its ``time.perf_counter()``."""
        seconds = time.perf_counter() - started
        for observer in self._observers:
            try:
                observer(model, version, protocol, api, status, seconds)
            except Exception:
                log.exception("request observer failed")

    # -- predict ---------------------------------------------------------------------------

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray] | InputDecoder,
        signature_name: str = "",
        output_filter: Sequence[str] = (),
    ) -> PredictResult:
        """Run a signature. ``inputs`` may be a decoder called with the signature, for
        wire formats (REST JSON) whose decoding needs the expected dtypes and shapes.

        A call the runner can make inline (a small, proven-fast model) runs right here,
        with no task or thread hop; any other runs off the loop holding its handle until
        it ends (see :meth:`_until_done`)."""
        name = signature_name or DEFAULT_SIGNATURE
        handle = self._handle(ref)
        try:
            arrays = _checked_inputs(handle, name, inputs, output_filter)
            outputs = self._try_inline(handle, name, arrays, output_filter)
        except BaseException:
            handle.release()
            raise
        if outputs is None:
            outputs = await self._until_done(handle, self._run(handle, name, arrays, output_filter))
        else:
            handle.release()
        return PredictResult(outputs, handle.name, handle.version, name)

    def _try_inline(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors | None:
        if self._run_inline is None:
            return None
        return self._run_inline(handle, signature_name, inputs, output_filter)

    async def _run(
        self, handle: Handle, signature_name: str, inputs: Tensors, output_filter: Sequence[str]
    ) -> Tensors:
        """The one place model code runs: swap the runner to batch."""
        return await self.runner.run(handle, signature_name, inputs, output_filter)

    # -- classify / regress ----------------------------------------------------------------

    async def classify(
        self, ref: ModelRef, examples: list[ex.Features], signature_name: str = ""
    ) -> ClassifyResult:
        name = signature_name or DEFAULT_SIGNATURE

        async def work(handle: Handle) -> ClassifyResult:
            signature = get_signature(handle.servable.signatures, name)
            outputs = await self._run_examples(handle, signature, examples, CLASSIFY_METHOD)
            result = ex.outputs_to_classifications(signature, outputs, len(examples))
            return ClassifyResult(result, handle.name, handle.version, name)

        return await self._with_handle(ref, work)

    async def regress(
        self, ref: ModelRef, examples: list[ex.Features], signature_name: str = ""
    ) -> RegressResult:
        name = signature_name or DEFAULT_SIGNATURE

        async def work(handle: Handle) -> RegressResult:
            signature = get_signature(handle.servable.signatures, name)
            outputs = await self._run_examples(handle, signature, examples, REGRESS_METHOD)
            values = ex.outputs_to_regressions(signature, outputs, len(examples))
            return RegressResult(values, handle.name, handle.version, name)

        return await self._with_handle(ref, work)

    async def _run_examples(
        self, handle: Handle, signature: Signature, examples: list[ex.Features], method: str
    ) -> Tensors:
        if not examples:
            raise InvalidArgument("Input is empty: no examples given")
        if signature.method_name == method:
            inputs = ex.serialized_examples_input(signature, examples)
        elif signature.method_name in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise InvalidArgument(
                f"Expected {method} signature, but signature '{signature.name}' has "
                f"method_name {signature.method_name}"
            )
        else:
            inputs = ex.features_to_inputs(signature, examples, method)
        check_inputs(signature, inputs)
        return await self._run(handle, signature.name, inputs, ())

    # -- metadata, status, config ----------------------------------------------------------

    def metadata(self, ref: ModelRef) -> ModelMetadata:
        with self._handle(ref) as handle:
            signatures = dict(handle.servable.signatures)
            platform = platform_of(handle.servable)
            return ModelMetadata(handle.name, handle.version, signatures, platform)

    def status(self, ref: ModelRef) -> list[VersionStatus]:
        return list(self.manager.status(ref.name, version=ref.version, label=ref.label))

    def reload_config(self, configs: list[ModelConfig]) -> None:
        """Add, remove and update models; blocking (call from a worker thread)."""
        self.manager.reload_config(configs)

    # -- lifecycle -------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for in-flight model calls (their handles) to finish."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)

    def close(self) -> None:
        self.runner.close()

    # -- handles ---------------------------------------------------------------------------

    def _handle(self, ref: ModelRef) -> ServableHandle:
        return self.manager.handle(
            ref.name, version=ref.version, label=ref.label, routing_key=ref.routing_key
        )

    async def _with_handle(self, ref: ModelRef, work: Callable[[Handle], Awaitable[T]]) -> T:
        """Run ``work`` holding a handle (see :meth:`_until_done`)."""
        holder = self._handle(ref)
        return await self._until_done(holder, work(holder.__enter__()))

    async def _until_done(self, holder: AbstractContextManager[Handle], work: Awaitable[T]) -> T:
        """Await ``work`` (its own task) and release the entered ``holder`` when the work
        ends, not when the caller stops waiting, so a cancelled request cannot unload a
        busy version."""
        try:
            task: asyncio.Future[T] = asyncio.ensure_future(work)
        except BaseException:
            holder.__exit__(None, None, None)
            raise
        self._inflight.add(task)

        def release(done: asyncio.Future[T]) -> None:
            self._inflight.discard(done)
            holder.__exit__(None, None, None)
            if not done.cancelled():
                done.exception()  # mark retrieved: an abandoned request logs nothing

        task.add_done_callback(release)
        return await asyncio.shield(task)


def _checked_inputs(
    handle: Handle,
    signature_name: str,
    inputs: Mapping[str, np.ndarray] | InputDecoder,
    output_filter: Sequence[str],
) -> Tensors:
    """The request's arrays, decoded if need be, checked against the signature (and
    marked checked: the servable does not check them again)."""
    signature = get_signature(handle.servable.signatures, signature_name)
    arrays = checked_inputs(signature, inputs(signature) if callable(inputs) else inputs)
    if output_filter:
        resolve_outputs(signature, output_filter, [])
    return arrays
