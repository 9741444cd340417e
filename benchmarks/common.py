"""Shared parts of the benchmarks: closed-loop load, percentiles, CPU time, output files.

Load generation:

- :class:`ClientPool` keeps a few client *processes* (``spawn``) alive for a whole
  benchmark, so the load generator gets its own interpreters (and cores) instead of
  competing with the orchestrator's GIL. A :class:`LoadJob` is split over the processes;
  each runs a closed loop (every client sends its next request as soon as the previous
  answer arrives) with grpc.aio (several channels, raw bytes in and out, so the clients
  do no protobuf work) or aiohttp.
- :mod:`benchmarks.loadtools` drives load with ``wrk`` (HTTP) and ``h2load``
  (gRPC), written in C and far cheaper per request than a Python client.

Every run has a warm-up, then a measurement window given as wall-clock times shared by
all processes; only requests that finish inside the window count. Server CPU is read
from ``/proc/<pid>/stat`` at the window's edges (:func:`process_tree_cpu_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from streamserve.stats import percentile

START_MARGIN_SECONDS = 0.5  # time client processes get to open channels before warm-up ends
REQUEST_TIMEOUT_SECONDS = 30.0

# -- statistics ----------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing, NaN or the divisor is 0."""
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class LoadResult:
    """One measured run. Latencies in milliseconds; ``seconds`` is the window length."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None
    first_error: str = ""
    tool: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or self.requests == 0:
            return None
        return 1000 * self.server_cpu_s / self.requests

    @property
    def client_cpu_ms_per_request(self) -> float | None:
        if self.client_cpu_s is None or self.requests == 0:
            return None
        return 1000 * self.client_cpu_s / self.requests

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = self.rps
        data["server_cpu_ms_per_request"] = self.server_cpu_ms_per_request
        data["client_cpu_ms_per_request"] = self.client_cpu_ms_per_request
        return data


def merge_samples(samples: Sequence[LoadSample], seconds: float, tool: str) -> LoadResult:
    latencies = [ms for sample in samples for ms in sample.latencies_ms]
    errors = sum(sample.errors for sample in samples)
    first_error = next((sample.first_error for sample in samples if sample.first_error), "")
    return LoadResult(
        requests=sum(sample.requests for sample in samples),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        client_cpu_s=sum(sample.cpu_s for sample in samples),
        first_error=first_error,
        tool=tool,
    )


# -- CPU time of a server process -------------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    return text[text.rindex(")") + 2 :].split()


def parse_proc_stat_cpu(stat_text: str, ticks_per_second: int) -> float:
    """utime + stime (fields 14 and 15 of ``/proc/<pid>/stat``) in seconds."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (all threads)."""
    ticks = _clock_ticks()
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        fields = _stat_fields(current)
        if fields is None:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
        stack.extend(_children(current))
    return total


# -- closed-loop clients in separate processes ------------------------------------------------


@dataclass
class LoadJob:
    """What one client process runs. ``kind``: "grpc" (``target`` host:port, ``path`` the
    full method name) or "http" (``target`` the URL). ``payload`` is sent as-is."""

    kind: str
    target: str
    path: str
    payload: bytes
    concurrency: int
    start_at: float = 0.0  # wall clock (time.time()) where the window opens
    end_at: float = 0.0
    channels: int = 2
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadSample:
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    first_error: str = ""


def split_concurrency(total: int, parts: int) -> list[int]:
    """Spread ``total`` clients over at most ``parts`` processes, none left empty."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


async def _grpc_caller(job: LoadJob) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    import grpc

    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ]
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(job.channels)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), REQUEST_TIMEOUT_SECONDS)
    methods = [channel.unary_unary(job.path) for channel in channels]  # bytes in, bytes out

    async def call(client: int) -> None:
        await methods[client % len(methods)](job.payload, timeout=REQUEST_TIMEOUT_SECONDS)

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return call, close


async def _http_caller(job: LoadJob) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=job.concurrency, force_close=False)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    )
    headers = {"Content-Type": "application/json", **job.headers}

    async def call(client: int) -> None:
        async with session.post(job.target, data=job.payload, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

    async def close() -> None:
        await session.close()

    return call, close


async def _closed_loop(job: LoadJob) -> LoadSample:
    make = _grpc_caller if job.kind == "grpc" else _http_caller
    call, close = await make(job)
    sample = LoadSample()
    cpu_at_start: list[float] = []

    async def mark_window_start() -> None:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        cpu_at_start.append(time.process_time())

    async def client(index: int) -> None:
        while True:
            began = time.perf_counter()
            error = ""
            try:
                await call(index)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            ended = time.perf_counter()
            now = time.time()
            if now >= job.end_at:
                return
            if now < job.start_at:
                continue
            if error:
                sample.errors += 1
                sample.first_error = sample.first_error or error
            else:
                sample.requests += 1
                sample.latencies_ms.append(1000 * (ended - began))

    marker = asyncio.ensure_future(mark_window_start())
    try:
        await asyncio.gather(*(client(index) for index in range(job.concurrency)))
        await marker
        sample.cpu_s = time.process_time() - cpu_at_start[0]
    finally:
        await close()
    return sample


def _client_main(conn: Connection) -> None:
    """A client process: run jobs from the pipe until it sends None."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    while (job := conn.recv()) is not None:
        try:
            conn.send(asyncio.run(_closed_loop(job)))
        except Exception as exc:
            conn.send(LoadSample(errors=1, first_error=f"{type(exc).__name__}: {exc}"[:300]))


class ClientPool:
    """``processes`` long-lived client processes; :meth:`run` splits a job over them."""

    def __init__(self, processes: int = 2) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self._workers = []
        for _ in range(max(1, processes)):
            parent, child = context.Pipe()
            process = context.Process(target=_client_main, args=(child,), daemon=True)
            process.start()
            self._workers.append((process, parent))

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [process.pid or 0 for process, _ in self._workers]

    def run(
        self,
        job: LoadJob,
        warmup: float,
        duration: float,
        server_pid: int | None = None,
        tool: str = "",
    ) -> LoadResult:
        start_at = time.time() + START_MARGIN_SECONDS + warmup
        end_at = start_at + duration
        shares = split_concurrency(job.concurrency, self.size)
        used = self._workers[: len(shares)]
        for (_, conn), share in zip(used, shares, strict=True):
            conn.send(_replace(job, concurrency=share, start_at=start_at, end_at=end_at))
        cpu = sample_window_cpu(server_pid, start_at, end_at)
        samples = [conn.recv() for _, conn in used]
        result = merge_samples(samples, duration, tool or f"{job.kind} x{len(used)} processes")
        result.server_cpu_s = cpu
        return result

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process, _ in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._workers = []

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _replace(job: LoadJob, **changes: Any) -> LoadJob:
    import dataclasses

    return dataclasses.replace(job, **changes)


def sample_window_cpu(pid: int | None, start_at: float, end_at: float) -> float | None:
    if pid is None:
        return None
    time.sleep(max(0.0, start_at - time.time()))
    before = process_tree_cpu_seconds(pid)
    time.sleep(max(0.0, end_at - time.time()))
    return process_tree_cpu_seconds(pid) - before


# -- progress, files ------------------------------------------------------------------------


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Any]:
    """A tqdm bar on stderr; ``bar.set_postfix_str(step)`` then ``bar.update()`` per step."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="run", dynamic_ncols=True) as bar:
        yield bar


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def nan_to_none(value: Any) -> Any:
    """Recursively replace NaN floats (invalid JSON) with None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(item) for item in value]
    return value


@dataclass
class BarPanel:
    """One subplot of grouped bars: ``series`` name → one value per group (None = absent)."""

    title: str
    ylabel: str
    groups: list[str]
    series: dict[str, list[float | None]]


def plot_bar_panels(path: Path, panels: Sequence[BarPanel], title: str) -> Path:
    """Grouped bar charts, one panel per row, written as PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        count = max(1, len(panel.series))
        width = 0.8 / count
        for index, (name, values) in enumerate(panel.series.items()):
            xs = [group + (index - (count - 1) / 2) * width for group in range(len(panel.groups))]
            heights = [0.0 if value is None else value for value in values]
            bars = ax.bar(xs, heights, width, label=name)
            for bar, value in zip(bars, values, strict=True):
                if value is not None:
                    ax.annotate(f"{value:,.0f}" if value >= 100 else f"{value:.2g}",
                                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = [
    "BarPanel",
    "ClientPool",
    "LoadJob",
    "LoadResult",
    "LoadSample",
    "median",
    "merge_samples",
    "nan_to_none",
    "parse_proc_stat_cpu",
    "percentile",
    "plot_bar_panels",
    "process_tree_cpu_seconds",
    "progress",
    "ratio",
    "sample_window_cpu",
    "split_concurrency",
    "write_json",
]
