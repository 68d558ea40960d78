"""Connection strings: the hermes dict, libpq conninfo strings and URIs, and password masking."""

import logging
import re
from typing import Any, Dict, Mapping, Optional, Union

from .exceptions import InvalidConfigurationException

logger = logging.getLogger(__name__)

DSN = Union[str, Mapping[str, Any]]

# The hermes documentation spells the database name "database", as psycopg2.connect() accepts
# it; libpq itself accepts only "dbname".
_KEYWORD_ALIASES = {"database": "dbname"}

# TCP keepalives detect a peer that vanished without closing the connection. libpq leaves them
# to the kernel defaults (first probe after two hours on Linux), far too late for a listener that
# would otherwise wait forever. These apply to TCP connections only; libpq ignores them for unix
# sockets. connect_timeout bounds each connection attempt to one host.
LISTENER_CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

MASK = "********"

_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"((?:postgres|postgresql)://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)
_URI_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&\s]*)", re.IGNORECASE)


def mask_password(text: str) -> str:
    """Return ``text`` with every password in a conninfo string or URI inside it masked.

    Masks ``password=...`` (quoted or not), ``postgresql://user:secret@`` and a ``password``
    query parameter. Text without a password is returned unchanged.
    """
    text = _URI_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    text = _URI_QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def parse_dsn(dsn: DSN) -> Dict[str, str]:
    """Return the libpq keywords of ``dsn``, a dict, a conninfo string or a URI.

    Raises InvalidConfigurationException, naming the value (password masked) and what is
    valid, for an unknown keyword, a value that is neither text nor a number, or a string
    that libpq cannot parse. Nothing is connected.
    """
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn as libpq_parse

    if isinstance(dsn, str):
        try:
            return dict(libpq_parse(dsn))
        except ProgrammingError as error:
            raise InvalidConfigurationException(
                f"invalid DSN {mask_password(dsn)!r}: {str(error).strip()}; expected a libpq "
                "conninfo string such as 'host=/tmp dbname=app user=app' or a URI such as "
                "'postgresql://app@localhost/app'"
            ) from None

    if not isinstance(dsn, Mapping):
        raise InvalidConfigurationException(
            f"invalid DSN of type {type(dsn).__name__}: expected a dict of libpq keywords, "
            "a conninfo string or a postgresql:// URI"
        )

    keywords: Dict[str, str] = {}
    for key, value in dsn.items():
        if value is None:
            continue
        name = _KEYWORD_ALIASES.get(key, key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            shown = MASK if name == "password" else repr(value)
            raise InvalidConfigurationException(
                f"invalid DSN value for {key!r}: {shown} of type {type(value).__name__}; "
                "libpq expects text or a number"
            )
        keywords[name] = str(value)

    try:
        from psycopg2.extensions import make_dsn

        return dict(libpq_parse(make_dsn(**keywords)))
    except ProgrammingError as error:
        raise InvalidConfigurationException(
            f"invalid DSN keys {sorted(keywords)}: {str(error).strip()}; use libpq keywords "
            "such as host, port, dbname (or database), user, password"
        ) from None


def to_conninfo(dsn: DSN, defaults: Optional[Mapping[str, str]] = None) -> str:
    """Return ``dsn`` as a libpq conninfo string, adding ``defaults`` for keywords it leaves out.

    Raises InvalidConfigurationException like ``parse_dsn``.
    """
    from psycopg2.extensions import make_dsn

    keywords = parse_dsn(dsn)
    for key, value in (defaults or {}).items():
        keywords.setdefault(key, value)

    return str(make_dsn(**keywords))


def describe(dsn: DSN) -> str:
    """Return a one-line description of ``dsn`` for logs and reprs, with the password masked."""
    if isinstance(dsn, str):
        return mask_password(dsn)

    if isinstance(dsn, Mapping):
        parts = []
        for key, value in dsn.items():
            shown = MASK if _KEYWORD_ALIASES.get(key, key) == "password" else value
            parts.append(f"{key}={shown}")
        return " ".join(parts)

    return f"<{type(dsn).__name__}>"
