"""Tests of Client: configuration checks, supervision of real components, stop and role checks.

``Client.start()`` blocks, so every test that runs a client does it in a thread. Signal
handlers are then not installed, which is what these tests want: the test process keeps its own.
"""

import glob
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time

import pytest

from hermes_lite.client import DEFAULT_FAILOVER_FILES, Client
from hermes_lite.components import EXIT_STRATEGY_STOP, Component
from hermes_lite.exceptions import InvalidConfigurationException
from hermes_lite.listeners import PostgresNotificationListener
from hermes_lite.strategies import AbstractErrorStrategy, CommonErrorStrategy
from hermes_lite.watchers import FileEvent

CHANNEL = "client_events"

UNUSED_DSN = "host=/nonexistent dbname=app user=app"
"""A DSN for clients that never connect."""

TIMEOUT = 30.0
"""Seconds to wait for something a child process does before the test fails instead of hanging."""


class Inbox:
    """A one-way pipe on which child processes send values to the test.

    Unlike a multiprocessing.Queue it has no lock shared between processes, so a processor
    killed with SIGKILL in the middle of a put cannot block the processors after it. Each value
    is sent with one write() shorter than PIPE_BUF, so values of several writers never interleave.
    """

    def __init__(self):
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)

    def put(self, value):
        self._writer.send(value)

    def get(self, timeout):
        """Return the next value; raise queue.Empty after ``timeout`` seconds without one."""
        if not self._reader.poll(timeout):
            raise queue.Empty
        return self._reader.recv()

    def close(self):
        self._reader.close()
        self._writer.close()


class ForwardingProcessor(Component):
    """Puts ``(pid, item)`` on ``received`` for every notification and gap, in the hermes shape."""

    def __init__(self, received):
        super().__init__()
        self.received = received

    def execute(self, pre_exec_value):
        for item in pre_exec_value:
            self.received.put((os.getpid(), item))


class FailOnPayloadProcessor(ForwardingProcessor):
    """Forwards like ForwardingProcessor, but raises ValueError on the payload "fail"."""

    def execute(self, pre_exec_value):
        for item in pre_exec_value:
            if not item.is_gap and item.payload == "fail":
                raise ValueError("processor rejected the payload 'fail'")
            self.received.put((os.getpid(), item))


class ExitingProcessor(ForwardingProcessor):
    """Forwards like ForwardingProcessor, but ends its process with os._exit(7) on the payload "exit"."""

    def execute(self, pre_exec_value):
        for item in pre_exec_value:
            if not item.is_gap and item.payload == "exit":
                os._exit(7)
            self.received.put((os.getpid(), item))


class StubbornProcessor(ForwardingProcessor):
    """Forwards the first batch, then blocks in time.sleep, which a SIGTERM does not end."""

    def execute(self, pre_exec_value):
        super().execute(pre_exec_value)
        time.sleep(1000)


class RejectingStrategy(AbstractErrorStrategy):
    """Stops the component on any error."""

    def handle_exception(self, error):
        return True, "nope"


class RejectedProcessor(Component):
    """Raises on its first batch; paired with RejectingStrategy, that stops it for good."""

    def __init__(self):
        super().__init__(error_strategy=RejectingStrategy())

    def execute(self, pre_exec_value):
        raise RuntimeError("cannot process")


def wait_for(condition, timeout=TIMEOUT, interval=0.02):
    """Poll ``condition`` until it returns true; return False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def receive(received, predicate, timeout=TIMEOUT):
    """Return the first ``(pid, item)`` from ``received`` whose item matches ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        pid, item = received.get(max(0.0, deadline - time.monotonic()))
        if predicate(item):
            return pid, item


def is_notification(payload):
    return lambda item: not item.is_gap and item.channel == CHANNEL and item.payload == payload


def is_start_gap(item):
    return item.is_gap and item.reason == "start"


def notify(cluster, payload):
    cluster.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def process_gone(pid):
    """Return whether ``pid`` has exited and been reaped; signal 0 still reaches a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def child_pids():
    """Return the process ids of the children of this process, from /proc."""
    pids = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as children:
            pids.update(int(pid) for pid in children.read().split())
    return pids


@pytest.fixture(autouse=True)
def no_child_left():
    yield
    assert multiprocessing.active_children() == []


@pytest.fixture
def received():
    received = Inbox()
    yield received
    received.close()


@pytest.fixture
def run_client():
    """Start a client's supervisor in a thread; stop every client started this way after the test."""
    runs = []

    def run(client):
        thread = threading.Thread(target=client.start, name="client-supervisor", daemon=True)
        thread.start()
        runs.append((client, thread))
        return thread

    yield run

    for client, thread in runs:
        client.stop()
        thread.join(TIMEOUT)


def make_client(cluster, processor, **kwargs):
    client = Client(cluster.dsn, **kwargs)
    client.add_listener(PostgresNotificationListener(cluster.dsn, CHANNEL))
    client.add_processor(processor)
    return client


def wait_until_listening(client, received):
    """Wait until both components run and the listener's LISTEN is active; return the processor's pid."""
    assert wait_for(client.listener.is_alive)
    assert wait_for(client.processor.is_alive)
    pid, _ = receive(received, is_start_gap)
    return pid


# Configuration.


@pytest.mark.parametrize("component", ["listener", multiprocessing.Process(), None], ids=["str", "process", "none"])
def test_add_listener_rejects_non_component(component):
    client = Client(UNUSED_DSN)

    with pytest.raises(InvalidConfigurationException, match="invalid listener"):
        client.add_listener(component)


@pytest.mark.parametrize("component", ["processor", multiprocessing.Process(), None], ids=["str", "process", "none"])
def test_add_processor_rejects_non_component(component):
    client = Client(UNUSED_DSN)

    with pytest.raises(InvalidConfigurationException, match="invalid processor"):
        client.add_processor(component)


def test_start_without_listener_raises(received):
    client = Client(UNUSED_DSN)
    client.add_processor(ForwardingProcessor(received))

    with pytest.raises(InvalidConfigurationException, match="no listener"):
        client.start()


def test_start_without_processor_raises():
    client = Client(UNUSED_DSN)
    client.add_listener(PostgresNotificationListener(UNUSED_DSN, CHANNEL))

    with pytest.raises(InvalidConfigurationException, match="no processor"):
        client.start()


def test_add_processor_wires_defaults(received):
    client = Client(UNUSED_DSN)
    processor = ForwardingProcessor(received)

    client.add_processor(processor)

    assert processor.notification_pipe is not None
    assert processor.error_queue is not None
    assert isinstance(processor.error_strategy, CommonErrorStrategy)


def test_add_listener_wires_defaults(received):
    client = Client(UNUSED_DSN)
    listener = PostgresNotificationListener(UNUSED_DSN, CHANNEL)
    processor = ForwardingProcessor(received)

    client.add_listener(listener)
    client.add_processor(processor)

    assert listener.notif_queue is not None
    assert listener.error_queue is processor.error_queue
    assert isinstance(listener.error_strategy, CommonErrorStrategy)


def test_watch_path_missing_raises(tmp_path):
    missing = tmp_path / "missing"

    with pytest.raises(InvalidConfigurationException, match="does not exist"):
        Client(UNUSED_DSN, watch_path=str(missing))


def test_watch_path_file_raises(tmp_path):
    regular_file = tmp_path / "file"
    regular_file.write_text("")

    with pytest.raises(InvalidConfigurationException, match="is not a directory"):
        Client(UNUSED_DSN, watch_path=str(regular_file))


def test_failover_files_string_raises(tmp_path):
    with pytest.raises(InvalidConfigurationException, match="failover_files"):
        Client(UNUSED_DSN, watch_path=str(tmp_path), failover_files="standby.signal")


def test_failover_files_custom(tmp_path):
    client = Client(UNUSED_DSN, watch_path=str(tmp_path), failover_files=["trigger"])

    assert client.failover_files == ["trigger"]


@pytest.mark.parametrize("name", ["standby.signal", "recovery.signal", "recovery.conf", "recovery.done"])
def test_failover_files_default(name):
    client = Client(UNUSED_DSN)

    assert name in client.failover_files
    assert name in DEFAULT_FAILOVER_FILES


def test_invalid_dsn_raises():
    with pytest.raises(InvalidConfigurationException):
        Client("host=/tmp no_such_option=1")


def test_stop_before_start_returns():
    client = Client(UNUSED_DSN)

    client.stop()


# Supervision.


@pytest.mark.timeout(60)
def test_client_start_while_running_raises(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ForwardingProcessor(received))
    run_client(client)
    wait_until_listening(client, received)

    with pytest.raises(InvalidConfigurationException, match="already running"):
        client.start()


@pytest.mark.timeout(60)
def test_client_delivers_notifications(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ForwardingProcessor(received))
    run_client(client)
    processor_pid = wait_until_listening(client, received)

    for payload in ("one", "two", "three"):
        notify(postgres_cluster, payload)

    for payload in ("one", "two", "three"):
        pid, item = receive(received, lambda item: not item.is_gap)
        assert item.channel == CHANNEL
        assert item.payload == payload
        assert pid == processor_pid


@pytest.mark.timeout(60)
def test_client_hermes_queue_wiring(postgres_cluster, received, run_client):
    # hermes users passed one multiprocessing.Queue to both components.
    items = multiprocessing.Queue()
    processor = ForwardingProcessor(received)
    processor.notification_pipe = items
    client = Client(postgres_cluster.dsn)
    client.add_listener(PostgresNotificationListener(postgres_cluster.dsn, CHANNEL, notif_queue=items))
    client.add_processor(processor)
    run_client(client)
    wait_until_listening(client, received)

    notify(postgres_cluster, "through a queue")
    _, item = receive(received, lambda item: not item.is_gap)

    assert item.payload == "through a queue"


@pytest.mark.timeout(60)
def test_client_stop_leaves_no_process(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ForwardingProcessor(received))
    thread = run_client(client)
    wait_until_listening(client, received)
    pids = [client.listener.ident, client.processor.ident]

    client.stop()
    thread.join(TIMEOUT)

    assert not thread.is_alive()
    for component in (client.listener, client.processor):
        assert component.is_alive() is False
        assert component.exitcode == 0
    assert multiprocessing.active_children() == []
    for pid in pids:
        assert process_gone(pid)
        assert pid not in child_pids()


@pytest.mark.timeout(60)
def test_client_stop_kills_stubborn_processor(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, StubbornProcessor(received))
    client.stop_timeout = 1
    thread = run_client(client)
    processor_pid = wait_until_listening(client, received)

    client.stop()
    thread.join(TIMEOUT)

    assert not thread.is_alive()
    assert client.processor.exitcode == -signal.SIGKILL
    assert client.listener.exitcode == 0
    assert process_gone(processor_pid)


@pytest.mark.timeout(60)
def test_client_restarts_killed_processor(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ForwardingProcessor(received))
    run_client(client)
    first_pid = wait_until_listening(client, received)

    os.kill(first_pid, signal.SIGKILL)
    # Sent while no processor may be running: it waits in the pipe for the restarted one.
    notify(postgres_cluster, "after restart")
    pid, _ = receive(received, is_notification("after restart"))

    assert pid != first_pid
    assert pid == client.processor.ident


@pytest.mark.timeout(60)
def test_client_restarts_exiting_processor(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ExitingProcessor(received))
    run_client(client)
    first_pid = wait_until_listening(client, received)

    notify(postgres_cluster, "exit")
    pid, item = received.get(TIMEOUT)
    notify(postgres_cluster, "after exit")
    later_pid, _ = receive(received, is_notification("after exit"))

    assert pid != first_pid
    assert item.is_gap
    assert item.reason == "restart"
    assert later_pid == pid


@pytest.mark.timeout(60)
def test_restarted_processor_starts_with_gap(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, ForwardingProcessor(received))
    run_client(client)
    first_pid = wait_until_listening(client, received)

    os.kill(first_pid, signal.SIGKILL)
    pid, item = received.get(TIMEOUT)

    assert pid != first_pid
    assert item.is_gap
    assert item.reason == "restart"


@pytest.mark.timeout(60)
def test_client_retries_raising_processor(postgres_cluster, received, run_client):
    client = make_client(postgres_cluster, FailOnPayloadProcessor(received))
    run_client(client)
    first_pid = wait_until_listening(client, received)

    notify(postgres_cluster, "fail")
    assert wait_for(lambda: client.errors)
    notify(postgres_cluster, "after failure")
    pid, _ = receive(received, is_notification("after failure"))

    assert pid == first_pid
    assert client.processor.ident == first_pid
    assert client.errors[0].fatal is False
    assert "fail" in client.errors[0].message
    assert client.fatal_error is None


@pytest.mark.timeout(60)
def test_client_stops_on_fatal_error(postgres_cluster, run_client):
    client = Client(postgres_cluster.dsn)
    client.add_listener(PostgresNotificationListener(postgres_cluster.dsn, CHANNEL))
    client.add_processor(RejectedProcessor())
    thread = run_client(client)

    # The listener's start gap is the processor's first batch, so it fails at once.
    thread.join(TIMEOUT)

    assert not thread.is_alive()
    assert client.fatal_error is not None
    assert client.fatal_error.fatal is True
    assert "nope" in client.fatal_error.message
    assert client.fatal_error in client.errors
    assert client.processor.exitcode == EXIT_STRATEGY_STOP
    assert client.listener.is_alive() is False


# Role checks.


@pytest.mark.timeout(60)
def test_role_check_starts_on_primary(postgres_cluster, received):
    client = make_client(postgres_cluster, ForwardingProcessor(received))

    client.execute_role_based_procedure()
    try:
        assert client.listener.is_alive() is True
        assert client.processor.is_alive() is True
    finally:
        client.stop()

    assert client.listener.is_alive() is False
    assert client.processor.is_alive() is False


@pytest.mark.timeout(60)
def test_event_ignored_for_other_file(postgres_cluster, received):
    client = make_client(postgres_cluster, ForwardingProcessor(received))

    client.on_any_event(FileEvent("created", os.path.join("/data", "postgresql.auto.conf")))

    assert client.listener.ident is None
    assert client.processor.ident is None


@pytest.mark.timeout(60)
def test_event_for_failover_file_checks_role(postgres_cluster, received):
    client = make_client(postgres_cluster, ForwardingProcessor(received))

    client.on_any_event(FileEvent("deleted", os.path.join("/data", "standby.signal")))
    try:
        assert client.listener.is_alive() is True
        assert client.processor.is_alive() is True
    finally:
        client.stop()


@pytest.mark.timeout(60)
def test_event_moved_to_failover_file(postgres_cluster, received):
    client = make_client(postgres_cluster, ForwardingProcessor(received))

    client.on_any_event(FileEvent("moved", "/data/recovery.tmp", dest_path="/data/recovery.done"))
    try:
        assert client.processor.is_alive() is True
    finally:
        client.stop()


@pytest.mark.timeout(180)
def test_role_check_on_standby_then_promote(fresh_postgres_cluster, received):
    standby = fresh_postgres_cluster.make_standby()
    client = make_client(standby, ForwardingProcessor(received), watch_path=standby.data_dir)

    client.execute_role_based_procedure()
    assert client.listener.ident is None
    assert client.processor.ident is None

    standby.promote()
    client.on_any_event(FileEvent("deleted", os.path.join(standby.data_dir, "standby.signal")))
    try:
        assert client.listener.is_alive() is True
        assert client.processor.is_alive() is True
    finally:
        client.stop()


@pytest.mark.timeout(180)
def test_running_client_checks_role_periodically(fresh_postgres_cluster, received, run_client):
    standby = fresh_postgres_cluster.make_standby()
    client = make_client(standby, ForwardingProcessor(received))
    client.role_check_interval = 0.2
    run_client(client)

    standby.promote()
    processor_pid = wait_until_listening(client, received)
    notify(standby, "after promotion")
    pid, _ = receive(received, is_notification("after promotion"))

    assert pid == processor_pid


@pytest.mark.timeout(180)
@pytest.mark.parametrize("use_watchdog", [True, False], ids=["watchdog", "polling"])
def test_running_client_follows_promotion(fresh_postgres_cluster, received, run_client, caplog, use_watchdog):
    caplog.set_level(logging.INFO, logger="hermes_lite")
    standby = fresh_postgres_cluster.make_standby()
    client = make_client(standby, ForwardingProcessor(received), watch_path=standby.data_dir)
    client.use_watchdog = use_watchdog
    # Only the file watcher may trigger the second role check.
    client.role_check_interval = 3600
    run_client(client)

    # The first role check runs after the file watcher has started.
    assert wait_for(lambda: any("is a standby" in message for message in caplog.messages))
    assert client.listener.ident is None
    assert client.processor.ident is None

    standby.promote()
    processor_pid = wait_until_listening(client, received)
    notify(standby, "after promotion")
    pid, _ = receive(received, is_notification("after promotion"))

    assert pid == processor_pid
