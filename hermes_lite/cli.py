"""The ``hermes-lite`` command: listen on channels, send a notification, run a processor, or
run the demo and the benchmark.

Exit status: 0 on success or a clean stop by Ctrl-C or SIGTERM, 1 when the command failed
(the demo or the benchmark lost or reordered notifications, a connection or cluster error),
2 for invalid arguments or configuration.
"""

import argparse
import datetime
import importlib
import json
import logging
import multiprocessing
import os
import queue
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Generator, List, NamedTuple, Optional, Sequence, Tuple

from .dsn import mask_password
from .exceptions import HermesLiteError, InvalidConfigurationException

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EXIT_STATUS_EPILOG = (
    "exit status: 0 on success or a clean stop by Ctrl-C or SIGTERM, 1 when the command failed, "
    "2 for invalid arguments or configuration"
)

BENCH_CHANNEL = "hermes_lite_bench"

BENCH_TIMEOUT = 300.0
"""Seconds the benchmark waits for a client library's burst before it reports what arrived."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``hermes-lite`` command."""
    parser = argparse.ArgumentParser(
        prog="hermes-lite",
        description="Listen on PostgreSQL channels, send a notification, run a processor, "
        "or run the demo and the benchmark.",
        epilog=EXIT_STATUS_EPILOG,
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level of messages on stderr (default: WARNING)"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="format of log messages on stderr: text lines, or one JSON object per line with "
        "time, level, logger, process, pid and message (default: text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_listen_parser(commands)
    _add_notify_parser(commands)
    _add_run_parser(commands)
    _add_demo_parser(commands)
    _add_bench_parser(commands)

    # The logging options are accepted after the command too; there they override the ones
    # before it, and when absent leave those in place.
    for command in commands.choices.values():
        command.add_argument("--log-level", default=argparse.SUPPRESS, help="as before the command")
        command.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS, help="as before the command")
    return parser


def _add_listen_parser(commands: Any) -> None:
    listen = commands.add_parser(
        "listen",
        help="print every notification on the channels",
        description="Print each notification on stdout, as one JSON line with channel, payload, pid and "
        "received_at (UTC, ISO 8601), or as text. Gaps after a reconnection are logged on stderr. "
        "Stops cleanly on Ctrl-C or SIGTERM.",
        epilog=EXIT_STATUS_EPILOG,
    )
    listen.add_argument("--dsn", required=True, help="libpq conninfo string or postgresql:// URI")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channel to LISTEN on (case-sensitive)")
    listen.add_argument("--implementation", choices=["c", "python"], help="listener implementation (default: c when built)")
    listen.add_argument(
        "--format",
        choices=["json", "text"],
        default="json",
        help="output format: json, or text as CHANNEL<TAB>PID<TAB>PAYLOAD with backslash, tab, newline "
        "and carriage return in the payload escaped as in PostgreSQL's COPY text format (default: json)",
    )
    listen.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit with status 0 after printing N notifications"
    )
    listen.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="exit with status 0 after SECONDS seconds in total, whether or not notifications arrived",
    )


def _add_notify_parser(commands: Any) -> None:
    notify = commands.add_parser(
        "notify",
        help="send one notification with pg_notify()",
        description="Send one notification with pg_notify(). A payload of 8000 bytes or more in the server "
        "encoding is rejected before sending.",
        epilog=EXIT_STATUS_EPILOG,
    )
    notify.add_argument("--dsn", required=True, help="libpq conninfo string or postgresql:// URI")
    notify.add_argument("channel", metavar="CHANNEL", help="channel name, case-sensitive, at most 63 bytes")
    notify.add_argument("payload", metavar="PAYLOAD", nargs="?", default="", help="text to send (default: empty)")


def _add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a processor of yours under a Client",
        description="Import PROCESSOR, a Component subclass given as package.module:ClassName, construct it "
        "without arguments, and run it under a Client with a PostgresNotificationListener on the channels. "
        "The Client runs them only while the server is a primary and stops cleanly on Ctrl-C or SIGTERM. "
        "The module is imported from sys.path: the current directory and PYTHONPATH.",
        epilog=EXIT_STATUS_EPILOG + "; 1 also when a component stopped with a fatal error",
    )
    run.add_argument("processor", metavar="PROCESSOR", help="the processor class, as package.module:ClassName")
    run.add_argument("--dsn", required=True, help="libpq conninfo string or postgresql:// URI")
    run.add_argument(
        "--channel",
        dest="channels",
        action="append",
        required=True,
        metavar="CHANNEL",
        help="channel to LISTEN on (case-sensitive); repeat the option for several channels",
    )
    run.add_argument(
        "--watch-path",
        metavar="DIR",
        help="the server's data directory: a change of its failover files (such as standby.signal) "
        "triggers a role check",
    )
    run.add_argument("--implementation", choices=["c", "python"], help="listener implementation (default: c when built)")


def _add_demo_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="send a burst through a Client on a throwaway PostgreSQL and report what arrived",
        description="Start a temporary PostgreSQL cluster, run a Client with a counting processor, send a "
        "burst of numbered notifications in one transaction, and print how many arrived, whether in "
        "order, how fast, and which listener implementation ran. The cluster is removed afterwards. "
        "On a terminal, the elapsed time is shown on stderr while the burst runs.",
        epilog=EXIT_STATUS_EPILOG,
    )
    demo.add_argument("--count", type=int, default=100_000, help="notifications to send (default: 100000)")
    demo.add_argument("--implementation", choices=["c", "python"], help="listener implementation (default: c when built)")


def _add_bench_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="compare the throughput of hermes-lite with psycopg2 on a throwaway PostgreSQL",
        description="Start temporary PostgreSQL clusters and send a burst of numbered notifications in one "
        "transaction to each client: hermes-lite with the C listener (when built) and with the pure "
        "Python listener, psycopg2, and psycopg 3 when installed. Each rate is measured from just "
        "before the sending transaction to the last notification received. Prints a table of "
        "notifications per second and the ratio to psycopg2. On a terminal, progress is shown on stderr.",
        epilog=EXIT_STATUS_EPILOG + "; 1 also when a client lost or reordered notifications",
    )
    bench.add_argument(
        "--count", type=_positive_int, default=200_000, metavar="N", help="notifications per client (default: 200000)"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive whole number")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive number of seconds")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``hermes-lite`` command with ``argv`` (default: sys.argv[1:]); return the exit status."""
    arguments = build_parser().parse_args(argv)
    try:
        _configure_logging(arguments.log_level, arguments.log_format)
    except ValueError as error:
        print(f"hermes-lite: invalid --log-level {arguments.log_level!r}: {error}", file=sys.stderr)
        return EXIT_USAGE

    import psycopg2

    handlers = {"listen": _listen, "notify": _notify, "run": _run, "demo": _demo, "bench": _bench}
    try:
        return handlers[arguments.command](arguments)
    except InvalidConfigurationException as error:
        print(f"hermes-lite: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (HermesLiteError, psycopg2.Error) as error:
        print(f"hermes-lite: {mask_password(str(error)).strip()}", file=sys.stderr)
        return EXIT_FAILED


# Logging.


class JsonLogFormatter(logging.Formatter):
    """Formats each record as one JSON object: time (UTC, ISO 8601), level, logger, process, pid, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(level: str, log_format: str) -> None:
    """Send log records to stderr in ``log_format``; raises ValueError for an unknown ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


# listen


def _listen(arguments: argparse.Namespace) -> int:
    from .listeners import PostgresNotificationListener
    from .notifications import Batch
    from .pipes import PipeClosed, drain_wake_fd, notification_pipe, wait_readable

    reader, writer = notification_pipe()
    listener = PostgresNotificationListener(
        arguments.dsn, arguments.channels, writer, fire_on_start=False, implementation=arguments.implementation
    )
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    stopping = []

    def handle_stop(signum: int, frame: Any) -> None:
        stopping.append(signum)
        os.write(wake_write, b"\0")

    deadline = None if arguments.timeout is None else time.monotonic() + arguments.timeout
    remaining = arguments.count
    format_line = _format_json_line if arguments.format == "json" else _format_text_line

    previous = {signum: signal.signal(signum, handle_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    listener.start()
    try:
        while not stopping:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            # The listener's sentinel is watched too: a listener stopped by a fatal error
            # (a rejected role or database) must end the command, not leave it waiting.
            ready = wait_readable([reader.fileno(), wake_read, listener.sentinel], wait)
            try:
                batch = reader.read_batch(timeout=0, wake_fd=wake_read) if reader.fileno() in ready else Batch()
            except PipeClosed:
                return EXIT_FAILED
            if not listener.is_alive():
                print("hermes-lite: the listener stopped; see the messages above", file=sys.stderr)
                return EXIT_FAILED
            printed = _print_batch(batch, format_line, remaining)
            if remaining is not None:
                remaining -= printed
                if remaining == 0:
                    break
        drain_wake_fd(wake_read)
    finally:
        listener.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_read)
        os.close(wake_write)
    return EXIT_OK


def _format_json_line(item: Any, received_at: str) -> str:
    line = {"channel": item.channel, "payload": item.payload, "pid": item.pid, "received_at": received_at}
    return json.dumps(line, ensure_ascii=False) + "\n"


_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _format_text_line(item: Any, received_at: str) -> str:
    # Escaped as in COPY's text format, so that a payload cannot split a line or a field.
    return f"{item.channel.translate(_TEXT_ESCAPES)}\t{item.pid}\t{item.payload.translate(_TEXT_ESCAPES)}\n"


def _print_batch(batch: Sequence[Any], format_line: Callable[[Any, str], str], limit: Optional[int]) -> int:
    """Print the notifications of ``batch``, at most ``limit`` of them; return how many were printed."""
    received_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    lines: List[str] = []
    for item in batch:
        if limit is not None and len(lines) == limit:
            break
        if item.is_gap:
            logger.warning("notifications may have been missed (%s)", item.reason)
            continue
        lines.append(format_line(item, received_at))

    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output is gone (for example `| head`): nothing more to do.
        sys.stdout = open(os.devnull, "w")
        raise SystemExit(EXIT_OK)
    return len(lines)


# notify


def _notify(arguments: argparse.Namespace) -> int:
    from .sending import notify

    notify(arguments.dsn, arguments.channel, arguments.payload)
    return EXIT_OK


# run


def _run(arguments: argparse.Namespace) -> int:
    from .client import Client
    from .listeners import PostgresNotificationListener

    processor_class = load_processor_class(arguments.processor)
    try:
        processor = processor_class()
    except TypeError as error:
        raise InvalidConfigurationException(
            f"cannot construct {arguments.processor} without arguments: {error}; "
            "give every parameter of its __init__ a default"
        ) from None

    client = Client(arguments.dsn, watch_path=arguments.watch_path)
    client.add_listener(
        PostgresNotificationListener(arguments.dsn, arguments.channels, implementation=arguments.implementation)
    )
    client.add_processor(processor)
    logger.info("running %s on channels %s", arguments.processor, ", ".join(arguments.channels))
    client.start()
    if client.fatal_error is not None:
        print(
            f"hermes-lite: {client.fatal_error.component} stopped with a fatal error: {client.fatal_error.message}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def load_processor_class(spec: str) -> type:
    """Import the Component subclass named by ``spec``, "package.module:ClassName".

    Raises InvalidConfigurationException when the spec has no colon, the module is not found or
    fails to import, the attribute is missing, or it is not a Component subclass.
    """
    from .components import Component

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise InvalidConfigurationException(
            f"invalid processor {spec!r}: expected package.module:ClassName, for example myapp.processors:Orders"
        )

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # A missing module named in the spec (or its parent package) makes the spec invalid.
        # A missing module that the user's module imports is an import failure of that module.
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise InvalidConfigurationException(
                f"invalid processor {spec!r}: module {module_name!r} not found on sys.path; "
                "run from its directory or add that directory to PYTHONPATH"
            ) from None
        raise InvalidConfigurationException(f"failed to import module {module_name!r}: {error}") from None
    except Exception as error:
        raise InvalidConfigurationException(
            f"failed to import module {module_name!r}: {type(error).__name__}: {error}"
        ) from None

    processor_class = module
    for name in attribute.split("."):
        try:
            processor_class = getattr(processor_class, name)
        except AttributeError:
            raise InvalidConfigurationException(
                f"invalid processor {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not (isinstance(processor_class, type) and issubclass(processor_class, Component)):
        raise InvalidConfigurationException(
            f"invalid processor {spec!r}: {processor_class!r} is not a subclass of hermes_lite.Component"
        )
    return processor_class


# Progress on a terminal.


class Progress:
    """Rewrites one status line on stderr twice a second while in use, only when stderr is a terminal.

    ``received`` returns how many notifications arrived so far, or None when unknown; then
    only the elapsed time is shown.
    """

    interval = 0.5

    def __init__(self, label: str, total: int, received: Callable[[], Optional[int]] = lambda: None) -> None:
        self.label = label
        self.total = total
        self.received = received
        self.enabled = sys.stderr.isatty()
        self._started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._update, name="hermes-lite-progress", daemon=True)

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self._done.set()
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _update(self) -> None:
        while not self._done.wait(self.interval):
            elapsed = time.monotonic() - self._started
            received = self.received()
            if received is None:
                status = f"{self.label}: {self.total:,} notifications, {elapsed:.1f} s"
            else:
                rate = received / elapsed if elapsed > 0 else 0.0
                status = f"{self.label}: {received:,} of {self.total:,} received, {rate:,.0f}/s, {elapsed:.1f} s"
            sys.stderr.write(f"\r\x1b[K{status}")
            sys.stderr.flush()


# demo


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    if arguments.count < 1:
        raise InvalidConfigurationException(f"invalid --count {arguments.count}: expected a positive number")

    print(f"Sending {arguments.count:,} notifications through a throwaway PostgreSQL cluster...", flush=True)
    # NOTE: run_demo reports no counts while it runs, so the terminal shows the elapsed time only.
    with Progress("demo", arguments.count):
        result = run_demo(arguments.count, arguments.implementation)
    print(f"received:       {result.received:,} of {result.sent:,}")
    print(f"in order:       {'yes' if result.in_order else 'no'}")
    print(f"time:           {result.seconds:.3f} s ({result.rate:,.0f} notifications/s, commit to processor)")
    print(f"listener:       {result.implementation}")
    return EXIT_OK if result.received == result.sent and result.in_order else EXIT_FAILED


# bench


class BenchResult(NamedTuple):
    """Result of one client library draining the burst: count, order and rate."""

    client: str
    sent: int
    received: int
    in_order: bool
    seconds: float

    @property
    def rate(self) -> float:
        """Notifications per second, from just before the sending transaction to the last one received."""
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.received == self.sent and self.in_order


def _bench(arguments: argparse.Namespace) -> int:
    from .listeners import C_EXTENSION_AVAILABLE

    count = arguments.count
    print(f"Sending {count:,} notifications in one transaction to each client, each on a throwaway cluster...", flush=True)

    results = []
    implementations = ["c", "python"] if C_EXTENSION_AVAILABLE else ["python"]
    if not C_EXTENSION_AVAILABLE:
        print("The C listener is not built: measuring the pure Python listener only.", flush=True)
    for implementation in implementations:
        results.append(_bench_hermes_lite(count, implementation))

    results.append(_bench_driver("psycopg2", count))
    if _psycopg3_installed():
        results.append(_bench_driver("psycopg", count))

    _print_bench_table(results)
    failed = [result for result in results if not result.complete]
    for result in failed:
        print(
            f"hermes-lite: {result.client} received {result.received:,} of {result.sent:,} notifications"
            f"{'' if result.in_order else ', out of order'}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else EXIT_OK


def _print_bench_table(results: List[BenchResult]) -> None:
    baseline = next(result.rate for result in results if result.client == "psycopg2")
    rows = [("client", "notifications/s", "vs psycopg2")]
    for result in results:
        ratio = f"{result.rate / baseline:.2f}x" if baseline > 0 else "-"
        rows.append((result.client, f"{result.rate:,.0f}", ratio))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for client, rate, ratio in rows:
        print(f"{client:<{widths[0]}}  {rate:>{widths[1]}}  {ratio:>{widths[2]}}")
    print("Each rate runs from just before the sending transaction to the last notification received.")


def _bench_hermes_lite(count: int, implementation: str) -> BenchResult:
    from .demo import run_demo

    name = f"hermes-lite ({implementation})"
    # NOTE: run_demo reports no counts while it runs, so the terminal shows the elapsed time only.
    with Progress(name, count):
        result = run_demo(count, implementation)
    return BenchResult(name, result.sent, result.received, result.in_order, result.seconds)


def _psycopg3_installed() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def _bench_driver(driver: str, count: int) -> BenchResult:
    """Time a burst of ``count`` notifications drained by ``driver`` ("psycopg2" or "psycopg") in a child process."""
    from .testing import PostgresCluster

    context = multiprocessing.get_context()
    reports: Any = context.Queue()
    received = [0]
    with PostgresCluster() as cluster:
        child = context.Process(
            target=_drain_with_driver, args=(driver, cluster.dsn, count, reports), name=f"bench-{driver}", daemon=True
        )
        child.start()
        try:
            first = _get_report(reports, child, 60.0)
            if first[0] != "ready":
                raise HermesLiteError(f"unexpected first report from the {driver} drain loop: {first!r}")
            with Progress(driver, count, lambda: received[0]):
                started = time.monotonic()
                cluster.execute(
                    "SELECT count(pg_notify(%s, i::text)) FROM generate_series(1, %s) AS i", (BENCH_CHANNEL, count)
                )
                report = _wait_for_drain(reports, child, received)
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
            reports.close()
            reports.join_thread()

    if report is None:
        return BenchResult(driver, count, received[0], False, BENCH_TIMEOUT)
    _, last_received, in_order, finished = report
    return BenchResult(driver, count, last_received, in_order, finished - started)


def _get_report(reports: Any, child: Any, timeout: float) -> Tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            report: Tuple[Any, ...] = reports.get(timeout=0.2)
            return report
        except queue.Empty:
            if not child.is_alive():
                raise HermesLiteError(f"the {child.name} process exited with status {child.exitcode}") from None
            if time.monotonic() > deadline:
                raise HermesLiteError(f"the {child.name} process did not report within {timeout:.0f} s") from None


def _wait_for_drain(reports: Any, child: Any, received: List[int]) -> Optional[Tuple[Any, ...]]:
    """Return the drain loop's "done" report, or None if the burst did not arrive within BENCH_TIMEOUT."""
    deadline = time.monotonic() + BENCH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            report = _get_report(reports, child, deadline - time.monotonic())
        except HermesLiteError as error:
            logger.error("%s", error)
            return None
        received[0] = report[1]
        if report[0] == "done":
            return report
    logger.error("the %s burst did not complete within %.0f s", child.name, BENCH_TIMEOUT)
    return None


def _drain_with_driver(driver: str, dsn: str, count: int, reports: Any) -> None:
    """Receive ``count`` numbered notifications with ``driver``, checking their order; runs in a child process.

    Puts ("ready",) once LISTEN is active, ("progress", received) every 10,000 notifications,
    and ("done", received, in_order, monotonic time of the last one) at the end.
    """
    payloads: Generator[str, None, None]
    close_connection: Callable[[], None]
    if driver == "psycopg2":
        import psycopg2

        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        connection.cursor().execute(f'LISTEN "{BENCH_CHANNEL}"')
        payloads = _psycopg2_payloads(connection)
        close_connection = connection.close
    else:
        import psycopg

        peer = psycopg.connect(dsn, autocommit=True)
        peer.execute(f'LISTEN "{BENCH_CHANNEL}"')
        payloads = (notification.payload for notification in peer.notifies(timeout=BENCH_TIMEOUT))
        close_connection = peer.close

    reports.put(("ready",))
    received = 0
    in_order = True
    try:
        for payload in payloads:
            received += 1
            if int(payload) != received:
                in_order = False
            if received == count:
                break
            if received % 10_000 == 0:
                reports.put(("progress", received))
        reports.put(("done", received, in_order, time.monotonic()))
    finally:
        # psycopg's notifies() holds the connection's lock until the generator is closed.
        payloads.close()
        close_connection()


def _psycopg2_payloads(connection: Any) -> Generator[str, None, None]:
    # The drain loop that psycopg2's documentation describes: wait for the socket, poll, take notifies.
    while True:
        if not select.select([connection], [], [], BENCH_TIMEOUT)[0]:
            return
        connection.poll()
        # Take the whole list at once: popping from its front is quadratic in a long burst.
        batch = list(connection.notifies)
        connection.notifies.clear()
        for notification in batch:
            yield notification.payload
