"""Signals to the supervising process: a graceful stop, a second signal, restored handlers."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hermes_lite import Client, Component, PostgresNotificationListener

SUPERVISOR_SCRIPT = """
import sys, time
from hermes_lite import Client, Component, PostgresNotificationListener

class SlowProcessor(Component):
    def __init__(self, seconds, marker):
        super().__init__()
        self.seconds = seconds
        self.marker = marker

    def execute(self, batch):
        if batch.payloads:
            print("batch started", flush=True)
            time.sleep(self.seconds)
            with open(self.marker, "w") as marker:
                marker.write("batch finished")

client = Client(sys.argv[1])
client.stop_timeout = float(sys.argv[4])
client.add_listener(PostgresNotificationListener(sys.argv[1], "signal_ch"))
client.add_processor(SlowProcessor(float(sys.argv[2]), sys.argv[3]))
client.start()
print("returned", flush=True)
"""


def start_supervisor(cluster, tmp_path, batch_seconds, stop_timeout):
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR_SCRIPT)
    marker = tmp_path / "marker"
    process = subprocess.Popen(
        [sys.executable, str(script), cluster.dsn, str(batch_seconds), str(marker), str(stop_timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    wait_for_listen(cluster)
    cluster.execute("SELECT pg_notify('signal_ch', 'work')")
    assert process.stdout.readline().strip() == "batch started"
    return process, marker


def wait_for_listen(cluster, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"signal_ch\"'")
        if rows[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError("the supervisor's listener did not LISTEN within 30 s")


def finish(process, timeout):
    try:
        output, errors = process.communicate(timeout=timeout)
    finally:
        # The whole group, so that no component outlives a failed test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return output, errors


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_processor_finish_batch(postgres_cluster, tmp_path, signum):
    process, marker = start_supervisor(postgres_cluster, tmp_path, batch_seconds=1.0, stop_timeout=30)

    process.send_signal(signum)
    output, errors = finish(process, timeout=60)

    assert process.returncode == 0, errors
    assert output.strip() == "returned"
    assert marker.read_text() == "batch finished"


@pytest.mark.timeout(120)
def test_second_signal_stops_at_once(postgres_cluster, tmp_path):
    # The batch would take 600 s and the graceful stop would wait 300 s for it.
    process, marker = start_supervisor(postgres_cluster, tmp_path, batch_seconds=600, stop_timeout=300)

    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, errors = finish(process, timeout=60)

    assert process.returncode == 0, errors
    assert output.strip() == "returned"
    assert not marker.exists()


class Idle(Component):
    def execute(self, batch):
        pass


@pytest.mark.timeout(60)
def test_client_restores_signal_handlers(postgres_cluster):
    def custom_handler(signum, frame):
        pass

    previous_term = signal.signal(signal.SIGTERM, custom_handler)
    previous_int = signal.getsignal(signal.SIGINT)
    client = Client(postgres_cluster.dsn)
    client.add_listener(PostgresNotificationListener(postgres_cluster.dsn, "restore_ch"))
    client.add_processor(Idle())
    seen_during = []

    def stop_later():
        seen_during.append(signal.getsignal(signal.SIGTERM))
        client.stop()

    timer = threading.Timer(1.0, stop_later)
    timer.start()
    try:
        client.start()
    finally:
        timer.cancel()
        handler_after = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous_term)

    assert threading.current_thread() is threading.main_thread()
    assert seen_during and seen_during[0] is not custom_handler
    assert handler_after is custom_handler
    assert signal.getsignal(signal.SIGINT) is previous_int
