"""``streamserve serve --workers N``: N server processes on shared ports, one supervisor.

One Python process serves requests on one core at a time (the event loop holds the GIL
for every request), so on a multi-core host ``--workers N`` runs N complete servers that
all listen on the same gRPC and REST ports with ``SO_REUSEPORT``: the kernel spreads
incoming connections over them. Each worker reads the same options (model config file
and its polling, labels, traffic splits, batching), so each loads the same versions.

The supervisor (the ``serve`` process itself) serves nothing; it

1. reserves both ports (``SO_REUSEPORT``, bound but not listening, so no other program
   takes them while a worker restarts; port 0 becomes a concrete free port);
2. writes the workers' options into a private temporary folder that also holds
   prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``), so that
   ``/metrics`` on any worker returns the sum over all of them;
3. starts the workers (``python -m streamserve.server.workers SPEC INDEX``, each in its
   own process group, output copied to this process's stderr) and prints the usual
   readiness line once every worker serves;
4. restarts a worker that dies (logged, with a growing delay if it keeps dying);
5. on SIGTERM or SIGINT sends SIGTERM to every worker, waits for them to drain
   (SIGKILL after a deadline) and removes its temporary folder.

A worker whose supervisor disappears (killed with SIGKILL) stops by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from streamserve.errors import SetupError, StreamserveError
from streamserve.processes import ChildProcess
from streamserve.server.context import ServerOptions
from streamserve.waiting import WaitTimeout

log = logging.getLogger(__name__)

WORKER_READY_PREFIX = "streamserve worker: serving"
"""A worker's readiness line (deliberately not ``SERVER_READY_PREFIX``: only the
supervisor announces the server, once all workers serve)."""
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_TIMEOUT_SECONDS = 300.0
CHECK_INTERVAL_SECONDS = 0.5
PARENT_CHECK_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a worker up this long resets the restart delay
STOP_MARGIN_SECONDS = 30.0  # beyond the drain grace, before SIGKILL

ReadyCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker runs: the server options (ports fixed, ``reuse_port`` on) and
    the supervisor's logging set-up."""

    options: ServerOptions
    log_level: str
    log_format: str
    supervisor_pid: int


# -- the supervisor -------------------------------------------------------------------------


def serve_workers(
    options: ServerOptions,
    workers: int,
    stop: threading.Event,
    on_ready: ReadyCallback,
    *,
    log_level: str = "INFO",
    log_format: str = "text",
) -> None:
    """Run ``workers`` server processes until ``stop`` is set; ``on_ready(grpc_port,
    rest_port)`` is called once all of them serve. ``SetupError`` if one cannot start."""
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamserve-")))
        grpc_port = stack.enter_context(reserved_port(options.host, options.grpc_port))
        rest_port = None
        if options.rest_port is not None:
            rest_port = stack.enter_context(reserved_port(options.host, options.rest_port))
        shared = replace(options, grpc_port=grpc_port, rest_port=rest_port, reuse_port=True)
        spec = WorkerSpec(shared, log_level, log_format, os.getpid())
        pool = WorkerPool(spec, workers, work_dir)
        stack.callback(pool.stop, options.grace_seconds + STOP_MARGIN_SECONDS)
        pool.start()
        on_ready(grpc_port, rest_port)
        pool.supervise(stop)


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (0: a free port) bound with ``SO_REUSEPORT`` but not listening:
    workers bind and listen on it too, and it stays ours while they restart."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SetupError(f"cannot listen on {host}:{port}: {exc}") from exc
        yield int(sock.getsockname()[1])


class WorkerPool:
    """The worker processes, started, watched, restarted and stopped together."""

    def __init__(self, spec: WorkerSpec, size: int, work_dir: Path) -> None:
        self._spec_path = work_dir / "worker-spec.pickle"
        self._spec_path.write_bytes(pickle.dumps(spec))
        self._metrics_dir = work_dir / "metrics"
        self._metrics_dir.mkdir()
        self._workers = [self._new_worker(index) for index in range(size)]
        self._started_at = [0.0] * size
        self._restart_delay = [0.0] * size

    def _new_worker(self, index: int) -> ChildProcess:
        command = [sys.executable, "-m", __name__, str(self._spec_path), str(index)]
        return ChildProcess(
            command,
            Path(os.devnull),  # the output goes to our stderr (echo) instead
            ready_prefix=WORKER_READY_PREFIX,
            env={MULTIPROCESS_DIR_ENV: str(self._metrics_dir)},
            name=f"worker {index}",
            echo=sys.stderr.buffer,
        )

    def start(self) -> None:
        """Start every worker, then wait until all serve (``SetupError`` otherwise)."""
        for index, worker in enumerate(self._workers):
            worker.start()
            self._started_at[index] = time.monotonic()
        for worker in self._workers:
            self._wait_ready(worker)
        log.info("%d workers serving (pids %s)", len(self._workers), self.pids())

    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers if worker.process is not None]

    def supervise(self, stop: threading.Event) -> None:
        """Restart workers that exit, until ``stop`` is set."""
        while not stop.wait(CHECK_INTERVAL_SECONDS):
            for index, worker in enumerate(self._workers):
                if not worker.running() and not stop.is_set():
                    self._restart(index, stop)

    def _restart(self, index: int, stop: threading.Event) -> None:
        old = self._workers[index]
        log.warning("worker %d (pid %d) exited with code %s; restarting it",
                    index, old.pid, old.returncode)  # fmt: skip
        self._forget_metrics_of(old.pid)
        delay = self._next_delay(index)
        if delay and stop.wait(delay):
            return
        worker = self._workers[index] = self._new_worker(index)
        worker.start()
        self._started_at[index] = time.monotonic()
        try:
            self._wait_ready(worker)
        except SetupError as exc:
            log.error("worker %d did not restart: %s", index, exc)
            return  # the next check sees it exited and tries again, later
        log.info("worker %d restarted (pid %d)", index, worker.pid)

    def _next_delay(self, index: int) -> float:
        """No delay after a long run; after a quick death 1 s, doubling up to 30 s."""
        if time.monotonic() - self._started_at[index] > STABLE_SECONDS:
            self._restart_delay[index] = 0.0
        else:
            previous = self._restart_delay[index]
            self._restart_delay[index] = min(MAX_RESTART_DELAY_SECONDS, max(1.0, 2 * previous))
        return self._restart_delay[index]

    def _wait_ready(self, worker: ChildProcess) -> None:
        try:
            worker.wait_ready(START_TIMEOUT_SECONDS)
        except (RuntimeError, WaitTimeout) as exc:
            worker.stop()
            raise SetupError(f"{worker.name} did not start (its output is above): {exc}") from None

    def _forget_metrics_of(self, pid: int) -> None:
        """Drop a dead worker's live gauges (its counters keep counting in the sums)."""
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    def stop(self, timeout: float) -> None:
        """SIGTERM to all workers at once (each drains), SIGKILL to those still up after
        ``timeout``."""
        running = [worker for worker in self._workers if worker.running()]
        if running:
            log.info("stopping %d workers", len(running))
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        for worker in running:
            worker.stop(timeout)


# -- a worker ----------------------------------------------------------------------------------


def worker_main(spec_path: Path, index: int) -> int:
    """One worker: the server of ``spec``, until SIGTERM/SIGINT or the supervisor is gone."""
    from streamserve.logs import configure_logging
    from streamserve.server.app import Server

    spec: WorkerSpec = pickle.loads(spec_path.read_bytes())
    configure_logging(spec.log_level, spec.log_format)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = Server(spec.options).start()
    except StreamserveError as exc:
        print(f"error: worker {index}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    try:
        print(f"{WORKER_READY_PREFIX} {index} (pid {os.getpid()})", flush=True)
        while not stop.wait(PARENT_CHECK_SECONDS):
            if os.getppid() != spec.supervisor_pid:
                log.warning("worker %d: the supervisor is gone; stopping", index)
                break
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1]), int(sys.argv[2])))
