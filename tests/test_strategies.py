"""Tests of the error strategies: which errors stop a component and which are retried."""

import psycopg2
import pytest

from hermes_lite.exceptions import InvalidConfigurationException, ListenerConnectionError, ListenerQueryError
from hermes_lite.strategies import AbstractErrorStrategy, CommonErrorStrategy

PASSWORD = "s3cret-pw"


def test_abstract_strategy_not_implemented():
    with pytest.raises(NotImplementedError):
        AbstractErrorStrategy().handle_exception(ValueError("x"))


@pytest.mark.parametrize(
    "error",
    [
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        psycopg2.OperationalError('connection to server on socket "/tmp/.s.PGSQL.5432" failed: No such file'),
        psycopg2.InterfaceError("connection already closed"),
        ListenerConnectionError("server closed the connection unexpectedly"),
        ListenerQueryError('ERROR:  syntax error at or near "LISTEN"'),
        ValueError("bad payload"),
        RuntimeError("boom"),
    ],
    ids=["closed", "refused", "interface", "listener-lost", "listener-query", "value-error", "runtime-error"],
)
def test_common_strategy_retries(error):
    should_stop, message = CommonErrorStrategy().handle_exception(error)

    assert should_stop is False
    assert message


@pytest.mark.parametrize(
    "error",
    [
        psycopg2.OperationalError('FATAL:  password authentication failed for user "x"'),
        psycopg2.OperationalError('FATAL:  database "missing" does not exist'),
        psycopg2.OperationalError('FATAL:  role "nobody" does not exist'),
        psycopg2.OperationalError('FATAL:  no pg_hba.conf entry for host "[local]", user "x"'),
        ListenerConnectionError('invalid connection option "colour"'),
        InvalidConfigurationException("invalid channel ''"),
    ],
    ids=["password", "database", "role", "pg-hba", "option", "configuration"],
)
def test_common_strategy_stops(error):
    should_stop, message = CommonErrorStrategy().handle_exception(error)

    assert should_stop is True
    assert message


def test_common_strategy_message_names_error():
    _, message = CommonErrorStrategy().handle_exception(ValueError("bad payload 42"))

    assert "ValueError" in message
    assert "bad payload 42" in message


@pytest.mark.parametrize(
    "error",
    [
        psycopg2.OperationalError(f"could not connect with host=/tmp password={PASSWORD} dbname=app"),
        psycopg2.OperationalError(f"FATAL:  password authentication failed, dsn password='{PASSWORD}'"),
        ListenerConnectionError(f"could not connect to postgresql://app:{PASSWORD}@localhost/app"),
        ValueError(f"bad DSN postgresql://app@localhost/app?password={PASSWORD}"),
        InvalidConfigurationException(f"invalid DSN 'password = {PASSWORD} port=x'"),
    ],
    ids=["conninfo", "quoted", "uri", "uri-query", "spaced"],
)
def test_common_strategy_masks_password(error):
    _, message = CommonErrorStrategy().handle_exception(error)

    assert PASSWORD not in message
