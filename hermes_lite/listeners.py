"""PostgresNotificationListener: the component that LISTENs and feeds the notification pipe.

``IMPLEMENTATION`` names the drain loop that runs by default: "c" (the cffi extension in
``hermes_lite._listener``) when it is built, otherwise "python" (psycopg2). Setting the
environment variable ``HERMES_LITE_PURE=1`` before import forces "python".
"""

import logging
import multiprocessing.connection
import os
import random
import threading
from typing import Any, Dict, List, Optional, Sequence, Union

from . import frames
from .components import Component, validate_seconds
from .connectors import PostgresConnector
from .drain import DRAIN_CONNECTION_LOST, DRAIN_PIPE_CLOSED, DRAIN_TIMEOUT, DRAIN_WOKEN
from .dsn import LISTENER_CONNECTION_DEFAULTS, to_conninfo
from .exceptions import InvalidConfigurationException, ListenerConnectionError, ListenerQueryError
from .pipes import NotificationReader, NotificationWriter, PipeClosed, drain_wake_fd, send_item
from .strategies import is_connection_error

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("c", "python")

MAX_CHANNEL_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: LISTEN truncates a longer name, pg_notify() rejects it."""


def _c_extension_available() -> bool:
    try:
        from . import _listener  # noqa: F401
    except ImportError:
        return False
    return True


C_EXTENSION_AVAILABLE = _c_extension_available()
"""True when the C extension was built and imports."""

IMPLEMENTATION = "c" if C_EXTENSION_AVAILABLE and os.environ.get("HERMES_LITE_PURE") != "1" else "python"
"""The listener implementation used when a listener does not choose one: "c" or "python"."""


def validate_channel(channel: Any) -> str:
    """Return ``channel`` if PostgreSQL can listen on it; raise InvalidConfigurationException otherwise."""
    if not isinstance(channel, str):
        raise InvalidConfigurationException(
            f"invalid channel {channel!r} of type {type(channel).__name__}: expected a str"
        )
    if not channel:
        raise InvalidConfigurationException("invalid channel '': a channel name cannot be empty")
    if "\x00" in channel:
        raise InvalidConfigurationException(f"invalid channel {channel!r}: it contains a NUL character")

    size = len(channel.encode("utf-8", "surrogateescape"))
    if size > MAX_CHANNEL_BYTES:
        raise InvalidConfigurationException(
            f"invalid channel {channel!r}: {size} bytes in UTF-8, PostgreSQL allows at most "
            f"{MAX_CHANNEL_BYTES}; use a shorter name"
        )
    return channel


def quote_identifier(name: str) -> str:
    """Return ``name`` as a quoted SQL identifier: case kept, nothing in it executed."""
    return '"' + name.replace('"', '""') + '"'


def _validate_channels(notif_channel: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(notif_channel, (list, tuple)):
        if not notif_channel:
            raise InvalidConfigurationException("invalid notif_channel []: give at least one channel")
        channels = [validate_channel(channel) for channel in notif_channel]
        return list(dict.fromkeys(channels))
    return [validate_channel(notif_channel)]


def backend_class(implementation: str) -> Any:
    """Return the backend class of ``implementation``, "c" or "python".

    Raises InvalidConfigurationException for another name, or for "c" when the extension
    is not built.
    """
    if implementation == "python":
        from ._pure_backend import PythonBackend

        return PythonBackend
    if implementation == "c":
        if not C_EXTENSION_AVAILABLE:
            raise InvalidConfigurationException(
                "the C listener is not built in this installation; reinstall hermes-lite with a C "
                "compiler and the libpq headers (apt-get install libpq-dev), or use implementation='python'"
            )
        from ._c_backend import CBackend

        return CBackend
    raise InvalidConfigurationException(
        f"invalid listener implementation {implementation!r}: expected 'c', 'python' or None"
    )


class PostgresNotificationListener(Component):
    """Listens on one or more channels and sends what arrives to a processor.

    ``pg_connector`` is a PostgresConnector (or a DSN for one); the listener opens its own
    connection from its DSN, in its own process. ``notif_channel`` is a channel name or a
    list of them; each is LISTENed as a quoted identifier, so names are case-sensitive.
    ``notif_queue`` is where notifications go: the writer of ``notification_pipe()`` (the
    fast path, wired by ``Client`` when left out), or a hermes-style ``multiprocessing.Queue``
    or Connection, which receive one pickled item each.

    A Gap is sent after LISTEN is active and before any notification of the connection: at
    start when ``fire_on_start`` is true, and after every reconnection. ``implementation``
    chooses the drain loop, "c" or "python"; None uses the module's IMPLEMENTATION.

    After ``health_check_interval`` seconds without input the listener sends the server an
    empty query. No response within ``health_check_timeout`` seconds counts as a lost
    connection, which catches half-open TCP links and stopped backends. Checks cost nothing
    while notifications flow. A lost connection is retried after a jittered delay that
    doubles from about 0.1 s up to ``reconnect_backoff_limit`` seconds and resets after a
    successful connect; ``max_reconnect_attempts`` (None: never give up) bounds the
    consecutive failures before the listener stops with a fatal error. Each interval and
    limit raises InvalidConfigurationException unless it is a positive number.
    """

    initial_reconnect_delay = 0.2
    """Upper bound of the first reconnection delay, in seconds; each delay is drawn from
    [bound / 2, bound] and the bound doubles per failed attempt."""

    def __init__(
        self,
        pg_connector: Any,
        notif_channel: Union[str, Sequence[str]],
        notif_queue: Any = None,
        error_strategy: Any = None,
        error_queue: Any = None,
        fire_on_start: bool = True,
        backoff_limit: float = 16,
        implementation: Optional[str] = None,
        health_check_interval: float = 5.0,
        health_check_timeout: float = 5.0,
        reconnect_backoff_limit: float = 32.0,
        max_reconnect_attempts: Optional[int] = None,
    ) -> None:
        super().__init__(None, error_strategy, error_queue, backoff_limit)
        for name, value in (
            ("health_check_interval", health_check_interval),
            ("health_check_timeout", health_check_timeout),
            ("reconnect_backoff_limit", reconnect_backoff_limit),
        ):
            validate_seconds(name, value)
        if max_reconnect_attempts is not None and (
            isinstance(max_reconnect_attempts, bool) or not isinstance(max_reconnect_attempts, int) or max_reconnect_attempts < 1
        ):
            raise InvalidConfigurationException(
                f"invalid max_reconnect_attempts {max_reconnect_attempts!r}: expected a positive int, or None to retry forever"
            )
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.reconnect_backoff_limit = reconnect_backoff_limit
        self.max_reconnect_attempts = max_reconnect_attempts
        if not isinstance(pg_connector, PostgresConnector):
            pg_connector = PostgresConnector(pg_connector)
        self.pg_connector = pg_connector
        self.notif_channel = notif_channel
        self.channels = _validate_channels(notif_channel)
        self.notif_queue = notif_queue
        self.fire_on_start = fire_on_start
        self.implementation = implementation or IMPLEMENTATION
        backend_class(self.implementation)
        self._init_listener_state()

    def _init_listener_state(self) -> None:
        self._backend: Any = None
        self._pipe_fd: Optional[int] = None
        self._bridge: Optional[threading.Thread] = None
        self._bridge_writer: Optional[NotificationWriter] = None
        self._has_connected = False
        self._failed_attempts = 0
        self._connected_now = False
        self._stale_backend_pid: Optional[int] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        for name in ("_backend", "_pipe_fd", "_bridge", "_bridge_writer", "_has_connected", "_failed_attempts", "_stale_backend_pid", "_connected_now"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._init_listener_state()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} channels={self.channels!r} implementation={self.implementation!r} "
            f"connector={self.pg_connector!r} pid={self.ident}>"
        )

    def start(self) -> None:
        """Start the listener process; raise InvalidConfigurationException without a notif_queue."""
        if self.notif_queue is None:
            raise InvalidConfigurationException(
                f"{self.name} has no notif_queue: pass the writer of hermes_lite.pipes.notification_pipe() "
                "or a multiprocessing.Queue, or add the listener to a Client, which wires one"
            )
        super().start()

    def set_up(self) -> None:
        """Connect, LISTEN on every channel, then send the gap signal that is due."""
        if self._pipe_fd is None:
            self._pipe_fd = self._open_sink()

        # One backend serves every connection of this process, so that frames still queued
        # from the previous connection are written before the new connection's.
        if self._backend is None:
            conninfo = to_conninfo(self.pg_connector.dsn, LISTENER_CONNECTION_DEFAULTS)
            self._backend = backend_class(self.implementation)(conninfo)
        backend = self._backend
        backend.connect()
        for channel in self.channels:
            backend.execute(f"LISTEN {quote_identifier(channel)}")

        pid = backend.backend_pid
        self._terminate_stale_backend()
        control = frames.encode_frame(frames.KIND_SESSION, 0, b"", pid, backend.client_encoding.encode("ascii"))
        if self._has_connected:
            control += frames.encode_frame(frames.KIND_GAP, frames.GAP_RECONNECT, b"", pid, b"")
        elif self.fire_on_start:
            control += frames.encode_frame(frames.KIND_GAP, frames.GAP_START, b"", pid, b"")
        backend.queue(control)

        logger.info(
            "%s listening on %s with the %s backend, backend pid %s%s",
            self.name, self.channels, self.implementation, pid,
            f" (reconnected after {self._failed_attempts} failed attempts)" if self._has_connected else "",
        )
        self.emit_event("reconnected" if self._has_connected else "connected", f"backend pid {pid}")
        self._has_connected = True
        self._connected_now = True
        self._failed_attempts = 0
        self._log_limiter.reset()

    def execute(self, pre_exec_value: Any) -> None:
        """Drain notifications into the pipe until a stop request, a timeout or a lost connection.

        Raises ListenerConnectionError when the connection is lost, which the error
        strategy turns into a reconnection, and PipeClosed when no processor reads.
        """
        backend = self._backend
        status = backend.drain(self._pipe_fd, self.wake_fd, int(self.health_check_interval * 1000))

        if status == DRAIN_WOKEN:
            wake_fd = self.wake_fd
            assert wake_fd is not None  # DRAIN_WOKEN means that drain() saw this descriptor readable
            drain_wake_fd(wake_fd)
        elif status == DRAIN_TIMEOUT:
            pid = backend.backend_pid
            if backend.ping(int(self.health_check_timeout * 1000)) != 0:
                self._stale_backend_pid = pid
                raise ListenerConnectionError(f"health check failed: {backend.error_message}")
        elif status == DRAIN_CONNECTION_LOST:
            raise ListenerConnectionError(self._backend.error_message or "the listening connection was lost")
        elif status == DRAIN_PIPE_CLOSED:
            raise PipeClosed("the processor's end of the notification pipe is closed")

    def tear_down(self) -> None:
        """Close the listening connection; what it had received stays queued in the backend."""
        # NOTE: the backends write only from drain(), which needs a connection, so frames left
        # by a lost connection reach the processor after the next successful connect, just
        # before that connection's gap.
        if self._backend is not None:
            self._backend.close()

    def _terminate_stale_backend(self) -> None:
        """End the backend of a connection that failed its health check, if it still exists.

        A backend that stopped responding (a half-open link, a stopped process) still LISTENs,
        and the server cannot free notification queue space that it has not read. The queue
        then fills, and once it is full every NOTIFY fails. Terminating it needs the same role or
        pg_signal_backend, so a failure is only logged.
        """
        pid, self._stale_backend_pid = self._stale_backend_pid, None
        if pid is None:
            return
        try:
            self._backend.execute(f"SELECT pg_terminate_backend({int(pid)})")
            logger.info("%s terminated its unresponsive previous backend, pid %s", self.name, pid)
        except ListenerQueryError as error:
            logger.warning("%s could not terminate its unresponsive previous backend %s: %s", self.name, pid, error)

    def _handle_error(self, error: Exception) -> Any:
        if not is_connection_error(error):
            return super()._handle_error(error)

        self._failed_attempts += 1
        self.emit_event("disconnected" if self._connected_now else "connection_attempt_failed", str(error))
        self._connected_now = False
        limit = self.max_reconnect_attempts
        if limit is not None and self._failed_attempts > limit:
            message = f"giving up after {limit} failed connection attempts in a row: {error}"
            logger.error("%s: %s", self.name, message)
            self._report(message, True)
            return True, message
        return super()._handle_error(error)

    def next_backoff(self, error: Exception) -> float:
        """Return the delay before the next connection attempt, or the Component backoff for other errors."""
        if not is_connection_error(error):
            return super().next_backoff(error)

        # Jitter spreads the reconnections of many listeners after a server restart.
        exponent = min(self._failed_attempts - 1, 30)
        bound = min(self.reconnect_backoff_limit, self.initial_reconnect_delay * 2**exponent)
        return random.uniform(bound / 2, bound)

    def _open_sink(self) -> int:
        sink = self.notif_queue
        if isinstance(sink, NotificationWriter):
            return sink.prepare()

        if not (hasattr(sink, "put") or isinstance(sink, multiprocessing.connection.Connection)):
            raise InvalidConfigurationException(
                f"invalid notif_queue {sink!r}: expected the writer of notification_pipe(), "
                "a multiprocessing.Queue or a Connection"
            )

        # A hermes-style sink takes Python objects: the drain loop writes frames into a
        # private pipe, and a thread decodes them and hands each item over.
        read_end, write_end = multiprocessing.Pipe(duplex=False)
        self._bridge = threading.Thread(
            target=_forward_items, args=(NotificationReader(read_end), sink), name="hermes-lite-bridge", daemon=True
        )
        self._bridge.start()

        # The writer is kept referenced: once collected, its Connection would close the
        # descriptor that the drain loop writes to.
        self._bridge_writer = NotificationWriter(write_end)
        return self._bridge_writer.prepare()


def _forward_items(reader: NotificationReader, sink: Any) -> None:
    while True:
        try:
            items = reader.read_batch(timeout=None)
        except PipeClosed:
            return
        for item in items:
            send_item(sink, item)
