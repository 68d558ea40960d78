"""The pure-Python listener backend over psycopg2, used where the C extension is not built.

It follows the same contract as the C backend (see ``drain``). It waits with poll() on the
connection, the notification pipe and the wake descriptor, reads input and frames every
notification. While the pipe is full it stops reading the socket.
"""

import errno
import logging
import os
import select
import time
from typing import List, Optional

import psycopg2
import psycopg2.extensions

from . import frames
from .drain import DRAIN_CONNECTION_LOST, DRAIN_PIPE_CLOSED, DRAIN_TIMEOUT, DRAIN_WOKEN
from .dsn import mask_password
from .exceptions import ListenerConnectionError, ListenerQueryError

logger = logging.getLogger(__name__)

BATCH_MAX_ITEMS = 16384
"""Maximum number of notifications in one batch frame, as in the C listener."""

BATCH_MAX_BODY = 512 * 1024
"""Largest batch frame body in bytes, as in the C listener; half the reader's frame limit."""

CONNECT_TIMEOUT_SECONDS = 10.0
"""Seconds a connection attempt may take when the DSN sets no connect_timeout."""


class PythonBackend:
    """One listening connection, opened by ``connect()`` and drained by ``drain()``.

    The connection is a psycopg2 asynchronous connection, because only that mode lets a
    connection attempt, a command or a health check give up at a deadline instead of
    blocking on a server that stopped responding.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._connection: Optional[psycopg2.extensions.connection] = None
        self._pending = bytearray()
        self._codec = "utf-8"
        self._sql_codec: Optional[str] = None
        self._client_encoding = "UTF8"
        self.error_message = ""
        self.received = 0

        keywords = psycopg2.extensions.parse_dsn(conninfo)
        self._connect_timeout = float(keywords.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS)

    def connect(self) -> None:
        """Open the connection, closing any previous one.

        Raises ListenerConnectionError (password masked) on failure or after the connect
        timeout. Notifications that the previous connection had received stay queued for
        the next ``drain()``.
        """
        self.close()
        connection = self._open(self._conninfo)

        if connection.info.parameter_status("server_encoding") == "SQL_ASCII":
            # The server stores and sends bytes unchecked, and psycopg2 would replace bytes
            # that are invalid in the client encoding before we see them. LATIN1 maps every
            # byte to one character, so encoding back with latin-1 restores the original.
            connection.close()
            self._conninfo = psycopg2.extensions.make_dsn(self._conninfo, client_encoding="LATIN1")
            connection = self._open(self._conninfo)
            self._codec = "latin-1"
            self._sql_codec = "utf-8"
            self._client_encoding = "SQL_ASCII"
        else:
            self._codec = psycopg2.extensions.encodings.get(connection.encoding, "utf-8")
            self._sql_codec = None
            self._client_encoding = connection.info.parameter_status("client_encoding") or "UTF8"

        self._connection = connection

    def _open(self, conninfo: str) -> psycopg2.extensions.connection:
        try:
            connection = psycopg2.connect(conninfo, async_=True)
        except psycopg2.Error as error:
            raise ListenerConnectionError(mask_password(str(error)).strip()) from None

        try:
            self._wait(connection, time.monotonic() + self._connect_timeout, "connection attempt")
        except ListenerConnectionError:
            connection.close()
            raise
        return connection

    def execute(self, sql: str) -> None:
        """Run one command; raise ListenerConnectionError or ListenerQueryError if it fails."""
        connection = self._require_connection()
        cursor = connection.cursor()
        try:
            # Under SQL_ASCII the channel names must reach the server as the UTF-8 bytes that
            # senders use, not as LATIN1.
            cursor.execute(sql.encode(self._sql_codec) if self._sql_codec else sql)
            self._wait(connection, None, "command")
        except psycopg2.Error as error:
            raise ListenerQueryError(str(error).strip()) from None
        finally:
            cursor.close()

    def ping(self, timeout_ms: int) -> int:
        """Check that the server responds within ``timeout_ms``; return 0 or DRAIN_CONNECTION_LOST.

        Notifications that arrive meanwhile are framed by the next ``drain()``.
        """
        connection = self._require_connection()
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT 1")
            self._wait(connection, time.monotonic() + timeout_ms / 1000, "health check")
        except ListenerConnectionError as error:
            self.error_message = str(error)
            return DRAIN_CONNECTION_LOST
        except psycopg2.Error as error:
            self.error_message = mask_password(str(error)).strip()
            return DRAIN_CONNECTION_LOST
        finally:
            cursor.close()
        return 0

    def _wait(self, connection: psycopg2.extensions.connection, deadline: Optional[float], operation: str) -> None:
        """Drive the connection's pending operation to its end.

        Raises ListenerConnectionError when the connection fails or ``deadline`` (a
        time.monotonic() value, None for none) passes, and the psycopg2 error of a failed
        command otherwise.
        """
        while True:
            try:
                state = connection.poll()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                raise ListenerConnectionError(mask_password(str(error)).strip() or "connection lost") from None
            if state == psycopg2.extensions.POLL_OK:
                return

            poller = select.poll()
            poller.register(connection.fileno(), select.POLLIN if state == psycopg2.extensions.POLL_READ else select.POLLOUT)
            timeout_ms = None
            if deadline is not None:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    raise ListenerConnectionError(f"{operation} timed out: the server did not respond")
            poller.poll(timeout_ms)

    @property
    def backend_pid(self) -> int:
        """The process ID of this connection's backend."""
        return int(self._require_connection().info.backend_pid)

    @property
    def client_encoding(self) -> str:
        """The connection's client encoding, as PostgreSQL names it (for example UTF8)."""
        self._require_connection()
        return self._client_encoding

    def drain(self, pipe_fd: int, wake_fd: int, timeout_ms: int) -> int:
        """Move notifications from the connection into the pipe until something needs Python.

        Returns DRAIN_WOKEN when ``wake_fd`` is readable (its bytes are left for the caller),
        DRAIN_TIMEOUT after ``timeout_ms`` without input (negative: no limit),
        DRAIN_CONNECTION_LOST with ``error_message`` set, or DRAIN_PIPE_CLOSED. ``pipe_fd``
        must be non-blocking.
        """
        connection = self._require_connection()
        timeout: Optional[int] = None if timeout_ms < 0 else timeout_ms
        self._frame_notifies(connection)  # those that arrived during ping() or execute()

        # While frames wait for room in the pipe, the socket is not read: the server keeps the
        # backlog in its notification queue, and nothing is dropped here.
        reading = select.poll()
        reading.register(connection.fileno(), select.POLLIN)
        reading.register(wake_fd, select.POLLIN)
        flushing = select.poll()
        flushing.register(pipe_fd, select.POLLOUT)
        flushing.register(wake_fd, select.POLLIN)

        while True:
            if self._pending:
                events = dict(flushing.poll())
            else:
                events = dict(reading.poll(timeout))

            if wake_fd in events:
                return DRAIN_WOKEN
            if not events:
                return DRAIN_TIMEOUT

            if not self._pending:
                try:
                    connection.poll()
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                    self.error_message = mask_password(str(error)).strip() or "connection lost"
                    return DRAIN_CONNECTION_LOST
                self._frame_notifies(connection)

            status = self._flush(pipe_fd)
            if status:
                return status

    def _frame_notifies(self, connection: psycopg2.extensions.connection) -> None:
        notifies = connection.notifies
        if not notifies:
            return

        for first in range(0, len(notifies), BATCH_MAX_ITEMS):
            self._frame_batch(notifies[first:first + BATCH_MAX_ITEMS])
        self.received += len(notifies)
        del notifies[:]

    def _frame_batch(self, chunk: List[psycopg2.extensions.Notify]) -> None:
        codec = self._codec
        channels = ("\x00".join([notify.channel for notify in chunk]) + "\x00").encode(codec, "surrogateescape")
        payloads = ("\x00".join([notify.payload for notify in chunk]) + "\x00").encode(codec, "surrogateescape")

        # Sizes are known only once encoded, so an oversized chunk is halved and redone.
        if 4 + 4 * len(chunk) + len(channels) + len(payloads) > BATCH_MAX_BODY and len(chunk) > 1:
            middle = len(chunk) // 2
            self._frame_batch(chunk[:middle])
            self._frame_batch(chunk[middle:])
            return
        self._pending += frames.encode_batch([notify.pid for notify in chunk], channels, payloads)

    def queue(self, data: bytes) -> None:
        """Queue ready-made frames behind the pending ones; the next ``drain()`` writes them."""
        self._pending += data

    def _flush(self, pipe_fd: int) -> int:
        """Write pending frames until done or the pipe is full; return 0 or DRAIN_PIPE_CLOSED."""
        pending = self._pending
        while pending:
            try:
                written = os.write(pipe_fd, pending)
            except BlockingIOError:
                return 0
            except OSError as error:
                if error.errno == errno.EPIPE:
                    return DRAIN_PIPE_CLOSED
                raise
            del pending[:written]
        return 0

    def close(self) -> None:
        """Close the connection; safe to call more than once.

        Notifications already received stay queued, and a later ``connect()`` and ``drain()``
        write them to the pipe.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._frame_notifies(connection)
        try:
            connection.close()
        except psycopg2.Error as error:
            logger.debug("ignoring an error while closing the listening connection: %s", error)

    def _require_connection(self) -> psycopg2.extensions.connection:
        if self._connection is None:
            raise ListenerConnectionError("the listener is not connected")
        return self._connection
