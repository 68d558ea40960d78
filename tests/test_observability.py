"""Counters, event hooks and the periodic log line of a running Client."""

import logging
import os
import signal
import threading
import time

import pytest

from hermes_lite import Client, Component, PostgresNotificationListener

CHANNEL = "observed_ch"


class Idle(Component):
    def execute(self, batch):
        pass


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def running_client(postgres_cluster, implementation, caplog):
    caplog.set_level(logging.INFO, logger="hermes_lite")
    client = Client(postgres_cluster.dsn)
    client.stats_interval = 0.5
    client.queue_usage_warning = -1.0  # any sample warns, so that the warning is observable
    client.add_listener(PostgresNotificationListener(postgres_cluster.dsn, CHANNEL, implementation=implementation))
    client.add_processor(Idle())
    events = []
    client.add_event_hook(events.append)
    supervisor = threading.Thread(target=client.start)
    supervisor.start()
    yield client, events
    client.stop()
    supervisor.join(60)


def kinds(events):
    return [event.kind for event in events]


@pytest.mark.timeout(90)
def test_counters_and_events_follow_reconnect(postgres_cluster, running_client, caplog):
    client, events = running_client
    assert wait_for(lambda: "connected" in kinds(events))

    postgres_cluster.execute("SELECT count(pg_notify(%s, i::text)) FROM generate_series(1, 500) AS i", (CHANNEL,))
    assert wait_for(lambda: client.stats()["delivered"] == 500)
    postgres_cluster.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s", (f'LISTEN "{CHANNEL}"',)
    )
    assert wait_for(lambda: "reconnected" in kinds(events))
    assert wait_for(lambda: client.stats()["gaps"] == 2)
    assert wait_for(lambda: any("delivered 500 notifications" in message for message in caplog.messages))

    stats = client.stats()
    assert kinds(events)[:3] == ["connected", "disconnected", "reconnected"]
    assert stats["reconnects"] == 1
    assert stats["batches"] >= 2
    assert stats["last_notification_at"] <= time.time()
    assert 0.0 <= stats["queue_usage"] < 1.0
    assert any("notification queue is" in message for message in caplog.messages)


@pytest.mark.timeout(90)
def test_restart_event_and_counter(running_client):
    client, events = running_client
    assert wait_for(lambda: "connected" in kinds(events))

    os.kill(client.processor.ident, signal.SIGKILL)

    assert wait_for(lambda: "component_restarted" in kinds(events))
    assert client.stats()["restarts"] == 1


@pytest.mark.timeout(60)
def test_failed_attempts_are_events(tmp_path, caplog):
    dsn = f"host={tmp_path} port=1 user=nobody"
    client = Client(dsn)
    events = []
    client.add_event_hook(events.append)
    listener = PostgresNotificationListener(dsn, CHANNEL, max_reconnect_attempts=2)
    listener.initial_reconnect_delay = 0.02
    client.add_listener(listener)
    client.add_processor(Idle())
    # The role check cannot reach the server either, so the components are started by hand.
    listener.start()
    try:
        listener.join(30)
        client._collect_events()
    finally:
        listener.stop()

    assert kinds(events) == ["connection_attempt_failed"] * 3
    assert client.stats()["connection_attempts_failed"] == 3


def test_hook_that_raises_is_logged(caplog):
    client = Client("host=/tmp")

    def broken(event):
        raise RuntimeError("hook bug")

    client.add_event_hook(broken)
    from hermes_lite.components import ComponentEvent

    client._dispatch(ComponentEvent("listener", 1, "connected"))

    assert "an event hook raised on connected" in caplog.text
