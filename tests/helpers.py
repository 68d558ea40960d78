"""Helpers for tests that run a listener in its own process against a test cluster."""

import contextlib
import time
from typing import Callable, Iterator, List, Sequence, Tuple, Union

from hermes_lite.listeners import PostgresNotificationListener
from hermes_lite.notifications import Item
from hermes_lite.pipes import NotificationReader, notification_pipe

DEADLINE = 30.0
"""Seconds a test waits for items that should arrive, so that a lost one fails instead of hanging."""


@contextlib.contextmanager
def running_listener(
    dsn: str, channels: Union[str, Sequence[str]], implementation: str, **options: object
) -> Iterator[Tuple[PostgresNotificationListener, NotificationReader]]:
    """Start a listener process wired to a fresh notification pipe; yield it and the pipe's reader.

    ``options`` go to PostgresNotificationListener. The listener is stopped on exit, also
    when the test fails.
    """
    reader, writer = notification_pipe()
    listener = PostgresNotificationListener(
        dsn, channels, notif_queue=writer, implementation=implementation, **options
    )
    listener.start()
    try:
        yield listener, reader
    finally:
        listener.stop()
        reader.close()
        writer.close()


def collect(reader: NotificationReader, count: int, deadline: float = DEADLINE) -> List[Item]:
    """Read exactly ``count`` items from ``reader``, waiting up to ``deadline`` seconds in all.

    Raises AssertionError with what did arrive when fewer than ``count`` arrive in time, or
    when a batch brings more than ``count``.
    """
    items: List[Item] = []
    end = time.monotonic() + deadline

    while len(items) < count:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"expected {count} items within {deadline} s, got {len(items)}; last ones: {items[-5:]!r}"
            )
        items.extend(reader.read_batch(timeout=remaining))

    if len(items) > count:
        raise AssertionError(f"expected {count} items, got {len(items)}; extra ones: {items[count:count + 5]!r}")
    return items


def collect_until(
    reader: NotificationReader, done: Callable[[List[Item]], bool], deadline: float = DEADLINE
) -> List[Item]:
    """Read batches from ``reader`` until ``done(items)`` is true; return every item read.

    Raises AssertionError with the last items read when ``done`` is still false after
    ``deadline`` seconds.
    """
    items: List[Item] = []
    end = time.monotonic() + deadline

    while not done(items):
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {deadline} s; read {len(items)} items, last ones: {items[-5:]!r}")
        items.extend(reader.read_batch(timeout=remaining))
    return items


def assert_nothing_more(reader: NotificationReader, wait: float = 0.5) -> None:
    """Raise AssertionError if an item arrives within ``wait`` seconds."""
    extra = reader.read_batch(timeout=wait)
    if extra:
        raise AssertionError(f"expected no further items, got {extra[:5]!r}")


def notify(connection, channel: str, payload: str) -> None:
    """Send one notification from ``connection`` with pg_notify(), in a transaction of its own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def notify_series(connection, channel: str, first: int, last: int) -> None:
    """Send the payloads str(first) to str(last) on ``channel``, all in one transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_notify(%s, i::text) FROM generate_series(%s, %s) AS i", (channel, first, last)
        )


def backend_pid(connection) -> int:
    """Return the pid of the server backend of ``connection``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def wait_until_listening(connection, channel: str, deadline: float = DEADLINE) -> int:
    """Wait until a session has run LISTEN on ``channel`` and is idle; return its backend pid.

    The listener runs LISTEN in autocommit mode, so an idle session whose last statement was
    that LISTEN receives every notification committed from then on. Raises AssertionError
    when no such session appears within ``deadline`` seconds.
    """
    quoted = '"' + channel.replace('"', '""') + '"'
    end = time.monotonic() + deadline

    while time.monotonic() < end:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE state = 'idle' AND query = %s",
                (f"LISTEN {quoted}",),
            )
            row = cursor.fetchone()
        if row is not None:
            return row[0]
        time.sleep(0.05)

    raise AssertionError(f"no session was listening on {channel!r} within {deadline} s")
