"""``streamserve demo``: the classic "TF Serving + gRPC + Kafka Streams" example, end to end.

1. Starts the project's own Apache Kafka broker (or, given bootstrap servers through the
   shared Kafka client flags, file or environment, uses that cluster with those settings)
   and creates ``ImageInputTopic`` and ``ImageOutputTopic``.
2. Starts the model server with the ImageNet classifier and the stream processor in
   remote mode (gRPC, like the classic example).
3. Serves the sample photos over a local HTTP server and produces their URLs and file
   paths; prints each source's top-3 labels and end-to-end latency.
4. Runs the same images through embedded mode and prints both modes' paced end-to-end
   latency percentiles (records sent at ``--rate`` per second) and burst throughput side by
   side, under the chosen delivery ``--guarantee``. (``--mode remote|embedded`` runs one;
   embedded alone starts no model server.)

The processor runs with latency-friendly settings (:data:`LOW_LATENCY_ARGS`).
Everything it starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import itertools
import json
import math
import mimetypes
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamserve.exit_codes import ExitCode
from streamserve.kafka import client_config
from streamserve.kafka.client_config import KafkaClientConfig
from streamserve.stats import percentile
from streamserve.waiting import wait_until

if TYPE_CHECKING:
    from streamserve.processes import StreamProcess

HELP = "Run the flagship demo: images on Kafka → ImageNet classifier → predictions"
INPUT_TOPIC = "ImageInputTopic"
OUTPUT_TOPIC = "ImageOutputTopic"
MODEL_NAME = "imagenet"


def configure(parser: argparse.ArgumentParser) -> None:
    from streamserve import demo_transactions

    parser.add_argument("--model-base-path", type=Path, default=Path("models/imagenet"))
    parser.add_argument("--rounds", type=int, default=3, help="times each image is sent per mode")
    add_run_options(parser)
    demos = parser.add_subparsers(dest="demo", title="other demos", metavar="DEMO")
    demo_transactions.add_parser(demos)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every demo takes: modes, guarantee, pace, work dir and Kafka."""
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=180.0, help="per-mode output deadline")
    parser.add_argument(
        "--mode",
        choices=["both", "remote", "embedded"],
        default="both",
        help="which processor modes to run (both: remote, then embedded)",
    )
    parser.add_argument(
        "--guarantee",
        choices=["exactly-once", "at-least-once"],
        default="exactly-once",
        help="the stream processor's delivery guarantee (default, as `streamserve stream`: "
        "exactly-once, whose outputs a read_committed consumer sees only once the "
        "transaction commits, up to --commit-interval-ms later)",
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=float,
        default=100.0,
        help="the processor's checkpoint interval (exactly-once: its transaction commits)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="records per second of the paced round (its latencies are the percentiles)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="logs and each paced record's latencies, latencies-<mode>.json (default: a temp dir)",
    )
    client_config.add_arguments(
        parser.add_argument_group("Kafka (default: start a local broker)"),
        bootstrap_help="use this Kafka cluster instead of starting a local broker (also "
        "bootstrap.servers from --kafka-config or STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS)",
    )


@dataclass(frozen=True)
class Sent:
    id: str
    source: str
    produced_at: float


@dataclass(frozen=True)
class Received:
    id: str
    source: str
    labels: list[tuple[str, float]]
    mode: str
    latency_ms: float  # produced → seen by the reader
    processor_ms: float  # inside the processor: consumed → encoded (the output's latency_ms)
    received_at: float


@contextlib.contextmanager
def _image_http_server(folder: Path) -> Iterator[str]:
    """Serves the files of ``folder`` (read once, kept in memory) over HTTP/1.1."""
    files = {f"/{path.name}": path.read_bytes() for path in folder.iterdir() if path.is_file()}
    handler = functools.partial(_ImageHandler, files)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    """GET of an in-memory file in one write, on a kept-alive connection: the stdlib's
    file server (HTTP/1.0, a new connection and 64 KiB writes per image) cost the HTTP
    sources ~5-10 ms more per fetch than this, on the paced latency's critical path."""

    protocol_version = "HTTP/1.1"

    def __init__(self, files: dict[str, bytes], *args: Any, **kwargs: Any) -> None:
        self.files = files
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        body = self.files.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_error(404)
            return
        kind = mimetypes.guess_type(self.path)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _sources(images: list[Path], base_url: str) -> list[str]:
    """Each image once as an HTTP URL and once as a file path (the classic example's form)."""
    return [f"{base_url}/{image.name}" for image in images] + [str(image) for image in images]


class _InputWriter:
    """Produces image records to ``ImageInputTopic``; remembers when each was sent."""

    topic = INPUT_TOPIC

    def __init__(self, kafka: KafkaClientConfig, mode: str) -> None:
        from confluent_kafka import Producer

        from streamserve.kafka.client_log import with_logging

        self.mode = mode
        self.producer = Producer(with_logging({**kafka.for_role("producer"), "linger.ms": 0}))
        self.sent: dict[str, Sent] = {}

    def record_ids(self, tag: str, count: int) -> list[str]:
        return [f"{self.mode}-{tag}-{index:04d}" for index in range(count)]

    def send(self, record_ids: list[str], sources: list[str], pace_s: float) -> None:
        """Produce one record every ``pace_s`` on a fixed schedule (0: all at once)."""
        from tqdm import tqdm

        bar = tqdm(record_ids, desc=f"{self.mode:>8}: producing", unit="rec", leave=False,
                   disable=None)  # fmt: skip
        started = time.monotonic()
        for index, record_id in enumerate(bar):
            if pace_s:  # a steady rate: a late send does not push the later ones back
                time.sleep(max(0.0, started + index * pace_s - time.monotonic()))
            source = sources[index % len(sources)]
            value = self._message(record_id, source)
            self.sent[record_id] = Sent(record_id, source, time.time())
            self.producer.produce(self.topic, key=record_id.encode(), value=value)
            self.producer.poll(0)
        self.producer.flush(30)

    def _message(self, record_id: str, source: str) -> bytes:
        field = "url" if source.startswith("http") else "path"
        return json.dumps({"id": record_id, field: source}).encode()


class _OutputReader:
    """Reads ``ImageOutputTopic`` (read_committed) from its end at construction time."""

    def __init__(
        self, kafka: KafkaClientConfig, partitions: int, topic: str = OUTPUT_TOPIC
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from streamserve.kafka.client_log import with_logging

        self.topic = topic
        self.consumer = Consumer(
            with_logging(
                {
                    "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,  # the user's setting wins
                    **kafka.for_role("consumer"),
                    "group.id": f"streamserve-demo-reader-{time.time_ns()}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                }
            )
        )
        ends = [self._end_offset(partition) for partition in range(partitions)]
        self.consumer.assign(
            [TopicPartition(topic, partition, end) for partition, end in enumerate(ends)]
        )

    def _end_offset(self, partition: int, timeout_s: float = 30.0) -> int:
        """The partition's high watermark; retried while the new topic's leader settles
        (the metadata can name a leader a moment before it answers offset requests)."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        settling = {
            KafkaError.NOT_LEADER_FOR_PARTITION,
            KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.UNKNOWN_TOPIC_OR_PART,
        }

        def lookup() -> tuple[int] | None:  # a tuple: truthy for wait_until even at offset 0
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10
                )
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in settling or error.retriable():
                    return None
                raise
            return (int(high),)

        what = f"the end offset of {self.topic}[{partition}]"
        found = wait_until(lookup, timeout_s, what, interval=0.2)
        assert found is not None  # wait_until returns only a truthy value
        return found[0]

    def collect(
        self, record_ids: list[str], sent: dict[str, Sent], timeout_s: float, mode: str
    ) -> list[Received]:
        """Outputs for ``record_ids``; ``sent`` is filled by a concurrent producer."""
        from tqdm import tqdm

        expected = set(record_ids)
        received: dict[str, Received] = {}
        deadline = time.monotonic() + timeout_s
        with tqdm(
            total=len(expected),
            desc=f"{mode:>8}: predictions",
            unit="rec",
            leave=False,
            disable=None,  # no bar when the output is not a terminal
        ) as bar:
            while len(received) < len(expected) and time.monotonic() < deadline:
                # consume(n, t) waits the whole of t unless n records are ready
                ready = self.consumer.consume(100, 0) or self.consumer.consume(1, 0.5)
                for message in ready:
                    result = self._parse(message, sent)
                    if result is not None and result.id in expected:
                        received[result.id] = result
                        bar.update(1)
        return [received[key] for key in record_ids if key in received]

    def _parse(self, message: Any, sent_records: dict[str, Sent]) -> Received | None:
        if message.error() is not None:
            return None
        document = json.loads(message.value())
        sent = sent_records.get(str(document.get("id")))
        if sent is None:
            return None
        labels = [(p["label"], float(p["score"])) for p in document.get("predictions", [])]
        now = time.time()
        latency_ms = (now - sent.produced_at) * 1000.0
        processor_ms = float(document.get("latency_ms", math.nan))
        mode = document.get("mode", "?")
        return Received(sent.id, sent.source, labels, mode, latency_ms, processor_ms, now)

    def close(self) -> None:
        self.consumer.close()


FETCH_WAIT_MAX_MS = 10  # the demo's consumers (librdkafka's default: 500)
LOW_LATENCY_ARGS = (
    # A paced record is alone: close its model batch at once instead of waiting for
    # company (records that arrive while the model is busy still batch up).
    "--max-batch-delay-ms=0",
    # Send each output at once (the processor's default lingers 5 ms to fill batches).
    "--producer-config=linger.ms=0",
    # Short fetch long-polls: measured on the demo's broker, a record reached a consumer
    # parked in a 500 ms long-poll a few ms later than the next short fetch found it.
    f"--consumer-config=fetch.wait.max.ms={FETCH_WAIT_MAX_MS}",
)
"""The demo's latency-friendly processor settings (``streamserve stream``'s defaults favour
throughput); the user's own ``--producer-config``/``--consumer-config`` flags come after
them and win."""


def _processor_args(
    kafka_args: list[str],
    mode: str,
    model_args: list[str],
    roots: list[Path],
    args: argparse.Namespace,
) -> list[str]:
    processor_args = [
        f"--input-topic={INPUT_TOPIC}",
        f"--output-topic={OUTPUT_TOPIC}",
        f"--group-id=streamserve-demo-{mode}",
        f"--instance-id=demo-{mode}",
        "--codec=image",
        f"--model-name={MODEL_NAME}",
        "--fetch-allowed-host=127.0.0.1",
        f"--guarantee={args.guarantee}",
        f"--commit-interval-ms={args.commit_interval_ms:g}",
        *LOW_LATENCY_ARGS,
        # each mode's group starts at the end: it sees only the records produced for it
        "--consumer-config=auto.offset.reset=latest",
        *model_args,
    ]
    for root in roots:
        processor_args.append(f"--fetch-allowed-root={root}")
    return [*processor_args, *kafka_args]  # the user's client settings last: theirs win


@dataclass(frozen=True)
class ModeResult:
    paced: list[Received]  # at --rate records/s: end-to-end latency without queueing
    burst: list[Received]  # all at once: throughput
    burst_seconds: float

    @property
    def records_per_second(self) -> float:
        return len(self.burst) / self.burst_seconds if self.burst_seconds else 0.0


def _kafka_args(
    kafka: KafkaClientConfig, args: argparse.Namespace
) -> tuple[list[str], dict[str, str]]:
    """The processor's Kafka flags and environment: the demo's own flags (secrets in the
    file or the environment, which the processor inherits) or the local broker's address,
    and the per-role client settings given to the demo. A secret among those reaches the
    processor as ``STREAMSERVE_KAFKA_<NAME>`` (for every role), never in its argv."""
    flags = []
    env: dict[str, str] = {}
    if args.bootstrap_servers or not args.kafka_config:
        flags.append(f"--bootstrap-servers={args.bootstrap_servers or kafka.require_bootstrap()}")
    if args.kafka_config:
        flags.append(f"--kafka-config={args.kafka_config}")
    for role in client_config.ROLES:
        flag = f"--{role}-config"
        for name, value in client_config.parse_key_values(
            getattr(args, f"{role}_config"), flag
        ).items():
            if client_config.is_secret(name):
                env[client_config.ENV_PREFIX + name.upper().replace(".", "_")] = value
            else:
                flags.append(f"{flag}={name}={value}")
    return flags, env


def _run_mode(
    kafka: KafkaClientConfig,
    mode: str,
    model_args: list[str],
    sources: list[str],
    args: argparse.Namespace,
    work_dir: Path,
) -> ModeResult:
    from streamserve.processes import StreamProcess

    roots = [Path(s).parent for s in sources if not s.startswith("http")][:1]
    reader = _OutputReader(kafka, args.partitions)
    writer = _InputWriter(kafka, mode)
    count = len(sources) * args.rounds
    kafka_flags, kafka_env = _kafka_args(kafka, args)
    processor = StreamProcess(
        _processor_args(kafka_flags, mode, model_args, roots, args),
        work_dir / f"processor-{mode}.log",
        env=kafka_env,
    )
    return _measure(writer, reader, processor, sources, (count, count), args)


def _measure(
    writer: _InputWriter,
    reader: _OutputReader,
    processor: StreamProcess,
    sources: list[str],
    counts: tuple[int, int],
    args: argparse.Namespace,
) -> ModeResult:
    """Start ``processor``, warm it up, then its paced and burst rounds of ``counts``
    records; stops it and closes ``reader``."""
    try:
        with processor:
            processor.wait_ready(timeout=120)
            _warm_up(writer, reader, sources, args.timeout_s)
            pace_s, timeout_s = 1.0 / args.rate, args.timeout_s
            paced = _round_trip(writer, reader, sources, "paced", counts[0], pace_s, timeout_s)
            burst = _round_trip(writer, reader, sources, "burst", counts[1], 0.0, timeout_s)
            first_sent = min(writer.sent[r.id].produced_at for r in burst) if burst else 0.0
            last = max((r.received_at for r in burst), default=first_sent)
            return ModeResult(paced, burst, last - first_sent)
    finally:
        reader.close()


def _round_trip(
    writer: _InputWriter,
    reader: _OutputReader,
    sources: list[str],
    tag: str,
    count: int,
    pace_s: float,
    timeout_s: float,
) -> list[Received]:
    """Produce in a thread while reading outputs, so latency is measured as they arrive."""
    record_ids = writer.record_ids(tag, count)
    producing = threading.Thread(target=writer.send, args=(record_ids, sources, pace_s))
    producing.start()
    try:
        return reader.collect(record_ids, writer.sent, timeout_s, writer.mode)
    finally:
        producing.join()


def _warm_up(
    writer: _InputWriter, reader: _OutputReader, sources: list[str], timeout_s: float
) -> None:
    """Send warm-up records until one comes back: the group has joined, the model is warm.

    Records produced before the new group's first assignment are skipped (it starts at the
    end of the topic), hence more than one try.
    """
    attempts = itertools.count()
    wait_until(
        lambda: _round_trip(writer, reader, sources[:1], f"warmup{next(attempts)}", 1, 0.0, 3.0),
        timeout_s,
        f"{writer.mode}: a prediction for warm-up records",
        interval=0.0,
    )


def _print_predictions(results: list[Received]) -> None:
    seen: set[str] = set()
    print(f"\n{'source':<52} {'top-3 labels (score)':<66} {'e2e ms':>7}")
    for result in results:
        if result.source in seen:
            continue
        seen.add(result.source)
        labels = ", ".join(f"{label} ({score:.2f})" for label, score in result.labels[:3])
        print(f"{_shorten(result.source, 52):<52} {labels:<66} {result.latency_ms:7.1f}")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _print_comparison(by_mode: dict[str, ModeResult], args: argparse.Namespace) -> None:
    """Paced end-to-end latency percentiles per mode, in-processor p50, burst throughput."""
    paced = max((len(r.paced) for r in by_mode.values()), default=0)
    print(
        f"\nguarantee {args.guarantee}, commit interval {args.commit_interval_ms:g} ms; "
        f"paced: {paced} records at {args.rate:g}/s ({1000 / args.rate:.0f} ms apart)"
    )
    if args.guarantee == "exactly-once":
        print(
            "(a read_committed consumer sees outputs only when their transaction commits: "
            f"e2e includes up to {args.commit_interval_ms:g} ms of commit interval)"
        )
    print(
        f"{'mode':<10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}   {'processor':>9} {'kafka':>6}"
        f"   {'burst records/s':>15}"
    )
    for mode, result in by_mode.items():
        latencies = [r.latency_ms for r in result.paced]
        p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
        timed = [r for r in result.paced if not math.isnan(r.processor_ms)]
        inside = percentile([r.processor_ms for r in timed], 50)
        outside = percentile([r.latency_ms - r.processor_ms for r in timed], 50)
        print(
            f"{mode:<10} {p50:7.1f} {p95:7.1f} {p99:7.1f}   {inside:9.1f} {outside:6.1f}"
            f"   {result.records_per_second:15.1f}"
        )
    waiting = ", and the wait for the commit" if args.guarantee == "exactly-once" else ""
    print(
        "(e2e: produced → seen by a read_committed consumer; processor: p50 of consumed → "
        f"encoded inside it; kafka: p50 of the rest: both hops through the broker{waiting})"
    )


def _save_latencies(path: Path, paced: list[Received]) -> None:
    rows = [
        {"id": r.id, "source": r.source, "e2e_ms": r.latency_ms, "processor_ms": r.processor_ms}
        for r in paced
    ]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _start_kafka(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    topics: tuple[str, ...] = (INPUT_TOPIC, OUTPUT_TOPIC),
) -> KafkaClientConfig:
    """The given cluster (topics created if missing), else a local broker for the demo."""
    from streamserve.kafka import LocalKafka, admin

    started = time.perf_counter()
    kafka = client_config.from_args(args)
    if kafka.bootstrap_servers:
        client = admin.connected_admin(kafka.for_role("admin"), args.kafka_connect_timeout_s)
        admin.create_topics(client, list(topics), args.partitions)
    else:
        local = stack.enter_context(LocalKafka())
        local.create_topics(list(topics), partitions=args.partitions)
        kafka = client_config.merge([KafkaClientConfig(local.client_config), kafka])
    where = kafka.bootstrap_servers
    print(f"kafka     {where} ready in {time.perf_counter() - started:.1f}s")
    return kafka


def _start_platform(
    stack: contextlib.ExitStack, args: argparse.Namespace, work_dir: Path
) -> tuple[KafkaClientConfig, Any]:
    """Kafka, and the model server unless only embedded mode runs (then ``None``)."""
    kafka = _start_kafka(stack, args)
    if args.mode == "embedded":
        return kafka, None
    return kafka, _start_server(stack, MODEL_NAME, args.model_base_path, work_dir)


def _start_server(stack: contextlib.ExitStack, model: str, base_path: Path, work_dir: Path) -> Any:
    """``streamserve serve`` with the one model, ready; stopped when ``stack`` closes."""
    from streamserve.processes import ModelServerProcess

    started = time.perf_counter()
    server = ModelServerProcess(
        [f"--model_name={model}", f"--model_base_path={base_path.resolve()}"],
        work_dir / "server.log",
    )
    stack.enter_context(server)
    server.wait_ready(model=model)
    print(
        f"server    gRPC {server.grpc_target}, REST {server.rest_url} "
        f"ready in {time.perf_counter() - started:.1f}s"
    )
    return server


def run(args: argparse.Namespace) -> int:
    from streamserve.errors import InvalidArgument, SetupError
    from streamserve.models.samples import copy_samples

    if not args.rate > 0:
        raise InvalidArgument("--rate must be above 0")
    if not args.commit_interval_ms > 0:
        raise InvalidArgument("--commit-interval-ms must be above 0")
    if not (args.model_base_path / "1" / "model.onnx").exists():
        raise SetupError(
            f"no model at {args.model_base_path}/1: run "
            f"`streamserve models build imagenet --out {args.model_base_path}` first"
        )
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work_dir.mkdir(parents=True, exist_ok=True)
        images = copy_samples(work_dir / "images")
        kafka, server = _start_platform(stack, args, work_dir)
        base_url = stack.enter_context(_image_http_server(work_dir / "images"))
        sources = _sources(images, base_url)
        print(f"images    {len(images)} sample photos served at {base_url} and as file paths")
        modes = {
            "remote": [f"--model-server={server.grpc_url}"] if server else [],
            "embedded": [f"--model-base-path={args.model_base_path.resolve()}"],
        }
        if args.mode != "both":
            modes = {args.mode: modes[args.mode]}
        by_mode: dict[str, ModeResult] = {}
        expected = len(sources) * args.rounds
        for mode, model_args in modes.items():
            result = by_mode[mode] = _run_mode(kafka, mode, model_args, sources, args, work_dir)
            _save_latencies(work_dir / f"latencies-{mode}.json", result.paced)
            got = len(result.paced) + len(result.burst)
            print(f"\n== {mode} mode, {args.guarantee}: {got}/{2 * expected} predictions")
            _print_predictions(result.paced)
        _print_comparison(by_mode, args)
        if args.work_dir:
            print(f"\nlogs in {work_dir}")
        complete = all(len(r.paced) == len(r.burst) == expected for r in by_mode.values())
        return ExitCode.OK if complete else ExitCode.NOT_SUCCEEDED
