"""The Python clients of the benchmark, one per library, each run by run.py in its own process.

Usage: python clients.py CONFIG_JSON

Every client LISTENs and prints a "ready" JSON line naming its processes and its server
backend pid. It receives notifications until it has the expected count or its deadline
passes, and prints a "done" JSON line. Then it waits for its standard input to close, so
that run.py can read its /proc counters while the processes still exist.

Each one does the same work per notification (see Tally): it checks the channel and the
pid, parses the numbered payload and checks the order. The config keys are:
client, conninfo, connect (keyword arguments for asyncpg), channel, mode (count, latency,
slow, idle, or raw for the listener-only target), expected, deadline
(seconds after "ready", 0 for none), slow_every and slow_delay (seconds).
"""

import json
import os
import select
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

# run.py starts this file as a script, so the repository root is not on the path by itself.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def emit(event: Dict[str, Any]) -> None:
    """Write one JSON line to standard output for run.py."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def announce_ready(processes: List[Tuple[str, int, bool]], backend_pid: int) -> None:
    """Tell run.py that LISTEN is active. ``processes`` are (role, pid, counted in CPU)."""
    emit(
        {
            "event": "ready",
            "processes": [{"role": role, "pid": pid, "counted": counted} for role, pid, counted in processes],
            "backend_pid": backend_pid,
        }
    )


def percentile(sorted_values: List[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``sorted_values`` (0.0 when empty), as libpq_drain.c does."""
    if not sorted_values:
        return 0.0
    return sorted_values[int(fraction * (len(sorted_values) - 1) + 0.5)]


class Deadline:
    """The point after "ready" at which a client stops waiting and reports what it has."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds if seconds > 0 else None

    def remaining(self) -> Optional[float]:
        """Return the seconds left (never negative), or None when there is no deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        """Return True once the deadline has passed."""
        return self.at is not None and time.monotonic() >= self.at


class Tally:
    """Counts notifications and checks each one's channel, pid and numbered payload.

    Payloads are "<number>" (zero-padded in the wide workload), or "<number>:<sender's
    time.monotonic()>" in the latency mode. Numbers start at 1 and must arrive in order, so
    a lost, duplicated or reordered notification counts in ``disorder``.
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        self.channel = config["channel"]
        self.expected = config["expected"]
        self.latency_mode = config["mode"] == "latency"
        self.slow_every = config.get("slow_every", 0) if config["mode"] == "slow" else 0
        self.slow_delay = config.get("slow_delay", 0.0)

        self.received = 0
        self.next_number = 1
        self.disorder = 0
        self.first_disorder: Optional[Dict[str, int]] = None
        self.bad_fields = 0
        self.latencies: List[float] = []
        self.finished_at: Optional[float] = None

    def add(self, channel: str, payload: str, pid: int) -> bool:
        """Check one notification; return True when the expected count is reached."""
        if self.latency_mode:
            number_text, _, sent_at = payload.partition(":")
            self.latencies.append(time.monotonic() - float(sent_at))
            number = int(number_text)
        else:
            number = int(payload)

        if number != self.next_number:
            self._note_disorder(number)
        self.next_number = number + 1
        if channel != self.channel or pid <= 0:
            self.bad_fields += 1

        self.received += 1
        if self.slow_every and self.received % self.slow_every == 0:
            time.sleep(self.slow_delay)
        if self.received == self.expected:
            self.finished_at = time.monotonic()
            return True
        return False

    def add_batch(self, batch: Any) -> bool:
        """Check a hermes-lite Batch through its channel, payload and pid columns; True when the count is reached."""
        if self.latency_mode or self.slow_every:
            finished = False
            for channel, payload, pid in zip(batch.channels, batch.payloads, batch.pids):
                finished = self.add(channel, payload, pid) or finished
            return finished

        # The count mode, inlined: the per-item work equals add() without a call per item,
        # which is what batching offers a real processor.
        next_number = self.next_number
        expected_channel = self.channel
        received = self.received
        for channel, payload, pid in zip(batch.channels, batch.payloads, batch.pids):
            number = int(payload)
            if number != next_number:
                self._note_disorder(number, next_number)
            next_number = number + 1
            if channel != expected_channel or pid <= 0:
                self.bad_fields += 1
            received += 1

        self.next_number = next_number
        finished = self.received < self.expected <= received
        self.received = received
        if finished:
            self.finished_at = time.monotonic()
        return finished

    def _note_disorder(self, number: int, expected: Optional[int] = None) -> None:
        if self.disorder == 0:
            self.first_disorder = {"expected": self.next_number if expected is None else expected, "got": number}
        self.disorder += 1

    def report(self, timed_out: bool) -> Dict[str, Any]:
        """Return the "done" event."""
        event = {
            "event": "done",
            "t1": self.finished_at if self.finished_at is not None else time.monotonic(),
            "received": self.received,
            "disorder": self.disorder,
            "first_disorder": self.first_disorder,
            "bad_fields": self.bad_fields,
            "timed_out": timed_out,
        }
        if self.latency_mode:
            values = sorted(self.latencies)
            event["latency"] = {
                "count": len(values),
                "p50": percentile(values, 0.50),
                "p99": percentile(values, 0.99),
                "max": values[-1] if values else 0.0,
            }
        return event


def wait_for_stdin_eof() -> None:
    """Block until run.py closes standard input; the process uses no CPU meanwhile."""
    while sys.stdin.buffer.read(4096):
        pass


def run_psycopg2(config: Dict[str, Any], tally: Tally) -> None:
    """Receive with psycopg2's documented pattern: select() on the connection, poll(), notifies."""
    import psycopg2
    import psycopg2.extensions

    connection = psycopg2.connect(config["conninfo"])
    connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with connection.cursor() as cursor:
        cursor.execute(f"LISTEN {quote_identifier(config['channel'])}")
    announce_ready([("client", os.getpid(), True)], connection.get_backend_pid())

    deadline = Deadline(config["deadline"])
    timed_out = False
    finished = False
    while not finished:
        remaining = deadline.remaining()
        if remaining == 0.0 or select.select([connection], [], [], remaining) == ([], [], []):
            timed_out = True
            break
        connection.poll()
        while connection.notifies:
            notify = connection.notifies.pop(0)
            if tally.add(notify.channel, notify.payload, notify.pid):
                finished = True

    emit(tally.report(timed_out))
    wait_for_stdin_eof()


def run_psycopg3(config: Dict[str, Any], tally: Tally) -> None:
    """Receive with psycopg 3's notifies() generator on an autocommit connection."""
    import psycopg
    from psycopg import sql

    connection = psycopg.connect(config["conninfo"], autocommit=True)
    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(config["channel"])))
    announce_ready([("client", os.getpid(), True)], connection.info.backend_pid)

    # notifies(timeout=...) bounds the whole generator, not each wait, which is what a
    # deadline needs. None waits without limit (the idle workload).
    timed_out = True
    for notify in connection.notifies(timeout=Deadline(config["deadline"]).remaining()):
        if tally.add(notify.channel, notify.payload, notify.pid):
            timed_out = False
            break

    emit(tally.report(timed_out))
    wait_for_stdin_eof()


def run_asyncpg(config: Dict[str, Any], tally: Tally) -> None:
    """Receive with asyncpg's add_listener callback."""
    import asyncio

    import asyncpg

    async def receive() -> None:
        connection = await asyncpg.connect(**config["connect"])
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def on_notification(_connection: Any, pid: int, channel: str, payload: str) -> None:
            if tally.add(channel, payload, pid) and not finished.done():
                finished.set_result(None)

        await connection.add_listener(config["channel"], on_notification)
        announce_ready([("client", os.getpid(), True)], connection.get_server_pid())
        timed_out = False
        try:
            await asyncio.wait_for(finished, Deadline(config["deadline"]).remaining())
        except asyncio.TimeoutError:
            timed_out = True
        emit(tally.report(timed_out))

        # Wait for the end of stdin inside the loop, because leaving it would close the
        # connection while run.py still reads the backend's counters.
        stdin_closed = loop.create_future()

        def on_stdin() -> None:
            if not os.read(sys.stdin.fileno(), 4096) and not stdin_closed.done():
                stdin_closed.set_result(None)

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        await stdin_closed

    asyncio.run(receive())


def run_hermes(config: Dict[str, Any], tally: Tally) -> None:
    """Receive through a hermes-lite listener process and a Component processor process.

    This process, the launcher, only starts and stops the two, so its CPU is not counted. The processor prints the "ready" and "done" lines.
    """
    from hermes_lite import PostgresNotificationListener
    from hermes_lite.pipes import notification_pipe

    implementation = "c" if config["client"] == "hermes-c" else "python"
    reader, writer = notification_pipe()
    listener = PostgresNotificationListener(
        config["conninfo"], config["channel"], notif_queue=writer, implementation=implementation
    )
    processor = make_processor(reader, config, tally)

    listener.start()
    processor.listener_pid = listener.pid
    processor.start()

    wait_for_stdin_eof()
    processor.stop()
    listener.stop()


def make_processor(reader: Any, config: Dict[str, Any], tally: Tally) -> Any:
    """Return the benchmark's processor: a Component that feeds every batch to ``tally``."""
    from hermes_lite import Component

    class BenchProcessor(Component):
        listener_pid = 0

        def set_up(self) -> None:
            self.deadline: Optional[Deadline] = None
            self.reported = False

        def pre_execute(self) -> Any:
            # The default pre_execute plus a timeout, so that a lost notification ends the
            # run at the deadline instead of blocking forever.
            timeout = None if self.deadline is None or self.reported else self.deadline.remaining()
            return self.notification_pipe.read_batch(timeout=timeout, wake_fd=self.wake_fd)

        def execute(self, batch: List[Any]) -> None:
            if not batch:
                if self.deadline is not None and self.deadline.passed() and not self.reported:
                    emit(tally.report(True))
                    self.reported = True
                return

            if self.deadline is None:
                start_gap = batch.gap
                if start_gap is None:
                    raise RuntimeError(f"expected the start gap first, got {batch!r}")
                announce_ready(
                    [("listener", self.listener_pid, True), ("processor", os.getpid(), True)], start_gap.pid
                )
                self.deadline = Deadline(config["deadline"])

            if tally.add_batch(batch) and not self.reported:
                emit(tally.report(False))
                self.reported = True

    return BenchProcessor(reader)


def run_hermes_listener_only(config: Dict[str, Any], tally: Tally) -> None:
    """Run the C listener alone and count the notifications it frames, without decoding them.

    This process reads the pipe: it takes the session and start-gap frames with
    ``read_batch``, then only splits the stream into frames and adds up the notification
    count in each batch frame's header. Its CPU is reported but not counted. Without decoding
    there is no order check; the count is the check.
    """
    from hermes_lite import PostgresNotificationListener
    from hermes_lite.frames import KIND_BATCH, FrameDecoder
    from hermes_lite.pipes import notification_pipe, wait_readable

    reader, writer = notification_pipe()
    listener = PostgresNotificationListener(config["conninfo"], config["channel"], notif_queue=writer, implementation="c")
    listener.start()

    deadline = Deadline(config["deadline"])
    first = reader.read_batch(timeout=deadline.remaining())
    if first.gap is None:
        raise RuntimeError(f"expected the start gap first, got {first!r}")
    announce_ready([("listener", listener.pid, True), ("pipe reader", os.getpid(), False)], first.gap.pid)

    fd = reader.fileno()
    decoder = FrameDecoder()
    received = 0
    received_bytes = 0
    timed_out = False
    deadline = Deadline(config["deadline"])
    while received < tally.expected or config["mode"] == "idle":
        if not wait_readable([fd], deadline.remaining()):
            timed_out = True
            break
        data = os.read(fd, 1 << 20)
        received_bytes += len(data)
        received += sum(count for kind, _flags, _channel, count, _body in decoder.feed(data) if kind == KIND_BATCH)
    finished_at = time.monotonic()

    emit(
        {
            "event": "done",
            "t1": finished_at,
            "received": received,
            "received_bytes": received_bytes,
            "disorder": 0,
            "first_disorder": None,
            "bad_fields": 0,
            "timed_out": timed_out,
        }
    )
    wait_for_stdin_eof()
    listener.stop()


def quote_identifier(name: str) -> str:
    """Return ``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


CLIENTS = {
    "psycopg2": run_psycopg2,
    "psycopg3": run_psycopg3,
    "asyncpg": run_asyncpg,
    "hermes-c": run_hermes,
    "hermes-python": run_hermes,
    "hermes-c-listener": run_hermes_listener_only,
}


def main() -> None:
    """Run the client that the JSON config in argv[1] names."""
    config = json.loads(sys.argv[1])
    CLIENTS[config["client"]](config, Tally(config))


if __name__ == "__main__":
    main()
