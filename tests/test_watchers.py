"""Tests of the failover file watchers: the polling fallback and watchdog, on a temporary directory."""

import os
import queue
import time

import pytest

from hermes_lite.watchers import FileEvent, PollingWatcher, start_observer

TIMEOUT = 10.0
"""Seconds to wait for an event before the test fails instead of hanging."""


def wait_for_event(events, event_type, path, timeout=TIMEOUT):
    """Return the first event of ``event_type`` for ``path``; raise queue.Empty after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if event.event_type == event_type and os.fsdecode(event.src_path) == path:
            return event


@pytest.fixture
def events():
    return queue.Queue()


@pytest.fixture
def polling_watcher(tmp_path, events):
    watcher = PollingWatcher(str(tmp_path), events.put, interval=0.1)
    watcher.start()
    yield watcher
    watcher.stop()
    watcher.join(TIMEOUT)


@pytest.fixture
def watchdog_observer(tmp_path, events):
    pytest.importorskip("watchdog")
    observer = start_observer(str(tmp_path), events.put, use_watchdog=True)
    yield observer
    observer.stop()
    observer.join(TIMEOUT)


def test_polling_reports_created(tmp_path, events, polling_watcher):
    path = str(tmp_path / "standby.signal")

    open(path, "w").close()
    event = wait_for_event(events, "created", path)

    assert event == FileEvent("created", path, False)


def test_polling_reports_modified(tmp_path, events, polling_watcher):
    path = str(tmp_path / "standby.signal")
    open(path, "w").close()
    wait_for_event(events, "created", path)

    with open(path, "a") as signal_file:
        signal_file.write("changed")
    event = wait_for_event(events, "modified", path)

    assert event.is_directory is False


def test_polling_reports_deleted(tmp_path, events, polling_watcher):
    path = str(tmp_path / "standby.signal")
    open(path, "w").close()
    wait_for_event(events, "created", path)

    os.remove(path)
    event = wait_for_event(events, "deleted", path)

    assert event.src_path == path


def test_polling_reports_directory(tmp_path, events, polling_watcher):
    path = str(tmp_path / "pg_wal")

    os.mkdir(path)
    event = wait_for_event(events, "created", path)

    assert event.is_directory is True


def test_polling_ignores_existing_files(tmp_path, events):
    (tmp_path / "PG_VERSION").write_text("15\n")
    watcher = PollingWatcher(str(tmp_path), events.put, interval=0.1)
    watcher.start()

    marker = str(tmp_path / "marker")
    open(marker, "w").close()
    first = events.get(timeout=TIMEOUT)
    watcher.stop()
    watcher.join(TIMEOUT)

    assert first.src_path == marker


def test_polling_survives_callback_error(tmp_path, events):
    def callback(event):
        events.put(event)
        raise RuntimeError("callback failed")

    watcher = PollingWatcher(str(tmp_path), callback, interval=0.1)
    watcher.start()
    first, second = str(tmp_path / "first"), str(tmp_path / "second")

    open(first, "w").close()
    wait_for_event(events, "created", first)
    open(second, "w").close()
    event = wait_for_event(events, "created", second)
    watcher.stop()
    watcher.join(TIMEOUT)

    assert event.src_path == second


def test_polling_stops_promptly(tmp_path, events):
    # An interval far longer than the join deadline: only a stop that wakes the wait passes.
    watcher = PollingWatcher(str(tmp_path), events.put, interval=3600)
    watcher.start()

    watcher.stop()
    watcher.join(TIMEOUT)

    assert not watcher.is_alive()


def test_polling_is_daemon(tmp_path, events):
    watcher = PollingWatcher(str(tmp_path), events.put)

    assert watcher.daemon is True


def test_start_observer_without_watchdog(tmp_path, events):
    watcher = start_observer(str(tmp_path), events.put, use_watchdog=False)
    try:
        assert isinstance(watcher, PollingWatcher)
    finally:
        watcher.stop()
        watcher.join(TIMEOUT)

    assert not watcher.is_alive()


def test_watchdog_reports_created(tmp_path, events, watchdog_observer):
    path = str(tmp_path / "standby.signal")

    open(path, "w").close()
    event = wait_for_event(events, "created", path)

    assert event.is_directory is False


def test_watchdog_reports_deleted(tmp_path, events, watchdog_observer):
    path = str(tmp_path / "standby.signal")
    open(path, "w").close()
    wait_for_event(events, "created", path)

    os.remove(path)
    event = wait_for_event(events, "deleted", path)

    assert os.fsdecode(event.src_path) == path


def test_watchdog_observer_type(tmp_path, events, watchdog_observer):
    assert not isinstance(watchdog_observer, PollingWatcher)


def test_watchdog_observer_stops(tmp_path, events):
    pytest.importorskip("watchdog")
    observer = start_observer(str(tmp_path), events.put, use_watchdog=True)

    observer.stop()
    observer.join(TIMEOUT)

    assert not observer.is_alive()
