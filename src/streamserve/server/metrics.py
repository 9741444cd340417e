"""Prometheus metrics of the model server, in its own registry.

Series (all prefixed ``streamserve_``):

- ``requests_total`` / ``request_latency_seconds`` (histogram), labelled
  ``model, version, protocol, api, status`` — one observation per request, by
  every protocol adapter (``protocol``: tfserving | v2 | inception; ``api``:
  predict, classify, infer, metadata, ...; ``status``: canonical code name).
- ``batch_size`` (histogram, ``model, version``) — rows per merged runtime call.
- ``batch_queue_rows`` (gauge, ``model, version``) — rows waiting in the batcher,
  read at scrape time from the batchers themselves (no hot-path cost).
- ``model_version_state`` (gauge, ``model, version``) — TF Serving's state number
  (START 10, LOADING 20, AVAILABLE 30, UNLOADING 40, END 50), fed by the model
  manager's listener; ``model_load_seconds`` (histogram, ``model``).
- ``model_execution_provider_info`` (gauge, ``model, version, provider``) — 1 per
  ONNX Runtime execution provider an AVAILABLE version's session uses, in preference
  order, read at scrape time from the model manager.
- ``process_*`` — CPU seconds and memory of the server process.

With ``serve --workers N`` every worker process writes its series to files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set up by the
supervisor) and a scrape of any worker returns the sum over all of them: counters and
histograms add up; ``model_version_state`` is the lowest state among live workers (a
version reads AVAILABLE once every worker serves it); ``batch_queue_rows`` is the sum
over live workers, sampled every :data:`QUEUE_SAMPLE_SECONDS`; ``process_*`` series are
left out (they describe one process); ``model_execution_provider_info`` is the scraped
worker's (all workers load the same versions the same way).

Served on the REST port at TF Serving's ``/monitoring/prometheus/metrics`` (or the
path of ``--monitoring_config_file``) and at ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from streamserve.errors import InvalidArgument, StreamserveError
from streamserve.repository import ModelManager
from streamserve.server.http import Handler, Request, Response

if TYPE_CHECKING:
    from streamserve.server.context import ServerContext

TF_SERVING_METRICS_PATH = "/monitoring/prometheus/metrics"
PLAIN_METRICS_PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_SAMPLE_SECONDS = 1.0

_REQUEST_LABELS = ("model", "version", "protocol", "api", "status")
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class MonitoringConfig:
    """TF Serving's ``MonitoringConfig.prometheus_config``."""

    enable: bool = True
    path: str = TF_SERVING_METRICS_PATH


def parse_monitoring_config(text: str) -> MonitoringConfig:
    """Parse TF Serving's text-format ``MonitoringConfig``
    (``prometheus_config { enable: true path: "/..." }``); empty path = TF Serving's."""
    from google.protobuf import text_format

    from streamserve.protos.gen.tensorflow_serving.config import monitoring_config_pb2

    message = monitoring_config_pb2.MonitoringConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid monitoring config: {exc}") from None
    prometheus = message.prometheus_config
    path = prometheus.path or TF_SERVING_METRICS_PATH
    if not path.startswith("/"):
        raise InvalidArgument(f"monitoring config: path must start with '/', got {path!r}")
    return MonitoringConfig(enable=prometheus.enable, path=path)


def parse_monitoring_config_file(path: str | Path) -> MonitoringConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read monitoring config file {path}: {exc}") from exc
    try:
        return parse_monitoring_config(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc.message}") from None


class _QueueDepthCollector(Collector):
    """Reads the batchers' queue depths when Prometheus scrapes."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], Callable[[], int]] = {}
        self._lock = threading.Lock()

    def track(self, model: str, version: str, depth: Callable[[], int]) -> None:
        with self._lock:
            self._sources[(model, version)] = depth

    def untrack(self, model: str, version: str) -> None:
        with self._lock:
            self._sources.pop((model, version), None)

    def depths(self) -> list[tuple[str, str, int]]:
        with self._lock:
            sources = list(self._sources.items())
        return [(model, version, depth()) for (model, version), depth in sources]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "streamserve_batch_queue_rows", _QUEUE_HELP, labels=["model", "version"]
        )
        for model, version, depth in self.depths():
            family.add_metric([model, version], float(depth))
        yield family


class _ProviderCollector(Collector):
    """Reads the execution providers of loaded versions from the managers when scraped."""

    def __init__(self, managers: list[ModelManager]) -> None:
        self._managers = managers

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "streamserve_model_execution_provider_info",
            "Execution providers a loaded model version runs on (1 = in use)",
            labels=["model", "version", "provider"],
        )
        for manager in list(self._managers):
            for model, version, providers in manager.execution_providers():
                for provider in providers:
                    family.add_metric([model, str(version), provider], 1.0)
        yield family


_QUEUE_HELP = "Rows waiting in the dynamic batcher"


def multiprocess_dir() -> str | None:
    """The multiprocess-mode folder of ``serve --workers N``, None in a lone server."""
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


class _QueueSampler:
    """Multiprocess mode: copies this worker's queue depths into a file-backed gauge
    every :data:`QUEUE_SAMPLE_SECONDS` (a scrape reaches one worker only)."""

    def __init__(self, queues: _QueueDepthCollector) -> None:
        self._queues = queues
        self._gauge = Gauge(
            "streamserve_batch_queue_rows",
            _QUEUE_HELP,
            ("model", "version"),
            registry=None,
            multiprocess_mode="livesum",
        )
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-queues", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for model, version, depth in self._queues.depths():
            self._gauge.labels(model, version).set(depth)

    def _loop(self) -> None:
        while not self._stopped.wait(QUEUE_SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self._stopped.set()


class ServerMetrics:
    """All server metrics; thread-safe; one instance per server."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "streamserve_requests", "Requests handled", _REQUEST_LABELS, registry=reg
        )
        self.latency = Histogram(
            "streamserve_request_latency_seconds",
            "Request latency, from decoded request to encoded response",
            _REQUEST_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "streamserve_batch_size",
            "Rows per runtime call made by the dynamic batcher",
            ("model", "version"),
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.version_state = Gauge(
            "streamserve_model_version_state",
            "Model version state (TF Serving numbers: 30 = AVAILABLE, 50 = END)",
            ("model", "version"),
            registry=reg,
            multiprocess_mode="livemin",  # workers: AVAILABLE once all of them serve it
        )
        self.load_seconds = Histogram(
            "streamserve_model_load_seconds",
            "Time to load a model version",
            ("model",),
            buckets=_LOAD_BUCKETS,
            registry=reg,
        )
        self._queues = _QueueDepthCollector()
        self._multiprocess_dir = multiprocess_dir()
        self._queue_sampler: _QueueSampler | None = None
        if self._multiprocess_dir is None:
            reg.register(self._queues)
        else:
            self._queue_sampler = _QueueSampler(self._queues)
        if process and self._multiprocess_dir is None:
            ProcessCollector(namespace="streamserve", registry=reg)
        self._request_children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._followed: list[ModelManager] = []
        self._providers = _ProviderCollector(self._followed)
        reg.register(self._providers)

    # -- hot path ---------------------------------------------------------------------------

    def observe_request(
        self, model: str, version: str, protocol: str, api: str, status: str, seconds: float
    ) -> None:
        key = (model, version, protocol, api, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._request_children[key] = children  # benign race: same children either way
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int], None]:
        """A callback for ``DynamicBatcher(on_batch=...)``."""
        return self.batch_size.labels(model, version).observe

    def track_queue(self, model: str, version: str, depth: Callable[[], int]) -> None:
        self._queues.track(model, version, depth)

    def untrack_queue(self, model: str, version: str) -> None:
        self._queues.untrack(model, version)

    # -- model lifecycle --------------------------------------------------------------------

    def follow(self, manager: ModelManager) -> None:
        """Track ``manager``'s version states and load times (idempotent).

        Call it before ``manager.start()`` to see the initial loads' latency too; called
        later, it seeds the current states (their load times are not recorded).
        """
        if any(followed is manager for followed in self._followed):
            return
        self._followed.append(manager)
        manager.add_listener(self.on_version_state)
        for name in manager.model_names():
            with contextlib.suppress(StreamserveError):
                for status in manager.status(name):
                    self.on_version_state(name, status.version, int(status.state), None)

    def on_version_state(
        self, model: str, version: int, state: int, load_seconds: float | None
    ) -> None:
        """Signature of ``ModelManager.add_listener`` callbacks."""
        self.version_state.labels(model, str(version)).set(int(state))
        if load_seconds is not None:
            self.load_seconds.labels(model).observe(load_seconds)

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text; in multiprocess mode the sum over all workers."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        if self._queue_sampler is not None:
            self._queue_sampler.sample()
        workers = CollectorRegistry()
        MultiProcessCollector(workers, self._multiprocess_dir)  # type: ignore[no-untyped-call]
        workers.register(self._providers)  # this worker's: every worker loads the same
        return generate_latest(workers)

    def close(self) -> None:
        if self._queue_sampler is not None:
            self._queue_sampler.stop()


# ---------------------------------------------------------------------------------------
# Server wiring (adapter hook)
# ---------------------------------------------------------------------------------------


def install(context: ServerContext) -> None:
    """Adapter hook: request observer, model state listener, REST routes."""
    metrics = context.metrics
    if metrics is None:  # installed without the options naming it
        metrics = context.metrics = ServerMetrics()
    context.core.add_request_observer(metrics.observe_request)
    metrics.follow(context.manager)
    context.on_stop.append(metrics.close)
    if context.rest_app is None:
        return
    paths = {PLAIN_METRICS_PATH, TF_SERVING_METRICS_PATH}
    if context.options.monitoring_config_file:
        config = parse_monitoring_config_file(context.options.monitoring_config_file)
        paths = {PLAIN_METRICS_PATH, config.path} if config.enable else set()
    for path in sorted(paths):
        context.rest_app.add_route("GET", path, _metrics_handler(metrics))


def _metrics_handler(metrics: ServerMetrics) -> Handler:
    content_type = CONTENT_TYPE.encode()

    async def handler(request: Request) -> Response:
        return Response(body=metrics.render(), content_type=content_type)

    return handler
