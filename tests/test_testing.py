"""Tests of hermes_lite.testing against real PostgreSQL servers started on private unix sockets."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

from hermes_lite import testing
from hermes_lite.exceptions import ClusterError, InvalidConfigurationException
from hermes_lite.testing import PostgresCluster, find_postgres_bindir

REPO_ROOT = Path(__file__).resolve().parents[1]

RUNNING_AS_ROOT = os.geteuid() == 0


def process_gone(pid):
    """Return whether process ``pid`` has exited.

    A zombie counts as gone: a daemonized postmaster is reparented to PID 1, and in some
    containers PID 1 never reaps it.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            stat = stat_file.read()
    except FileNotFoundError:
        return True
    except OSError:
        # No /proc: fall back to signal 0, which reports a zombie as alive.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def wait_for(condition, timeout=30.0, interval=0.05):
    """Poll ``condition`` until it returns true; return False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def open_base_dir():
    """A directory that the postgres user can enter, unlike pytest's tmp_path under root."""
    path = tempfile.mkdtemp(prefix="hermes-lite-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_fake_bindir(directory):
    """Create ``directory`` with executable initdb and pg_ctl stubs that are never run."""
    directory.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        program = directory / name
        program.write_text("#!/bin/sh\nexit 1\n")
        program.chmod(0o755)
    return directory


# -- finding the server programs --------------------------------------------------------------


def test_find_bindir_has_server_programs():
    bindir = find_postgres_bindir()

    assert os.access(os.path.join(bindir, "initdb"), os.X_OK)
    assert os.access(os.path.join(bindir, "pg_ctl"), os.X_OK)


def test_find_bindir_not_found_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(testing, "DEBIAN_BINDIR_PATTERN", str(tmp_path / "*" / "bin"))

    with pytest.raises(ClusterError) as info:
        find_postgres_bindir()

    message = str(info.value)
    assert "initdb and pg_ctl not found" in message
    assert "PATH=''" in message
    assert "pg_config --bindir" in message
    assert str(tmp_path / "*" / "bin") in message
    assert "apt-get install postgresql" in message


def test_find_bindir_newest_version(monkeypatch, tmp_path):
    for version in ("9.6", "10", "15", "not-a-version"):
        make_fake_bindir(tmp_path / version / "bin")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(testing, "DEBIAN_BINDIR_PATTERN", str(tmp_path / "*" / "bin"))

    assert find_postgres_bindir() == str(tmp_path / "15" / "bin")


def test_find_bindir_resolves_path_symlinks(monkeypatch, tmp_path):
    real_bindir = make_fake_bindir(tmp_path / "real" / "bin")
    links = tmp_path / "links"
    links.mkdir()
    for name in ("initdb", "pg_ctl"):
        (links / name).symlink_to(real_bindir / name)
    monkeypatch.setenv("PATH", str(links))

    assert find_postgres_bindir() == str(real_bindir)


def test_find_bindir_through_pg_config(monkeypatch, tmp_path):
    real_bindir = make_fake_bindir(tmp_path / "server" / "bin")
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    pg_config = path_dir / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {real_bindir}\n")
    pg_config.chmod(0o755)
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.setattr(testing, "DEBIAN_BINDIR_PATTERN", str(tmp_path / "none" / "*" / "bin"))

    assert find_postgres_bindir() == str(real_bindir)


def test_explicit_bindir_without_programs(tmp_path):
    with pytest.raises(ClusterError, match="initdb and pg_ctl not found in bindir"):
        PostgresCluster(bindir=str(tmp_path))


# -- a running cluster ---------------------------------------------------------------------------


def test_cluster_select_one(postgres_cluster):
    assert postgres_cluster.is_running()
    assert postgres_cluster.execute("SELECT 1") == [(1,)]


def test_cluster_listens_only_on_socket(postgres_cluster):
    socket_file = os.path.join(postgres_cluster.socket_dir, f".s.PGSQL.{postgres_cluster.port}")

    assert os.path.exists(socket_file)
    assert postgres_cluster.execute("SHOW listen_addresses") == [("",)]
    assert postgres_cluster.execute("SHOW unix_socket_directories") == [(postgres_cluster.socket_dir,)]


def test_cluster_default_settings(postgres_cluster):
    expected = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "wal_level": "replica",
        "max_wal_senders": "4",
        "hot_standby": "on",
        "server_encoding": "UTF8",
        "lc_collate": "C",
    }

    for name, value in expected.items():
        assert postgres_cluster.execute(f"SHOW {name}") == [(value,)], name


def test_dsn_and_dsn_dict_connect(postgres_cluster):
    with psycopg2.connect(postgres_cluster.dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database()")
        assert cursor.fetchone() == ("postgres", "postgres")
    connection.close()

    with psycopg2.connect(**postgres_cluster.dsn_dict) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone() == ("postgres",)
    connection.close()


def test_connect_is_autocommit(postgres_cluster):
    connection = postgres_cluster.connect()
    try:
        assert connection.autocommit
    finally:
        connection.close()


def test_execute_without_rows_returns_none(postgres_cluster):
    assert postgres_cluster.execute("SET application_name = 'x'") is None


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason="the server user only differs when the tests run as root")
def test_server_runs_as_postgres_under_root(postgres_cluster):
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    data_directory = postgres_cluster.execute("SELECT current_setting('data_directory')")[0][0]

    assert os.stat(f"/proc/{postgres_cluster.postmaster_pid}").st_uid == postgres_uid
    assert os.stat(data_directory).st_uid == postgres_uid
    assert os.stat(postgres_cluster.root_dir).st_uid == postgres_uid


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_create_database_encoding(postgres_cluster, encoding):
    name = f"db_{encoding.lower()}"

    dsn = postgres_cluster.create_database(name, encoding=encoding)

    rows = postgres_cluster.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = %s", (name,)
    )
    assert rows == [(encoding, "C")]
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_encoding")
        assert cursor.fetchone() == (encoding,)
    connection.close()
    postgres_cluster.execute(f'DROP DATABASE "{name}"')


def test_create_database_quotes_name(postgres_cluster):
    name = 'odd "name" 100%'

    postgres_cluster.create_database(name)

    assert postgres_cluster.execute("SELECT 1", dbname=name) == [(1,)]
    postgres_cluster.execute('DROP DATABASE "odd ""name"" 100%"')


def test_stop_rejects_unknown_mode(postgres_cluster):
    with pytest.raises(InvalidConfigurationException, match="invalid shutdown mode 'sudden'"):
        postgres_cluster.stop("sudden")

    assert postgres_cluster.is_running()


# -- stopping and restarting -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate", "smart"])
def test_restart_mode(fresh_postgres_cluster, mode):
    cluster = fresh_postgres_cluster
    old_pid = cluster.postmaster_pid

    cluster.restart(mode)

    assert cluster.postmaster_pid != old_pid
    assert wait_for(lambda: process_gone(old_pid))
    assert cluster.execute("SELECT 1") == [(1,)]


def test_restart_fast_keeps_data(fresh_postgres_cluster):
    cluster = fresh_postgres_cluster
    cluster.execute("CREATE TABLE kept (n int)")
    cluster.execute("INSERT INTO kept VALUES (42)")

    cluster.restart("fast")

    assert cluster.execute("SELECT n FROM kept") == [(42,)]


def test_stop_then_start(fresh_postgres_cluster):
    cluster = fresh_postgres_cluster
    data_dir = cluster.data_dir
    old_pid = cluster.postmaster_pid

    cluster.stop()

    assert not cluster.is_running()
    assert cluster.postmaster_pid is None
    assert process_gone(old_pid)
    assert os.path.isdir(data_dir)

    cluster.stop()
    cluster.start()

    assert cluster.data_dir == data_dir
    assert cluster.execute("SELECT 1") == [(1,)]


def test_settings_override_defaults(open_base_dir):
    settings = {"max_connections": 37, "application_name": "it's a test", "fsync": True}

    with PostgresCluster(settings=settings, base_dir=open_base_dir) as cluster:
        assert cluster.execute("SHOW max_connections") == [("37",)]
        assert cluster.execute("SHOW application_name") == [("it's a test",)]
        assert cluster.execute("SHOW fsync") == [("on",)]


def test_invalid_setting_name_rejected():
    with pytest.raises(InvalidConfigurationException, match="invalid PostgreSQL setting name"):
        PostgresCluster(settings={"work_mem = 1\nfsync": "on"})


def test_start_failure_reports_log_and_cleans_up(open_base_dir):
    cluster = PostgresCluster(settings={"shared_buffers": "plenty"}, base_dir=open_base_dir)

    with pytest.raises(ClusterError) as info:
        cluster.start()

    message = str(info.value)
    assert "pg_ctl" in message
    assert "last lines of" in message
    assert "shared_buffers" in message
    assert os.listdir(open_base_dir) == []
    assert cluster.root_dir is None


def test_too_long_socket_path_rejected(open_base_dir):
    long_dir = os.path.join(open_base_dir, "d" * 100)
    os.mkdir(long_dir)
    os.chmod(long_dir, 0o755)

    with pytest.raises(ClusterError, match="longer than 107 bytes"):
        PostgresCluster(base_dir=long_dir).start()

    assert os.listdir(long_dir) == []


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason="only the postgres user can be locked out of a directory")
def test_closed_base_dir_rejected(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)

    with pytest.raises(ClusterError, match="cannot enter"):
        PostgresCluster(base_dir=str(closed)).start()

    assert os.listdir(closed) == []


# -- replication -----------------------------------------------------------------------------


def test_make_standby_and_promote(fresh_postgres_cluster):
    primary = fresh_postgres_cluster
    primary.execute("CREATE TABLE replicated (n int)")
    primary.execute("INSERT INTO replicated VALUES (1)")

    standby = primary.make_standby()

    assert standby.port != primary.port
    assert standby.socket_dir != primary.socket_dir
    assert standby.data_dir.startswith(primary.root_dir + os.sep)
    assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
    assert standby.execute("SELECT n FROM replicated") == [(1,)]

    primary.execute("INSERT INTO replicated VALUES (2)")
    assert wait_for(lambda: standby.execute("SELECT count(*) FROM replicated") == [(2,)])

    standby.promote()

    assert standby.execute("SELECT pg_is_in_recovery()") == [(False,)]
    standby.execute("INSERT INTO replicated VALUES (3)")
    assert standby.execute("SELECT count(*) FROM replicated") == [(3,)]


def test_promote_of_primary_fails(fresh_postgres_cluster):
    with pytest.raises(ClusterError, match="promote"):
        fresh_postgres_cluster.promote()


def test_make_standby_of_stopped_cluster_fails(fresh_postgres_cluster):
    fresh_postgres_cluster.stop()

    with pytest.raises(ClusterError, match="not running"):
        fresh_postgres_cluster.make_standby()


# -- removal and cleanup -----------------------------------------------------------------------


def test_remove_stops_server_and_deletes_dir():
    cluster = PostgresCluster().start()
    standby = cluster.make_standby()
    pids = [cluster.postmaster_pid, standby.postmaster_pid]
    root_dir = cluster.root_dir

    cluster.remove()

    for pid in pids:
        assert process_gone(pid), pid
    assert not os.path.exists(root_dir)
    assert not cluster.is_running()
    assert cluster.postmaster_pid is None
    assert standby.root_dir is None

    cluster.remove()


def test_context_manager_removes_cluster():
    with PostgresCluster() as cluster:
        pid = cluster.postmaster_pid
        root_dir = cluster.root_dir
        assert cluster.execute("SELECT 1") == [(1,)]

    assert process_gone(pid)
    assert not os.path.exists(root_dir)


def test_removed_cluster_has_no_dsn():
    cluster = PostgresCluster().start()
    cluster.remove()

    with pytest.raises(ClusterError, match="call start"):
        cluster.dsn


OWNER_SCRIPT = """
import sys
from hermes_lite.testing import PostgresCluster

cluster = PostgresCluster().start()
standby = cluster.make_standby()
print(cluster.postmaster_pid, standby.postmaster_pid, cluster.root_dir, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(
    "owner_signal",
    [
        # SIGKILL skips atexit, so the watchdog has to clean up.
        signal.SIGKILL,
        # SIGINT raises KeyboardInterrupt, as Ctrl-C does, and atexit cleans up.
        signal.SIGINT,
    ],
    ids=["SIGKILL", "SIGINT"],
)
def test_killed_owner_leaves_no_server(owner_signal):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT],
        cwd=str(REPO_ROOT),
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = owner.stdout.readline()
        assert line, f"the owner process exited with status {owner.wait()} before starting the clusters"
        primary_pid, standby_pid, root_dir = line.split()
        pids = [int(primary_pid), int(standby_pid)]
        for pid in pids:
            assert not process_gone(pid), pid

        owner.send_signal(owner_signal)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdin.close()
        owner.stdout.close()

    for pid in pids:
        assert wait_for(lambda: process_gone(pid)), f"postgres pid {pid} still running"
    assert wait_for(lambda: not os.path.exists(root_dir)), f"{root_dir} not removed"
