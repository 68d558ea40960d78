"""Client: the supervisor that runs one listener and one processor while the server is a primary.

``start()`` runs the supervision loop in the calling thread until ``stop()``, SIGTERM or
SIGINT. Each turn of the loop waits on the children's sentinels, the error queue and a wake
pipe, then handles errors, restarts crashed components and re-checks the server's role when
it is due. Signal handlers only set a flag and wake the loop.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .components import (
    COUNTER_BATCHES,
    COUNTER_DELIVERED,
    COUNTER_GAPS,
    COUNTER_LAST_NOTIFICATION,
    COUNTER_SLOTS,
    EXIT_STOPPED,
    EXIT_STRATEGY_STOP,
    Component,
    ComponentError,
    ComponentEvent,
)
from .connectors import PostgresConnector
from .dsn import DSN, describe
from .exceptions import InvalidConfigurationException
from .pipes import drain_wake_fd, notification_pipe
from .repeats import RepeatLimiter
from .strategies import CommonErrorStrategy

logger = logging.getLogger(__name__)

DEFAULT_FAILOVER_FILES = ("standby.signal", "recovery.signal", "recovery.conf", "recovery.done")
"""Files whose appearance or removal in the data directory means a role change: PostgreSQL 12+
uses standby.signal and recovery.signal, older versions recovery.conf and recovery.done."""


class Client:
    """Supervises one listener and one processor, running them only while the server is a primary.

    ``dsn`` (dict, conninfo string or URI) is used for the role check. When ``watch_path``
    is given, a change to one of ``failover_files`` in it (default DEFAULT_FAILOVER_FILES)
    triggers a role check. Raises InvalidConfigurationException for a DSN libpq cannot use,
    a ``watch_path`` that is not a directory, or ``failover_files`` that is not a list.
    """

    stop_timeout = 10.0
    """Seconds each component gets to stop after SIGTERM before it is killed."""

    role_check_interval = 30.0
    """Seconds between role checks while nothing else triggers one."""

    mp_context: Any = None
    """The multiprocessing context for components that have none, and for the error queue;
    None uses multiprocessing's default start method."""

    stats_interval = 60.0
    """Seconds between two INFO log lines of the counters and samples of the server's
    notification queue usage."""

    queue_usage_warning = 0.5
    """Fraction of the server's notification queue in use above which a warning is logged: a
    stuck listener fills the queue, and once it is full every NOTIFY fails."""

    use_watchdog: Optional[bool] = None
    """The watcher of ``watch_path``: None uses watchdog when installed, False always polls with os.stat."""

    role_check_backoff_limit = 32.0
    """Maximum wait, in seconds, between role checks while the server cannot be reached.

    A failed check is retried after 0.5 s, then after twice the previous wait up to this limit.
    """

    role_recheck_delays = (0.5, 1.0, 2.0, 4.0, 8.0)
    """Seconds between the extra role checks after a failover file event.

    PostgreSQL removes standby.signal shortly before pg_is_in_recovery() turns false, so the
    check that the event triggers can still find a standby; these checks catch the promotion.
    """

    restart_backoff_limit = 16.0
    """Maximum wait, in seconds, before restarting a component that crashed."""

    restart_backoff_reset = 60.0
    """Seconds a restarted component must run before its next crash counts as a first one."""

    def __init__(self, dsn: DSN, watch_path: Optional[str] = None, failover_files: Optional[Sequence[str]] = None) -> None:
        self.master_pg_conn = PostgresConnector(dsn)
        self.directory = _validate_watch_path(watch_path)
        self.failover_files = _validate_failover_files(failover_files, watch_path)

        self.listener: Optional[Component] = None
        self.processor: Optional[Component] = None
        self.errors: List[ComponentError] = []
        self.fatal_error: Optional[ComponentError] = None

        self._error_queue: Any = None
        self._event_queue: Any = None
        self._event_hooks: List[Callable[[ComponentEvent], None]] = []
        self._stats: Dict[str, Any] = {
            "reconnects": 0,
            "connection_attempts_failed": 0,
            "restarts": 0,
            "role_changes": 0,
            "queue_usage": None,
        }
        self._pipe: Any = None
        self._wake_read: Optional[int] = None
        self._wake_write: Optional[int] = None
        self._lock = threading.RLock()
        self._running = False
        self._supervisor_thread: Optional[threading.Thread] = None
        self._stop_requested = False
        self._role_check_due = False
        self._role_rechecks: List[float] = []
        self._role_check_backoff = 0.0
        self._role_log_limiter = RepeatLimiter()
        self._last_role: Optional[str] = None
        self._components_wanted = False
        self._stopped = threading.Event()
        self._restart_backoff: Dict[str, float] = {}
        self._started_at: Dict[str, float] = {}
        self._restart_at: Dict[str, float] = {}
        self._observer: Any = None

    def __repr__(self) -> str:
        return f"<Client dsn={describe(self.master_pg_conn.dsn)!r} running={self._running}>"

    # Configuration.

    def add_listener(self, listener: Component) -> None:
        """Set the listener; wire its notification pipe, error queue and strategy if left out.

        Raises InvalidConfigurationException if ``listener`` is not a Component.
        """
        _require_component(listener, "listener")
        if getattr(listener, "notif_queue", "absent") is None:
            listener.notif_queue = self._notification_pipe()[1]  # type: ignore[attr-defined]
        self._wire_defaults(listener)
        self.listener = listener

    def add_processor(self, processor: Component) -> None:
        """Set the processor; wire its notification pipe, error queue and strategy if left out.

        Raises InvalidConfigurationException if ``processor`` is not a Component.
        """
        _require_component(processor, "processor")
        if processor.notification_pipe is None:
            processor.notification_pipe = self._notification_pipe()[0]
        self._wire_defaults(processor)
        context = processor.mp_context or multiprocessing.get_context()
        processor.counters = context.RawArray("d", COUNTER_SLOTS)
        self.processor = processor

    def _notification_pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = notification_pipe()
        return self._pipe

    def _wire_defaults(self, component: Component) -> None:
        if component.mp_context is None:
            component.mp_context = self.mp_context
        # A queue only crosses into processes started with the context that made it.
        context = component.mp_context or multiprocessing.get_context()
        if component.error_queue is None:
            if self._error_queue is None:
                self._error_queue = context.Queue()
            component.error_queue = self._error_queue
        if self._event_queue is None:
            self._event_queue = context.Queue()
        component.event_queue = self._event_queue
        if component.error_strategy is None:
            component.error_strategy = CommonErrorStrategy()

    # Observability.

    def add_event_hook(self, hook: Callable[[ComponentEvent], None]) -> None:
        """Call ``hook(event)`` in the supervising thread for every ComponentEvent.

        Events: "connected", "reconnected", "disconnected" and "connection_attempt_failed"
        from the listener, "component_restarted" and "role_changed" from the supervisor. A
        hook that raises is logged and does not stop the client; a slow hook delays
        supervision, so hand long work to another thread.
        """
        self._event_hooks.append(hook)

    def stats(self) -> Dict[str, Any]:
        """Return the counters as a dict.

        The processor counts notifications delivered, batches, gaps and the time of the last
        notification (seconds since the epoch, None before the first). The supervisor counts
        reconnects, failed connection attempts, component restarts and role changes, and keeps
        the last sample of pg_notification_queue_usage() (None before the first).
        """
        stats = dict(self._stats)
        counters = self.processor.counters if self.processor is not None else None
        if counters is not None:
            stats["delivered"] = int(counters[COUNTER_DELIVERED])
            stats["batches"] = int(counters[COUNTER_BATCHES])
            stats["gaps"] = int(counters[COUNTER_GAPS])
            last = counters[COUNTER_LAST_NOTIFICATION]
            stats["last_notification_at"] = last or None
        return stats

    def _dispatch(self, event: ComponentEvent) -> None:
        if event.kind == "reconnected":
            self._stats["reconnects"] += 1
        elif event.kind == "connection_attempt_failed":
            self._stats["connection_attempts_failed"] += 1
        elif event.kind == "component_restarted":
            self._stats["restarts"] += 1
        elif event.kind == "role_changed":
            self._stats["role_changes"] += 1

        for hook in self._event_hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("an event hook raised on %s; continuing", event.kind)

    def _collect_events(self) -> None:
        while self._event_queue is not None:
            try:
                event = self._event_queue.get_nowait()
            except Exception:  # queue.Empty; nothing else is expected from get_nowait
                return
            self._dispatch(event)

    def _log_stats(self) -> None:
        import psycopg2

        if self._last_role == "primary":
            try:
                with self.master_pg_conn.pg_connection.cursor() as cursor:
                    cursor.execute("SELECT pg_notification_queue_usage()")
                    row = cursor.fetchone()
                    assert row is not None  # a SELECT without FROM returns exactly one row
                    self._stats["queue_usage"] = float(row[0])
            except psycopg2.Error as error:
                logger.debug("cannot sample the notification queue usage: %s", str(error).strip())

        stats = self.stats()
        logger.info(
            "delivered %s notifications in %s batches, %s gaps, %s reconnects, %s restarts, queue usage %s",
            stats.get("delivered", 0), stats.get("batches", 0), stats.get("gaps", 0),
            stats["reconnects"], stats["restarts"], stats["queue_usage"],
        )
        usage = stats["queue_usage"]
        if usage is not None and usage > self.queue_usage_warning:
            logger.warning(
                "the server's notification queue is %.0f%% full: a listener is not reading; "
                "when it is full, every NOTIFY fails", usage * 100,
            )

    # The supervision loop.

    def start(self) -> None:
        """Run the supervisor until ``stop()``, SIGTERM, SIGINT or a fatal component error.

        Blocks the calling thread. In the main thread it handles SIGTERM and SIGINT by
        stopping gracefully, and restores the previous handlers before returning. Raises
        InvalidConfigurationException if a component is missing or the client is already
        running.
        """
        with self._lock:
            if self._running:
                raise InvalidConfigurationException("the client is already running; call stop() before starting it again")
            if self.listener is None or self.processor is None:
                missing = "listener" if self.listener is None else "processor"
                raise InvalidConfigurationException(f"no {missing} added: call add_{missing}() before start()")
            self._running = True
            self._supervisor_thread = threading.current_thread()
            self._stop_requested = False
            self._stopped.clear()

        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        previous_handlers = self._install_signal_handlers()
        logger.info("client starting for %s", describe(self.master_pg_conn.dsn))
        try:
            self._start_observer()
            self._role_check_due = True
            self._supervise()
        finally:
            self._stop_observer()
            self._stop_components()
            self.master_pg_conn.disconnect()
            _restore_signal_handlers(previous_handlers)
            with self._lock:
                self._running = False
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = None
            self._stopped.set()
            logger.info("client stopped")

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the components and the supervisor; return when everything has exited.

        Each component gets ``stop_timeout`` seconds after SIGTERM, then is killed. Callable
        from any thread, or from the supervising thread itself; safe when not running.
        """
        self._stop_requested = True
        self._wake()

        if not self._running:
            self._stop_components()
        elif threading.current_thread() is not self._supervisor_thread:
            self._stopped.wait(timeout if timeout is not None else 2 * self.stop_timeout + 5)

    def _supervise(self) -> None:
        next_role_check = time.monotonic()
        next_stats = time.monotonic() + self.stats_interval
        while not self._stop_requested:
            now = time.monotonic()
            if self._role_check_due or now >= next_role_check:
                self._role_check_due = False
                if self.execute_role_based_procedure():
                    self._role_check_backoff = 0.0
                    delay = self._role_rechecks.pop(0) if self._role_rechecks else self.role_check_interval
                else:
                    self._role_check_backoff = min(max(self._role_check_backoff * 2, 0.5), self.role_check_backoff_limit)
                    delay = self._role_check_backoff
                next_role_check = time.monotonic() + delay

            if time.monotonic() >= next_stats:
                self._log_stats()
                next_stats = time.monotonic() + self.stats_interval

            self._wait(min(next_role_check, next_stats))
            self._collect_events()
            if self._stop_requested:
                # A SIGTERM to the whole process group (systemd's default) reaches the
                # components too; their exits are part of this stop, not crashes.
                return
            self._collect_errors()
            if self.fatal_error is not None:
                logger.error("stopping the client after a fatal error in %s: %s", self.fatal_error.component, self.fatal_error.message)
                return
            self._restart_crashed()

    def _wait(self, deadline: float) -> None:
        waitables: List[Any] = [self._wake_read]
        for source in (self._error_queue, self._event_queue):
            if source is not None:
                waitables.append(source._reader)
        restart_unscheduled = False
        for component in self._components():
            process = component._process
            if process is None:
                continue
            if process.exitcode is None:
                waitables.append(process.sentinel)
            elif self._components_wanted and process.exitcode != EXIT_STRATEGY_STOP and component.name not in self._restart_at:
                # A dying process closes its sentinel before the kernel lets it be reaped, so
                # _restart_crashed may have seen it alive. The next turn schedules its restart.
                restart_unscheduled = True

        timeout = max(0.0, min([deadline, *self._restart_at.values()]) - time.monotonic())
        if restart_unscheduled:
            timeout = 0.0
        if self._wake_read in multiprocessing.connection.wait(waitables, timeout):
            drain_wake_fd(self._wake_read)

    def _collect_errors(self) -> None:
        if self._error_queue is None:
            return

        while True:
            try:
                error = self._error_queue.get_nowait()
            except Exception:  # queue.Empty; nothing else is expected from get_nowait
                return
            self.errors.append(error)
            del self.errors[:-100]
            if error.fatal:
                self.fatal_error = error

    def _restart_crashed(self) -> None:
        if not self._components_wanted:
            return

        now = time.monotonic()
        for component in self._components():
            if component.is_alive() or component.exitcode is None:
                continue
            if component.exitcode == EXIT_STRATEGY_STOP:
                continue

            restart_at = self._restart_at.get(component.name)
            if restart_at is None:
                backoff = self._restart_backoff.get(component.name, 0.0)
                if now - self._started_at.get(component.name, now) >= self.restart_backoff_reset:
                    backoff = 0.0
                backoff = min(max(backoff * 2, 0.5), self.restart_backoff_limit)
                self._restart_backoff[component.name] = backoff
                self._restart_at[component.name] = now + backoff
                if component.exitcode == EXIT_STOPPED:
                    # Stopped by a signal from outside the supervisor: not a crash.
                    logger.info("%s was stopped from outside; restarting in %.1f s", component.name, backoff)
                else:
                    logger.warning(
                        "%s exited unexpectedly with status %s; restarting in %.1f s",
                        component.name, component.exitcode, backoff,
                    )
            elif now >= restart_at:
                del self._restart_at[component.name]
                # A component stopped from outside finished its batch; a crashed one may not have.
                component.restarted_after_crash = component.exitcode != EXIT_STOPPED
                component.start()
                self._dispatch(ComponentEvent(component.name, component.ident or 0, "component_restarted", ""))
                self._started_at[component.name] = time.monotonic()

    # Role checks.

    def execute_role_based_procedure(self) -> bool:
        """Start the components if the server is a primary, stop them if it is a standby.

        Returns False when the role could not be checked (server unreachable, FATAL error):
        the failure is logged, the components stay as they are, and a running supervisor
        retries with a backoff that doubles from 0.5 s up to ``role_check_backoff_limit``.
        """
        import psycopg2

        try:
            is_primary = self.master_pg_conn.is_server_master()
        except psycopg2.Error as error:
            message = " ".join(str(error).split())
            if self._role_log_limiter.check(message) is not None:
                logger.warning("role check failed, keeping the components as they are: %s", message)
            return False

        self._role_log_limiter.reset()
        role = "primary" if is_primary else "standby"
        if role != self._last_role:
            logger.info("the server is a %s; %s the components", role, "running" if is_primary else "stopping")
            if self._last_role is not None:
                self._dispatch(ComponentEvent("client", os.getpid(), "role_changed", role))
            self._last_role = role

        if is_primary:
            self._start_components()
        else:
            self._stop_components()
        return True

    def on_any_event(self, event: Any) -> None:
        """Re-check the server's role when ``event`` concerns one of the failover files."""
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        if not any(os.path.basename(os.fsdecode(path)) in self.failover_files for path in paths if path):
            return

        logger.info("failover file event %s; re-checking the server's role", getattr(event, "event_type", "?"))
        if self._running:
            self._role_rechecks = list(self.role_recheck_delays)
            self._role_check_due = True
            self._wake()
        else:
            self.execute_role_based_procedure()

    # Components.

    def _components(self) -> List[Component]:
        return [component for component in (self.listener, self.processor) if component is not None]

    def _start_components(self) -> None:
        with self._lock:
            self._components_wanted = True
            # The processor starts first, so that the listener's first frames find a reader.
            for component in reversed(self._components()):
                if not component.is_alive():
                    self._restart_at.pop(component.name, None)
                    component.restarted_after_crash = False
                    component.start()
                    self._started_at[component.name] = time.monotonic()

    def _stop_components(self) -> None:
        with self._lock:
            self._components_wanted = False
            self._restart_at.clear()
            # The listener stops first, so that the processor can finish what is in flight.
            for component in self._components():
                if component.is_alive():
                    component.stop(self.stop_timeout)
                else:
                    component.join(0)

    # Signals, wakeups and the file watcher.

    def _wake(self) -> None:
        with self._lock:
            if self._wake_write is None:
                return
            try:
                os.write(self._wake_write, b"\0")
            except BlockingIOError:
                pass  # the pipe already contains a wakeup

    def _handle_stop_signal(self, signum: int, frame: Any) -> None:
        # The first signal only sets a flag and wakes the loop, which stops the components
        # gracefully outside the handler. A second one kills them at once: os.kill does not
        # block, and the graceful stop then finds them gone. No lock is taken here, because
        # the handler is installed only while the wake pipe is open.
        if self._stop_requested:
            for component in self._components():
                if component.is_alive():
                    try:
                        os.kill(component.ident, signal.SIGKILL)  # type: ignore[arg-type]
                    except ProcessLookupError:
                        pass
            return

        self._stop_requested = True
        try:
            os.write(self._wake_write, b"\0")  # type: ignore[arg-type]
        except BlockingIOError:
            pass

    def _install_signal_handlers(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: Dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._handle_stop_signal)
        return previous

    def _start_observer(self) -> None:
        if self.directory is None:
            return
        from .watchers import start_observer

        self._observer = start_observer(self.directory, self.on_any_event, use_watchdog=self.use_watchdog)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None


def _restore_signal_handlers(previous: Dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _require_component(component: Any, role: str) -> None:
    if not isinstance(component, Component):
        raise InvalidConfigurationException(
            f"invalid {role} {component!r}: expected an instance of a hermes_lite.components.Component subclass"
        )


def _validate_watch_path(watch_path: Optional[str]) -> Optional[str]:
    if watch_path is None:
        return None
    if not isinstance(watch_path, (str, os.PathLike)):
        raise InvalidConfigurationException(f"invalid watch_path {watch_path!r}: expected a directory path")
    if not os.path.isdir(watch_path):
        reason = "is not a directory" if os.path.exists(watch_path) else "does not exist"
        raise InvalidConfigurationException(
            f"invalid watch_path {os.fspath(watch_path)!r}: it {reason}; give the server's data directory"
        )
    return os.fspath(watch_path)


def _validate_failover_files(failover_files: Optional[Sequence[str]], watch_path: Optional[str]) -> List[str]:
    if failover_files is None:
        return list(DEFAULT_FAILOVER_FILES)
    if isinstance(failover_files, (str, bytes)) or not all(isinstance(name, str) for name in failover_files):
        raise InvalidConfigurationException(
            f"invalid failover_files {failover_files!r}: expected a list of file names, such as ['standby.signal']"
        )
    return list(failover_files)
