"""PostgresConnector: a lazily opened psycopg2 connection that is never shared across a fork."""

import logging
import os
from typing import Any, Dict, List, Optional

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from .dsn import DSN, describe, mask_password, parse_dsn, to_conninfo

logger = logging.getLogger(__name__)

# Connections inherited through fork, kept referenced so that they are never deallocated in
# the child: psycopg2 closes a connection when it is garbage collected, which would end the
# parent's session.
_inherited_connections: List[psycopg2.extensions.connection] = []

CONNECT_TIMEOUT_SECONDS = "10"
"""libpq's connect_timeout unless the DSN sets one; it bounds each connection attempt of a role check."""


class PostgresConnector:
    """Opens and keeps one autocommit psycopg2 connection per process.

    ``dsn`` is the hermes dict (``{'database': ..., 'host': ..., 'user': ...}``), a libpq
    conninfo string or a ``postgresql://`` URI; it is validated here and raises
    InvalidConfigurationException if libpq cannot use it. The connection opens on first use.
    A connection opened in a parent process is never used or closed in a child after a
    fork, because closing it there would end the parent's session: the child opens its own.
    """

    def __init__(self, dsn: DSN, cursor_factory: Any = psycopg2.extras.DictCursor) -> None:
        parse_dsn(dsn)
        self.dsn = dsn
        self.cursor_factory = cursor_factory
        self._connection: Optional[psycopg2.extensions.connection] = None
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe(self.dsn)!r})"

    def __getstate__(self) -> Dict[str, Any]:
        # A connection cannot cross a process boundary; the receiving process opens its own.
        state = self.__dict__.copy()
        state["_connection"] = None
        return state

    @property
    def conninfo(self) -> str:
        """The DSN as a libpq conninfo string (it contains the password: never log it)."""
        return to_conninfo(self.dsn, {"connect_timeout": CONNECT_TIMEOUT_SECONDS})

    @property
    def pg_connection(self) -> psycopg2.extensions.connection:
        """The open autocommit connection of this process, connecting first if needed.

        Raises psycopg2.OperationalError (password masked) if the server cannot be reached.
        """
        self._forget_inherited_connection()
        if self._connection is not None and not self._connection.closed:
            return self._connection

        logger.debug("connecting to %s", describe(self.dsn))
        try:
            connection = psycopg2.connect(self.conninfo, cursor_factory=self.cursor_factory)
        except psycopg2.OperationalError as error:
            raise psycopg2.OperationalError(mask_password(str(error)).strip()) from None
        connection.autocommit = True
        self._connection = connection
        return connection

    def disconnect(self) -> None:
        """Close this process's connection, if open. Safe to call at any time."""
        self._forget_inherited_connection()
        if self._connection is None:
            return

        try:
            self._connection.close()
        except psycopg2.Error as error:
            logger.debug("ignoring an error while closing the connection: %s", error)
        self._connection = None

    def is_server_master(self) -> bool:
        """Return True if the server is a primary, False if it is a standby in recovery.

        Raises psycopg2.Error if the server cannot be reached or the query fails; the
        connection is then closed, so the next call reconnects.
        """
        try:
            with self.pg_connection.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                row = cursor.fetchone()
        except psycopg2.Error:
            self.disconnect()
            raise
        assert row is not None  # a SELECT without FROM returns exactly one row
        return not row[0]

    def _forget_inherited_connection(self) -> None:
        if self._owner_pid == os.getpid():
            return

        # Inherited through fork: set it aside without closing, which would send a Terminate
        # message on the parent's socket.
        if self._connection is not None:
            _inherited_connections.append(self._connection)
        self._connection = None
        self._owner_pid = os.getpid()
