"""ModelManager: keeps the aspired versions of every configured model loaded and serves handles.

The story of one version, as in TF Serving's AspiredVersionsManager:

1. The poller scans each base path (:mod:`.source`); the version policy names the
   aspired versions.
2. A new aspired version goes START → LOADING on a loader thread, is loaded by the
   runtime layer, warmed (the version's TF Serving warm-up file replayed, else one
   synthetic request; a failing warm-up file fails the load), then becomes AVAILABLE.
   A failed load ends in END with its error recorded; other versions keep serving.
3. Only once some aspired version is AVAILABLE are versions that are no longer aspired
   moved to UNLOADING (availability-preserving). No new request can reach them; the
   servable is closed, and the version reaches END, when the last open handle is released.

Requests never wait on loads: ``handle`` takes the manager lock only to pick a version
and bump its reference count. Thread-safe; usable from plain threads and asyncio alike.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from streamserve.errors import (
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StreamserveError,
    Unavailable,
)
from streamserve.repository.config import ModelConfig, validate_model_configs
from streamserve.repository.events import EventDispatcher, Listener, StateEvent
from streamserve.repository.handles import ModelRecord, ServableHandle, VersionRecord
from streamserve.repository.routing import (
    RoutingKey,
    choose_split_version,
    label_assignment_error,
    resolve_label,
    resolve_routing_key,
)
from streamserve.repository.source import ScanResult, VersionSource
from streamserve.repository.states import VersionState, VersionStatus
from streamserve.repository.warmup import warm_up_version
from streamserve.runtimes.base import LoadOptions, Servable, providers_of

log = logging.getLogger(__name__)

Loader = Callable[[Path], Servable]


def default_loader(version_dir: Path, options: LoadOptions | None = None) -> Servable:
    """The runtime registry's loader, imported late to keep this module light."""
    from streamserve.runtimes.registry import load_servable

    return load_servable(version_dir, options)


class ModelManager:
    """Loads, serves, labels and unloads model versions. See the module docstring."""

    def __init__(
        self,
        configs: Iterable[ModelConfig],
        file_system_poll_wait_seconds: float = 1.0,
        allow_version_labels_for_unavailable_models: bool = False,
        loader: Loader | None = None,
        *,
        load_threads: int = 2,
        warmup: bool = True,
        load_options: LoadOptions | None = None,
    ) -> None:
        configs = list(configs)
        validate_model_configs(configs)
        self._models = {config.name: ModelRecord(config) for config in configs}
        self._poll_wait = file_system_poll_wait_seconds
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._loader = loader or partial(default_loader, options=load_options)
        self._warmup = warmup
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._reload_lock = threading.Lock()
        self._source = VersionSource()
        self._events = EventDispatcher()
        self._load_pool = ThreadPoolExecutor(load_threads, thread_name_prefix="streamserve-load")
        self._close_pool = ThreadPoolExecutor(1, thread_name_prefix="streamserve-unload")
        self._stopping = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._started = False
        self._rng = random.Random()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the initial versions (blocks until each first load attempt is done), then poll.

        Raises FailedPrecondition (after stopping) when a configured version label points
        at a version that did not become available.
        """
        if self._started:
            return
        self._started = True
        self._events.start()
        with self._reload_lock:
            models = self._snapshot()
            self._wait(self._scan_and_reconcile(models))
            errors = [self._update_labels(model, model.config) for model in models]
        if any(errors):
            self.stop()
            raise FailedPrecondition("; ".join(e for e in errors if e))
        if self._poll_wait > 0:
            self._poll_thread = threading.Thread(
                target=self._poll_loop, name="streamserve-model-poller", daemon=True
            )
            self._poll_thread.start()

    def stop(self) -> None:
        """Stop polling and loading, then unload everything (open handles finish first)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._poll_thread is not None:
            self._poll_thread.join()
        self._load_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for model in self._models.values():
                self._retire(model)
        self._close_pool.shutdown(wait=True)
        self._events.stop()

    def __enter__(self) -> ModelManager:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ configuration

    def reload_config(self, configs: Iterable[ModelConfig]) -> None:
        """Add, remove and update models without a restart (TF Serving's ReloadConfig).

        Blocks until the load attempts it caused are done. Models are applied even when
        it raises: FailedPrecondition for labels on unavailable versions (those models
        keep their old labels), UNKNOWN when a newly added model has no available version.
        """
        configs = list(configs)
        validate_model_configs(configs)
        with self._reload_lock:
            added, replaced, touched = self._plan_reload(configs)
            self._wait(self._scan_and_reconcile(touched + list(replaced.values())))
            self._swap_in(replaced)
            with self._lock:
                errors = [self._update_labels(self._models[c.name], c) for c in configs]
                unavailable, code = self._describe_unavailable(added)
        if any(errors):
            raise FailedPrecondition("; ".join(e for e in errors if e))
        if unavailable:
            listing = ", ".join(unavailable)
            message = f"{len(unavailable)} model(s) did not become available: {{{listing}}}"
            raise StreamserveError(message, code)

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def config(self, name: str) -> ModelConfig:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise NotFound(f"Model {name} is not configured")
        return model.config

    def poll_once(self) -> None:
        """Scan every base path now and wait for the load attempts that causes."""
        self._wait(self._scan_and_reconcile(self._snapshot()))

    # ------------------------------------------------------------------ requests

    def handle(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        routing_key: RoutingKey = None,
    ) -> ServableHandle:
        """A handle on an AVAILABLE version; the version stays loaded until it is released.

        ``version`` or ``label`` pick one version; with neither, the model's traffic split
        (sticky by ``routing_key``) or else the latest available version is used.
        """
        if version is not None and label is not None:
            raise InvalidArgument("Give either a model version or a version label, not both")
        if self._stopping.is_set():
            raise Unavailable("The model manager is shutting down")
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                version = resolve_label(model.labels if model else {}, label)
            record = self._select(model, name, version, routing_key)
            record.refcount += 1
        assert model is not None and record.servable is not None
        release = partial(self._release, model, record)
        return ServableHandle(name, record.version, record.servable, release, label)

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Version statuses, newest first (TF Serving's GetModelStatus)."""
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                version = resolve_label(model.labels if model else {}, label)
            records = dict(model.versions) if model else {}
            problem = model.problem if model else ""
            if version is not None:
                if version not in records:
                    raise NotFound(f"Could not find version {version} of model {name}")
                return [records[version].status()]
            if not records:
                detail = f": {problem}" if problem else ""
                raise NotFound(f"Could not find any versions of model {name}{detail}")
            return [records[v].status() for v in sorted(records, reverse=True)]

    def execution_providers(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """``(model, version, providers)`` of every AVAILABLE version whose runtime names
        its execution providers (ONNX Runtime), for metrics and diagnostics."""
        with self._lock:
            available = [
                (model.name, record.version, record.servable)
                for model in self._models.values()
                for record in model.versions.values()
                if record.state == VersionState.AVAILABLE
            ]
        found = [(name, version, providers_of(s)) for name, version, s in available]
        return [(name, version, providers) for name, version, providers in found if providers]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(name, version, state, load_seconds)`` on every state change.

        Called on one background thread, in order; ``load_seconds`` is set for AVAILABLE.
        """
        self._events.add_listener(listener)

    def wait_for_state(
        self, name: str, version: int, state: VersionState, timeout: float = 30.0
    ) -> bool:
        """Block until ``name`` version ``version`` is in ``state``; False on timeout."""

        def reached() -> bool:
            model = self._models.get(name)
            record = model.versions.get(version) if model else None
            return record is not None and record.state == state

        with self._changed:
            return self._changed.wait_for(reached, timeout)

    def _select(
        self,
        model: ModelRecord | None,
        name: str,
        version: int | None,
        routing_key: RoutingKey,
    ) -> VersionRecord:
        if version is not None:
            record = model.versions.get(version) if model else None
            if record is None or record.state != VersionState.AVAILABLE:
                raise NotFound(f"Servable not found for request: Specific({name}, {version})")
            return record
        if model is not None:
            if model.split:
                chosen = choose_split_version(
                    model.split,
                    model.labels,
                    model.is_available,
                    resolve_routing_key(routing_key),
                    self._rng,
                )
                if chosen is not None:
                    return model.versions[chosen]
            latest = model.latest_available()
            if latest is not None:
                return latest
        raise NotFound(f"Servable not found for request: Latest({name})")

    # ------------------------------------------------------------------ polling

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self._poll_wait):
            try:
                self._scan_and_reconcile(self._snapshot())
            except Exception:
                log.exception("Polling model base paths failed; retrying next poll")

    def _snapshot(self) -> list[ModelRecord]:
        with self._lock:
            return list(self._models.values())

    def _scan_and_reconcile(self, models: Iterable[ModelRecord]) -> list[Future[None]]:
        futures: list[Future[None]] = []
        for model in models:
            scan = self._source.scan(model.config)  # file-system I/O outside the lock
            with self._lock:
                if not model.retired:
                    futures += self._reconcile(model, scan)
        return futures

    def _reconcile(self, model: ModelRecord, scan: ScanResult) -> list[Future[None]]:
        model.problem = scan.problem
        model.aspired = self._source.aspired(model.config, scan)
        return self._apply_aspired(model)

    def _apply_aspired(self, model: ModelRecord) -> list[Future[None]]:
        """Start loads for new aspired versions; unload the rest when that keeps availability."""
        futures = []
        for version, path in model.aspired.items():
            record = model.versions.get(version)
            if record is None or (record.state == VersionState.END and not record.load_failed):
                record = VersionRecord(version, path)
                model.versions[version] = record
                self._set_state(model, record, VersionState.START)
                futures.append(self._submit_load(model, record))
        unaspired = [r for r in model.versions.values() if r.version not in model.aspired]
        for record in unaspired:
            record.load_failed = False  # retry if it is ever aspired again
        if self._may_unload(model):
            for record in unaspired:
                if record.state == VersionState.AVAILABLE:
                    self._begin_unload(model, record)
        model.prune_ended()
        return futures

    @staticmethod
    def _may_unload(model: ModelRecord) -> bool:
        """Availability preserving: keep old versions until an aspired one serves."""
        return not model.aspired or any(model.is_available(v) for v in model.aspired)

    @staticmethod
    def _wait(futures: list[Future[None]]) -> None:
        concurrent.futures.wait(futures)

    # ------------------------------------------------------------------ loading

    def _submit_load(self, model: ModelRecord, record: VersionRecord) -> Future[None]:
        try:
            return self._load_pool.submit(self._load, model, record)
        except RuntimeError:  # the pool is shut down: the manager is stopping
            self._set_state(model, record, VersionState.END)
            done: Future[None] = Future()
            done.set_result(None)
            return done

    def _load(self, model: ModelRecord, record: VersionRecord) -> None:
        with self._lock:
            if record.state != VersionState.START:
                return
            if self._stopping.is_set() or model.retired or record.version not in model.aspired:
                self._set_state(model, record, VersionState.END)
                return
            self._set_state(model, record, VersionState.LOADING)
        description = f"servable {model.name} version {record.version}"
        log.info("Loading %s from %s", description, record.path)
        started = time.monotonic()
        try:
            servable = self._loader(record.path)
        except Exception as exc:
            self._record_failure(model, record, exc)
            return
        if self._warmup and not self._warmed_up(model, record, servable, description):
            return
        seconds = time.monotonic() - started
        with self._lock:
            record.servable = servable
            record.load_seconds = seconds
            self._set_state(model, record, VersionState.AVAILABLE, seconds)
            self._apply_aspired(model)
        log.info("Successfully loaded %s in %.3f s", description, seconds)

    def _warmed_up(
        self, model: ModelRecord, record: VersionRecord, servable: Servable, description: str
    ) -> bool:
        """Warm ``servable`` up; a failed warm-up file fails the load (servable closed)."""
        try:
            warm_up_version(servable, record.path, description)
        except Exception as exc:
            _close_quietly(servable, description)
            self._record_failure(model, record, exc)
            return False
        return True

    def _record_failure(self, model: ModelRecord, record: VersionRecord, exc: Exception) -> None:
        code = exc.code if isinstance(exc, StreamserveError) else Code.UNKNOWN
        message = str(exc) or type(exc).__name__
        log.error("Loading servable %s version %s failed: %s", model.name, record.version, message)
        with self._lock:
            record.error_code = code
            record.error_message = message
            record.load_failed = True
            self._set_state(model, record, VersionState.END)

    # ------------------------------------------------------------------ unloading

    def _begin_unload(self, model: ModelRecord, record: VersionRecord) -> None:
        """Stop routing to ``record``; it is closed once no handle holds it (lock held)."""
        log.info("Unloading servable %s version %s", model.name, record.version)
        self._set_state(model, record, VersionState.UNLOADING)
        if record.refcount == 0:
            self._schedule_close(model, record)

    def _release(self, model: ModelRecord, record: VersionRecord) -> None:
        with self._lock:
            record.refcount -= 1
            if (
                record.refcount == 0
                and record.state == VersionState.UNLOADING
                and not record.close_scheduled
            ):
                self._schedule_close(model, record)

    def _schedule_close(self, model: ModelRecord, record: VersionRecord) -> None:
        record.close_scheduled = True
        try:
            self._close_pool.submit(self._close, model, record)
        except RuntimeError:  # the pool is shut down: close here
            self._close(model, record)

    def _close(self, model: ModelRecord, record: VersionRecord) -> None:
        servable = record.servable
        if servable is not None:
            try:
                servable.close()
            except Exception:
                log.exception("Closing servable %s version %s failed", model.name, record.version)
        with self._lock:
            record.servable = None
            self._set_state(model, record, VersionState.END)
        log.info("Unloaded servable %s version %s", model.name, record.version)

    def _retire(self, model: ModelRecord) -> None:
        """Unload every version of a model that left the config (lock held)."""
        model.retired = True
        model.aspired = {}
        for record in model.versions.values():
            if record.state == VersionState.START:
                self._set_state(model, record, VersionState.END)
            elif record.state == VersionState.AVAILABLE:
                self._begin_unload(model, record)

    def _set_state(
        self,
        model: ModelRecord,
        record: VersionRecord,
        state: VersionState,
        load_seconds: float | None = None,
    ) -> None:
        record.state = state
        self._events.publish(StateEvent(model.name, record.version, state, load_seconds))
        self._changed.notify_all()

    # ------------------------------------------------------------------ reload helpers

    def _plan_reload(
        self, configs: list[ModelConfig]
    ) -> tuple[list[str], dict[str, ModelRecord], list[ModelRecord]]:
        """Retire removed models, add new ones, update the rest in place.

        A model whose base path or platform changed is rebuilt beside the old one
        (``replaced``) and swapped in after its first load attempt, so it keeps serving.
        """
        wanted = {config.name: config for config in configs}
        added: list[str] = []
        replaced: dict[str, ModelRecord] = {}
        touched: list[ModelRecord] = []
        with self._lock:
            for name in [n for n in self._models if n not in wanted]:
                log.info("Removing model %s", name)
                self._retire(self._models.pop(name))
                self._source.forget(name)
            for config in configs:
                model = self._models.get(config.name)
                if model is None:
                    log.info("Adding model %s (base path %s)", config.name, config.base_path)
                    model = self._models[config.name] = ModelRecord(config)
                    added.append(config.name)
                    touched.append(model)
                elif (model.config.base_path, model.config.platform) != (
                    config.base_path,
                    config.platform,
                ):
                    replaced[config.name] = ModelRecord(config)
                else:
                    model.config = config
                    touched.append(model)
        return added, replaced, touched

    def _swap_in(self, replaced: dict[str, ModelRecord]) -> None:
        with self._lock:
            for name, new in replaced.items():
                old = self._models[name]
                new.labels, new.split = old.labels, old.split
                self._models[name] = new
                self._retire(old)

    def _update_labels(self, model: ModelRecord, config: ModelConfig) -> str:
        """Install ``config``'s labels and split; '' or why not (FailedPrecondition text)."""
        with self._lock:
            error = label_assignment_error(
                config, model.labels, model.is_available, self._allow_unavailable_labels
            )
            if not error:
                model.labels = dict(config.version_labels)
                model.split = dict(config.traffic_split)
            return error

    def _describe_unavailable(self, names: list[str]) -> tuple[list[str], Code]:
        """Why each of ``names`` has no available version, and the status code to report:
        the first load error's own code (e.g. INVALID_ARGUMENT for a bad model file),
        NOT_FOUND when no version was found, else UNKNOWN."""
        descriptions: list[str] = []
        codes: list[Code] = []
        for name in names:
            model = self._models.get(name)
            if model is None or model.latest_available() is not None:
                continue
            failed = [r for r in model.versions.values() if r.error_message]
            reason = "; ".join(r.error_message for r in failed) or model.problem
            descriptions.append(f"{name}: {reason or 'no version loaded'}")
            codes += [r.error_code for r in failed if r.error_code != Code.OK]
            if not failed and model.problem:
                codes.append(Code.NOT_FOUND)
        known: list[Code] = [code for code in codes if code != Code.UNKNOWN]
        return descriptions, known[0] if known else Code.UNKNOWN


def _close_quietly(servable: Servable, description: str) -> None:
    try:
        servable.close()
    except Exception:
        log.exception("Closing %s after its failed warm-up failed", description)
