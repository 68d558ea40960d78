"""Memory stays bounded: a backlog waits in the server's queue, not in hermes-lite's processes."""

import multiprocessing
import queue
import threading
import time

import pytest

from hermes_lite import Client, Component, PostgresNotificationListener
from hermes_lite.frames import MAX_PAYLOAD_BYTES
from hermes_lite.pipes import READ_SIZE

COUNT = 100_000
PAYLOAD_BYTES = 1000
CHANNEL = "memory_ch"
MIB = 1024 * 1024


def rss_bytes(pid):
    """Return the resident set size of process ``pid`` from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class MeasuringProcessor(Component):
    """Processes slowly and reports its RSS, its largest batch and what its reader still buffers."""

    def __init__(self, reports):
        super().__init__()
        self.reports = reports

    def set_up(self):
        self.received = 0
        self.largest_batch = 0
        self.baseline = None

    def execute(self, batch):
        if batch.gap is not None and self.baseline is None:
            self.baseline = rss_bytes("self")
            self.reports.put(("ready", self.baseline))

        self.received += len(batch.payloads)
        self.largest_batch = max(self.largest_batch, len(batch.payloads))
        assert all(len(payload) == PAYLOAD_BYTES for payload in batch.payloads)
        # Slower than the listener, so that the pipe fills and backpressure keeps the rest in the server.
        time.sleep(0.002)

        if self.received >= COUNT:
            reader = self._source
            self.reports.put(
                (
                    "done",
                    self.received,
                    self.largest_batch,
                    len(reader._ready),
                    reader._decoder.pending_bytes,
                    self.baseline,
                    rss_bytes("self"),
                )
            )


@pytest.mark.timeout(240)
def test_backlog_memory_returns_to_baseline(postgres_cluster, implementation):
    reports = multiprocessing.Queue()
    client = Client(postgres_cluster.dsn)
    client.add_listener(PostgresNotificationListener(postgres_cluster.dsn, CHANNEL, implementation=implementation))
    client.add_processor(MeasuringProcessor(reports))
    supervisor = threading.Thread(target=client.start)
    supervisor.start()
    try:
        kind, _processor_baseline = reports.get(timeout=60)
        listener_pid = client.listener.ident
        listener_baseline = rss_bytes(listener_pid)

        postgres_cluster.execute(
            "SELECT count(pg_notify(%s, lpad(i::text, %s, '0'))) FROM generate_series(1, %s) AS i",
            (CHANNEL, PAYLOAD_BYTES, COUNT),
        )
        # While the processor works through the backlog, most of it waits in the server.
        queue_usage = postgres_cluster.execute("SELECT pg_notification_queue_usage()")[0][0]
        listener_peak = listener_baseline
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            listener_peak = max(listener_peak, rss_bytes(listener_pid))
            try:
                done = reports.get(timeout=0.05)
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError(f"the processor did not receive {COUNT} notifications within 180 s")
        listener_after = rss_bytes(listener_pid)
    finally:
        client.stop()
        supervisor.join(60)

    _, received, largest_batch, ready_batches, pending_bytes, processor_baseline, processor_after = done
    assert kind == "ready"
    assert received == COUNT
    assert queue_usage > 0
    # One read of the pipe, plus the rest of a frame begun in the previous read, bounds a
    # batch, whatever the backlog.
    assert largest_batch <= (READ_SIZE + MAX_PAYLOAD_BYTES) // PAYLOAD_BYTES
    assert ready_batches == 0
    assert pending_bytes == 0
    assert listener_peak - listener_baseline < 4 * MIB
    assert listener_after - listener_baseline < 4 * MIB
    assert processor_after - processor_baseline < 4 * MIB
