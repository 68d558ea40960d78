"""Tests of PostgresConnector against real servers: DSN forms, reconnection, role and fork safety."""

import multiprocessing
import urllib.parse

import psycopg2
import pytest

from hermes_lite.connectors import PostgresConnector
from hermes_lite.exceptions import InvalidConfigurationException

PASSWORD = "s3cret-pw"

TIMEOUT = 30.0
"""Seconds to wait for a child process before the test fails instead of hanging."""


def backend_pid(connector):
    with connector.pg_connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def report_backend_pid(connector, results):
    """Run in a forked child: send the backend pid of the child's own connection."""
    results.send(backend_pid(connector))
    connector.disconnect()


@pytest.fixture(autouse=True)
def no_child_left():
    yield
    assert multiprocessing.active_children() == []


@pytest.fixture
def connector(postgres_cluster):
    connector = PostgresConnector(postgres_cluster.dsn)
    yield connector
    connector.disconnect()


def test_connector_dict_with_database_key(postgres_cluster):
    dsn = {
        "database": "postgres",
        "host": postgres_cluster.socket_dir,
        "port": postgres_cluster.port,
        "user": "postgres",
    }
    connector = PostgresConnector(dsn)

    with connector.pg_connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == "postgres"
    connector.disconnect()


def test_connector_conninfo_string(postgres_cluster):
    connector = PostgresConnector(postgres_cluster.dsn)

    assert connector.is_server_master() is True
    connector.disconnect()


def test_connector_uri(postgres_cluster):
    host = urllib.parse.quote(postgres_cluster.socket_dir, safe="")
    uri = f"postgresql://postgres@/postgres?host={host}&port={postgres_cluster.port}"
    connector = PostgresConnector(uri)

    assert connector.is_server_master() is True
    connector.disconnect()


@pytest.mark.parametrize("dsn", ["host=/tmp no_such_option=1", {"host": "/tmp", "colour": "blue"}, 42])
def test_connector_invalid_dsn(dsn):
    with pytest.raises(InvalidConfigurationException):
        PostgresConnector(dsn)


def test_connector_autocommit(connector):
    assert connector.pg_connection.autocommit is True


def test_connector_reuses_connection(connector):
    first = connector.pg_connection

    assert connector.pg_connection is first


def test_connector_reconnects_after_disconnect(connector):
    first_pid = backend_pid(connector)

    connector.disconnect()

    assert backend_pid(connector) != first_pid


def test_connector_reconnects_after_close(connector):
    first_pid = backend_pid(connector)

    connector.pg_connection.close()

    assert connector.pg_connection.closed == 0
    assert backend_pid(connector) != first_pid


def test_connector_reconnects_after_server_ends_session(postgres_cluster, connector):
    first_pid = backend_pid(connector)
    postgres_cluster.execute("SELECT pg_terminate_backend(%s)", (first_pid,))

    with pytest.raises(psycopg2.Error):
        connector.is_server_master()

    assert connector.is_server_master() is True
    assert backend_pid(connector) != first_pid


def test_connector_disconnect_before_connect():
    connector = PostgresConnector("host=/nonexistent dbname=app")

    connector.disconnect()


def test_connector_unreachable_raises():
    connector = PostgresConnector(f"host=/nonexistent dbname=app password={PASSWORD}")

    with pytest.raises(psycopg2.OperationalError) as raised:
        connector.is_server_master()

    assert PASSWORD not in str(raised.value)


def test_connector_primary_is_master(connector):
    assert connector.is_server_master() is True


@pytest.mark.timeout(180)
def test_connector_standby_is_not_master(fresh_postgres_cluster):
    standby = fresh_postgres_cluster.make_standby()
    connector = PostgresConnector(standby.dsn)

    assert connector.is_server_master() is False
    connector.disconnect()


@pytest.mark.parametrize(
    "dsn",
    [
        {"database": "app", "host": "/nonexistent", "user": "app", "password": PASSWORD},
        f"host=/nonexistent dbname=app user=app password={PASSWORD}",
        f"postgresql://app:{PASSWORD}@localhost/app",
        f"postgresql://app@localhost/app?password={PASSWORD}",
    ],
    ids=["dict", "conninfo", "uri", "uri-query"],
)
def test_connector_repr_masks_password(dsn):
    connector = PostgresConnector(dsn)

    assert PASSWORD not in repr(connector)


@pytest.mark.timeout(60)
def test_connector_fork_child_opens_own_connection(connector):
    parent_pid = backend_pid(connector)
    reader, writer = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=report_backend_pid, args=(connector, writer))

    child.start()
    has_result = reader.poll(TIMEOUT)
    child_pid = reader.recv() if has_result else None
    child.join(TIMEOUT)

    assert has_result
    assert child_pid != parent_pid
    assert child.exitcode == 0


@pytest.mark.timeout(60)
def test_connector_parent_works_after_fork_child(connector):
    parent_pid = backend_pid(connector)
    reader, writer = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=report_backend_pid, args=(connector, writer))

    child.start()
    child.join(TIMEOUT)

    assert child.exitcode == 0
    assert backend_pid(connector) == parent_pid
    assert connector.is_server_master() is True
