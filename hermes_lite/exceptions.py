"""Exceptions raised by hermes-lite."""


class HermesLiteError(Exception):
    """Base class of every exception that hermes-lite raises itself."""


class InvalidConfigurationException(HermesLiteError, ValueError):
    """Raised for a configuration value that cannot work; the message names the value and the fix."""


class ListenerConnectionError(HermesLiteError):
    """Raised when the listening connection cannot be opened or is lost.

    The message is libpq's or psycopg2's error text with any password masked.
    """


class ListenerQueryError(HermesLiteError):
    """Raised when the server rejects a command of the listener, such as LISTEN."""


class ClusterError(HermesLiteError):
    """Raised when a throwaway PostgreSQL cluster cannot be created, started or stopped."""
