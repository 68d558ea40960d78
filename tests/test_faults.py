"""Fault injection against real PostgreSQL servers, with a loss check, for each listener implementation.

In most tests a thread commits numbered notifications, one per transaction, while a fault
hits the listener. The faults are a terminated backend, a server restart, a stopped backend,
a half-open TCP link, a server down for 30 s, a failover to a promoted standby and killed
processes. What arrives must pass ``assert_no_silent_loss``: no number twice, numbers in
increasing order, and every committed number that is missing lies in a window that a gap
signal covers.
"""

import contextlib
import multiprocessing
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

import psycopg2
import pytest

from hermes_lite import Gap, Notification
from hermes_lite.client import Client
from hermes_lite.components import Component
from hermes_lite.listeners import PostgresNotificationListener

from helpers import (
    DEADLINE,
    assert_nothing_more,
    collect,
    collect_until,
    notify,
    running_listener,
    wait_until_listening,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHANNEL = "faults"

NUMBERS_BEFORE_FAULT = 20
"""Numbers that must arrive before a fault is injected, so that it hits a running stream."""

NUMBERS_AFTER_GAP = 20
"""Numbers that must arrive after the gap signal before the sender stops."""

FAST_HEALTH_CHECK = {"health_check_interval": 1.0, "health_check_timeout": 1.0}
"""Listener options that declare a silent connection dead after about 2 s instead of 10 s."""


# The loss check.


def payload_number(item) -> int:
    """Return the number that the sender put in the payload of notification ``item``."""
    return int(item.payload)


def format_numbers(numbers: Sequence[int], limit: int = 20) -> str:
    """Return sorted ``numbers`` as ranges, such as '3-7, 10', with at most ``limit`` ranges."""
    ranges: List[List[int]] = []
    for number in sorted(numbers):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])

    parts = [str(low) if low == high else f"{low}-{high}" for low, high in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


def assert_no_silent_loss(received_items, committed_numbers, uncertain_numbers=()) -> None:
    """Assert that every committed number arrived once and in order, or was lost under a gap.

    ``received_items`` are the Notification and Gap values in the order a reader received
    them; each notification's payload is a number. ``committed_numbers`` are the numbers
    whose transaction committed. ``uncertain_numbers`` are those whose connection broke
    during the commit, so they may or may not have been sent; they may arrive or not.

    A gap covers the numbers strictly between the last number received before it and the
    first number received after it. A side without any number is open, so a gap before
    the first number covers everything before that number.
    """
    numbers: List[int] = []
    windows: List[List[float]] = []
    open_windows: List[List[float]] = []

    for item in received_items:
        if item.is_gap:
            window = [numbers[-1] if numbers else float("-inf"), float("inf")]
            windows.append(window)
            open_windows.append(window)
            continue

        number = payload_number(item)
        for window in open_windows:
            window[1] = number
        open_windows.clear()
        numbers.append(number)

    seen = set()
    duplicates = []
    for number in numbers:
        if number in seen:
            duplicates.append(number)
        seen.add(number)
    assert not duplicates, f"numbers received more than once: {format_numbers(duplicates)}"

    disorder = [(before, after) for before, after in zip(numbers, numbers[1:]) if after < before]
    assert not disorder, f"numbers received out of order (earlier, later): {disorder[:10]}"

    committed = set(committed_numbers)
    never_sent = seen - committed - set(uncertain_numbers)
    assert not never_sent, f"numbers received that were never committed: {format_numbers(never_sent)}"

    missing = committed - seen
    silent = [number for number in missing if not any(low < number < high for low, high in windows)]
    assert not silent, (
        f"{len(silent)} of {len(committed)} committed numbers are missing without a gap signal "
        f"around them: {format_numbers(silent)}; gap windows (last number before, first after): "
        f"{[tuple(window) for window in windows]}"
    )


def note(number: int) -> Notification:
    return Notification(CHANNEL, str(number), 1)


GAP = Gap("reconnect", 1)


def test_loss_check_complete_stream():
    assert_no_silent_loss([note(1), note(2), note(3)], [1, 2, 3])


def test_loss_check_loss_under_gap():
    assert_no_silent_loss([note(1), GAP, note(5)], [1, 2, 3, 4, 5])


def test_loss_check_loss_before_start_gap():
    assert_no_silent_loss([Gap("start", 1), note(3), note(4)], [1, 2, 3, 4])


def test_loss_check_loss_after_final_gap():
    assert_no_silent_loss([note(1), GAP], [1, 2, 3])


def test_loss_check_two_gaps_in_a_row():
    assert_no_silent_loss([note(1), GAP, Gap("restart", 0), note(4)], [1, 2, 3, 4])


def test_loss_check_uncertain_number_arrives():
    assert_no_silent_loss([note(1), note(2)], [1], uncertain_numbers=[2])


def test_loss_check_uncertain_number_lost():
    assert_no_silent_loss([note(1), note(3)], [1, 3], uncertain_numbers=[2])


def test_loss_check_rejects_silent_loss():
    with pytest.raises(AssertionError, match=r"1 of 4 committed numbers are missing without a gap signal .*: 3;"):
        assert_no_silent_loss([note(1), note(2), note(4)], [1, 2, 3, 4])


def test_loss_check_rejects_loss_outside_window():
    # The gap covers 3 and 4 only: 6 was lost while the stream looked healthy.
    with pytest.raises(AssertionError, match=r"missing without a gap signal around them: 6;"):
        assert_no_silent_loss([note(2), GAP, note(5), note(7)], [2, 3, 4, 5, 6, 7])


def test_loss_check_rejects_duplicate():
    with pytest.raises(AssertionError, match="more than once: 2"):
        assert_no_silent_loss([note(1), note(2), GAP, note(2), note(3)], [1, 2, 3])


def test_loss_check_rejects_disorder():
    with pytest.raises(AssertionError, match=r"out of order .*\(3, 2\)"):
        assert_no_silent_loss([note(1), note(3), note(2)], [1, 2, 3])


def test_loss_check_rejects_uncommitted():
    with pytest.raises(AssertionError, match="never committed: 9"):
        assert_no_silent_loss([note(1), note(9)], [1, 2])


def test_format_numbers_ranges():
    assert format_numbers([10, 3, 4, 5, 7]) == "3-5, 7, 10"


# The sender and the readers.


class NumberedSender:
    """Commits pg_notify(channel, n) for n = 1, 2, 3, ... in a thread, one transaction each.

    A number is recorded in ``committed`` once its commit returned. When the connection breaks
    during a commit, the server may have committed it or not, so the number goes to
    ``uncertain`` and is never reused. The sender then reconnects and goes on with the next
    number. It stops after ``limit`` numbers, ``duration`` seconds, or ``stop()``.
    """

    def __init__(
        self, dsn: str, channel: str = CHANNEL, interval: float = 0.002, limit: int = 20000, duration: float = 90.0
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.interval = interval
        self.limit = limit
        self.duration = duration
        self.committed: List[int] = []
        self.uncertain: List[int] = []
        self.connection_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="numbered-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the thread; safe before start and more than once."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(DEADLINE)
            assert not self._thread.is_alive(), "the sender thread did not stop"

    def _run(self) -> None:
        connection = None
        number = 0
        end = time.monotonic() + self.duration

        while not self._stop.is_set() and number < self.limit and time.monotonic() < end:
            if connection is None:
                try:
                    connection = psycopg2.connect(self.dsn, connect_timeout=3)
                    connection.autocommit = True
                except psycopg2.Error:
                    self.connection_errors += 1
                    connection = None
                    self._stop.wait(0.05)
                    continue

            number += 1
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_notify(%s, %s)", (self.channel, str(number)))
            except psycopg2.Error:
                self.uncertain.append(number)
                self.connection_errors += 1
                connection.close()
                connection = None
                continue

            self.committed.append(number)
            self._stop.wait(self.interval)

        if connection is not None:
            connection.close()


@pytest.fixture
def senders():
    """Return a factory of NumberedSender; every sender created is stopped after the test."""
    created: List[NumberedSender] = []

    def make(dsn: str, **options) -> NumberedSender:
        sender = NumberedSender(dsn, **options)
        created.append(sender)
        return sender

    yield make
    for sender in created:
        sender.stop()


def read_until(source, items: list, done: Callable[[list], bool], deadline: float = DEADLINE) -> bool:
    """Extend ``items`` with batches from ``source`` until ``done(items)``; return False after ``deadline`` s.

    Unlike helpers.collect_until it does not raise, so that the loss check can report what is
    missing.
    """
    end = time.monotonic() + deadline
    while not done(items):
        remaining = end - time.monotonic()
        if remaining <= 0:
            return False
        items.extend(source.read_batch(timeout=min(remaining, 0.5)))
    return True


def numbers_in(items) -> List[int]:
    return [payload_number(item) for item in items if not item.is_gap]


def numbers_after_gap(items, reason: str = "reconnect") -> int:
    """Return how many notifications follow the first gap of ``reason`` in ``items``, -1 without one."""
    for index, item in enumerate(items):
        if item.is_gap and item.reason == reason:
            return sum(not later.is_gap for later in items[index + 1:])
    return -1


def gaps_in(items, reason: str) -> list:
    return [item for item in items if item.is_gap and item.reason == reason]


def run_fault(
    source, sender: NumberedSender, inject_fault: Callable[[], None], reconnect_deadline: float = DEADLINE
) -> list:
    """Send numbers through ``source`` while ``inject_fault()`` runs, then apply the loss check.

    ``source`` must already have delivered its start gap. Reads until NUMBERS_BEFORE_FAULT
    numbers arrived, injects the fault, reads until a reconnect gap and NUMBERS_AFTER_GAP
    numbers after it arrived (within ``reconnect_deadline`` seconds), stops the sender and
    reads until its last committed number. Returns every item read after the start gap.
    """
    items: list = []
    sender.start()
    assert read_until(source, items, lambda items: len(numbers_in(items)) >= NUMBERS_BEFORE_FAULT), (
        f"only {len(numbers_in(items))} numbers arrived before the fault; sender committed {len(sender.committed)}"
    )

    inject_fault()
    reconnected = read_until(
        source, items, lambda items: numbers_after_gap(items) >= NUMBERS_AFTER_GAP, reconnect_deadline
    )
    sender.stop()
    assert reconnected, (
        f"no reconnect gap followed by {NUMBERS_AFTER_GAP} numbers within {reconnect_deadline} s; "
        f"gaps read: {[item for item in items if item.is_gap]}, last items: {items[-3:]}"
    )

    last = sender.committed[-1]
    read_until(source, items, lambda items: last in numbers_in(items[-50:]), deadline=10)
    # A number whose commit broke may arrive after the last committed one.
    items.extend(source.read_batch(timeout=0.3))

    assert_no_silent_loss(items, sender.committed, sender.uncertain)
    return items


def wait_for_start(reader) -> Gap:
    (gap,) = collect(reader, 1)
    assert gap == Gap("start", gap.pid)
    return gap


def backend_pids_listening(connection, channel: str = CHANNEL) -> List[int]:
    """Return the backend pids of the sessions whose last statement was LISTEN on ``channel``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s ORDER BY pid",
            (f'LISTEN "{channel}"',),
        )
        return [row[0] for row in cursor.fetchall()]


def process_exited(pid: int) -> bool:
    """Return whether ``pid`` has exited; a zombie not yet reaped counts as exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time that process ``pid`` has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # The fields after the command name start with the state (field 3 of proc(5)), so
        # utime and stime (fields 14 and 15) are at indexes 11 and 12.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], deadline: float = DEADLINE) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


# Child processes, inboxes and clients.


class Inbox:
    """A one-way pipe on which child processes send values to the test.

    It shares no lock between processes, unlike a multiprocessing.Queue, so a process killed
    with SIGKILL cannot leave it blocked. Each value is one write() below PIPE_BUF, so the
    values of several writers never interleave.
    """

    def __init__(self) -> None:
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)

    def put(self, value) -> None:
        self._writer.send(value)

    def get(self, timeout: float):
        """Return the next value; raise queue.Empty after ``timeout`` seconds without one."""
        if not self._reader.poll(timeout):
            raise queue.Empty
        return self._reader.recv()

    def get_all(self) -> list:
        """Return every value waiting, without blocking."""
        values = []
        while self._reader.poll(0):
            values.append(self._reader.recv())
        return values

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


@pytest.fixture
def inbox():
    inbox = Inbox()
    yield inbox
    inbox.close()


class ForwardingProcessor(Component):
    """Sends every batch it receives to ``inbox``: ``(pid, "batch", size)``, then ``(pid, "item", item)`` per item.

    ``item_delay`` is the time in seconds spent on each item, to make the processor slow.
    """

    def __init__(self, inbox: Inbox, item_delay: float = 0.0) -> None:
        super().__init__()
        self.inbox = inbox
        self.item_delay = item_delay

    def execute(self, pre_exec_value):
        pid = os.getpid()
        self.inbox.put((pid, "batch", len(pre_exec_value)))
        for item in pre_exec_value:
            self.inbox.put((pid, "item", item))
            if self.item_delay:
                time.sleep(self.item_delay)


class InboxSource:
    """Reads what a ForwardingProcessor sent, in batches like a NotificationReader.

    ``received`` keeps ``(pid, item)`` in arrival order and ``batches`` keeps
    ``(pid, size, index of the batch's first item in received)``.
    """

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.received: List[tuple] = []
        self.batches: List[tuple] = []

    def read_batch(self, timeout: Optional[float] = None) -> list:
        try:
            values = [self.inbox.get(DEADLINE if timeout is None else timeout)]
        except queue.Empty:
            return []
        values += self.inbox.get_all()

        items = []
        for pid, kind, value in values:
            if kind == "batch":
                self.batches.append((pid, value, len(self.received)))
            else:
                self.received.append((pid, value))
                items.append(value)
        return items


@pytest.fixture
def run_client():
    """Start a client's supervisor in a thread; stop every client started this way after the test."""
    runs = []

    def run(client: Client) -> threading.Thread:
        thread = threading.Thread(target=client.start, name="client-supervisor", daemon=True)
        thread.start()
        runs.append((client, thread))
        return thread

    yield run
    for client, thread in runs:
        client.stop()
        thread.join(DEADLINE)


def make_client(dsn: str, implementation: str, processor: Component, **listener_options) -> Client:
    client = Client(dsn)
    client.add_listener(PostgresNotificationListener(dsn, CHANNEL, implementation=implementation, **listener_options))
    client.add_processor(processor)
    return client


def multi_host_dsn(*clusters) -> str:
    hosts = ",".join(cluster.socket_dir for cluster in clusters)
    ports = ",".join(str(cluster.port) for cluster in clusters)
    return f"host={hosts} port={ports} user=postgres dbname=postgres target_session_attrs=read-write"


@pytest.fixture(autouse=True)
def no_child_left():
    """Fail a test that leaves a component process running."""
    yield
    children = multiprocessing.active_children()
    assert children == [], f"child processes still running after the test: {children!r}"


# A terminated backend.


@pytest.mark.timeout(120)
def test_terminate_backend_no_silent_loss(postgres_cluster, implementation, senders):
    sender = senders(postgres_cluster.dsn)
    admin = postgres_cluster.connect()
    try:
        with running_listener(postgres_cluster.dsn, CHANNEL, implementation) as (_, reader):
            old_pid = wait_for_start(reader).pid

            def terminate():
                with admin.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", (old_pid,))

            items = run_fault(reader, sender, terminate)
    finally:
        admin.close()

    reconnects = gaps_in(items, "reconnect")
    assert len(reconnects) == 1
    assert reconnects[0].pid != old_pid


@pytest.mark.timeout(120)
def test_terminate_backend_gap_before_next(postgres_cluster, implementation):
    admin = postgres_cluster.connect()
    try:
        with running_listener(postgres_cluster.dsn, "ch_a", implementation) as (listener, reader):
            old_pid = wait_for_start(reader).pid

            # The listener process is held stopped while its backend is terminated and x1
            # is committed, so no session listens on ch_a when x1 is sent. The terminate
            # waits up to DEADLINE for the backend to exit.
            os.kill(listener.ident, signal.SIGSTOP)
            try:
                with admin.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s, %s)", (old_pid, int(DEADLINE * 1000)))
                    terminated = cursor.fetchone()[0]
                listening_after_terminate = backend_pids_listening(admin, "ch_a")
                notify(admin, "ch_a", "x1")
            finally:
                os.kill(listener.ident, signal.SIGCONT)

            items = collect_until(reader, lambda items: any(item.is_gap for item in items))
            notify(admin, "ch_a", "x2")
            items += collect_until(reader, lambda items: any(not item.is_gap for item in items))
            assert_nothing_more(reader)
    finally:
        admin.close()

    gap = items[0]
    assert terminated
    assert listening_after_terminate == []
    assert gap == Gap("reconnect", gap.pid)
    assert gap.pid != old_pid
    assert items[1:] == [Notification("ch_a", "x2", items[1].pid)]


# Server restarts.


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_no_silent_loss(fresh_postgres_cluster, implementation, senders, mode):
    cluster = fresh_postgres_cluster
    sender = senders(cluster.dsn)

    with running_listener(cluster.dsn, CHANNEL, implementation) as (_, reader):
        old_pid = wait_for_start(reader).pid
        items = run_fault(reader, sender, lambda: cluster.restart(mode))

    reconnects = gaps_in(items, "reconnect")
    assert len(reconnects) >= 1
    assert reconnects[-1].pid != old_pid
    assert sender.connection_errors >= 1


# A stopped backend: the connection stays open, but the backend never replies.


@pytest.mark.timeout(120)
def test_stopped_backend_reconnects(postgres_cluster, implementation, senders):
    sender = senders(postgres_cluster.dsn)
    stopped: List[int] = []

    def stop_backend():
        os.kill(old_pid, signal.SIGSTOP)
        stopped.append(old_pid)

    try:
        with running_listener(postgres_cluster.dsn, CHANNEL, implementation, **FAST_HEALTH_CHECK) as (_, reader):
            old_pid = wait_for_start(reader).pid
            items = run_fault(reader, sender, stop_backend)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    reconnects = gaps_in(items, "reconnect")
    assert stopped == [old_pid]
    assert len(reconnects) == 1
    assert reconnects[0].pid != old_pid


# A half-open TCP link.


class PausableProxy:
    """A TCP proxy on 127.0.0.1 that forwards every connection it accepts to a unix socket.

    ``pause()`` stops forwarding on the connections open at that moment without closing
    either of their sockets, like a network that silently drops every packet. Connections
    accepted later are forwarded normally. ``close()`` ends every thread and socket.
    """

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]

        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._links: List[dict] = []
        self._threads: List[threading.Thread] = []
        self._start_thread(self._accept_loop)

    def pause(self) -> int:
        """Stop forwarding on every open connection; return how many were paused."""
        with self._lock:
            for link in self._links:
                link["paused"].set()
            return len(self._links)

    def close(self) -> None:
        # The threads end first, so that none of them waits on a socket closed under it.
        self._closing.set()
        for thread in self._threads:
            thread.join(5)
        self._server.close()
        with self._lock:
            for link in self._links:
                for sock in link["sockets"]:
                    sock.close()

    def running_threads(self) -> List[threading.Thread]:
        return [thread for thread in self._threads if thread.is_alive()]

    def _start_thread(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="pausable-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            if not select.select([self._server], [], [], 0.1)[0]:
                continue
            try:
                client, _ = self._server.accept()
            except OSError:
                return

            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.unix_path)
            except OSError:
                client.close()
                upstream.close()
                continue

            link = {"sockets": (client, upstream), "paused": threading.Event()}
            with self._lock:
                self._links.append(link)
            self._start_thread(self._forward, link)

    def _forward(self, link: dict) -> None:
        client, upstream = link["sockets"]
        peers = {client: upstream, upstream: client}

        while not self._closing.is_set():
            if link["paused"].is_set():
                self._closing.wait(0.1)
                continue
            try:
                readable = select.select(list(peers), [], [], 0.1)[0]
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        client.close()
                        upstream.close()
                        return
                    peers[sock].sendall(data)
            except OSError:
                return


@pytest.mark.timeout(120)
def test_half_open_tcp_reconnects(postgres_cluster, implementation, senders):
    sender = senders(postgres_cluster.dsn)
    proxy = PausableProxy(os.path.join(postgres_cluster.socket_dir, f".s.PGSQL.{postgres_cluster.port}"))
    paused: List[int] = []
    dsn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"
    # The listener must notice within interval + timeout; 5 s more absorbs a loaded machine
    # and stays below the 10 s that the default settings would take.
    limit = FAST_HEALTH_CHECK["health_check_interval"] + FAST_HEALTH_CHECK["health_check_timeout"] + 5

    try:
        with running_listener(dsn, CHANNEL, implementation, **FAST_HEALTH_CHECK) as (_, reader):
            old_pid = wait_for_start(reader).pid
            items = run_fault(reader, sender, lambda: paused.append(proxy.pause()), reconnect_deadline=limit)
            # The paused proxy keeps the old connection open, so only the listener's
            # pg_terminate_backend can end the old backend, which would otherwise keep the
            # server's notification queue from being freed.
            old_backend_ended = wait_for_backend_exit(postgres_cluster, old_pid)
    finally:
        proxy.close()

    reconnects = gaps_in(items, "reconnect")
    assert old_backend_ended
    assert proxy.running_threads() == []
    assert paused == [1]
    assert len(reconnects) == 1
    assert reconnects[0].pid != old_pid


def wait_for_backend_exit(cluster, pid, timeout=DEADLINE):
    """Return whether backend ``pid`` left pg_stat_activity within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        if rows[0][0] == 0:
            return True
        time.sleep(0.05)
    return False


# A server that stays down.


OUTAGE_SECONDS = 30.0


@pytest.mark.timeout(180)
def test_server_down_backs_off(fresh_postgres_cluster, implementation, inbox):
    cluster = fresh_postgres_cluster
    backoff_limit = 32.0
    errors = []

    options = {"error_queue": inbox, "reconnect_backoff_limit": backoff_limit}
    with running_listener(cluster.dsn, CHANNEL, implementation, **options) as (listener, reader):
        wait_for_start(reader)

        cluster.stop()
        cpu_before = cpu_seconds(listener.ident)
        outage_end = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < outage_end:
            with contextlib.suppress(queue.Empty):
                errors.append(inbox.get(max(0.0, outage_end - time.monotonic())))
        errors += inbox.get_all()
        cpu_used = cpu_seconds(listener.ident) - cpu_before
        cluster.start()

        # The next attempt may be a whole backoff away.
        gap = collect(reader, 1, deadline=backoff_limit + 15)[0]
        notify_connection = cluster.connect()
        try:
            notify(notify_connection, CHANNEL, "back")
        finally:
            notify_connection.close()
        (after,) = collect(reader, 1)

    # The attempt after the lost connection waits a delay drawn from [b/2, b] with the bound
    # b = min(0.2 * 2 ** (n - 1), 32) after n failures: 0.1-0.2, 0.2-0.4, 0.4-0.8, ..., 12.8-25.6,
    # then 16-32. Failures therefore come at 0, 0.1-0.2, 0.3-0.6, 0.7-1.4, 1.5-3.0, 3.1-6.2,
    # 6.3-12.6, 12.7-25.4 and 25.5-51 s: 8 or 9 in 30 s. A loop without backoff would make
    # hundreds; the bounds leave room for a slow machine and a changed initial delay.
    assert 3 <= len(errors) <= 15, f"{len(errors)} failed attempts in {OUTAGE_SECONDS} s: {errors}"
    assert all(not error.fatal for error in errors)
    assert all(error.pid == listener.ident for error in errors)
    # A busy loop would use most of a core, and so would poll() on a closed descriptor (-1),
    # which returns at once. Waiting out the backoff uses milliseconds.
    assert cpu_used < 1.0, f"the listener used {cpu_used:.2f} s of CPU during the {OUTAGE_SECONDS} s outage"
    assert gap == Gap("reconnect", gap.pid)
    assert after.payload == "back"


# Failover to a promoted standby.


@pytest.mark.timeout(240)
def test_promoted_standby_followed(fresh_postgres_cluster, implementation, senders, run_client, inbox):
    primary = fresh_postgres_cluster
    standby = primary.make_standby()
    dsn = multi_host_dsn(primary, standby)
    sender = senders(dsn)

    # The first client follows whichever server accepts writes. The DSN of the second one
    # names only the standby, so it must keep its components stopped until the promotion.
    follower = make_client(dsn, implementation, ForwardingProcessor(inbox))
    follower.role_check_interval = 0.5
    run_client(follower)
    standby_inbox = Inbox()
    standby_only = make_client(standby.dsn, implementation, ForwardingProcessor(standby_inbox))
    standby_only.role_check_interval = 0.5
    run_client(standby_only)

    standby_components_before_promotion: list = []

    def fail_over():
        primary.stop()
        time.sleep(1.0)
        # While only the standby runs, the standby-only client starts nothing.
        standby_components_before_promotion.extend([standby_only.listener.ident, standby_only.processor.ident])
        standby.promote()

    try:
        source = InboxSource(inbox)
        first = collect(source, 1)[0]
        assert first == Gap("start", first.pid)
        items = run_fault(source, sender, fail_over)
        standby_connection = standby.connect()
        try:
            listening_on_standby = backend_pids_listening(standby_connection)
        finally:
            standby_connection.close()

        standby_source = InboxSource(standby_inbox)
        standby_items = collect_until(standby_source, lambda items: bool(items))
        standby.execute("SELECT pg_notify(%s, 'after promotion')", (CHANNEL,))
        standby_items += collect_until(
            standby_source, lambda items: any(not item.is_gap and item.payload == "after promotion" for item in items)
        )
    finally:
        standby_only.stop()
        standby_inbox.close()

    reconnects = gaps_in(items, "reconnect")
    assert len(reconnects) >= 1
    assert reconnects[-1].pid != first.pid
    assert reconnects[-1].pid in listening_on_standby
    assert standby_components_before_promotion == [None, None]
    assert standby_items[0] == Gap("start", standby_items[0].pid)
    assert standby_items[-1].payload == "after promotion"
    assert follower.fatal_error is None


# Killed processes.


@pytest.mark.timeout(120)
def test_killed_processor_no_silent_loss(postgres_cluster, implementation, senders, run_client, inbox):
    sender = senders(postgres_cluster.dsn)
    # Slower than the sender, so that batches grow and a kill lands inside one.
    client = make_client(postgres_cluster.dsn, implementation, ForwardingProcessor(inbox, item_delay=0.003))
    run_client(client)
    source = InboxSource(inbox)
    items: list = []
    assert read_until(source, items, lambda items: bool(items))
    assert items[0] == Gap("start", items[0].pid)

    def inside_large_batch(_items) -> bool:
        if not source.batches:
            return False
        _, size, first_index = source.batches[-1]
        return size >= 20 and len(source.received) - first_index >= 3

    sender.start()
    assert read_until(source, items, inside_large_batch), f"no batch of 20 items in {DEADLINE} s: {source.batches[-5:]}"
    killed_pid, batch_size, first_index = source.batches[-1]
    os.kill(killed_pid, signal.SIGKILL)

    def restarted(_items) -> bool:
        return sum(pid != killed_pid for pid, item in source.received if not item.is_gap) >= NUMBERS_AFTER_GAP

    assert read_until(source, items, restarted), f"no numbers from a restarted processor within {DEADLINE} s"
    sender.stop()
    last = sender.committed[-1]
    read_until(source, items, lambda items: last in numbers_in(items[-50:]), deadline=10)
    items.extend(source.read_batch(timeout=0.3))

    forwarded_of_batch = sum(pid == killed_pid for pid, _ in source.received[first_index:])
    first_of_restarted = next(item for pid, item in source.received if pid != killed_pid)
    assert forwarded_of_batch < batch_size, "the kill came after the whole batch was forwarded"
    assert client.processor.ident != killed_pid
    assert first_of_restarted == Gap("restart", 0)
    assert len(gaps_in(items, "restart")) == 1
    assert_no_silent_loss(items, sender.committed, sender.uncertain)


SUPERVISOR_SCRIPT = r"""
import sys
import threading
import time

from hermes_lite.client import Client
from hermes_lite.components import Component
from hermes_lite.listeners import PostgresNotificationListener

dsn, channel, implementation = sys.argv[1:4]


class IdleProcessor(Component):
    def execute(self, pre_exec_value):
        pass


client = Client(dsn)
client.add_listener(PostgresNotificationListener(dsn, channel, implementation=implementation))
client.add_processor(IdleProcessor())


def print_component_pids():
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if client.listener.ident and client.processor.ident:
            print(client.listener.ident, client.processor.ident, flush=True)
            return
        time.sleep(0.05)


threading.Thread(target=print_component_pids, daemon=True).start()
client.start()
"""


def read_line(stream, deadline: float = DEADLINE) -> str:
    """Return the first line of ``stream``, or '' when none arrives within ``deadline`` seconds."""
    if not select.select([stream], [], [], deadline)[0]:
        return ""
    return stream.readline()


@pytest.mark.timeout(120)
def test_killed_supervisor_children_exit(postgres_cluster, implementation, tmp_path):
    channel = f"supervisor_{implementation}"
    log_path = tmp_path / "supervisor.log"
    component_pids: List[int] = []

    with open(log_path, "w") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR_SCRIPT, postgres_cluster.dsn, channel, implementation],
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONPATH": REPOSITORY},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    admin = postgres_cluster.connect()
    try:
        line = read_line(supervisor.stdout)
        assert line, f"the supervisor printed no component pids; its stderr: {log_path.read_text()}"
        component_pids = [int(pid) for pid in line.split()]
        wait_until_listening(admin, channel)

        supervisor.kill()
        supervisor.wait(DEADLINE)
        exited = wait_for(lambda: all(process_exited(pid) for pid in component_pids), deadline=10)
        session_closed = wait_for(lambda: backend_pids_listening(admin, channel) == [], deadline=10)
    finally:
        admin.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        supervisor.stdout.close()
        for pid in component_pids:
            with contextlib.suppress(ProcessLookupError):
                if not process_exited(pid):
                    os.kill(pid, signal.SIGKILL)

    assert supervisor.returncode == -signal.SIGKILL
    assert len(component_pids) == 2
    assert exited, f"component processes still running 10 s after the supervisor was killed: {component_pids}"
    assert session_closed
