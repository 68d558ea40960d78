"""Error strategies: what a component does after one of its steps raised."""

import logging
from typing import Optional, Tuple

from .dsn import mask_password
from .exceptions import InvalidConfigurationException, ListenerConnectionError, ListenerQueryError

logger = logging.getLogger(__name__)

# libpq reports connection failures without an SQLSTATE, so these message fragments are the
# only way to tell a configuration that can never work from an outage that will pass.
_CONFIGURATION_FAILURES = (
    "password authentication failed",
    "no password supplied",
    "peer authentication failed",
    "no pg_hba.conf entry",
    "invalid connection option",
    "invalid sslmode value",
    "invalid port number",
)
_MISSING_OBJECT = "does not exist"  # "database ... does not exist", "role ... does not exist"


class AbstractErrorStrategy:
    """Decides, for an exception raised by a component's step, whether the component stops."""

    def handle_exception(self, error: BaseException) -> Tuple[bool, Optional[str]]:
        """Return ``(should_stop, message)`` for ``error``.

        ``should_stop`` True stops the component for good and reports ``message`` to the
        supervisor; False makes it go back to ``set_up`` after its backoff. Subclasses must
        override this; the base class raises NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement handle_exception(error)")


class CommonErrorStrategy(AbstractErrorStrategy):
    """Retries on lost connections and errors in user code, stops on bad configuration.

    - A lost or refused connection (psycopg2 OperationalError or InterfaceError, or the C
      listener's ListenerConnectionError) is retried, unless its message shows a
      configuration that retrying cannot fix: failed authentication, a missing database
      or role, an invalid connection option.
    - InvalidConfigurationException stops the component.
    - Anything else is logged with its traceback and retried.
    """

    def handle_exception(self, error: BaseException) -> Tuple[bool, Optional[str]]:
        """Return ``(should_stop, message)``; see the class documentation for the rules."""
        message = mask_password(f"{type(error).__name__}: {error}".strip())

        if isinstance(error, InvalidConfigurationException):
            return True, f"invalid configuration, stopping: {message}"

        if is_connection_error(error):
            text = str(error).lower()
            if any(fragment in text for fragment in _CONFIGURATION_FAILURES) or _MISSING_OBJECT in text:
                return True, f"connection settings rejected by the server, stopping: {message}; fix the DSN"
            return False, f"connection failed or lost, reconnecting: {message}"

        if isinstance(error, ListenerQueryError):
            return False, f"the server rejected a listener command, retrying: {message}"

        return False, f"unexpected error, retrying: {message}"


def is_connection_error(error: BaseException) -> bool:
    """Return whether ``error`` is a failed or lost connection rather than a failed command."""
    if isinstance(error, ListenerConnectionError):
        return True

    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        return False
    return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))
