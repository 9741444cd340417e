"""External load generators written in C: ``wrk`` (HTTP/1.1) and ``h2load`` (HTTP/2, here
unary gRPC). They cost the machine a fraction of what a Python client does per request,
which matters when client and server share two cores. Both run closed loops: a fixed
number of connections (and streams), each sending its next request when the answer came.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REQUEST_TIMEOUT_SECONDS,
    LoadResult,
    percentile,
    process_tree_cpu_seconds,
)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished, waited-for children (wrk, h2load)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- wrk ------------------------------------------------------------------------------------

_WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"socket_errors\\": %d, "
    .. "\\"status_errors\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""
_WRK_JSON = re.compile(r"^WRKJSON (\{.*\})$", re.MULTILINE)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def parse_wrk_output(text: str) -> dict[str, int]:
    match = _WRK_JSON.search(text)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{text[-2000:]}")
    return dict(json.loads(match.group(1)))


def run_wrk(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int | None = None,
    threads: int = 2,
) -> LoadResult:
    """Closed-loop POSTs with ``wrk`` (``concurrency`` connections): a warm-up run, then
    the measured run; server CPU is sampled around the measured run only."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT.format(body=body_path))
        threads = max(1, min(threads, concurrency))

        def command(seconds: float) -> list[str]:
            return [
                "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
                "--timeout", f"{int(REQUEST_TIMEOUT_SECONDS)}s", "-s", str(script), url,
            ]  # fmt: skip

        if warmup > 0:
            subprocess.run(command(warmup), capture_output=True, check=False)
        before = process_tree_cpu_seconds(server_pid) if server_pid else None
        client_before = children_cpu_seconds()
        started = time.monotonic()
        finished = subprocess.run(command(duration), capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        after = process_tree_cpu_seconds(server_pid) if server_pid else None
        client_cpu = children_cpu_seconds() - client_before
    summary = parse_wrk_output(finished.stdout + finished.stderr)
    seconds = summary["duration_us"] / 1e6 or elapsed
    errors = summary["socket_errors"] + summary["status_errors"]
    return LoadResult(
        requests=summary["requests"] - summary["status_errors"],
        errors=errors,
        seconds=seconds,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        client_cpu_s=client_cpu,
        server_cpu_s=None if before is None or after is None else after - before,
        first_error=f"{errors} errors reported by wrk" if errors else "",
        tool=f"wrk -t{threads}",
    )


# -- h2load (gRPC over raw HTTP/2) ------------------------------------------------------------

_H2LOAD_FINISHED = re.compile(r"finished in [\d.]+s, ([\d.]+) req/s")
_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)


_H2LOAD_DATA = re.compile(r"^traffic: .*\((\d+)\) data$", re.MULTILINE)


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def parse_h2load_output(text: str) -> dict[str, float]:
    finished = _H2LOAD_FINISHED.search(text)
    requests = _H2LOAD_REQUESTS.search(text)
    if finished is None or requests is None:
        raise RuntimeError(f"h2load printed no summary:\n{text[-2000:]}")
    _, _, done, succeeded, failed, errored, timeout = (int(g) for g in requests.groups())
    traffic = _H2LOAD_DATA.search(text)
    return {
        "rps": float(finished.group(1)),
        "done": done,
        "succeeded": succeeded,
        "errors": failed + errored + timeout,
        "data_bytes": int(traffic.group(1)) if traffic else 0,
    }


def parse_h2load_log(text: str, since_us: int = 0) -> list[float]:
    """Latencies (ms) of the 2xx rows of an h2load ``--log-file`` that started at or after
    ``since_us`` (microseconds since the epoch)."""
    latencies = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if int(parts[0]) >= since_us and parts[1].startswith("2"):
            latencies.append(int(parts[2]) / 1000)
    return latencies


def run_h2load_grpc(
    address: str,
    method: str,
    message: bytes,
    concurrency: int,
    connections: int,
    duration: float,
    warmup: float,
    server_pid: int | None = None,
    response_bytes: int | None = None,
) -> LoadResult:
    """Closed-loop unary gRPC calls with ``h2load`` (C, nghttp2): ``connections`` HTTP/2
    connections carrying ``concurrency`` streams in all; a warm-up run, then the measured
    run, with server CPU sampled around the measured run only.

    h2load checks the HTTP status, not the ``grpc-status`` trailer. A failed call has no
    response message, so when ``response_bytes`` (the length of one answer, unframed) is
    given, answers missing from the DATA byte count are reported as errors."""
    connections = max(1, min(connections, concurrency))
    streams = max(1, math.ceil(concurrency / connections))
    seconds = max(1, round(duration))
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = Path(tmp) / "body.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "requests.tsv"

        def command(run_seconds: int, *extra: str) -> list[str]:
            return [
                "h2load", "-c", str(connections), "-m", str(streams), "-t", "1",
                "-D", str(run_seconds), "-H", "content-type: application/grpc",
                "-H", "te: trailers", "-d", str(body), *extra, f"http://{address}{method}",
            ]  # fmt: skip

        if warmup > 0:
            subprocess.run(command(max(1, round(warmup))), capture_output=True, check=False)
        before = process_tree_cpu_seconds(server_pid) if server_pid else None
        client_before = children_cpu_seconds()
        finished = subprocess.run(
            command(seconds, f"--log-file={log}"), capture_output=True, check=False
        )
        client_cpu = children_cpu_seconds() - client_before
        after = process_tree_cpu_seconds(server_pid) if server_pid else None
        text = (finished.stdout + finished.stderr).decode(errors="replace")
        summary = parse_h2load_output(text)
        latencies = parse_h2load_log(log.read_text())
    ok = int(summary["succeeded"])
    failed = int(summary["errors"])
    if response_bytes is not None:
        answered = int(summary["data_bytes"]) // len(grpc_frame(b"x" * response_bytes))
        failed += max(0, ok - answered)
        ok = min(ok, answered)
    return LoadResult(
        requests=ok,
        errors=failed,
        seconds=seconds,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        client_cpu_s=client_cpu,
        server_cpu_s=None if before is None or after is None else after - before,
        first_error=f"{failed} calls failed (h2load status / missing answers)" if failed else "",
        tool=f"h2load -c{connections} -m{streams}",
    )


__all__ = [
    "children_cpu_seconds",
    "grpc_frame",
    "h2load_available",
    "parse_h2load_log",
    "parse_h2load_output",
    "parse_wrk_output",
    "run_h2load_grpc",
    "run_wrk",
    "wrk_available",
]
