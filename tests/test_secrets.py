"""A password given in any DSN form never shows in logs, reprs, errors or command lines."""

import logging
import os
import threading
import time

import psycopg2
import pytest

from hermes_lite import Client, Component, InvalidConfigurationException, PostgresConnector, PostgresNotificationListener
from hermes_lite.dsn import parse_dsn
from hermes_lite.strategies import CommonErrorStrategy

SECRET = "s3cret-Pw-4242"


def dsn_forms(cluster):
    """Return the cluster's DSN with SECRET as password, as a dict, a conninfo string and a URI."""
    socket = cluster.socket_dir
    return {
        "dict": {"host": socket, "port": cluster.port, "database": "postgres", "user": "postgres", "password": SECRET},
        "conninfo": f"host={socket} port={cluster.port} dbname=postgres user=postgres password={SECRET}",
        "uri": f"postgresql://postgres:{SECRET}@/postgres?host={socket}&port={cluster.port}",
    }


class Idle(Component):
    def execute(self, batch):
        pass


def process_command_lines():
    """Return the command lines of every process on the machine."""
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    lines.append(cmdline.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return lines


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["dict", "conninfo", "uri"])
def test_password_never_shown(postgres_cluster, tmp_path, form):
    dsn = dsn_forms(postgres_cluster)[form]
    log_file = tmp_path / "all.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    texts = []
    try:
        # A running client, whose forked components inherit the log handler.
        client = Client(dsn)
        listener = PostgresNotificationListener(dsn, "secret_ch", health_check_interval=0.5)
        client.add_listener(listener)
        client.add_processor(Idle())
        supervisor = threading.Thread(target=client.start)
        supervisor.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not postgres_cluster.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"secret_ch\"'"
            )[0][0]:
                time.sleep(0.05)
            # A reconnection logs the lost connection's error.
            postgres_cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN \"secret_ch\"'")
            time.sleep(1.5)
            texts += [repr(client), str(client), repr(listener), repr(client.processor), repr(client.master_pg_conn)]
            texts += process_command_lines()
        finally:
            client.stop()
            supervisor.join(60)

        # Failures: a server that cannot be reached, and a DSN that libpq rejects.
        unreachable = {**parse_dsn(dsn), "host": str(tmp_path), "port": "1"}
        with pytest.raises(psycopg2.OperationalError) as connect_error:
            PostgresConnector(unreachable).pg_connection
        texts.append(str(connect_error.value))
        texts.append(str(CommonErrorStrategy().handle_exception(connect_error.value)))
        with pytest.raises(InvalidConfigurationException) as invalid:
            PostgresConnector({**parse_dsn(dsn), "bogus_option": "1"})
        texts.append(str(invalid.value))
        failing_client = Client(unreachable)
        texts.append(repr(failing_client))
        failing_client.execute_role_based_procedure()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    logged = log_file.read_text()
    assert "listening on" in logged
    assert "reconnect" in logged
    assert "role check failed" in logged
    assert SECRET not in logged
    for text in texts:
        assert SECRET not in text, text
