"""notify(): send a notification with pg_notify(), checking the payload before it reaches the server."""

import logging
from typing import Any

from .dsn import DSN
from .exceptions import InvalidConfigurationException
from .listeners import validate_channel
from .notifications import python_codec

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 7999
"""PostgreSQL rejects a payload of 8000 bytes or more, counted in the server encoding."""


def notify(conn_or_dsn: Any, channel: str, payload: str = "") -> None:
    """Send ``payload`` on ``channel`` with ``pg_notify()``, in its own transaction unless one is open.

    ``conn_or_dsn`` is an open psycopg2 connection or a DSN (dict, conninfo string or URI)
    for a connection opened and closed here. The channel and payload travel as query
    parameters, never as SQL text. Raises InvalidConfigurationException before sending for
    an invalid channel, a payload that is not a str or contains NUL, or a payload of 8000
    bytes or more in the server encoding. Raises psycopg2.Error if the server fails the call.
    """
    validate_channel(channel)
    if not isinstance(payload, str):
        raise InvalidConfigurationException(
            f"invalid payload of type {type(payload).__name__}: expected a str (encode data as text, e.g. JSON)"
        )
    if "\x00" in payload:
        raise InvalidConfigurationException("invalid payload: it contains a NUL character, which PostgreSQL text cannot hold")

    if hasattr(conn_or_dsn, "cursor"):
        _send(conn_or_dsn, channel, payload)
        return

    from .connectors import PostgresConnector

    connector = PostgresConnector(conn_or_dsn)
    try:
        _send(connector.pg_connection, channel, payload)
    finally:
        connector.disconnect()


def _send(connection: Any, channel: str, payload: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_encoding")
        server_encoding = cursor.fetchone()[0]
        size = len(payload.encode(python_codec(server_encoding), "surrogateescape"))
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidConfigurationException(
                f"payload too long: {size} bytes in the server encoding {server_encoding}, "
                f"PostgreSQL accepts at most {MAX_PAYLOAD_BYTES}; send a key and keep the data in a table"
            )
        cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
