"""hermes-lite: supervised processes that react to PostgreSQL NOTIFY, with the hot path in C."""

from .client import Client
from .components import Component
from .connectors import PostgresConnector
from .exceptions import InvalidConfigurationException
from .listeners import IMPLEMENTATION, PostgresNotificationListener
from .notifications import Gap, Notification
from .sending import notify
from .strategies import AbstractErrorStrategy, CommonErrorStrategy

__version__ = "0.1.0"

__all__ = [
    "AbstractErrorStrategy",
    "Client",
    "CommonErrorStrategy",
    "Component",
    "Gap",
    "IMPLEMENTATION",
    "InvalidConfigurationException",
    "Notification",
    "PostgresConnector",
    "PostgresNotificationListener",
    "notify",
]
