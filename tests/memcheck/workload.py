"""Exercise the C listener (CBackend) in this process, for tests/memcheck/run.sh to run under valgrind.

Usage: python tests/memcheck/workload.py COUNT

The bulk phase drains COUNT notifications, so a leak per notification shows as a difference
between two runs with different COUNT. The other phases run the remaining paths of
csrc/listener.c once each. They cover backpressure on a full pipe, queue(), ping(), rejected
commands, a terminated backend and the reconnect after it, a failed connect, a closed pipe,
and close and free with frames still pending.

Only this process is meant to run under valgrind. The PostgreSQL server (started by pg_ctl as
another user), psql, which sends the notifications, and the cluster's watchdog are child
processes, which valgrind leaves uninstrumented unless it runs with --trace-children=yes.

Exits 0 when every phase behaved as expected, 1 with a message on stderr when not.
"""

import fcntl
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from hermes_lite import drain
from hermes_lite._c_backend import CBackend
from hermes_lite._listener import ffi, lib
from hermes_lite.exceptions import ListenerConnectionError, ListenerQueryError
from hermes_lite.frames import (
    GAP_RECONNECT,
    KIND_BATCH,
    KIND_GAP,
    KIND_NOTIFICATION,
    KIND_SESSION,
    FrameDecoder,
    encode_frame,
)
from hermes_lite.testing import PostgresCluster

CHANNEL = "memcheck"

# A small pipe fills after a few frames, so the backpressure phases need few notifications.
SMALL_PIPE_BYTES = 4096

# Valgrind slows Python down many times over (an estimate), so every wait is generous.
PHASE_TIMEOUT_S = 300
DRAIN_TIMEOUT_MS = 200
PING_TIMEOUT_MS = 30_000

# Time for the server to deliver notifications to a blocked listener before the wake fd stops drain.
WAKE_DELAY_S = 2.0

# Notifications of the phases that do not scale with COUNT.
SMALL_COUNT = 100


class WorkloadError(Exception):
    """Raised when the listener did not behave as the workload expects."""


def check(condition, message):
    if not condition:
        raise WorkloadError(message)


class PipeReader:
    """Reads the notification pipe in a thread and counts the frames by kind."""

    def __init__(self, read_fd):
        self._read_fd = read_fd
        self._decoder = FrameDecoder()
        self._condition = threading.Condition()
        self.notifications = 0
        self.gaps = 0
        self.sessions = 0
        self.error = None
        self._thread = threading.Thread(target=self._run, name="pipe-reader", daemon=True)

    def start(self):
        self._thread.start()

    def join(self):
        self._thread.join(PHASE_TIMEOUT_S)
        check(not self._thread.is_alive(), "the pipe reader did not see EOF")
        if self.error is not None:
            raise WorkloadError(f"the pipe reader failed: {self.error!r}")

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        with self._condition:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                check(remaining > 0 and self.error is None, f"timed out waiting for {what}")
                self._condition.wait(remaining)

    def _run(self):
        try:
            while True:
                data = os.read(self._read_fd, 65536)
                if not data:
                    self._decoder.finish()
                    return
                frames = self._decoder.feed(data)
                with self._condition:
                    for kind, _flags, _channel, pid, _payload in frames:
                        if kind == KIND_BATCH:
                            self.notifications += pid  # a batch frame's pid field is its count
                        elif kind == KIND_NOTIFICATION:
                            self.notifications += 1
                        elif kind == KIND_GAP:
                            self.gaps += 1
                        elif kind == KIND_SESSION:
                            self.sessions += 1
                    self._condition.notify_all()
        except Exception as exc:  # reported by join() and wait_for() in the main thread
            with self._condition:
                self.error = exc
                self._condition.notify_all()


class Workload:
    """The phases, run in order on one CBackend, one notification pipe and one PipeReader."""

    def __init__(self, cluster, count):
        self.cluster = cluster
        self.count = count
        self.psql = os.path.join(cluster.bindir, "psql")
        if not os.path.exists(self.psql):
            self.psql = shutil.which("psql") or "psql"

        self.pipe_read, self.pipe_write = os.pipe()
        os.set_blocking(self.pipe_write, False)
        fcntl.fcntl(self.pipe_write, fcntl.F_SETPIPE_SZ, SMALL_PIPE_BYTES)
        self.wake_read, self.wake_write = os.pipe()
        self.reader = PipeReader(self.pipe_read)
        self.backend = CBackend(cluster.dsn)
        self.expected = 0

    # -- helpers ---------------------------------------------------------------------------

    def run_sql(self, sql):
        """Run one statement through psql, a child process that valgrind does not instrument."""
        command = [
            self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            "-h", self.cluster.socket_dir, "-p", str(self.cluster.port), "-U", "postgres", "-d", "postgres",
            "-c", sql,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S)
        check(completed.returncode == 0, f"psql failed on {sql!r}: {completed.stderr.strip()}")
        return completed.stdout.strip()

    def send(self, count, *, delivered=True):
        """Send `count` notifications in one transaction; `delivered` adds them to the expected count."""
        self.run_sql(f"SELECT count(pg_notify('{CHANNEL}', i::text)) FROM generate_series(1, {count}) AS i")
        if delivered:
            self.expected += count

    def terminate_backend(self):
        # The timeout argument (PostgreSQL 14 and later) makes the call wait until the process
        # has exited, so the next libpq call reads end-of-file on the socket.
        self.run_sql(f"SELECT pg_terminate_backend({self.backend.backend_pid}, 30000)")

    def listen(self):
        self.backend.connect()
        self.backend.execute(f'LISTEN "{CHANNEL}"')
        check(self.backend.client_encoding == "UTF8", f"unexpected client encoding {self.backend.client_encoding}")

    def pending_bytes(self):
        return lib.hl_listener_pending_bytes(self.backend._listener)

    def drain_until(self, predicate, what):
        """Call drain until `predicate()` is true; any status but TIMEOUT is an error."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not predicate():
            check(time.monotonic() < deadline, f"timed out draining until {what}")
            status = self.backend.drain(self.pipe_write, self.wake_read, DRAIN_TIMEOUT_MS)
            check(
                status == drain.DRAIN_TIMEOUT,
                f"drain returned {status} while waiting for {what}: {self.backend.error_message}",
            )

    def drain_until_woken(self, pipe_write):
        """Drain into a pipe that no thread reads until a timer writes the wake fd; return the pending bytes."""
        timer = threading.Timer(WAKE_DELAY_S, os.write, (self.wake_write, b"w"))
        timer.start()
        status = self.backend.drain(pipe_write, self.wake_read, -1)
        timer.join()
        check(status == drain.DRAIN_WOKEN, f"drain on a full pipe returned {status}, expected DRAIN_WOKEN")
        os.read(self.wake_read, 1)
        return self.pending_bytes()

    def wait_delivered(self):
        self.drain_until(lambda: self.reader.notifications >= self.expected, f"{self.expected} notifications")
        self.reader.wait_for(lambda r: r.notifications >= self.expected, f"{self.expected} notifications")
        check(self.reader.notifications == self.expected,
              f"read {self.reader.notifications} notifications, expected {self.expected}")

    # -- phases ----------------------------------------------------------------------------

    def bulk_with_backpressure(self):
        """COUNT notifications into a pipe that is full until the reader starts."""
        self.listen()
        self.send(self.count)

        pending = self.drain_until_woken(self.pipe_write)
        check(pending > 0, "no frames were pending after drain on a full pipe")

        self.reader.start()
        self.wait_delivered()
        check(self.backend.received == self.expected,
              f"the listener framed {self.backend.received} notifications, expected {self.expected}")

    def queue_and_ping(self):
        self.backend.queue(encode_frame(KIND_GAP, GAP_RECONNECT, b"", 0, b""))
        self.backend.queue(encode_frame(KIND_SESSION, 0, b"", self.backend.backend_pid, b"memcheck session"))
        self.drain_until(lambda: self.reader.gaps >= 1 and self.reader.sessions >= 1, "the queued frames")

        # Notifications that arrive during ping stay in libpq's list for the next drain.
        self.send(SMALL_COUNT)
        status = self.backend.ping(PING_TIMEOUT_MS)
        check(status == 0, f"ping returned {status}: {self.backend.error_message}")
        self.wait_delivered()

    def rejected_commands(self):
        try:
            self.backend.execute("LISTEN")
        except ListenerQueryError:
            pass
        else:
            raise WorkloadError("a syntax error did not raise ListenerQueryError")
        self.backend.execute("SELECT 1")
        self.backend.execute("")

    def terminated_backend(self):
        """Terminate the server process of the connection during drain, then reconnect."""
        self.send(SMALL_COUNT)
        self.terminate_backend()
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            check(time.monotonic() < deadline, "drain did not report the terminated backend")
            status = self.backend.drain(self.pipe_write, self.wake_read, DRAIN_TIMEOUT_MS)
            if status == drain.DRAIN_CONNECTION_LOST:
                break
            check(status == drain.DRAIN_TIMEOUT, f"drain returned {status}, expected DRAIN_CONNECTION_LOST")
        check(self.backend.error_message != "", "CONNECTION_LOST came without an error message")

        # Every notification framed before the loss is in the pipe by now. The server may have
        # terminated the backend before it sent all of them, so the rest count as lost.
        self.expected = self.backend.received
        self.reader.wait_for(lambda r: r.notifications >= self.expected, "the notifications framed before the loss")

        self.listen()
        self.send(SMALL_COUNT)
        self.wait_delivered()

        self.terminate_backend()
        status = self.backend.ping(PING_TIMEOUT_MS)
        check(status == drain.DRAIN_CONNECTION_LOST, f"ping on a terminated backend returned {status}")
        self.listen()

    def connect_failure(self):
        """Connect to a socket directory without a server, and call the C API while unconnected."""
        empty_dir = tempfile.mkdtemp(prefix="hermes-lite-memcheck-")
        try:
            failing = CBackend(f"host={empty_dir} port={self.cluster.port} user=postgres dbname=postgres")
            try:
                failing.connect()
            except ListenerConnectionError:
                pass
            else:
                raise WorkloadError("connect without a server did not raise ListenerConnectionError")

            listener = failing._listener
            check(lib.hl_listener_exec(listener, b"SELECT 1") == lib.HL_ERROR_CONNECTION,
                  "exec without a connection did not return HL_ERROR_CONNECTION")
            check(lib.hl_listener_drain(listener, self.pipe_write, -1, 0) == lib.HL_DRAIN_CONNECTION_LOST,
                  "drain without a connection did not return HL_DRAIN_CONNECTION_LOST")
            check(lib.hl_listener_ping(listener, 0) == lib.HL_DRAIN_CONNECTION_LOST,
                  "ping without a connection did not return HL_DRAIN_CONNECTION_LOST")
            check(lib.hl_listener_client_encoding(listener) == ffi.NULL,
                  "client_encoding without a connection is not NULL")
            del failing, listener
            gc.collect()
        finally:
            shutil.rmtree(empty_dir, ignore_errors=True)

    def closed_pipe(self):
        """Drain into a pipe whose read end is closed, once with and once without frames."""
        check(self.pending_bytes() == 0, "frames are pending before switching pipes")
        for notifications in (0, SMALL_COUNT):
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            os.close(read_fd)
            try:
                if notifications:
                    self.send(notifications, delivered=False)
                    # ping reads the socket up to its own result, so the notifications sent
                    # before it are in libpq's list when drain starts.
                    status = self.backend.ping(PING_TIMEOUT_MS)
                    check(status == 0, f"ping returned {status}: {self.backend.error_message}")
                status = self.backend.drain(write_fd, self.wake_read, DRAIN_TIMEOUT_MS * 10)
                check(status == drain.DRAIN_PIPE_CLOSED, f"drain into a closed pipe returned {status}")
                check(self.pending_bytes() == 0, "frames stayed pending after DRAIN_PIPE_CLOSED")
            finally:
                os.close(write_fd)

    def free_with_pending_frames(self):
        """Leave frames pending and notifications in libpq's list, then close and free."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, SMALL_PIPE_BYTES)
        try:
            self.send(SMALL_COUNT * 10, delivered=False)
            pending = self.drain_until_woken(write_fd)
            check(pending > 0, "no frames were pending before free")

            # ping parses the notifications sent before it into libpq's list, and close()
            # frames them behind the pending frames.
            self.send(SMALL_COUNT, delivered=False)
            status = self.backend.ping(PING_TIMEOUT_MS)
            check(status == 0, f"ping returned {status}: {self.backend.error_message}")
            self.backend.close()
            check(self.pending_bytes() > pending, "close() framed none of the notifications in libpq's list")
            self.backend.close()
            self.backend = None
            gc.collect()  # ffi.gc runs hl_listener_free when the last reference goes
        finally:
            os.close(read_fd)
            os.close(write_fd)

    def finish(self):
        os.close(self.pipe_write)
        self.reader.join()
        for fd in (self.pipe_read, self.wake_read, self.wake_write):
            os.close(fd)

    def run(self):
        phases = [
            self.bulk_with_backpressure,
            self.queue_and_ping,
            self.rejected_commands,
            self.terminated_backend,
            self.connect_failure,
            self.closed_pipe,
            self.free_with_pending_frames,
            self.finish,
        ]
        for phase in phases:
            started = time.monotonic()
            phase()
            print(f"workload: {phase.__name__} done in {time.monotonic() - started:.1f} s", file=sys.stderr)


def main(argv):
    if len(argv) != 2 or not argv[1].isdigit() or int(argv[1]) < 1:
        print(f"usage: {argv[0]} COUNT  (COUNT: number of notifications of the bulk phase, at least 1)",
              file=sys.stderr)
        return 2
    count = int(argv[1])

    with PostgresCluster() as cluster:
        try:
            Workload(cluster, count).run()
        except (WorkloadError, ListenerConnectionError, ListenerQueryError, OSError) as exc:
            print(f"workload: FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"workload: every phase passed with COUNT={count}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
