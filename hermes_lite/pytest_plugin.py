"""Pytest fixtures that provide throwaway PostgreSQL clusters.

Enable them with ``pytest_plugins = ["hermes_lite.pytest_plugin"]`` in a conftest.py.
"""

from typing import Iterator

import pytest

from hermes_lite.testing import PostgresCluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Yield one running PostgresCluster shared by every test of the session.

    Tests must not stop, restart or reconfigure it, because later tests expect it as it was;
    use ``fresh_postgres_cluster`` for that. Raises ClusterError at setup when PostgreSQL is not
    installed or the server fails to start.
    """
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_postgres_cluster() -> Iterator[PostgresCluster]:
    """Yield a running PostgresCluster of its own to one test, removed after it.

    Meant for tests that stop, restart, promote or break the server. Raises ClusterError at
    setup when PostgreSQL is not installed or the server fails to start.
    """
    with PostgresCluster() as cluster:
        yield cluster
