"""Tests of CBackend, the C listener, against a real PostgreSQL server."""

import os
import subprocess
import sys
import threading
import time

import pytest
from psycopg2.extensions import make_dsn

pytest.importorskip("hermes_lite._listener")

from hermes_lite import drain  # noqa: E402
from hermes_lite._c_backend import CBackend  # noqa: E402
from hermes_lite._listener import lib  # noqa: E402
from hermes_lite.exceptions import ListenerConnectionError, ListenerQueryError  # noqa: E402
from hermes_lite.frames import KIND_BATCH, FrameDecoder, decode_batch, encode_batch, encode_frame  # noqa: E402

pytestmark = pytest.mark.timeout(120)

BULK_COUNT = 100_000


def quote_identifier(name):
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def backend(postgres_cluster):
    backend = CBackend(make_dsn(postgres_cluster.dsn, client_encoding="UTF8"))
    backend.connect()
    yield backend
    backend.close()


@pytest.fixture
def notifier(postgres_cluster):
    connection = postgres_cluster.connect()
    connection.set_client_encoding("UTF8")
    yield connection
    connection.close()


@pytest.fixture
def pipe():
    """A notification pipe: (read fd, non-blocking write fd)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    yield read_fd, write_fd
    close_quietly(read_fd, write_fd)


@pytest.fixture
def wake():
    """A wake pipe: (read fd, write fd)."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    close_quietly(read_fd, write_fd)


def close_quietly(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def notify(connection, channel, payload):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def notify_bulk(connection, channel, count):
    """Send `count` notifications with payloads "1" to str(count), all in one transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, i::text) FROM generate_series(1, %s) AS i", (channel, count))


def read_available(read_fd):
    """Return every byte that the pipe contains now, without waiting for more."""
    os.set_blocking(read_fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def fill_pipe(write_fd):
    """Write filler bytes into the non-blocking pipe until it takes no more."""
    while True:
        try:
            os.write(write_fd, b"\0" * 4096)
        except BlockingIOError:
            return


def drain_until_received(backend, pipe_fd, wake_fd, count, timeout_s=60.0):
    """Call drain until `count` notifications are framed and written; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        # TIMEOUT comes only after every framed notification is written to the pipe.
        status = backend.drain(pipe_fd, wake_fd, 200)
        assert status == drain.DRAIN_TIMEOUT
        if backend.received >= count:
            return
        assert time.monotonic() < deadline, f"only {backend.received} of {count} notifications arrived"


class PipeReader(threading.Thread):
    """Reads a pipe until end of file, collecting every byte."""

    def __init__(self, read_fd):
        super().__init__(daemon=True)
        self.read_fd = read_fd
        self.chunks = []

    def run(self):
        while True:
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                return
            self.chunks.append(chunk)

    def notifications(self):
        return notifications_in(b"".join(self.chunks))


def notifications_in(data):
    """Return (channel, pid, payload) byte tuples for the notifications framed in ``data``.

    Checks that ``data`` holds only whole batch frames and that each one is byte-identical to
    what hermes_lite.frames.encode_batch writes for the same notifications.
    """
    decoder = FrameDecoder()
    notifications = []
    for kind, flags, channel, count, body in decoder.feed(data):
        assert kind == KIND_BATCH
        # latin-1 maps each byte to one character, so the columns keep the exact bytes.
        channels, payloads, pids = decode_batch(count, body, "latin-1", "strict")
        rebuilt = encode_batch(
            pids,
            "".join(name + "\x00" for name in channels).encode("latin-1"),
            "".join(text + "\x00" for text in payloads).encode("latin-1"),
        )
        assert rebuilt == encode_frame(kind, flags, channel, count, body)
        for name, pid, text in zip(channels, pids, payloads):
            notifications.append((name.encode("latin-1"), pid, text.encode("latin-1")))
    decoder.finish()
    return notifications


def test_drain_codes_match_python_constants():
    assert lib.HL_DRAIN_WOKEN == drain.DRAIN_WOKEN
    assert lib.HL_DRAIN_TIMEOUT == drain.DRAIN_TIMEOUT
    assert lib.HL_DRAIN_CONNECTION_LOST == drain.DRAIN_CONNECTION_LOST
    assert lib.HL_DRAIN_PIPE_CLOSED == drain.DRAIN_PIPE_CLOSED


@pytest.mark.parametrize(
    "channel, payload",
    [
        ("plain", "an ascii payload"),
        ("empty_payload", ""),
        ("Kanäle 日本", "naïve café ✓ 𝄞"),
        ("c" * 63, "x" * 7999),
    ],
    ids=["ascii", "empty payload", "non-ascii", "maximum sizes"],
)
def test_frames_identical_to_encode_batch(backend, notifier, pipe, wake, channel, payload):
    read_fd, write_fd = pipe
    backend.execute(f"LISTEN {quote_identifier(channel)}")

    notify(notifier, channel, payload)
    notify(notifier, channel, "second")
    drain_until_received(backend, write_fd, wake[0], 2)

    pid = notifier.info.backend_pid
    expected = [(channel.encode(), pid, payload.encode()), (channel.encode(), pid, b"second")]
    assert notifications_in(read_available(read_fd)) == expected


def test_payload_in_client_encoding(postgres_cluster, notifier, pipe, wake):
    backend = CBackend(make_dsn(postgres_cluster.dsn, client_encoding="LATIN1"))
    backend.connect()
    try:
        assert backend.client_encoding == "LATIN1"
        backend.execute('LISTEN "café"')

        notify(notifier, "café", "crème brûlée")
        drain_until_received(backend, pipe[1], wake[0], 1)
    finally:
        backend.close()

    expected = [("café".encode("latin-1"), notifier.info.backend_pid, "crème brûlée".encode("latin-1"))]
    assert notifications_in(read_available(pipe[0])) == expected


def test_client_encoding_and_backend_pid(backend, notifier):
    assert backend.client_encoding == "UTF8"

    with notifier.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend.backend_pid,))
        assert cursor.fetchone()[0] == 1


def test_bulk_notifications_arrive_in_order(backend, notifier, pipe, wake):
    read_fd, write_fd = pipe
    backend.execute('LISTEN "bulk"')
    reader = PipeReader(read_fd)
    reader.start()

    notify_bulk(notifier, "bulk", BULK_COUNT)
    drain_until_received(backend, write_fd, wake[0], BULK_COUNT)
    os.close(write_fd)
    reader.join(timeout=30)

    assert not reader.is_alive()
    notifications = reader.notifications()
    assert len(notifications) == BULK_COUNT
    assert [payload for _channel, _pid, payload in notifications] == [
        str(number).encode() for number in range(1, BULK_COUNT + 1)
    ]
    assert {(channel, pid) for channel, pid, _payload in notifications} == {(b"bulk", notifier.info.backend_pid)}
    assert backend.received == BULK_COUNT


def test_full_pipe_loses_nothing(backend, notifier, pipe, wake):
    read_fd, write_fd = pipe
    wake_read, wake_write = wake
    backend.execute('LISTEN "bulk"')
    notify_bulk(notifier, "bulk", BULK_COUNT)

    # The pipe has no reader yet, so drain fills it and then waits for room until woken.
    statuses = []
    drainer = threading.Thread(target=lambda: statuses.append(backend.drain(write_fd, wake_read, -1)))
    drainer.start()
    drainer.join(timeout=2)
    assert drainer.is_alive(), "drain returned although the pipe was full"

    os.write(wake_write, b"x")
    drainer.join(timeout=10)
    assert not drainer.is_alive()
    assert statuses == [drain.DRAIN_WOKEN]
    assert os.read(wake_read, 1) == b"x"

    # Backpressure: the rest waited in the server and in libpq instead of being framed.
    assert backend.received < BULK_COUNT

    reader = PipeReader(read_fd)
    reader.start()
    drain_until_received(backend, write_fd, wake_read, BULK_COUNT)
    os.close(write_fd)
    reader.join(timeout=30)

    notifications = reader.notifications()
    assert [payload for _channel, _pid, payload in notifications] == [
        str(number).encode() for number in range(1, BULK_COUNT + 1)
    ]


def test_drain_woken_leaves_wake_byte(backend, pipe, wake):
    wake_read, wake_write = wake
    os.write(wake_write, b"w")

    started = time.monotonic()
    status = backend.drain(pipe[1], wake_read, 10_000)

    assert status == drain.DRAIN_WOKEN
    assert time.monotonic() - started < 5
    assert os.read(wake_read, 1) == b"w"


def test_drain_timeout(backend, pipe, wake):
    started = time.monotonic()
    status = backend.drain(pipe[1], wake[0], 300)
    elapsed = time.monotonic() - started

    assert status == drain.DRAIN_TIMEOUT
    assert elapsed >= 0.29
    assert elapsed < 5


def test_drain_without_wake_fd(backend, pipe):
    assert backend.drain(pipe[1], -1, 50) == drain.DRAIN_TIMEOUT


def test_drain_connection_lost_on_terminate(backend, notifier, pipe, wake):
    backend.execute('LISTEN "lost"')
    with notifier.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (backend.backend_pid,))

    assert backend.drain(pipe[1], wake[0], 10_000) == drain.DRAIN_CONNECTION_LOST
    assert "terminating connection" in backend.error_message

    # The state sticks until connect(), and execute() reports the connection, not the SQL.
    assert backend.drain(pipe[1], wake[0], 10_000) == drain.DRAIN_CONNECTION_LOST
    with pytest.raises(ListenerConnectionError):
        backend.execute('LISTEN "lost"')


def test_reconnect_after_connection_lost(backend, notifier, pipe, wake):
    old_pid = backend.backend_pid
    with notifier.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    assert backend.drain(pipe[1], wake[0], 10_000) == drain.DRAIN_CONNECTION_LOST

    backend.connect()
    backend.execute('LISTEN "again"')
    notify(notifier, "again", "after reconnect")
    drain_until_received(backend, pipe[1], wake[0], 1)

    assert backend.backend_pid != old_pid
    assert notifications_in(read_available(pipe[0])) == [(b"again", notifier.info.backend_pid, b"after reconnect")]


def test_drain_pipe_closed_while_idle(backend, pipe, wake):
    os.close(pipe[0])

    assert backend.drain(pipe[1], wake[0], 10_000) == drain.DRAIN_PIPE_CLOSED


def test_drain_pipe_closed_with_frames_pending(backend, notifier, pipe, wake):
    read_fd, write_fd = pipe
    backend.execute('LISTEN "closed"')
    fill_pipe(write_fd)
    notify(notifier, "closed", "nobody reads this")

    # drain frames the notification and waits for room in the full pipe until the reader goes.
    statuses = []
    drainer = threading.Thread(target=lambda: statuses.append(backend.drain(write_fd, wake[0], 300)))
    drainer.start()
    drainer.join(timeout=1)
    assert drainer.is_alive(), "drain returned although a frame was waiting for the full pipe"
    os.close(read_fd)
    drainer.join(timeout=10)

    assert statuses == [drain.DRAIN_PIPE_CLOSED]
    assert backend.received == 1
    assert lib.hl_listener_pending_bytes(backend._listener) == 0


# Runs the scenario above in a process where SIGPIPE kills, as in a program that restored the
# default action: drain must still get EPIPE instead of the signal.
SIGPIPE_SCRIPT = """
import os, signal, sys, threading, time
import psycopg2
from hermes_lite._c_backend import CBackend

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
backend = CBackend(sys.argv[1])
backend.connect()
backend.execute('LISTEN "sigpipe"')
read_fd, write_fd = os.pipe()
os.set_blocking(write_fd, False)
while True:
    try:
        os.write(write_fd, bytes(4096))
    except BlockingIOError:
        break
notifier = psycopg2.connect(sys.argv[1])
notifier.autocommit = True
notifier.cursor().execute("SELECT pg_notify('sigpipe', 'x')")
threading.Timer(1.0, os.close, [read_fd]).start()
print(backend.drain(write_fd, -1, -1), backend.received)
"""


def test_drain_pipe_closed_with_sigpipe_default(postgres_cluster):
    completed = subprocess.run(
        [sys.executable, "-c", SIGPIPE_SCRIPT, postgres_cluster.dsn], capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, f"exit status {completed.returncode} (-13 is SIGPIPE): {completed.stderr}"
    assert completed.stdout.split() == [str(drain.DRAIN_PIPE_CLOSED), "1"]


def test_notification_during_execute_delivered(backend, notifier, pipe, wake):
    backend.execute('LISTEN "first"')
    notify(notifier, "first", "sent before the next command")
    backend.execute('LISTEN "second"')

    drain_until_received(backend, pipe[1], wake[0], 1)

    assert notifications_in(read_available(pipe[0])) == [
        (b"first", notifier.info.backend_pid, b"sent before the next command")
    ]


def test_connect_failure_hides_password():
    backend = CBackend(
        "host=/nonexistent-hermes-lite-socket-dir dbname=postgres user=postgres password=s3cret-pw"
    )

    with pytest.raises(ListenerConnectionError) as raised:
        backend.connect()

    assert "nonexistent-hermes-lite-socket-dir" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)
    assert "s3cret-pw" not in backend.error_message


def test_invalid_listen_raises_query_error(backend):
    with pytest.raises(ListenerQueryError) as raised:
        backend.execute('LISTEN "unterminated')

    assert "unterminated quoted identifier" in str(raised.value)
    # The connection survives a rejected command.
    backend.execute('LISTEN "valid"')


def test_not_connected_raises_connection_error(postgres_cluster, pipe, wake):
    backend = CBackend(postgres_cluster.dsn)

    with pytest.raises(ListenerConnectionError):
        backend.execute('LISTEN "x"')
    with pytest.raises(ListenerConnectionError):
        backend.backend_pid
    with pytest.raises(ListenerConnectionError):
        backend.drain(pipe[1], wake[0], 10)


def test_close_is_idempotent(backend):
    backend.close()
    backend.close()

    with pytest.raises(ListenerConnectionError):
        backend.client_encoding
