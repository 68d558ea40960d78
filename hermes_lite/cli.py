"""The ``hermes-lite`` command: listen on channels, send a notification, or run the demo.

Exit status: 0 on success or a clean stop by Ctrl-C or SIGTERM, 1 when the command failed
(the demo lost or reordered notifications, a connection or cluster error), 2 for invalid
arguments or configuration.
"""

import argparse
import datetime
import json
import logging
import os
import signal
import sys
from typing import Any, List, Optional

from .dsn import mask_password
from .exceptions import HermesLiteError, InvalidConfigurationException

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``hermes-lite`` command."""
    parser = argparse.ArgumentParser(
        prog="hermes-lite",
        description="Listen on PostgreSQL channels, send a notification, or run the demo.",
        epilog="Exit status: 0 on success or a clean stop, 1 when the command failed, 2 for invalid arguments.",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level of messages on stderr (default: WARNING)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser(
        "listen",
        help="print every notification on the channels as a JSON line",
        description="Print each notification as one JSON line with channel, payload, pid and received_at "
        "(UTC, ISO 8601). Gaps after a reconnection are logged on stderr. Stops cleanly on Ctrl-C or SIGTERM.",
    )
    listen.add_argument("--dsn", required=True, help="libpq conninfo string or postgresql:// URI")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channel to LISTEN on (case-sensitive)")
    listen.add_argument("--implementation", choices=["c", "python"], help="listener implementation (default: c when built)")

    notify = commands.add_parser(
        "notify",
        help="send one notification with pg_notify()",
        description="Send one notification with pg_notify(). A payload of 8000 bytes or more in the server "
        "encoding is rejected before sending.",
    )
    notify.add_argument("--dsn", required=True, help="libpq conninfo string or postgresql:// URI")
    notify.add_argument("channel", metavar="CHANNEL", help="channel name, case-sensitive, at most 63 bytes")
    notify.add_argument("payload", metavar="PAYLOAD", nargs="?", default="", help="text to send (default: empty)")

    demo = commands.add_parser(
        "demo",
        help="send a burst through a Client on a throwaway PostgreSQL and report what arrived",
        description="Start a temporary PostgreSQL cluster, run a Client with a counting processor, send a "
        "burst of numbered notifications in one transaction, and print how many arrived, whether in "
        "order, how fast, and which listener implementation ran. The cluster is removed afterwards.",
    )
    demo.add_argument("--count", type=int, default=100_000, help="notifications to send (default: 100000)")
    demo.add_argument("--implementation", choices=["c", "python"], help="listener implementation (default: c when built)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``hermes-lite`` command with ``argv`` (default: sys.argv[1:]); return the exit status."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(
        level=arguments.log_level.upper(), format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"
    )

    import psycopg2

    handlers = {"listen": _listen, "notify": _notify, "demo": _demo}
    try:
        return handlers[arguments.command](arguments)
    except InvalidConfigurationException as error:
        print(f"hermes-lite: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (HermesLiteError, psycopg2.Error) as error:
        print(f"hermes-lite: {mask_password(str(error)).strip()}", file=sys.stderr)
        return EXIT_FAILED


def _listen(arguments: argparse.Namespace) -> int:
    from .listeners import PostgresNotificationListener
    from .pipes import PipeClosed, drain_wake_fd, notification_pipe

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

    previous = {signum: signal.signal(signum, handle_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    listener.start()
    try:
        while not stopping:
            try:
                batch = reader.read_batch(timeout=None, wake_fd=wake_read)
            except PipeClosed:
                return EXIT_FAILED
            if not listener.is_alive():
                print("hermes-lite: the listener stopped; see the messages above", file=sys.stderr)
                return EXIT_FAILED
            _print_batch(batch)
        drain_wake_fd(wake_read)
    finally:
        listener.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK


def _print_batch(batch: List[Any]) -> None:
    received_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    lines = []
    for item in batch:
        if item.is_gap:
            logger.warning("notifications may have been missed (%s)", item.reason)
            continue
        line = {"channel": item.channel, "payload": item.payload, "pid": item.pid, "received_at": received_at}
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")

    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output is gone (for example `| head`): nothing more to do.
        sys.stdout = open(os.devnull, "w")
        raise SystemExit(EXIT_OK)


def _notify(arguments: argparse.Namespace) -> int:
    from .sending import notify

    notify(arguments.dsn, arguments.channel, arguments.payload)
    return EXIT_OK


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    if arguments.count < 1:
        raise InvalidConfigurationException(f"invalid --count {arguments.count}: expected a positive number")

    print(f"Sending {arguments.count:,} notifications through a throwaway PostgreSQL cluster...", flush=True)
    result = run_demo(arguments.count, arguments.implementation)
    print(f"received:       {result.received:,} of {result.sent:,}")
    print(f"in order:       {'yes' if result.in_order else 'no'}")
    print(f"time:           {result.seconds:.3f} s ({result.rate:,.0f} notifications/s, commit to processor)")
    print(f"listener:       {result.implementation}")
    return EXIT_OK if result.received == result.sent and result.in_order else EXIT_FAILED
