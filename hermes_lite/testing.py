"""Throwaway PostgreSQL clusters on a private unix socket, for the tests of hermes-lite and of its users.

A cluster lives in a fresh temporary directory and is removed with it. POSIX only, because the
server is reached through a unix socket and, under root, runs as the ``postgres`` system user.
"""

import atexit
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from hermes_lite.exceptions import ClusterError, InvalidConfigurationException

if TYPE_CHECKING:
    # psycopg2 is imported in connect() only, so that the rest works without it.
    import psycopg2.extensions

logger = logging.getLogger(__name__)

SERVER_USER = "postgres"
"""The system user that runs the server when this process is root, and the database superuser."""

STOP_MODES = ("smart", "fast", "immediate")

# Search locations of find_postgres_bindir after PATH, in this order. They are module attributes
# so that tests can replace them.
PG_CONFIG_NAME = "pg_config"
DEBIAN_BINDIR_PATTERN = "/usr/lib/postgresql/*/bin"

# Seconds that any one initdb, pg_ctl or pg_basebackup run may take before it counts as hung.
# pg_ctl's own wait (-w) gives up after 60 seconds, which stays below this.
COMMAND_TIMEOUT = 180

# Linux limits a unix socket path to 107 bytes (sun_path is 108 bytes with the final NUL), and
# PostgreSQL refuses to start with a longer one. Other systems allow fewer, and there the
# server's own error appears in the ClusterError of start().
MAX_SOCKET_PATH_BYTES = 107

LOG_TAIL_LINES = 30

# Settings for a test server: durability is traded for speed because the data is thrown away,
# and WAL is kept rich enough for pg_basebackup and a streaming standby.
DEFAULT_SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
}

# The watchdog is a separate Python process whose stdin is a pipe from the process that owns the
# clusters. The pipe reaches EOF when the owner exits in any way, SIGKILL included, and the watchdog
# then stops every server registered with it and deletes the directory tree. Before EOF, the owner
# may send "watch <data_dir>" to add the data directory of a standby, or "detach" after it has
# removed the clusters itself. The watchdog runs in its own session so that Ctrl-C in a terminal
# reaches only the owner, whose atexit handler then does the cleanup.
_WATCHDOG_SOURCE = r"""
import os, pwd, shutil, signal, subprocess, sys, time

pg_ctl, server_user, root_dir, data_dir = sys.argv[1:5]
data_dirs = [data_dir]
for line in sys.stdin:
    command, _, argument = line.rstrip("\n").partition(" ")
    if command == "detach":
        sys.exit(0)
    if command == "watch":
        data_dirs.append(argument)

run_options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
if server_user:
    entry = pwd.getpwnam(server_user)
    run_options.update(user=entry.pw_uid, group=entry.pw_gid,
                       extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid), cwd="/")

# Standbys were added after their primary, so they are stopped first.
for directory in reversed(data_dirs):
    try:
        with open(os.path.join(directory, "postmaster.pid")) as pid_file:
            pid = int(pid_file.readline())
    except (OSError, ValueError):
        continue
    try:
        subprocess.run([pg_ctl, "stop", "-w", "-m", "immediate", "-D", directory], timeout=90, **run_options)
    except (OSError, subprocess.SubprocessError):
        pass

    # If pg_ctl failed, kill the postmaster. Its backends exit when they notice that it is gone.
    if os.path.exists(os.path.join(directory, "postmaster.pid")):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)

shutil.rmtree(root_dir, ignore_errors=True)
"""

_registry_lock = threading.Lock()
_started_clusters: Set["PostgresCluster"] = set()


def find_postgres_bindir() -> str:
    """Return the directory that contains the PostgreSQL server programs ``initdb`` and ``pg_ctl``.

    Searched in this order: PATH (symlinks are resolved, so that the other programs of the same
    installation are found too), then ``pg_config --bindir``, then the newest version directory
    that matches ``/usr/lib/postgresql/*/bin``, where Debian and Ubuntu install the server.
    Raises ClusterError naming every place searched when none of them has both programs.
    """
    searched = []

    initdb = shutil.which("initdb")
    if initdb:
        for candidate in (os.path.dirname(os.path.realpath(initdb)), os.path.dirname(initdb)):
            if _has_server_programs(candidate):
                return candidate
    searched.append(f"PATH={os.environ.get('PATH', '')!r}")

    pg_config = shutil.which(PG_CONFIG_NAME)
    if pg_config:
        bindir = _read_pg_config_bindir(pg_config)
        if bindir and _has_server_programs(bindir):
            return bindir
        searched.append(f"{pg_config} --bindir (returned {bindir!r})")
    else:
        searched.append(f"{PG_CONFIG_NAME} --bindir ({PG_CONFIG_NAME} not found on PATH)")

    candidates = sorted(glob.glob(DEBIAN_BINDIR_PATTERN), key=_version_sort_key, reverse=True)
    for candidate in candidates:
        if _has_server_programs(candidate):
            return candidate
    searched.append(f"{DEBIAN_BINDIR_PATTERN} ({len(candidates)} matching directories)")

    raise ClusterError(
        "PostgreSQL server programs initdb and pg_ctl not found; searched "
        + ", ".join(searched)
        + ". Install the PostgreSQL server, e.g. apt-get install postgresql, "
        "or pass bindir= to PostgresCluster."
    )


def _has_server_programs(directory: str) -> bool:
    return all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl"))


def _read_pg_config_bindir(pg_config: str) -> Optional[str]:
    try:
        completed = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("%s --bindir failed: %s", pg_config, exc)
        return None

    return completed.stdout.strip() or None


def _version_sort_key(bindir: str) -> Tuple[int, ...]:
    """Turn ``/usr/lib/postgresql/9.6/bin`` into ``(9, 6)``; a name that is no version sorts below all versions."""
    version = os.path.basename(os.path.dirname(bindir))
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def _server_user_entry() -> Optional[pwd.struct_passwd]:
    """Return the account to run the server as: None unless this process is root.

    Raises ClusterError when this process is root and the account does not exist, because
    PostgreSQL refuses to run as root.
    """
    if os.geteuid() != 0:
        return None

    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterError(
            f"the PostgreSQL server cannot run as root, and no {SERVER_USER!r} system user exists "
            f"to run it as; create one (e.g. adduser --system --group {SERVER_USER}) or run the "
            "tests as a non-root user"
        ) from None


def _pick_free_port() -> int:
    # The server listens only on its socket file by default, but that file is named after the
    # port, and a free TCP port stays usable if the settings turn on listen_addresses.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _quote_setting_value(value: object) -> str:
    if isinstance(value, bool):
        text = "on" if value else "off"
    else:
        text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_conninfo_value(value: object) -> str:
    text = str(value)
    if text and not any(char in text for char in " '\\\t\n"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _validate_settings(settings: Dict[str, object]) -> None:
    for name, value in settings.items():
        if not name or not all(char.isalnum() or char in "_." for char in name) or not name.isascii():
            raise InvalidConfigurationException(
                f"invalid PostgreSQL setting name {name!r}: expected letters, digits, '_' and '.'"
            )
        if any(char in str(value) for char in "\n\r\0"):
            raise InvalidConfigurationException(
                f"invalid value {value!r} for PostgreSQL setting {name!r}: line breaks and NUL are not allowed"
            )


def _validate_stop_mode(mode: str) -> None:
    if mode not in STOP_MODES:
        raise InvalidConfigurationException(
            f"invalid shutdown mode {mode!r}: expected one of {', '.join(STOP_MODES)}"
        )


def _register(cluster: "PostgresCluster") -> None:
    with _registry_lock:
        _started_clusters.add(cluster)


def _unregister(cluster: "PostgresCluster") -> None:
    with _registry_lock:
        _started_clusters.discard(cluster)


@atexit.register
def _remove_started_clusters() -> None:
    """Stop and delete every cluster this process started and did not remove, at interpreter exit."""
    with _registry_lock:
        clusters = list(_started_clusters)

    for cluster in clusters:
        try:
            cluster.remove(mode="immediate")
        except Exception:
            # The watchdog still has the pipe open and cleans up once this process has exited.
            logger.exception("failed to remove PostgreSQL cluster in %s at exit", cluster.root_dir)


class _ClusterPaths(NamedTuple):
    """The locations of a started cluster: PostgresCluster's optional attributes, none of them None."""

    root_dir: str
    data_dir: str
    socket_dir: str
    log_file: str
    port: int


class PostgresCluster:
    """A PostgreSQL cluster in a fresh temporary directory, reachable only through a unix socket.

    ``start()`` runs initdb and starts the server; ``remove()`` stops it and deletes the
    directory. Clusters not removed by their owner are removed at interpreter exit, and by a
    watchdog process when the owner dies without running atexit handlers (SIGKILL, os._exit).
    The superuser is ``postgres`` and every local connection is trusted, so use it only for tests.

    Attributes ``root_dir``, ``data_dir``, ``socket_dir``, ``port`` and ``log_file`` are None until
    ``start()``. The socket file is ``<socket_dir>/.s.PGSQL.<port>``.
    """

    def __init__(
        self,
        *,
        bindir: Optional[str] = None,
        settings: Optional[Dict[str, object]] = None,
        encoding: str = "UTF8",
        locale: str = "C",
        base_dir: Optional[str] = None,
    ) -> None:
        """Check the arguments; nothing is created before ``start()``.

        ``settings`` are extra postgresql.conf parameters that override the defaults of this
        module, such as ``{"listen_addresses": "127.0.0.1"}``. ``base_dir`` is where the temporary
        directory is created, the system default if None. Under root the server runs as the
        ``postgres`` system user. Raises ClusterError when ``bindir`` (or, if None, every place
        that find_postgres_bindir searches) lacks initdb and pg_ctl, or when this process is
        root and the ``postgres`` user does not exist, and InvalidConfigurationException for
        an invalid setting.
        """
        if bindir is None:
            bindir = find_postgres_bindir()
        elif not _has_server_programs(bindir):
            raise ClusterError(f"initdb and pg_ctl not found in bindir {bindir!r}")

        self.bindir = bindir
        self.settings = dict(settings or {})
        _validate_settings(self.settings)
        self.encoding = encoding
        self.locale = locale
        self.base_dir = base_dir

        self.root_dir: Optional[str] = None
        self.data_dir: Optional[str] = None
        self.socket_dir: Optional[str] = None
        self.port: Optional[int] = None
        self.log_file: Optional[str] = None

        self._server_user = _server_user_entry()
        self._watchdog: Optional["subprocess.Popen[bytes]"] = None
        self._primary: Optional["PostgresCluster"] = None
        self._standbys: List["PostgresCluster"] = []

    def __enter__(self) -> "PostgresCluster":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<PostgresCluster data_dir={self.data_dir!r} port={self.port!r}>"

    # -- connection parameters -------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The libpq conninfo string of the ``postgres`` database. Raises ClusterError before ``start()``."""
        return self.dsn_for("postgres")

    @property
    def dsn_dict(self) -> Dict[str, object]:
        """The connection parameters as keyword arguments of ``psycopg2.connect``.

        Raises ClusterError before ``start()``.
        """
        paths = self._started_paths()
        return {"host": paths.socket_dir, "port": paths.port, "dbname": "postgres", "user": SERVER_USER}

    def dsn_for(self, dbname: str) -> str:
        """Return the libpq conninfo string of database ``dbname``. Raises ClusterError before ``start()``."""
        paths = self._started_paths()
        parameters = {"host": paths.socket_dir, "port": paths.port, "dbname": dbname, "user": SERVER_USER}
        return " ".join(f"{key}={_quote_conninfo_value(value)}" for key, value in parameters.items())

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> "psycopg2.extensions.connection":
        """Open a psycopg2 connection in autocommit mode to database ``dbname``.

        ``kwargs`` are passed to ``psycopg2.connect``. Raises ClusterError when psycopg2 is
        not installed or the cluster was never started, and psycopg2's OperationalError when
        the server does not accept the connection.
        """
        try:
            import psycopg2
        except ImportError as exc:
            raise ClusterError(
                "psycopg2 is required to connect to the test cluster; pip install psycopg2-binary"
            ) from exc

        # psycopg2.connect() is typed Any here, because Any kwargs could match any of its overloads.
        connection: psycopg2.extensions.connection = psycopg2.connect(self.dsn_for(dbname), **kwargs)
        connection.autocommit = True
        return connection

    def execute(
        self, sql: str, params: Optional[Sequence[object]] = None, dbname: str = "postgres"
    ) -> Optional[List[Tuple[Any, ...]]]:
        """Run one statement on a new connection and return its rows, or None if it returns none.

        Errors are those of ``connect()`` and psycopg2's for the statement.
        """
        connection = self.connect(dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if cursor.description is None:
                    return None
                return cursor.fetchall()
        finally:
            connection.close()

    def create_database(
        self, name: str, encoding: str = "UTF8", template: str = "template0", locale: str = "C"
    ) -> str:
        """Create database ``name`` and return its conninfo string.

        template0 is the default template because only it accepts an encoding or locale other
        than those of template1. Raises psycopg2's errors when the server rejects the command,
        for example for an encoding that does not match the locale.
        """
        self.execute(
            # psycopg2 interpolates the parameters on the client, so a % in a name is doubled.
            f"CREATE DATABASE {_quote_identifier(name)} TEMPLATE {_quote_identifier(template)}".replace("%", "%%")
            + " ENCODING %s LC_COLLATE %s LC_CTYPE %s",
            (encoding, locale, locale),
        )
        logger.info("created database %s with encoding %s in %s", name, encoding, self.data_dir)
        return self.dsn_for(name)

    # -- server lifecycle --------------------------------------------------------------------

    def start(self) -> "PostgresCluster":
        """Create the cluster on the first call, then start the server if it is not running.

        A cluster removed with ``remove()`` is created afresh in a new directory. Returns self.
        Raises ClusterError when initdb or the server fails. The message contains the output of
        the failed program and the tail of the server log, and a cluster that was being created
        is removed again.
        """
        if self.root_dir is None:
            try:
                self._create_root_dir(self.base_dir)
                self._initdb()
                self._write_settings({**DEFAULT_SETTINGS, **self._location_settings(), **self.settings})
                self._allow_local_replication()
                self._start_server()
            except BaseException:
                self._discard_after_failure()
                raise
            return self

        if not self.is_running():
            self._start_server()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until the postmaster has exited; the data stays.

        ``mode`` is pg_ctl's shutdown mode: ``smart`` waits for clients to disconnect, ``fast``
        disconnects them, ``immediate`` kills them and leaves crash recovery to the next
        start. Does nothing when the server is not running. Raises ClusterError when pg_ctl
        fails and InvalidConfigurationException for an unknown mode.
        """
        _validate_stop_mode(mode)
        if not self.is_running():
            return

        self.pg_ctl("stop", "-w", "-m", mode)
        logger.info("stopped PostgreSQL server in %s (mode %s)", self.data_dir, mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with shutdown ``mode`` (see ``stop()``) and start it again.

        Raises ClusterError before ``start()`` or when pg_ctl fails, with the server log tail.
        """
        _validate_stop_mode(mode)
        paths = self._started_paths()

        self._run_pg_ctl_with_log("restart", "-w", "-m", mode, "-l", paths.log_file)
        logger.info("restarted PostgreSQL server in %s (mode %s), pid %s", self.data_dir, mode, self.postmaster_pid)

    def promote(self) -> None:
        """Promote this standby to a primary and wait until it accepts writes.

        Raises ClusterError when pg_ctl fails, for example because the server is not a standby.
        """
        self._started_paths()

        self.pg_ctl("promote", "-w")
        logger.info("promoted standby in %s", self.data_dir)

    def make_standby(self) -> "PostgresCluster":
        """Create and start a streaming standby of this running cluster and return it.

        The standby is copied with ``pg_basebackup -R`` into a new directory inside this
        cluster's directory and gets its own port and socket. ``remove()`` of this cluster
        removes the standby too. Raises ClusterError when this server is not running or
        pg_basebackup or the standby's start fails; a half-made standby is removed.
        """
        if not self.is_running():
            raise ClusterError(f"cannot make a standby of {self.data_dir!r}: the server is not running")
        paths = self._started_paths()

        standby = PostgresCluster(
            bindir=self.bindir, settings=self.settings, encoding=self.encoding, locale=self.locale
        )
        standby._primary = self
        self._standbys.append(standby)

        try:
            standby._create_root_dir(paths.root_dir, prefix="standby-")
            standby_paths = standby._started_paths()
            standby._send_to_watchdog(f"watch {standby_paths.data_dir}")
            standby.run_as_server_user(
                [
                    "pg_basebackup", "-D", standby_paths.data_dir, "-R", "-X", "stream", "-c", "fast",
                    "--no-sync", "-h", paths.socket_dir, "-p", str(paths.port), "-U", SERVER_USER,
                ]
            )

            # The copied postgresql.conf names this cluster's port and socket directory, so the
            # standby's own values are appended, where they override the copied ones.
            standby._write_settings(standby._location_settings())
            standby._start_server()
        except BaseException:
            standby._discard_after_failure()
            raise

        logger.info("started standby of %s in %s", self.data_dir, standby.data_dir)
        return standby

    def remove(self, mode: str = "immediate") -> None:
        """Stop the server with shutdown ``mode`` and delete the cluster's directory and standbys.

        Does nothing for a cluster that is not started or already removed. Raises ClusterError
        when the server cannot be stopped or the directory cannot be deleted. A server that cannot
        be stopped keeps its directory, because without it pg_ctl could no longer stop the server.
        """
        if self.root_dir is None:
            return

        for standby in list(self._standbys):
            standby.remove(mode)
        self.stop(mode)

        try:
            shutil.rmtree(self.root_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ClusterError(f"failed to delete the cluster directory {self.root_dir!r}: {exc}") from exc
        logger.info("removed PostgreSQL cluster in %s", self.root_dir)

        self._detach_watchdog()
        _unregister(self)
        if self._primary is not None and self in self._primary._standbys:
            self._primary._standbys.remove(self)
        self.root_dir = self.data_dir = self.socket_dir = self.log_file = None
        self.port = None

    @property
    def postmaster_pid(self) -> Optional[int]:
        """The postmaster's process id from postmaster.pid, or None when that file is missing.

        The file outlives a postmaster that was killed with SIGKILL; ``is_running()`` checks
        that the process is still there.
        """
        if self.data_dir is None:
            return None

        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as pid_file:
                return int(pid_file.readline())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        """Return whether the postmaster runs, as ``pg_ctl status`` reports it."""
        if self.data_dir is None or not os.path.isdir(self.data_dir):
            return False

        # Exit status 0 is running, 3 not running and 4 no usable data directory.
        return self.pg_ctl("status", check=False).returncode == 0

    # -- running server programs -------------------------------------------------------------

    def pg_ctl(self, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
        """Run ``pg_ctl -D <data_dir> *args`` as the server user and return its result.

        Raises ClusterError before ``start()``, and when ``check`` is true and pg_ctl exits
        with a non-zero status.
        """
        paths = self._started_paths()
        return self.run_as_server_user(["pg_ctl", "-D", paths.data_dir, *args], check=check)

    def run_as_server_user(self, command: Sequence[str], *, check: bool = True) -> "subprocess.CompletedProcess[str]":
        """Run ``command`` as the server user (``postgres`` under root, else this user).

        A program name without a slash is taken from ``bindir``. The output is captured as text
        in the result. Raises ClusterError when the program cannot be run, does not finish within
        COMMAND_TIMEOUT seconds, or, when ``check`` is true, exits with a non-zero status.
        """
        program = command[0]
        if os.sep not in program:
            program = os.path.join(self.bindir, program)
        argv = [program, *command[1:]]

        # The server user may be unable to enter our working directory (such as /root), which
        # initdb and pg_ctl warn about, so every command runs in /.
        options: Dict[str, Any] = {"cwd": "/"}
        if self._server_user is not None:
            entry = self._server_user
            options.update(
                user=entry.pw_uid,
                group=entry.pw_gid,
                # Without extra_groups the child keeps root's supplementary groups.
                extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
                env={**os.environ, "HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name},
            )

        logger.debug("running %s", argv)
        try:
            completed = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                **options,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(argv)} timed out after {COMMAND_TIMEOUT} seconds") from exc
        except OSError as exc:
            raise ClusterError(f"failed to run {' '.join(argv)}: {exc}") from exc

        if check and completed.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} failed with exit status {completed.returncode}:\n"
                f"{(completed.stdout + completed.stderr).strip()}"
            )
        return completed

    # -- private steps -----------------------------------------------------------------------

    def _started_paths(self) -> _ClusterPaths:
        """Return the cluster's locations; raise ClusterError before ``start()`` and after ``remove()``."""
        if (
            self.root_dir is None
            or self.data_dir is None
            or self.socket_dir is None
            or self.log_file is None
            or self.port is None
        ):
            raise ClusterError("the PostgreSQL cluster is not started: call start() first")
        return _ClusterPaths(self.root_dir, self.data_dir, self.socket_dir, self.log_file, self.port)

    def _create_root_dir(self, parent: Optional[str], prefix: str = "hermes-lite-pg-") -> None:
        """Create the temporary directory, hand it to the server user and start the watchdog.

        The caller removes the directory again when this raises.
        """
        # Before Python 3.12, mkdtemp returns a relative path for a relative parent.
        self.root_dir = os.path.abspath(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.data_dir = os.path.join(self.root_dir, "data")
        self.socket_dir = self.root_dir
        self.log_file = os.path.join(self.root_dir, "server.log")
        self.port = _pick_free_port()
        _register(self)
        paths = self._started_paths()

        if self._primary is None:
            self._start_watchdog()

        socket_path = os.path.join(paths.socket_dir, f".s.PGSQL.{paths.port}")
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise ClusterError(
                f"the socket path {socket_path!r} is longer than {MAX_SOCKET_PATH_BYTES} bytes; "
                "pass a shorter base_dir"
            )

        # mkdtemp makes the directory 0700 and owned by us. The server user needs it as its own,
        # and root clients reach the socket inside whatever its permissions are.
        if self._server_user is not None:
            os.chown(paths.root_dir, self._server_user.pw_uid, self._server_user.pw_gid)

            # A directory above that is closed to the server user makes initdb fail with a bare
            # "Permission denied", so the access is probed first for a clearer message. Without
            # test(1) on PATH, the caller gets that initdb error.
            test_program = shutil.which("test")
            if test_program is not None:
                probe_argv = [test_program, "-w", paths.root_dir, "-a", "-x", paths.root_dir]
                if self.run_as_server_user(probe_argv, check=False).returncode != 0:
                    raise ClusterError(
                        f"the {SERVER_USER!r} user cannot enter {paths.root_dir!r}, because a directory "
                        f"above it is closed to that user; pass a base_dir that {SERVER_USER!r} can reach"
                    )

    def _start_watchdog(self) -> None:
        paths = self._started_paths()
        server_user = self._server_user.pw_name if self._server_user is not None else ""
        self._watchdog = subprocess.Popen(
            [
                sys.executable, "-c", _WATCHDOG_SOURCE,
                os.path.join(self.bindir, "pg_ctl"), server_user, paths.root_dir, paths.data_dir,
            ],
            stdin=subprocess.PIPE,
            # Not our stdout or stderr, so that a parent that reads them until EOF is not held
            # up until the watchdog exits.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # NOTE: a child forked from this process (multiprocessing with fork) inherits the pipe,
        # so the watchdog reads EOF only once that child has exited too.

    def _send_to_watchdog(self, line: str) -> None:
        # A standby has no watchdog of its own; the one of the outermost primary covers its tree.
        owner = self
        while owner._primary is not None:
            owner = owner._primary
        watchdog = owner._watchdog
        if watchdog is None or watchdog.stdin is None or watchdog.stdin.closed:
            return

        try:
            watchdog.stdin.write(line.encode() + b"\n")
            watchdog.stdin.flush()
        except BrokenPipeError:
            logger.warning(
                "the watchdog of %s has exited, so the cluster is not removed if this process is killed",
                self.root_dir,
            )

    def _detach_watchdog(self) -> None:
        if self._watchdog is None:
            return

        self._send_to_watchdog("detach")
        assert self._watchdog.stdin is not None  # _start_watchdog opens it with stdin=PIPE
        try:
            self._watchdog.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("the watchdog of %s did not exit; killing it", self.root_dir)
            self._watchdog.kill()
            self._watchdog.wait()
        self._watchdog = None

    def _initdb(self) -> None:
        self.run_as_server_user(
            [
                "initdb", "-D", self._started_paths().data_dir, "-A", "trust", "-U", SERVER_USER,
                "-E", self.encoding, f"--locale={self.locale}", "--no-sync",
            ]
        )

    def _location_settings(self) -> Dict[str, object]:
        return {"port": self.port, "unix_socket_directories": self.socket_dir}

    def _write_settings(self, settings: Dict[str, object]) -> None:
        # Appended lines override earlier ones, including those of a copied postgresql.conf.
        lines = [f"{name} = {_quote_setting_value(value)}\n" for name, value in settings.items()]
        with open(os.path.join(self._started_paths().data_dir, "postgresql.conf"), "a") as conf:
            conf.write("\n# Added by hermes_lite.testing\n")
            conf.writelines(lines)

    def _allow_local_replication(self) -> None:
        # initdb -A trust writes "local replication all trust" in PostgreSQL 10 and later; the
        # line is added for any build whose template lacks it, because pg_basebackup needs it.
        hba_path = os.path.join(self._started_paths().data_dir, "pg_hba.conf")
        with open(hba_path) as hba:
            entries = [line.split() for line in hba if line.strip() and not line.lstrip().startswith("#")]
        if ["local", "replication", "all", "trust"] in entries:
            return

        with open(hba_path, "a") as hba:
            hba.write("local replication all trust\n")

    def _start_server(self) -> None:
        self._run_pg_ctl_with_log("start", "-w", "-l", self._started_paths().log_file)
        logger.info(
            "started PostgreSQL server in %s, pid %s, socket %s port %s",
            self.data_dir, self.postmaster_pid, self.socket_dir, self.port,
        )

    def _run_pg_ctl_with_log(self, *args: str) -> None:
        """Run pg_ctl and, when it fails, raise ClusterError with the tail of the server log."""
        log_file = self._started_paths().log_file
        try:
            self.pg_ctl(*args)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\nlast lines of {log_file}:\n{self._read_log_tail(log_file)}") from exc

    def _read_log_tail(self, log_file: str) -> str:
        try:
            with open(log_file, errors="replace") as log:
                return "".join(log.readlines()[-LOG_TAIL_LINES:])
        except OSError as exc:
            return f"(server log unreadable: {exc})"

    def _discard_after_failure(self) -> None:
        """Remove what a failed start left behind, logging what cannot be undone."""
        try:
            self.remove("immediate")
        except ClusterError:
            logger.exception("failed to remove the PostgreSQL cluster in %s after a failed start", self.root_dir)


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
