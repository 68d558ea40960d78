"""End-to-end tests of PostgresNotificationListener against a real server, for each implementation.

Each test starts the listener in its own process, wired to a notification pipe (or a
multiprocessing.Queue), sends with pg_notify() from the test process and reads what arrives.
"""

import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

import hermes_lite
from hermes_lite import Gap, InvalidConfigurationException, Notification
from hermes_lite.listeners import C_EXTENSION_AVAILABLE, PostgresNotificationListener

from helpers import (
    DEADLINE,
    assert_nothing_more,
    backend_pid,
    collect,
    collect_until,
    notify,
    notify_series,
    running_listener,
    wait_until_listening,
)

pytestmark = pytest.mark.timeout(120)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The largest payload pg_notify() accepts on a server built with the default 8 kB block
# size. The payload tests below check both sides of this limit.
MAX_PAYLOAD_BYTES = 7999


@pytest.fixture(autouse=True)
def no_child_left_behind():
    """Fail a test that leaves a listener process running."""
    yield
    children = multiprocessing.active_children()
    assert children == [], f"child processes still running after the test: {children!r}"


@pytest.fixture
def sender(postgres_cluster):
    connection = postgres_cluster.connect()
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def encoded_databases(postgres_cluster):
    """Create a LATIN1 and a SQL_ASCII database; yield their conninfo strings by encoding."""
    names = {"LATIN1": "listener_latin1", "SQL_ASCII": "listener_sql_ascii"}
    dsns = {encoding: postgres_cluster.create_database(name, encoding=encoding) for encoding, name in names.items()}
    yield dsns
    for name in names.values():
        postgres_cluster.execute(f'DROP DATABASE IF EXISTS "{name}"')


def wait_for_start(reader):
    """Read the start gap, which arrives once LISTEN is active; return it."""
    (gap,) = collect(reader, 1)
    assert gap == Gap("start", gap.pid)
    return gap


# Delivery: channel, payload, pid and order.


def test_delivery_fields_exact(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "deliver", implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, "deliver", "payload 1")
        (item,) = collect(reader, 1)

    assert item == Notification("deliver", "payload 1", backend_pid(sender))


def test_delivery_commit_order(postgres_cluster, sender, implementation):
    payloads = [f"step {number}" for number in range(20)]

    with running_listener(postgres_cluster.dsn, "ordered", implementation) as (_, reader):
        wait_for_start(reader)
        for payload in payloads:
            notify(sender, "ordered", payload)
        items = collect(reader, len(payloads))

    assert [item.payload for item in items] == payloads


def test_delivery_interleaved_senders(postgres_cluster, sender, implementation):
    other = postgres_cluster.connect()
    try:
        with running_listener(postgres_cluster.dsn, "two_senders", implementation) as (_, reader):
            wait_for_start(reader)
            notify(sender, "two_senders", "first")
            notify(other, "two_senders", "second")
            notify(sender, "two_senders", "third")
            items = collect(reader, 3)
        other_pid = backend_pid(other)
    finally:
        other.close()

    sender_pid = backend_pid(sender)
    assert items == [
        Notification("two_senders", "first", sender_pid),
        Notification("two_senders", "second", other_pid),
        Notification("two_senders", "third", sender_pid),
    ]


def test_delivery_repeated_payload(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "repeat", implementation) as (_, reader):
        wait_for_start(reader)
        for _ in range(3):
            notify(sender, "repeat", "same")
        items = collect(reader, 3)

    assert [item.payload for item in items] == ["same", "same", "same"]


def test_delivery_channel_list(postgres_cluster, sender, implementation):
    channels = ["list_a", "list_b", "list_c"]

    with running_listener(postgres_cluster.dsn, channels, implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, "list_b", "to b")
        notify(sender, "list_unheard", "to nobody")
        notify(sender, "list_c", "to c")
        notify(sender, "list_a", "to a")
        items = collect(reader, 3)
        assert_nothing_more(reader)

    assert [(item.channel, item.payload) for item in items] == [
        ("list_b", "to b"),
        ("list_c", "to c"),
        ("list_a", "to a"),
    ]


# The start gap.


def test_start_gap_first(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "start_gap", implementation) as (_, reader):
        (first,) = collect(reader, 1)
        listening_pid = wait_until_listening(sender, "start_gap")

    assert first == Gap("start", listening_pid)


def test_start_gap_after_listen(postgres_cluster, sender, implementation):
    # The first notification goes out the moment the gap is read, with no pause in
    # between: it arrives only if LISTEN was active before the gap was sent.
    with running_listener(postgres_cluster.dsn, "after_gap", implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, "after_gap", "right after")
        (item,) = collect(reader, 1)

    assert item == Notification("after_gap", "right after", backend_pid(sender))


def test_start_gap_disabled(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "no_gap", implementation, fire_on_start=False) as (_, reader):
        wait_until_listening(sender, "no_gap")
        notify(sender, "no_gap", "first")
        (item,) = collect(reader, 1)

    assert item == Notification("no_gap", "first", backend_pid(sender))


# Folding: PostgreSQL delivers a notification only once when the same channel and payload
# are sent more than once in one transaction. The listener adds no folding of its own.


def test_folding_within_transaction(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "fold", implementation) as (_, reader):
        wait_for_start(reader)
        with sender.cursor() as cursor:
            cursor.execute(
                "DO $$BEGIN PERFORM pg_notify('fold', 'same'); PERFORM pg_notify('fold', 'same'); "
                "PERFORM pg_notify('fold', 'other'); END$$"
            )
        items = collect(reader, 2)
        assert_nothing_more(reader)

    assert [item.payload for item in items] == ["same", "other"]


def test_folding_not_across_transactions(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "no_fold", implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, "no_fold", "same")
        notify(sender, "no_fold", "same")
        items = collect(reader, 2)
        assert_nothing_more(reader)

    assert [item.payload for item in items] == ["same", "same"]


# Payload size and text, on the UTF8 database of the test cluster.


def test_payload_max_size(postgres_cluster, sender, implementation):
    ascii_payload = "a" * MAX_PAYLOAD_BYTES
    multibyte_payload = "é" * (MAX_PAYLOAD_BYTES // 2) + "a"

    with running_listener(postgres_cluster.dsn, "big", implementation) as (_, reader):
        wait_for_start(reader)
        with sender.cursor() as cursor:
            cursor.execute("SELECT pg_notify('big', repeat('a', %s))", (MAX_PAYLOAD_BYTES,))
        notify(sender, "big", multibyte_payload)
        first, second = collect(reader, 2)

    assert first.payload == ascii_payload
    assert second.payload == multibyte_payload


@pytest.mark.parametrize("expression", ["repeat('a', 8000)", "repeat('é', 4000)"], ids=["ascii", "two_byte"])
def test_payload_too_large_rejected_by_server(sender, expression):
    with sender.cursor() as cursor:
        with pytest.raises(psycopg2.errors.InvalidParameterValue, match="payload string too long"):
            cursor.execute(f"SELECT pg_notify('big', {expression})")


@pytest.mark.parametrize("payload", ["a" * 8000, "é" * 4000], ids=["ascii", "two_byte"])
def test_payload_too_large_rejected_by_notify(postgres_cluster, payload):
    send = getattr(hermes_lite, "notify", None)
    if send is None:
        pytest.skip("hermes_lite.notify, the send helper, is not available")

    with pytest.raises(InvalidConfigurationException, match="8000"):
        send(postgres_cluster.dsn, "big", payload)


def test_payload_unicode_round_trip(postgres_cluster, sender, implementation):
    with running_listener(postgres_cluster.dsn, "unicode", implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, "unicode", "ü€😀")
        (item,) = collect(reader, 1)

    assert item.payload == "ü€😀"


# Channel names: LISTEN quotes them as identifiers, so they keep their case and nothing in
# them is executed.

TRICKY_CHANNELS = ["MixedCase", "a.b", "x:y", 'q"q', "c; DROP TABLE t;--"]


def test_channel_names_exact(postgres_cluster, sender, implementation):
    with sender.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t ()")
    try:
        with running_listener(postgres_cluster.dsn, TRICKY_CHANNELS, implementation) as (_, reader):
            wait_for_start(reader)
            notify(sender, "mixedcase", "folded")
            for channel in TRICKY_CHANNELS:
                notify(sender, channel, channel)
            items = collect(reader, len(TRICKY_CHANNELS))
            assert_nothing_more(reader)

        with sender.cursor() as cursor:
            cursor.execute("SELECT to_regclass('t')")
            table = cursor.fetchone()[0]
    finally:
        with sender.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS t")

    assert [(item.channel, item.payload) for item in items] == [(channel, channel) for channel in TRICKY_CHANNELS]
    assert table == "t"


@pytest.mark.parametrize("channel", ["x" * 64, "é" * 32], ids=["ascii", "two_byte"])
def test_channel_64_bytes_rejected(postgres_cluster, implementation, channel):
    with pytest.raises(InvalidConfigurationException, match="64 bytes"):
        PostgresNotificationListener(postgres_cluster.dsn, channel, implementation=implementation)


@pytest.mark.parametrize("channel", ["x" * 63, "é" * 31 + "x"], ids=["ascii", "two_byte"])
def test_channel_63_bytes_works(postgres_cluster, sender, implementation, channel):
    with running_listener(postgres_cluster.dsn, channel, implementation) as (_, reader):
        wait_for_start(reader)
        notify(sender, channel, "long name")
        (item,) = collect(reader, 1)

    assert item.channel == channel


# Volume and backpressure.


def test_bulk_single_transaction(postgres_cluster, sender, implementation):
    count = 100_000

    with running_listener(postgres_cluster.dsn, "bulk", implementation) as (_, reader):
        wait_for_start(reader)
        notify_series(sender, "bulk", 1, count)
        items = collect(reader, count)

    assert [item.payload for item in items] == [str(number) for number in range(1, count + 1)]


def test_backpressure_nothing_lost(postgres_cluster, sender, implementation):
    # The test does not read while 200,000 notifications are sent: the pipe fills up, the
    # listener stops reading its socket and the rest waits in the server's queue.
    count = 200_000
    per_transaction = 10_000

    with running_listener(postgres_cluster.dsn, "backlog", implementation) as (_, reader):
        wait_until_listening(sender, "backlog")
        for first in range(1, count + 1, per_transaction):
            notify_series(sender, "backlog", first, first + per_transaction - 1)
        time.sleep(1.0)

        items = collect(reader, count + 1, deadline=60)

    assert items[0] == Gap("start", items[0].pid)
    assert [item.payload for item in items[1:]] == [str(number) for number in range(1, count + 1)]


# A hermes-style multiprocessing.Queue instead of the notification pipe.


def test_queue_receives_items(postgres_cluster, sender, implementation):
    items_queue = multiprocessing.Queue()
    listener = PostgresNotificationListener(
        postgres_cluster.dsn, "queued", notif_queue=items_queue, implementation=implementation
    )
    listener.start()
    try:
        gap = items_queue.get(timeout=DEADLINE)
        notify(sender, "queued", "one")
        notify(sender, "queued", "two")
        first = items_queue.get(timeout=DEADLINE)
        second = items_queue.get(timeout=DEADLINE)
    finally:
        listener.stop()
        items_queue.close()

    sender_pid = backend_pid(sender)
    assert gap == Gap("start", gap.pid)
    assert first == Notification("queued", "one", sender_pid)
    assert second == Notification("queued", "two", sender_pid)


# Database encodings other than UTF8.


def test_encoding_latin1(postgres_cluster, encoded_databases, implementation):
    dsn = encoded_databases["LATIN1"]
    connection = postgres_cluster.connect("listener_latin1")
    try:
        with running_listener(dsn, "menu_é", implementation) as (_, reader):
            wait_for_start(reader)
            notify(connection, "menu_é", "café")
            (item,) = collect(reader, 1)
        sender_pid = backend_pid(connection)
    finally:
        connection.close()

    assert item == Notification("menu_é", "café", sender_pid)


def test_encoding_sql_ascii_invalid_utf8(postgres_cluster, encoded_databases, implementation):
    # A SQL_ASCII server stores bytes unchecked. Bytes that are not UTF-8 arrive as lone
    # surrogates, so that encoding with surrogateescape gives them back.
    dsn = encoded_databases["SQL_ASCII"]
    connection = postgres_cluster.connect("listener_sql_ascii")
    try:
        with running_listener(dsn, "raw", implementation) as (listener, reader):
            wait_for_start(reader)
            with connection.cursor() as cursor:
                cursor.execute(r"SELECT pg_notify('raw', convert_from('\xff41'::bytea, 'SQL_ASCII'))")
            notify(connection, "raw", "after")
            items = collect(reader, 2)
            still_running = listener.is_alive()
    finally:
        connection.close()

    assert items[0].payload.encode("utf-8", "surrogateescape") == b"\xffA"
    assert items[1].payload == "after"
    assert still_running


# Reconnection.


def test_reconnect_gap_before_notifications(postgres_cluster, sender, implementation):
    # A thread sends numbered notifications every 20 ms while the listener reconnects.
    # last_committed is the number whose transaction has committed most recently.
    stop_sending = threading.Event()
    last_committed = -1

    def send_continuously(connection):
        nonlocal last_committed
        number = 0
        while not stop_sending.is_set():
            notify(connection, "reconnect", str(number))
            last_committed = number
            number += 1
            time.sleep(0.02)

    sending_connection = postgres_cluster.connect()
    try:
        with running_listener(postgres_cluster.dsn, "reconnect", implementation) as (_, reader):
            old_pid = wait_for_start(reader).pid

            # Waiting for the old backend to exit means that every notification sent from
            # here on can only reach the new connection.
            with sender.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s, %s)", (old_pid, int(DEADLINE * 1000)))
                terminated = cursor.fetchone()[0]

            sending = threading.Thread(target=send_continuously, args=(sending_connection,))
            sending.start()
            try:
                items = collect_until(reader, lambda items: any(item.is_gap for item in items))
                committed_at_gap = last_committed
                items += collect_until(reader, lambda later: sum(not item.is_gap for item in items + later) >= 5)
            finally:
                stop_sending.set()
                sending.join()
    finally:
        sending_connection.close()

    gap = items[0]
    payloads = [int(item.payload) for item in items[1:]]
    assert terminated
    assert gap == Gap("reconnect", gap.pid)
    assert gap.pid != old_pid
    assert all(not item.is_gap for item in items[1:])
    assert payloads == list(range(payloads[0], payloads[0] + len(payloads)))
    # The number after committed_at_gap may have committed before LISTEN was active. Every
    # later one was sent after the gap had arrived, so it must arrive too.
    assert payloads[0] <= committed_at_gap + 2


# The module flag that chooses the default implementation.


def default_implementation(**environment):
    env = {key: value for key, value in os.environ.items() if key != "HERMES_LITE_PURE"}
    env.update(environment)
    completed = subprocess.run(
        [sys.executable, "-c", "import hermes_lite.listeners as l; print(l.IMPLEMENTATION)"],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout.strip()


def test_module_flag_pure():
    assert default_implementation(HERMES_LITE_PURE="1") == "python"


@pytest.mark.skipif(not C_EXTENSION_AVAILABLE, reason="the C listener extension is not built")
def test_module_flag_default_c():
    assert default_implementation() == "c"


@pytest.mark.timeout(60)
def test_pg_environment_fills_missing_dsn_values(postgres_cluster, implementation, monkeypatch):
    # libpq reads PGHOST and PGPORT for keywords the DSN leaves out, in both implementations.
    monkeypatch.setenv("PGHOST", postgres_cluster.socket_dir)
    monkeypatch.setenv("PGPORT", str(postgres_cluster.port))

    with running_listener("dbname=postgres user=postgres", "env_ch", implementation) as (_listener, reader):
        [gap] = collect(reader, 1)

    assert gap.is_gap
    assert gap.reason == "start"
