"""Reconnection schedule, health-check settings, attempt limits and role-check backoff."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from hermes_lite import Client, Component, PostgresNotificationListener
from hermes_lite.components import EXIT_STRATEGY_STOP
from hermes_lite.dsn import LISTENER_CONNECTION_DEFAULTS, parse_dsn, to_conninfo
from hermes_lite.exceptions import InvalidConfigurationException, ListenerConnectionError
from hermes_lite.pipes import notification_pipe
from hermes_lite.repeats import RepeatLimiter

from helpers import collect, running_listener


def test_repeat_limiter_lets_burst_through():
    limiter = RepeatLimiter(burst=3, interval=60)

    results = [limiter.check("lost", now=0.0) for _ in range(5)]

    assert results == [0, 0, 0, None, None]


def test_repeat_limiter_reports_dropped_count():
    limiter = RepeatLimiter(burst=1, interval=60)
    limiter.check("lost", now=0.0)
    limiter.check("lost", now=1.0)
    limiter.check("lost", now=2.0)

    assert limiter.check("lost", now=61.0) == 2


def test_repeat_limiter_reset_forgets():
    limiter = RepeatLimiter(burst=1, interval=60)
    limiter.check("lost", now=0.0)
    limiter.reset()

    assert limiter.check("lost", now=1.0) == 0


def test_repeat_limiter_counts_messages_apart():
    limiter = RepeatLimiter(burst=1, interval=60)
    limiter.check("a", now=0.0)

    assert limiter.check("b", now=0.0) == 0


@pytest.mark.parametrize(
    "option, value",
    [
        ("health_check_interval", 0),
        ("health_check_interval", "5"),
        ("health_check_timeout", -1),
        ("reconnect_backoff_limit", None),
        ("max_reconnect_attempts", 0),
        ("max_reconnect_attempts", True),
        ("max_reconnect_attempts", 2.5),
    ],
)
def test_listener_rejects_invalid_setting(option, value):
    with pytest.raises(InvalidConfigurationException, match=option):
        PostgresNotificationListener("host=/tmp", "ch", **{option: value})


def test_reconnect_delays_grow_with_jitter_to_limit():
    listener = PostgresNotificationListener("host=/tmp", "ch", reconnect_backoff_limit=32)
    error = ListenerConnectionError("connection lost")
    bounds = []

    for attempt in range(1, 12):
        listener._failed_attempts = attempt
        delays = [listener.next_backoff(error) for _ in range(50)]
        bound = min(32, listener.initial_reconnect_delay * 2 ** (attempt - 1))
        assert min(delays) >= bound / 2, attempt
        assert max(delays) <= bound, attempt
        bounds.append(bound)

    assert bounds[0] < 1
    assert bounds[-1] == 32


def test_other_errors_use_component_backoff():
    listener = PostgresNotificationListener("host=/tmp", "ch", backoff_limit=2)
    listener.initial_backoff = 0.5

    delays = [listener.next_backoff(ValueError("bug")) for _ in range(4)]

    assert delays == [0.5, 1.0, 2, 2]


def test_listener_connection_defaults_keep_dsn_values():
    keywords = parse_dsn(to_conninfo("host=db keepalives_idle=99", LISTENER_CONNECTION_DEFAULTS))

    assert keywords["keepalives_idle"] == "99"
    assert keywords["keepalives"] == "1"
    assert keywords["tcp_user_timeout"] == LISTENER_CONNECTION_DEFAULTS["tcp_user_timeout"]
    assert keywords["connect_timeout"] == LISTENER_CONNECTION_DEFAULTS["connect_timeout"]


@pytest.mark.timeout(60)
def test_listener_gives_up_after_max_attempts(tmp_path):
    errors = multiprocessing.Queue()
    _reader, writer = notification_pipe()
    listener = PostgresNotificationListener(
        f"host={tmp_path} port=1 user=nobody", "ch", writer, error_queue=errors, max_reconnect_attempts=2
    )
    listener.initial_reconnect_delay = 0.02
    listener.start()
    try:
        listener.join(30)
        reports = [errors.get(timeout=5) for _ in range(3)]
    finally:
        listener.stop(5)

    assert listener.exitcode == EXIT_STRATEGY_STOP
    assert [report.fatal for report in reports] == [False, False, True]
    assert "giving up after 2 failed connection attempts" in reports[-1].message


class Idle(Component):
    def execute(self, batch):
        pass


@pytest.mark.timeout(60)
def test_client_backs_off_unreachable_role_checks(tmp_path):
    dsn = f"host={tmp_path} port=1 user=nobody"
    client = Client(dsn)
    client.add_listener(PostgresNotificationListener(dsn, "ch"))
    client.add_processor(Idle())
    checks = []
    real_check = client.master_pg_conn.is_server_master

    def counted_check():
        checks.append(time.monotonic())
        return real_check()

    client.master_pg_conn.is_server_master = counted_check
    supervisor = threading.Thread(target=client.start)
    supervisor.start()
    try:
        time.sleep(4)
    finally:
        client.stop()
        supervisor.join(30)

    # Waits of 0.5, 1 and 2 s fit in 4 s: four checks, where a fixed short interval would make many.
    gaps = [later - earlier for earlier, later in zip(checks, checks[1:])]
    assert 3 <= len(checks) <= 5
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))
    assert client.listener.ident is None


@pytest.mark.timeout(90)
def test_unresponsive_backend_is_terminated(postgres_cluster, implementation):
    options = {"health_check_interval": 0.5, "health_check_timeout": 0.5}
    with running_listener(postgres_cluster.dsn, "stale_ch", implementation, **options) as (listener, reader):
        [start] = collect(reader, 1)
        os.kill(start.pid, signal.SIGSTOP)
        try:
            [gap] = collect(reader, 1)
        finally:
            os.kill(start.pid, signal.SIGCONT)

        # The stopped backend received pg_terminate_backend's SIGTERM while stopped and acts on
        # it once continued.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and backend_exists(postgres_cluster, start.pid):
            time.sleep(0.05)

        assert gap.reason == "reconnect"
        assert gap.pid != start.pid
        assert not backend_exists(postgres_cluster, start.pid)


def backend_exists(cluster, pid):
    rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    return rows[0][0] > 0
