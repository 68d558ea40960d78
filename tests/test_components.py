"""Tests of Component: process control, the step loop, backoff and the error strategy's decisions.

The components run in real child processes. They report what happens inside them on a
multiprocessing.Queue, so they are defined at module level, where pickling finds them.
"""

import multiprocessing
import os
import queue
import signal
import time

import pytest

from hermes_lite.components import EXIT_STOPPED, EXIT_STRATEGY_STOP, Component, ComponentError
from hermes_lite.exceptions import InvalidConfigurationException
from hermes_lite.strategies import AbstractErrorStrategy, CommonErrorStrategy

EVENT_TIMEOUT = 10.0
"""Seconds to wait for one event from a child before the test fails instead of hanging."""


class RecordingComponent(Component):
    """Reports each step and its argument, then waits in post_execute until a stop request."""

    def __init__(self, events, **kwargs):
        super().__init__(**kwargs)
        self.events = events

    def set_up(self):
        self.events.put(("set_up", os.getpid()))

    def pre_execute(self):
        self.events.put(("pre_execute", None))
        return "pre-value"

    def execute(self, pre_exec_value):
        self.events.put(("execute", pre_exec_value))
        return "exec-value"

    def post_execute(self, exec_value):
        self.events.put(("post_execute", exec_value))
        while not self.wait(60):
            pass

    def tear_down(self):
        self.events.put(("tear_down", None))


class SleepingComponent(Component):
    """Blocks in time.sleep, which a SIGTERM does not interrupt for good, so stop() must kill it."""

    def __init__(self, events, **kwargs):
        super().__init__(**kwargs)
        self.events = events

    def execute(self, pre_exec_value):
        self.events.put(("execute", os.getpid()))
        time.sleep(1000)


class FailingComponent(Component):
    """Raises in execute, except on the calls listed in ``succeed_on`` (counted from 1)."""

    initial_backoff = 0.05

    def __init__(self, events, succeed_on=(), **kwargs):
        super().__init__(**kwargs)
        self.events = events
        self.succeed_on = tuple(succeed_on)
        self.calls = 0

    def set_up(self):
        self.events.put(("set_up", self.current_backoff, time.monotonic()))

    def execute(self, pre_exec_value):
        self.calls += 1
        if self.calls in self.succeed_on:
            return None
        raise RuntimeError(f"failure {self.calls}")


class RejectingStrategy(AbstractErrorStrategy):
    """Stops the component on any error."""

    def handle_exception(self, error):
        return True, "nope"


class NoArgumentComponent(Component):
    """The hermes shape: the subclass passes nothing to Component.__init__."""

    def __init__(self, label):
        super().__init__()
        self.label = label


def next_event(events):
    return events.get(timeout=EVENT_TIMEOUT)


def events_until(events, name):
    """Return the events received up to and including the first one called ``name``."""
    received = []
    while not received or received[-1][0] != name:
        received.append(next_event(events))
    return received


def process_gone(pid):
    """Return whether ``pid`` has exited and been reaped; signal 0 still reaches a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(autouse=True)
def no_child_left():
    yield
    assert multiprocessing.active_children() == []


@pytest.fixture
def events():
    events = multiprocessing.Queue()
    yield events
    events.close()
    events.join_thread()


@pytest.fixture
def started():
    """Track components started by a test and kill any that it left running."""
    components = []
    yield components.append
    for component in components:
        component.stop(timeout=1)


# Process control.


def test_component_ident_before_start(events):
    component = RecordingComponent(events)

    assert component.ident is None


def test_component_not_alive_before_start(events):
    component = RecordingComponent(events)

    assert component.is_alive() is False


def test_component_join_before_start(events):
    component = RecordingComponent(events)

    component.join()

    assert component.exitcode is None


def test_component_stop_before_start(events):
    component = RecordingComponent(events)

    assert component.stop() is True


def test_component_daemon_after_start(events, started):
    component = RecordingComponent(events)
    started(component)

    component.start()

    assert component.daemon is True
    assert component.ident is not None
    assert component.is_alive() is True


def test_component_lifecycle_order(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()

    first_iteration = events_until(events, "post_execute")
    assert component.stop(timeout=EVENT_TIMEOUT) is True
    remaining = events_until(events, "tear_down")

    assert first_iteration == [
        ("set_up", component.ident),
        ("pre_execute", None),
        ("execute", "pre-value"),
        ("post_execute", "exec-value"),
    ]
    assert remaining == [("tear_down", None)]


def test_component_exit_status_after_stop(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()
    events_until(events, "post_execute")

    component.stop(timeout=EVENT_TIMEOUT)

    assert component.exitcode == EXIT_STOPPED
    assert component.is_alive() is False


def test_component_start_again_after_stop(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()
    events_until(events, "post_execute")
    first_pid = component.ident
    component.stop(timeout=EVENT_TIMEOUT)

    component.start()
    received = events_until(events, "set_up")

    assert component.ident != first_pid
    assert received[-1] == ("set_up", component.ident)


def test_component_start_twice_raises(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()

    with pytest.raises(InvalidConfigurationException, match="already running"):
        component.start()


def test_component_terminate_stops_loop(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()
    events_until(events, "post_execute")

    component.terminate()
    component.join(EVENT_TIMEOUT)

    assert component.exitcode == EXIT_STOPPED


def test_component_kill(events, started):
    component = RecordingComponent(events)
    started(component)
    component.start()
    events_until(events, "post_execute")

    component.kill()
    component.join(EVENT_TIMEOUT)

    assert component.exitcode == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_component_stop_kills_blocked_step(events, started):
    component = SleepingComponent(events)
    started(component)
    component.start()
    _, pid = next_event(events)

    stopped_by_itself = component.stop(timeout=1)

    assert stopped_by_itself is False
    assert component.exitcode == -signal.SIGKILL
    assert process_gone(pid)


# Backoff.


@pytest.mark.timeout(30)
def test_backoff_doubles_up_to_limit(events, started):
    component = FailingComponent(events, backoff_limit=0.2)
    started(component)
    component.start()

    set_ups = [next_event(events) for _ in range(6)]
    component.stop(timeout=EVENT_TIMEOUT)

    backoffs = [backoff for _, backoff, _ in set_ups]
    assert backoffs == [0, 0.05, 0.1, 0.2, 0.2, 0.2]


@pytest.mark.timeout(30)
def test_backoff_waits_before_set_up(events, started):
    component = FailingComponent(events, backoff_limit=0.2)
    started(component)
    component.start()

    set_ups = [next_event(events) for _ in range(5)]
    component.stop(timeout=EVENT_TIMEOUT)

    # Each wait lasts at least the backoff; poll() may wake up to a millisecond early after
    # rounding, hence the small allowance.
    for (_, _, earlier), (_, backoff, later) in zip(set_ups, set_ups[1:]):
        assert later - earlier >= backoff - 0.002


@pytest.mark.timeout(30)
def test_backoff_resets_after_success(events, started):
    component = FailingComponent(events, succeed_on=[3], backoff_limit=0.2)
    started(component)
    component.start()

    set_ups = [next_event(events) for _ in range(5)]
    component.stop(timeout=EVENT_TIMEOUT)

    # Calls 1 and 2 fail, call 3 succeeds and resets the backoff, call 4 fails again.
    backoffs = [backoff for _, backoff, _ in set_ups]
    assert backoffs == [0, 0.05, 0.1, 0.05, 0.1]


def test_initial_backoff_capped_by_limit(events, started):
    component = FailingComponent(events, backoff_limit=0.02)
    started(component)
    component.start()

    set_ups = [next_event(events) for _ in range(3)]
    component.stop(timeout=EVENT_TIMEOUT)

    backoffs = [backoff for _, backoff, _ in set_ups]
    assert backoffs == [0, 0.02, 0.02]


@pytest.mark.parametrize("backoff_limit", [0, -1, "16", None, True])
def test_backoff_limit_invalid(events, backoff_limit):
    with pytest.raises(InvalidConfigurationException) as raised:
        RecordingComponent(events, backoff_limit=backoff_limit)

    assert repr(backoff_limit) in str(raised.value)


@pytest.mark.parametrize("backoff_limit", [0.5, 1, 16])
def test_backoff_limit_valid(events, backoff_limit):
    component = RecordingComponent(events, backoff_limit=backoff_limit)

    assert component.backoff_limit == backoff_limit


def test_error_strategy_invalid(events):
    with pytest.raises(InvalidConfigurationException, match="error_strategy"):
        RecordingComponent(events, error_strategy="retry")


# The error strategy's decisions.


@pytest.mark.timeout(30)
def test_strategy_stop_exit_status(events, started):
    component = FailingComponent(events, error_strategy=RejectingStrategy())
    started(component)

    component.start()
    component.join(EVENT_TIMEOUT)

    assert component.exitcode == EXIT_STRATEGY_STOP


@pytest.mark.timeout(30)
def test_strategy_stop_reports_fatal_error(events, started):
    errors = multiprocessing.Queue()
    component = FailingComponent(events, error_strategy=RejectingStrategy(), error_queue=errors)
    started(component)

    component.start()
    component.join(EVENT_TIMEOUT)
    error = errors.get(timeout=EVENT_TIMEOUT)

    assert isinstance(error, ComponentError)
    assert error.fatal is True
    assert "nope" in error.message
    assert error.component == "FailingComponent"
    assert error.pid == component.ident


@pytest.mark.timeout(30)
def test_strategy_stop_runs_set_up_once(events, started):
    component = FailingComponent(events, error_strategy=RejectingStrategy())
    started(component)

    component.start()
    component.join(EVENT_TIMEOUT)
    next_event(events)

    with pytest.raises(queue.Empty):
        events.get(timeout=0.2)


@pytest.mark.timeout(30)
def test_retry_reports_error(events, started):
    errors = multiprocessing.Queue()
    component = FailingComponent(events, error_strategy=CommonErrorStrategy(), error_queue=errors)
    started(component)

    component.start()
    error = errors.get(timeout=EVENT_TIMEOUT)
    component.stop(timeout=EVENT_TIMEOUT)

    assert error.fatal is False
    assert "failure 1" in error.message


@pytest.mark.timeout(30)
def test_default_strategy_retries(events, started):
    component = FailingComponent(events, backoff_limit=0.05)
    started(component)

    component.start()
    set_ups = [next_event(events) for _ in range(3)]

    assert component.is_alive() is True
    assert len(set_ups) == 3


# The hermes constructor shape.


def test_component_without_arguments():
    component = NoArgumentComponent("label")

    assert component.notification_pipe is None
    assert component.error_queue is None
    assert component.error_strategy is None
    assert component.backoff_limit == 16
