"""``streamserve stream``: run model inference on a Kafka topic, embedded or remote.

Embedded:  streamserve stream --bootstrap-servers B --input-topic IN --output-topic OUT
               --group-id G --model-base-path models/tiny [--model-name tiny]
Remote:    ... --model-server grpc://h1:8500,grpc://h2:8500 --model-name tiny
               [--model-version N | --model-label L] [--protocol tfserving|v2]
Images:    ... --input-format image [--output-format classic] [--fetch-allowed-root DIR]
Events:    ... --input-format avro --schema-registry-url URL --output-format enriched
               --feature x=amount,age,merchant.risk --output-field fraud_score='probabilities[1]'
           (json: plain JSON objects; avro, protobuf, json-schema: the Confluent wire format,
           schemas from the registry, or --input-schema FILE)
Secured:   ... --kafka-config client.properties  (or STREAMSERVE_KAFKA_SASL_PASSWORD=...)
File:      streamserve stream --config stream.toml [--print-config]

Every flag also has a key in the ``--config`` TOML file and a ``STREAMSERVE_STREAM_<KEY>``
environment variable (:mod:`streamserve.stream.settings`): file < environment < flags.

Exit status: 0 after a graceful stop (SIGTERM/SIGINT: drained and committed);
:data:`EXIT_KAFKA_FATAL` (75) when the Kafka clients broke and rebuilding them kept
failing (restart it); :data:`EXIT_STOP_FORCED` (70) when a stop did not finish within
``--shutdown-timeout-s`` + :data:`STOP_GRACE_S` seconds (uncommitted work is redone by
the next owner); 5 (``streamserve.cli.EXIT_KAFKA_CONNECT``) when Kafka cannot be reached
within ``--kafka-connect-timeout-s`` or refuses the credentials or the TLS handshake at
start-up; 2 for other errors. A stop never takes longer: if even the forced exit
cannot run, SIGALRM ends the process :data:`ALARM_MARGIN_S` seconds later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from streamserve.exit_codes import ExitCode
from streamserve.kafka import client_config
from streamserve.logs import add_log_format_argument, print_error_line

STREAM_READY_PREFIX = "streamserve stream ready:"
"""Start of the line ``stream`` prints once it consumes (then ``key=value`` fields)."""

HELP = "run model inference on a Kafka topic (embedded or remote model), exactly-once"

EXIT_KAFKA_FATAL = ExitCode.KAFKA_FATAL
EXIT_STOP_FORCED = ExitCode.STOP_FORCED
STOP_GRACE_S = 10.0  # after --shutdown-timeout-s: last commit (3 s) + closing clients (5 s)
ALL_HEADERS = "*"  # --header-allowlist: carry every input header
ALARM_MARGIN_S = 2  # SIGALRM's default action ends the process even if Python cannot run

DEFAULT_FETCH_MAX_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000  # = streamserve.stream.assembly.DEFAULT_MAX_PIXELS
DEFAULT_STALL_TIMEOUT_S = 30.0  # = streamserve.stream.health.DEFAULT_STALL_TIMEOUT_S


REQUIRED = ("input_topic", "output_topic", "group_id")


EVENT_FORMATS = ("json", "avro", "protobuf", "json-schema")  # = assembly.EVENT_FORMATS


def configure(parser: argparse.ArgumentParser) -> None:
    from streamserve.stream.settings import defer_defaults

    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="settings file: a key per flag (dashes as underscores) and a [kafka] table",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (secrets redacted) as TOML and exit",
    )
    kafka = parser.add_argument_group("Kafka")
    client_config.add_arguments(kafka)
    kafka.add_argument("--input-topic", help="required")
    kafka.add_argument("--output-topic", help="required")
    kafka.add_argument("--group-id", help="required")
    kafka.add_argument("--dlq-topic", help="dead-letter topic (default: <input-topic>.dlq)")
    kafka.add_argument(
        "--guarantee", choices=["exactly-once", "at-least-once"], default="exactly-once"
    )
    kafka.add_argument(
        "--instance-id",
        help="stable, unique id of this replica, e.g. the pod "
        "name: transactional.id and static group membership derive from it, so a "
        "restart fences the old transaction and rejoins at once "
        "(default: <host>-<pid>, dynamic membership)",
    )
    kafka.add_argument(
        "--no-static-membership", action="store_true", help="join the group as a dynamic member"
    )
    kafka.add_argument(
        "--output-partitioning",
        choices=["input", "key"],
        default="input",
        help="input: output partition = input partition (keeps per-partition "
        "order visible); key: Kafka's default partitioner on the key",
    )
    kafka.add_argument(
        "--header-allowlist",
        metavar="NAME,...",
        default=ALL_HEADERS,
        help=f"carry only these input headers to outputs ('{ALL_HEADERS}': all); "
        "traceparent and tracestate are always carried",
    )
    kafka.add_argument(
        "--header-denylist",
        metavar="NAME,...",
        default="",
        help="input headers never carried to outputs",
    )
    kafka.add_argument(
        "--no-create-topics",
        action="store_true",
        help="fail instead of creating missing output/DLQ topics",
    )

    model = parser.add_argument_group("model (embedded: --model-base-path; remote: --model-server)")
    where = model.add_mutually_exclusive_group()
    where.add_argument("--model-base-path", type=Path, help="model directory with version dirs")
    where.add_argument(
        "--model-server",
        help="grpc://h:8500 or http://h:8501 (TLS: grpcs://, https://), comma-separated",
    )
    model.add_argument("--model-name", help="default: the base path's directory name")
    pick = model.add_mutually_exclusive_group()
    pick.add_argument("--model-version", type=int)
    pick.add_argument("--model-label")
    model.add_argument("--protocol", choices=["tfserving", "v2"], default="tfserving")
    model.add_argument("--signature-name", help="default: serving_default")
    model.add_argument("--request-timeout-s", type=float, default=10.0)
    model.add_argument(
        "--fallback-model-base-path",
        type=Path,
        help="embedded model used while every remote breaker is open",
    )
    model.add_argument("--fallback-model-name", help="default: --model-name")
    model.add_argument(
        "--model-server-ca", type=Path, help="PEM CA to verify a grpcs:// or https:// server"
    )
    model.add_argument("--model-server-cert", type=Path, help="PEM client certificate (mTLS)")
    model.add_argument("--model-server-key", type=Path, help="PEM client key (mTLS)")
    model.add_argument(
        "--model-server-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="header / gRPC metadata sent with every call (repeatable); keep secrets off "
        "the command line with {env:VAR} or {file:PATH} in VALUE, e.g. "
        "'authorization=Bearer {env:MODEL_TOKEN}'",
    )

    flow = parser.add_argument_group("throughput and resilience")
    flow.add_argument("--max-batch-size", type=int, default=32)
    flow.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    flow.add_argument("--max-in-flight", type=int, default=4)
    flow.add_argument("--decode-concurrency", type=int, default=32)
    flow.add_argument("--max-buffered-records", type=int, default=2000)
    flow.add_argument("--commit-interval-ms", type=float, default=100.0)
    flow.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=7.0,
        help="on SIGTERM, wait this long for in-flight work; the process ends within "
        f"this + {STOP_GRACE_S:g} s in any case",
    )
    flow.add_argument(
        "--kafka-timeout-s",
        type=float,
        default=5.0,
        help="bound of each transactional call (init, send offsets, commit, abort); a "
        "consumer-thread call stuck for 4x this + 5 s makes the processor rebuild its clients",
    )
    flow.add_argument("--breaker-failures", type=int, default=5)
    flow.add_argument("--breaker-cooldown-s", type=float, default=1.0)
    flow.add_argument("--breaker-max-cooldown-s", type=float, default=10.0)

    records = parser.add_argument_group("records")
    records.add_argument(
        "--input-format",
        choices=["tensor", "image", *EVENT_FORMATS],
        default="tensor",
        help="tensor: {id, inputs: {name: nested list}} JSON; image: a path, URL or image "
        "bytes; json: plain JSON objects; avro, protobuf, json-schema: records in the Confluent "
        "wire format (schemas from the registry) or plain, with --input-schema",
    )
    records.add_argument(
        "--codec", choices=["tensor", "image"], help="the former name of --input-format"
    )
    records.add_argument(
        "--output-format",
        choices=["prediction", "enriched", "classic", "json"],
        default="prediction",
        help="prediction (json): the prediction with the record's id; enriched: the input "
        "record with the prediction fields added, in the input's format (structured "
        "records); classic: the classic example's [label=score, ...] (images)",
    )
    events = parser.add_argument_group(
        "structured records (--input-format json, avro, protobuf, json-schema)"
    )
    events.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="INPUT=FIELD[,FIELD...]",
        help="model input from record fields (repeatable; dotted paths reach into nested "
        "records; several fields stack into one input); the TOML [features] table does the "
        "same (default: the signature's inputs as top-level fields)",
    )
    events.add_argument(
        "--feature-default",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="value of an optional field when missing or null (repeatable; TOML "
        "[features.defaults]); a required field without one sends the record to the DLQ",
    )
    events.add_argument(
        "--output-field",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="prediction field (repeatable; TOML [outputs]): SOURCE is a model output, "
        "output[i] (column i), $model_name, $model_version, $mode or $latency_ms, optionally "
        "with :double, :long, :string or :boolean (default: every output, and model_version)",
    )
    events.add_argument("--id-field", default="id", help="the record field that is its id")
    events.add_argument(
        "--schema-registry-url",
        help="Confluent-compatible Schema Registry (default: schema.registry.url from "
        "--kafka-config, the TOML [kafka] table or STREAMSERVE_KAFKA_SCHEMA_REGISTRY_URL; its "
        "basic.auth.user.info and schema.registry.ssl.* come from there too)",
    )
    events.add_argument(
        "--subject-name-strategy",
        choices=["topic", "record"],
        default="topic",
        help="output subject: topic (<output-topic>-value) or record (the record's full name)",
    )
    events.add_argument(
        "--input-schema",
        type=Path,
        help="fixed writer schema, no registry: Avro .avsc, Protobuf descriptor set or .proto, "
        "JSON Schema; values plain or in the Confluent framing",
    )
    events.add_argument(
        "--output-schema", type=Path, help="with --input-schema: write the output schema here"
    )
    events.add_argument(
        "--message-type", help="Protobuf message full name in --input-schema (default: the first)"
    )
    records.add_argument(
        "--input-dtype",
        action="append",
        default=[],
        metavar="NAME=DTYPE",
        help="tensor codec: numpy dtype of an input (default: from the model "
        "in embedded mode, else float32 for JSON floats, int64 for integers)",
    )
    records.add_argument(
        "--fetch-allowed-root",
        action="append",
        default=[],
        type=Path,
        help="image files may be read below this directory (repeatable; default: "
        "none, so local paths and file:// URLs are refused)",
    )
    records.add_argument(
        "--fetch-allowed-host",
        action="append",
        default=[],
        help="trusted host (name, host:port, IP or network) even if private",
    )
    records.add_argument("--fetch-allow-private-addresses", action="store_true")
    records.add_argument("--fetch-max-bytes", type=int, default=DEFAULT_FETCH_MAX_BYTES)
    records.add_argument("--fetch-timeout-s", type=float, default=10.0)
    records.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)

    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics, /healthz (liveness) and /readyz (readiness) (0: any port)",
    )
    ops.add_argument(
        "--health-stall-timeout-s",
        type=float,
        help="/healthz fails once the event loop or the consume loop has made no progress "
        f"for this long (default: {DEFAULT_STALL_TIMEOUT_S:g}, or 5 s more than a Kafka "
        "call's deadline when --kafka-timeout-s makes that longer: a stuck Kafka call is "
        "first recovered in-process)",
    )
    add_log_format_argument(ops)
    parser.set_defaults(_stream_parser=parser, _stream_defaults=defer_defaults(parser))


def run(args: argparse.Namespace) -> int:
    from streamserve.logs import configure_logging
    from streamserve.stream.kafka_io import FatalStreamError
    from streamserve.stream.settings import resolve

    settings = resolve(args, args._stream_parser, args._stream_defaults)
    resolved_tables = settings.tables
    resolved = argparse.Namespace(**settings.values)
    args.log_format = resolved.log_format  # streamserve.cli.main formats the error line
    configure_logging(resolved.log_level, resolved.log_format)
    kafka = client_config.from_args(resolved, file_layer=settings.kafka_file_layer)
    if getattr(args, "print_config", False):
        _print_config(settings.values, kafka, resolved_tables)
        return 0
    _require_settings(resolved, kafka)
    try:
        asyncio.run(_run(resolved, kafka, resolved_tables))
    except KeyboardInterrupt:
        return 130
    except FatalStreamError as exc:
        print_error_line(exc.message, resolved.log_format)
        return EXIT_KAFKA_FATAL
    return 0


def _print_config(
    values: dict[str, Any], kafka: client_config.KafkaClientConfig, tables: dict[str, Any]
) -> None:
    from streamserve.stream.settings import to_toml

    shown = {key: _redacted_value(value) for key, value in values.items()}
    print(to_toml(shown, kafka.redacted(), tables), end="")


def _redacted_value(value: Any) -> Any:
    """``KEY=VALUE`` items of the per-role flags hide secret values too."""
    if not isinstance(value, list):
        return value
    return [
        f"{item.partition('=')[0]}={client_config.REDACTED}"
        if isinstance(item, str) and client_config.is_secret(item.partition("=")[0])
        else item
        for item in value
    ]


def _require_settings(args: argparse.Namespace, kafka: client_config.KafkaClientConfig) -> None:
    from streamserve.errors import InvalidArgument

    kafka.require_bootstrap()
    missing = [key for key in REQUIRED if not getattr(args, key)]
    if missing:
        flags = ", ".join("--" + key.replace("_", "-") for key in missing)
        raise InvalidArgument(f"missing {flags} (a flag, a --config key or STREAMSERVE_STREAM_*)")
    if (args.model_base_path is None) == (args.model_server is None):
        raise InvalidArgument("give exactly one of --model-base-path and --model-server")
    if args.model_version is not None and args.model_label is not None:
        raise InvalidArgument("give at most one of --model-version and --model-label")


class StopWatchdog:
    """Guarantees that a stop ends the process within ``bound_s`` of the first signal.

    The graceful path (drain, last commit, closing clients) is bounded on its own; this
    covers whatever is not (a librdkafka call stuck in C, a destructor at exit): a timer
    thread calls ``os._exit(EXIT_STOP_FORCED)``, and SIGALRM, whose default action needs no
    Python code to run, ends the process ``ALARM_MARGIN_S`` later as the last resort.
    """

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._armed = False

    def arm(self) -> None:
        if self._armed:
            return
        self._armed = True
        signal.alarm(math.ceil(self.bound_s) + ALARM_MARGIN_S)
        timer = threading.Timer(self.bound_s, self._force)
        timer.daemon = True
        timer.start()

    def _force(self) -> None:
        print(
            f"streamserve stream: stop did not finish within {self.bound_s:g} s; exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_STOP_FORCED)


async def _run(
    args: argparse.Namespace,
    kafka: client_config.KafkaClientConfig,
    tables: dict[str, Any] | None = None,
) -> None:
    from streamserve.stream.assembly import assemble, settle_heap

    async with contextlib.AsyncExitStack() as stack:
        spec = _pipeline_spec(args, kafka, tables or {})
        processor = await assemble(spec, stack, on_ready=_print_ready)
        settle_heap()
        watchdog = StopWatchdog(args.shutdown_timeout_s + STOP_GRACE_S)

        def stop() -> None:
            watchdog.arm()
            processor.stop()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        await processor.run()


def _print_ready(info: dict[str, Any]) -> None:
    fields = " ".join(f"{key}={value}" for key, value in info.items())
    print(f"{STREAM_READY_PREFIX} {fields}", flush=True)


def _stall_timeout_s(args: argparse.Namespace) -> float:
    """The liveness bound: given, else longer than the in-process recovery of a stuck call."""
    from streamserve.stream.kafka_io import call_deadline

    if args.health_stall_timeout_s is not None:
        return float(args.health_stall_timeout_s)
    return max(DEFAULT_STALL_TIMEOUT_S, call_deadline(args.kafka_timeout_s) + 5.0)


def _processor_config(args: argparse.Namespace, kafka: client_config.KafkaClientConfig) -> Any:
    from streamserve.stream.breaker import BreakerPolicy
    from streamserve.stream.health import HealthPolicy
    from streamserve.stream.processor import ProcessorConfig

    return ProcessorConfig(
        bootstrap_servers=kafka.require_bootstrap(),
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        group_id=args.group_id,
        dlq_topic=args.dlq_topic,
        guarantee=args.guarantee,
        instance_id=args.instance_id,
        static_membership=not args.no_static_membership,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_in_flight=args.max_in_flight,
        decode_concurrency=args.decode_concurrency,
        max_buffered_records=args.max_buffered_records,
        commit_interval_ms=args.commit_interval_ms,
        shutdown_timeout_s=args.shutdown_timeout_s,
        kafka_timeout_s=args.kafka_timeout_s,
        output_partitioning=args.output_partitioning,
        header_allowlist=_allowlist(args.header_allowlist),
        header_denylist=_names(args.header_denylist),
        create_missing_topics=not args.no_create_topics,
        metrics_port=args.metrics_port,
        health=HealthPolicy(stall_timeout_s=_stall_timeout_s(args)),
        breaker=BreakerPolicy(
            args.breaker_failures,
            args.breaker_cooldown_s,
            max(args.breaker_max_cooldown_s, args.breaker_cooldown_s),
        ),
        consumer_overrides=kafka.for_role("consumer"),
        producer_overrides=kafka.for_role("producer"),
        admin_overrides=kafka.for_role("admin"),
        kafka_connect_timeout_s=args.kafka_connect_timeout_s,
    )


def _pipeline_spec(
    args: argparse.Namespace,
    kafka: client_config.KafkaClientConfig,
    tables: dict[str, Any] | None = None,
) -> Any:
    from streamserve.errors import InvalidArgument
    from streamserve.predictors.factory import PredictorSpec
    from streamserve.predictors.security import PLAINTEXT
    from streamserve.stream.assembly import PipelineSpec

    if args.model_base_path is None and not args.model_name:
        raise InvalidArgument("--model-server needs --model-name")
    remote = args.model_base_path is None
    model = PredictorSpec(
        targets=[args.model_server] if remote else None,
        model_name=args.model_name or "",
        model_version=args.model_version,
        model_label=args.model_label,
        protocol=args.protocol,
        model_base_path=args.model_base_path,
        timeout_s=args.request_timeout_s,
        security=_client_security(args) if remote else PLAINTEXT,
    )
    return PipelineSpec(
        processor=_processor_config(args, kafka),
        model=model,
        codec=_codec_spec(args, kafka, tables or {}),
        fallback_base_path=args.fallback_model_base_path,
        fallback_model_name=args.fallback_model_name,
    )


def _client_security(args: argparse.Namespace) -> Any:
    from streamserve.predictors.security import ClientSecurity

    return ClientSecurity.from_files(
        args.model_server_ca, args.model_server_cert, args.model_server_key,
        args.model_server_header,
    )  # fmt: skip


def _codec_spec(
    args: argparse.Namespace, kafka: client_config.KafkaClientConfig, tables: dict[str, Any]
) -> Any:
    from streamserve.stream.assembly import CodecSpec
    from streamserve.stream.fetch import FetchPolicy

    return CodecSpec(
        kind=_input_format(args),
        input_dtypes=client_config.parse_key_values(args.input_dtype, "--input-dtype"),
        signature_name=args.signature_name,
        output_format="prediction" if args.output_format == "json" else args.output_format,
        fetch=FetchPolicy(
            allowed_roots=tuple(args.fetch_allowed_root),
            allow_private_addresses=args.fetch_allow_private_addresses,
            allowed_hosts=tuple(args.fetch_allowed_host),
            max_bytes=args.fetch_max_bytes,
            timeout_s=args.fetch_timeout_s,
            max_pixels=args.max_pixels,
        ),
        max_pixels=args.max_pixels,
        features=_features(args, tables.get("features", {})),
        feature_defaults=_feature_defaults(args, tables.get("features", {})),
        output_fields=_output_fields(args, tables.get("outputs", {})),
        id_field=args.id_field,
        registry=_registry_settings(args, kafka),
        subject_strategy=args.subject_name_strategy,
        input_schema=args.input_schema,
        output_schema=args.output_schema,
        message_type=args.message_type,
    )


def _input_format(args: argparse.Namespace) -> str:
    from streamserve.errors import InvalidArgument

    if args.codec is None or args.codec == args.input_format:
        return str(args.input_format)
    if args.input_format != "tensor":
        raise InvalidArgument("give --input-format or its former name --codec, not both")
    return str(args.codec)


def _features(args: argparse.Namespace, table: dict[str, Any]) -> tuple[Any, ...]:
    from streamserve.stream.codecs.features import Feature

    features = {
        name: Feature.parse(name, value) for name, value in table.items() if name != "defaults"
    }
    for text in args.feature:
        feature = Feature.from_flag(text)
        features[feature.input] = feature
    return tuple(features.values())


def _feature_defaults(args: argparse.Namespace, table: dict[str, Any]) -> dict[str, Any]:
    from streamserve.errors import InvalidArgument

    defaults = table.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InvalidArgument("[features.defaults] must be a table of field = value")
    for field, text in client_config.parse_key_values(
        args.feature_default, "--feature-default"
    ).items():
        defaults[field] = _literal(text)
    return dict(defaults)


def _literal(text: str) -> Any:
    """A flag's VALUE as the TOML value it spells (number, boolean, quoted string), else
    the text itself."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _output_fields(args: argparse.Namespace, table: dict[str, Any]) -> dict[str, str]:
    from streamserve.errors import InvalidArgument

    fields: dict[str, str] = {}
    for name, source in table.items():
        if not isinstance(source, str):
            raise InvalidArgument(f"[outputs] {name} must be a SOURCE string")
        fields[name] = source
    fields.update(client_config.parse_key_values(args.output_field, "--output-field"))
    return fields


def _registry_settings(args: argparse.Namespace, kafka: client_config.KafkaClientConfig) -> Any:
    from streamserve.stream.codecs.registry import URL_KEY, RegistrySettings

    properties = kafka.registry_properties()
    if args.schema_registry_url:
        properties[URL_KEY] = args.schema_registry_url
    return RegistrySettings.from_properties(properties)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _allowlist(text: str) -> list[str] | None:
    return None if text.strip() == ALL_HEADERS else _names(text)
