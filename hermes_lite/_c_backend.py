"""The listener backend over the C extension hermes_lite._listener, which frames notifications
without the GIL; the pure-Python backend has the same interface."""

import logging
import os

import psycopg2.extensions

from ._listener import ffi, lib
from .dsn import mask_password
from .exceptions import ListenerConnectionError, ListenerQueryError

logger = logging.getLogger(__name__)


class CBackend:
    """One listening connection, opened by ``connect()`` and drained by ``drain()``.

    Not thread-safe: call its methods from one thread at a time. cffi releases the GIL
    during every C call, so other threads run while ``drain()`` waits.
    """

    def __init__(self, conninfo: str) -> None:
        listener = lib.hl_listener_new(conninfo.encode("utf-8"))
        if listener == ffi.NULL:
            raise MemoryError("cannot allocate the C listener")
        self._listener = ffi.gc(listener, lib.hl_listener_free)
        self._connected = False

    def connect(self) -> None:
        """Open the connection, closing any previous one.

        Raises ListenerConnectionError with libpq's message, password masked. Notifications
        that the previous connection had received stay queued for the next ``drain()``.
        """
        self._connected = False
        result = lib.hl_listener_connect(self._listener)
        if result == lib.HL_ERROR_NO_MEMORY:
            raise MemoryError(self.error_message)
        if result != lib.HL_OK:
            raise ListenerConnectionError(self.error_message)
        self._connected = True
        logger.debug("listener connected, backend pid %d", self.backend_pid)

    def execute(self, sql: str) -> None:
        """Run one command, such as ``LISTEN "channel"``.

        Raises ListenerConnectionError when not connected or the connection broke, and
        ListenerQueryError when the server rejected the command.
        """
        self._require_connection()
        result = lib.hl_listener_exec(self._listener, sql.encode(self._python_encoding()))
        if result == lib.HL_OK:
            return
        if result == lib.HL_ERROR_QUERY:
            raise ListenerQueryError(self.error_message)
        if result == lib.HL_ERROR_NO_MEMORY:
            raise MemoryError(self.error_message)
        raise ListenerConnectionError(self.error_message)

    @property
    def backend_pid(self) -> int:
        """The process ID of this connection's backend; ListenerConnectionError when not connected."""
        self._require_connection()
        return int(lib.hl_listener_backend_pid(self._listener))

    @property
    def client_encoding(self) -> str:
        """The connection's client encoding as PostgreSQL names it (for example UTF8).

        Raises ListenerConnectionError when not connected.
        """
        self._require_connection()
        name = lib.hl_listener_client_encoding(self._listener)
        if name == ffi.NULL:
            raise ListenerConnectionError("the listener is not connected")
        encoding: bytes = ffi.string(name)
        return encoding.decode("ascii", errors="replace")

    @property
    def error_message(self) -> str:
        """The text of the last error, password masked; empty when there was none."""
        text = ffi.string(lib.hl_listener_error_message(self._listener))
        return mask_password(text.decode("utf-8", errors="replace"))

    @property
    def received(self) -> int:
        """Number of notifications framed since this backend was created."""
        return int(lib.hl_listener_received(self._listener))

    def ping(self, timeout_ms: int) -> int:
        """Check that the server responds within ``timeout_ms``; return 0 or DRAIN_CONNECTION_LOST.

        On DRAIN_CONNECTION_LOST ``error_message`` gives the reason. Raises ListenerConnectionError
        when not connected, OSError when poll() fails.
        """
        self._require_connection()
        status = lib.hl_listener_ping(self._listener, timeout_ms)
        if status == lib.HL_DRAIN_ERROR:
            code = ffi.errno
            raise OSError(code, f"{os.strerror(code)} ({self.error_message})")
        return int(status)

    def queue(self, data: bytes) -> None:
        """Queue ready-made frames behind the pending ones; the next ``drain()`` writes them."""
        if lib.hl_listener_queue(self._listener, data, len(data)) != lib.HL_OK:
            raise MemoryError(self.error_message)

    def drain(self, pipe_fd: int, wake_fd: int, timeout_ms: int) -> int:
        """Move notifications from the connection into the pipe until something needs Python.

        Returns a code of hermes_lite.drain:

        - DRAIN_WOKEN when ``wake_fd`` is readable. Its bytes are left for the caller, and frames
          that the full pipe could not take stay queued for the next call.
        - DRAIN_TIMEOUT after ``timeout_ms`` without socket input or pipe progress. A negative
          ``timeout_ms`` waits without limit.
        - DRAIN_CONNECTION_LOST with ``error_message`` set.
        - DRAIN_PIPE_CLOSED when the reader is gone. Unwritten frames are then discarded.

        TIMEOUT and CONNECTION_LOST come only after every frame is written.

        ``pipe_fd`` must be non-blocking and the same pipe on every call. Raises
        ListenerConnectionError when not connected, and OSError when poll() or write() fails
        for another reason than a full or closed pipe.
        """
        self._require_connection()
        status = lib.hl_listener_drain(self._listener, pipe_fd, wake_fd, timeout_ms)
        if status == lib.HL_DRAIN_ERROR:
            code = ffi.errno
            raise OSError(code, f"{os.strerror(code)} ({self.error_message})")
        return int(status)

    def close(self) -> None:
        """Close the connection; safe to call more than once.

        Notifications already received stay queued, and a later ``connect()`` and ``drain()``
        write them to the pipe.
        """
        lib.hl_listener_close(self._listener)
        self._connected = False

    def _require_connection(self) -> None:
        if not self._connected:
            raise ListenerConnectionError("the listener is not connected")

    def _python_encoding(self) -> str:
        # SQL text goes to the server in the client encoding. SQL_ASCII passes bytes through
        # unchecked, so it gets UTF-8, as do names without a Python codec. The pure-Python
        # backend makes the same choice.
        name = self.client_encoding
        if name == "SQL_ASCII":
            return "utf-8"
        return psycopg2.extensions.encodings.get(name, "utf-8")
