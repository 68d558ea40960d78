"""Component: a supervised child process that runs a step loop and recovers from errors.

The loop runs set_up, then pre_execute, execute(pre_exec_value) and post_execute(exec_value)
until a stop is requested, then tear_down. When a step raises, the error strategy decides:
stop for good, or tear down, wait a backoff that doubles up to ``backoff_limit`` seconds, and
go back to set_up. One successful iteration resets the backoff.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, Dict, NamedTuple, Optional, Tuple

from .exceptions import InvalidConfigurationException
from .notifications import Batch, Gap
from .pipes import drain_wake_fd, make_source, wait_readable
from .repeats import RepeatLimiter
from .strategies import CommonErrorStrategy, is_connection_error

logger = logging.getLogger(__name__)

EXIT_STOPPED = 0
"""Exit status of a component that stopped because it was asked to."""

EXIT_STRATEGY_STOP = 3
"""Exit status of a component whose error strategy decided to stop it."""

_PR_SET_PDEATHSIG = 1


class ComponentError(NamedTuple):
    """An error a component caught, as sent to the supervisor on the error queue."""

    component: str
    pid: int
    message: str
    fatal: bool


class ComponentEvent(NamedTuple):
    """A state change of a component, as sent to the supervisor's event hooks.

    ``kind`` is "connected", "reconnected", "disconnected" or "connection_attempt_failed"
    from a listener, and "component_restarted" or "role_changed" from the supervisor;
    ``detail`` gives an error message or a role.
    """

    component: str
    pid: int
    kind: str
    detail: str = ""


# Slots of a processor's shared counters, written by the processor, read by the supervisor.
COUNTER_DELIVERED = 0
COUNTER_BATCHES = 1
COUNTER_GAPS = 2
COUNTER_LAST_NOTIFICATION = 3
COUNTER_SLOTS = 4


class Component:
    """A process with a supervised step loop; subclass it and override the steps.

    Every constructor argument may be left out: ``Client.add_listener`` and
    ``Client.add_processor`` then wire the notification pipe, a shared error queue and a
    CommonErrorStrategy. ``backoff_limit`` is the maximum wait, in seconds, between two
    attempts after errors; InvalidConfigurationException is raised if it is not a positive
    number.

    In a processor (a component with a ``notification_pipe``), the default ``pre_execute``
    waits for and returns the next batch: a non-empty list of Notification and Gap values in
    the order the listener received them. ``execute`` gets that list.
    """

    initial_backoff = 0.5
    """Seconds waited after the first error; doubled after each further one."""

    def __init__(
        self,
        notification_pipe: Any = None,
        error_strategy: Any = None,
        error_queue: Any = None,
        backoff_limit: float = 16,
    ) -> None:
        validate_seconds("backoff_limit", backoff_limit)
        if error_strategy is not None and not callable(getattr(error_strategy, "handle_exception", None)):
            raise InvalidConfigurationException(
                f"invalid error_strategy {error_strategy!r}: expected an object with "
                "handle_exception(error), such as hermes_lite.strategies.CommonErrorStrategy()"
            )

        self.notification_pipe = notification_pipe
        self.error_strategy = error_strategy
        self.error_queue = error_queue
        self.backoff_limit = backoff_limit
        self.name = type(self).__name__
        self.mp_context: Any = None
        self.current_backoff = 0.0
        # Set by the Client: where events go, and shared counters of delivered notifications.
        self.event_queue: Any = None
        self.counters: Any = None
        # Set by the supervisor before it restarts a crashed component; a processor then
        # starts with a Gap("restart").
        self.restarted_after_crash = False

        self._process: Any = None
        self._init_child_state()

    def _init_child_state(self) -> None:
        self._stop_requested = False
        self._wake_fd: Optional[int] = None
        self._source: Any = None
        self._log_limiter = RepeatLimiter()

    def __getstate__(self) -> Dict[str, Any]:
        # Sent to the child under the spawn and forkserver start methods: the process handle
        # stays with the parent and the child builds its own signal state.
        state = self.__dict__.copy()
        for name in ("_process", "_stop_requested", "_wake_fd", "_source", "_log_limiter"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._process = None
        self._init_child_state()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} pid={self.ident}>"

    # The steps; subclasses override what they need.

    def set_up(self) -> None:
        """Prepare the component's resources; runs at start and again after every error."""

    def pre_execute(self) -> Any:
        """Return the next batch of notifications for a processor; None for other components.

        Waits until at least one item arrives or a stop is requested; returns [] on a stop.
        """
        if self.notification_pipe is None:
            return None

        if self._source is None:
            self._source = make_source(self.notification_pipe)
            if self.restarted_after_crash:
                # The crashed predecessor may have read notifications that it never
                # processed. They are gone, so the first batch reports a gap.
                self._source.restart_gap_sent = True
                return Batch(Gap("restart", 0))
        return self._source.read_batch(timeout=None, wake_fd=self._wake_fd)

    def execute(self, pre_exec_value: Any) -> Any:
        """Do the component's work on what ``pre_execute`` returned; the result goes to ``post_execute``."""

    def post_execute(self, exec_value: Any) -> None:
        """Finish an iteration with what ``execute`` returned."""

    def tear_down(self) -> None:
        """Release what ``set_up`` acquired; runs after an error and at stop."""

    # Process control, called in the parent.

    @property
    def ident(self) -> Optional[int]:
        """The process ID while started, None before the first start."""
        return None if self._process is None else self._process.pid

    pid = ident

    @property
    def exitcode(self) -> Optional[int]:
        """The exit status of the last run; None while running or before the first start."""
        return None if self._process is None else self._process.exitcode

    @property
    def daemon(self) -> bool:
        """Always True: a component never outlives the process that started it."""
        return True

    def start(self) -> None:
        """Start the component in a new daemonic process.

        A component that has stopped may be started again. Raises
        InvalidConfigurationException if it is already running, and the start method's
        pickling error if the component cannot be sent to a spawned child.
        """
        if self.is_alive():
            raise InvalidConfigurationException(f"{self.name} is already running as pid {self.ident}; stop it first")

        context = self.mp_context or multiprocessing.get_context()
        if context.get_start_method() != "fork":
            self._check_picklable(context.get_start_method())
        process = context.Process(target=_run_component, args=(self,), name=self.name, daemon=True)
        process.start()
        self._process = process
        logger.info("started %s as pid %s", self.name, process.pid)

    def _check_picklable(self, start_method: str) -> None:
        """Raise InvalidConfigurationException naming the first attribute that cannot be pickled.

        The spawn and forkserver start methods send the component to its process by
        pickling it. Queues, pipes and other multiprocessing objects are skipped: they can
        only be pickled while a process is being started, and they support it then.
        """
        import pickle

        for attribute, value in self.__getstate__().items():
            if _is_multiprocessing_object(value):
                continue
            try:
                pickle.dumps(value)
            except Exception as error:
                raise InvalidConfigurationException(
                    f"{type(self).__name__}.{attribute} cannot be pickled for the {start_method} start method "
                    f"({type(error).__name__}: {error}); create it in set_up() instead, or use the fork start method"
                ) from None

    @property
    def sentinel(self) -> int:
        """A descriptor that becomes readable when the process ends; raises ValueError before start."""
        if self._process is None:
            raise ValueError(f"{self.name} has not been started")
        return int(self._process.sentinel)

    def is_alive(self) -> bool:
        """Return True while the component's process runs; False before start."""
        return self._process is not None and self._process.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait up to ``timeout`` seconds for the process to exit; returns at once before start."""
        if self._process is not None:
            self._process.join(timeout)

    def terminate(self) -> None:
        """Ask the component to stop (SIGTERM): it finishes the current step, then tears down."""
        if self.is_alive():
            self._process.terminate()

    def kill(self) -> None:
        """Kill the component's process at once (SIGKILL)."""
        if self.is_alive():
            self._process.kill()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the component: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Returns True if it exited by itself within the deadline, False if it had to be
        killed. Safe before start and after the process has exited.
        """
        if self._process is None:
            return True

        self.terminate()
        self._process.join(timeout)
        if not self._process.is_alive():
            logger.info("stopped %s (exit status %s)", self.name, self._process.exitcode)
            return True

        logger.warning("%s did not stop within %.1f s; killing pid %s", self.name, timeout, self._process.pid)
        self._process.kill()
        self._process.join()
        return False

    # The loop, run in the child.

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step; safe from a signal handler."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        """True once a stop has been requested in this process."""
        return self._stop_requested

    @property
    def wake_fd(self) -> Optional[int]:
        """A descriptor that becomes readable when a signal arrives; poll it in every wait."""
        return self._wake_fd

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early for a stop request; return True if stopping."""
        if self._wake_fd is None:
            time.sleep(seconds)
            return self._stop_requested

        if wait_readable([self._wake_fd], seconds):
            drain_wake_fd(self._wake_fd)
        return self._stop_requested

    def run(self) -> int:
        """Run the step loop until a stop is requested or the strategy stops it; return the exit status."""
        logger.info("%s running as pid %s", self.name, os.getpid())

        while not self._stop_requested:
            try:
                self.set_up()
                self._run_iterations()
            except Exception as error:
                should_stop, message = self._handle_error(error)
                self._tear_down_quietly()
                if should_stop:
                    logger.error("%s stopped by its error strategy: %s", self.name, message)
                    return EXIT_STRATEGY_STOP
                self._back_off(error)
                continue

            self._tear_down_quietly()

        logger.info("%s stopped", self.name)
        return EXIT_STOPPED

    def _run_iterations(self) -> None:
        while not self._stop_requested:
            pre_exec_value = self.pre_execute()
            if self._stop_requested and not pre_exec_value:
                return
            if self.counters is not None and isinstance(pre_exec_value, Batch):
                self._count_batch(pre_exec_value)

            exec_value = self.execute(pre_exec_value)
            self.post_execute(exec_value)
            if self.current_backoff:
                self.current_backoff = 0.0
                self._log_limiter.reset()

    def _handle_error(self, error: Exception) -> Tuple[bool, str]:
        strategy = self.error_strategy
        if strategy is None:
            strategy = self.error_strategy = CommonErrorStrategy()

        try:
            decision = strategy.handle_exception(error)
        except Exception:
            logger.exception("%s: the error strategy raised; stopping", self.name)
            decision = (True, f"error strategy failed on {type(error).__name__}: {error}")

        should_stop, message = decision if isinstance(decision, tuple) else (bool(decision), None)
        message = message or f"{type(error).__name__}: {error}"
        if should_stop:
            logger.error("%s: %s", self.name, message)
        else:
            self._log_repeated(message, exc_info=not is_connection_error(error))

        self._report(message, bool(should_stop))
        return bool(should_stop), message

    def _count_batch(self, batch: Batch) -> None:
        counters = self.counters
        counters[COUNTER_BATCHES] += 1
        if batch.gap is not None:
            counters[COUNTER_GAPS] += 1
        if batch.payloads:
            counters[COUNTER_DELIVERED] += len(batch.payloads)
            counters[COUNTER_LAST_NOTIFICATION] = time.time()

    def emit_event(self, kind: str, detail: str = "") -> None:
        """Send a ComponentEvent to the supervisor's event hooks; does nothing without a Client."""
        if self.event_queue is None:
            return
        try:
            self.event_queue.put(ComponentEvent(self.name, os.getpid(), kind, detail))
        except Exception as error:  # a full or closed queue must not stop the component
            logger.warning("%s: could not send a %s event to the supervisor: %s", self.name, kind, error)

    def _report(self, message: str, fatal: bool) -> None:
        if self.error_queue is None:
            return
        try:
            self.error_queue.put(ComponentError(self.name, os.getpid(), message, fatal))
        except Exception as error:  # a full or closed queue must not stop the recovery
            logger.warning("%s: could not report an error to the supervisor: %s", self.name, error)

    def _log_repeated(self, message: str, exc_info: bool = False) -> None:
        dropped = self._log_limiter.check(message)
        if dropped is None:
            return
        suffix = f" ({dropped} more like it not logged)" if dropped else ""
        logger.warning("%s: %s%s", self.name, message, suffix, exc_info=exc_info)

    def next_backoff(self, error: Exception) -> float:
        """Return the seconds to wait after ``error`` before going back to set_up.

        The default doubles from ``initial_backoff`` up to ``backoff_limit``; a successful
        iteration resets it. Subclasses may choose another schedule per kind of error.
        """
        if self.current_backoff <= 0:
            self.current_backoff = min(self.initial_backoff, self.backoff_limit)
        else:
            self.current_backoff = min(self.current_backoff * 2, self.backoff_limit)
        return self.current_backoff

    def _back_off(self, error: Exception) -> None:
        delay = self.next_backoff(error)
        logger.debug("%s: retrying in %.2f s", self.name, delay)
        self.wait(delay)

    def _tear_down_quietly(self) -> None:
        try:
            self.tear_down()
        except Exception:
            logger.exception("%s: tear_down raised; continuing", self.name)


def _is_multiprocessing_object(value: Any) -> bool:
    module = type(value).__module__
    if module.startswith("multiprocessing"):
        return True
    from .pipes import NotificationReader, NotificationWriter

    return isinstance(value, (NotificationReader, NotificationWriter))


def validate_seconds(name: str, value: Any) -> None:
    """Raise InvalidConfigurationException, naming ``name``, unless ``value`` is a positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidConfigurationException(f"invalid {name} {value!r}: expected a positive number of seconds, such as 16")


def _run_component(component: Component) -> None:
    """Entry point of a component's process."""
    _install_child_signals(component)
    status = component.run()
    # Raising SystemExit, unlike os._exit, lets multiprocessing flush every Queue this process
    # put to, so the ComponentError of a fatal error reaches the supervisor.
    sys.exit(status)


def _install_child_signals(component: Component) -> None:
    # The supervisor owns Ctrl-C: it stops the children in order. SIGTERM only sets a flag;
    # set_wakeup_fd makes it wake every poll() that includes the wake descriptor.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: component.request_stop())

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    component._wake_fd = read_fd

    _stop_when_parent_dies()


def _stop_when_parent_dies() -> None:
    # Linux delivers SIGTERM to this process when the thread that started it exits, so a
    # supervisor killed with SIGKILL leaves no orphans behind.
    # NOTE: other systems have no such call; there a component outlives a killed supervisor.
    if not sys.platform.startswith("linux"):
        return

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as error:
        logger.warning("cannot ask to be stopped with the parent process: %s", error)
        return

    # The parent may have died between fork and prctl.
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
