"""The demo: a burst of notifications through a Client on a throwaway cluster, checked and timed."""

import logging
import multiprocessing
import queue
import threading
import time
from typing import Any, List, NamedTuple, Optional

from .client import Client
from .components import Component
from .exceptions import HermesLiteError
from .listeners import IMPLEMENTATION, PostgresNotificationListener
from .testing import PostgresCluster

logger = logging.getLogger(__name__)

CHANNEL = "hermes_lite_demo"

RESULT_TIMEOUT = 300.0
"""Seconds the demo waits for the burst before it reports what arrived."""


class DemoResult(NamedTuple):
    """Measurements of one demo run."""

    sent: int
    received: int
    in_order: bool
    seconds: float
    implementation: str

    @property
    def rate(self) -> float:
        """Notifications per second, from the commit's start to the last one processed."""
        return self.received / self.seconds if self.seconds > 0 else 0.0


class CountingProcessor(Component):
    """Counts numbered payloads, checks their order and reports progress on ``reports``."""

    def __init__(self, reports: Any, expected: int) -> None:
        super().__init__()
        self.reports = reports
        self.expected = expected

    def set_up(self) -> None:
        self.received = 0
        self.next_number = 1
        self.in_order = True

    def execute(self, batch: Any) -> None:
        if batch.gap is not None:
            self.reports.put(("gap", batch.gap.reason, time.monotonic()))

        # The payload column, not one Notification object per notification: the fast path.
        next_number = self.next_number
        for payload in batch.payloads:
            number = int(payload)
            if number != next_number:
                self.in_order = False
            next_number = number + 1
        self.next_number = next_number
        self.received += len(batch.payloads)

        # One report per batch is cheap, and it lets the demo report how many arrived if some are missing.
        kind = "done" if self.received >= self.expected else "progress"
        self.reports.put((kind, self.received, self.in_order, time.monotonic()))
        if kind == "done":
            self.set_up()


def run_demo(count: int = 100_000, implementation: Optional[str] = None) -> DemoResult:
    """Start a throwaway cluster, run a Client, send ``count`` notifications in one transaction.

    Returns what arrived. Raises ClusterError if PostgreSQL cannot be started, and
    HermesLiteError if the listener never became ready.
    """
    implementation = implementation or IMPLEMENTATION
    reports: Any = multiprocessing.Queue()

    with PostgresCluster() as cluster:
        client = Client(cluster.dsn)
        client.add_listener(PostgresNotificationListener(cluster.dsn, CHANNEL, implementation=implementation))
        client.add_processor(CountingProcessor(reports, count))
        supervisor = threading.Thread(target=client.start, name="hermes-lite-supervisor")
        supervisor.start()
        try:
            _wait_for_start_gap(reports)
            started = time.monotonic()
            cluster.execute(
                "SELECT count(pg_notify(%s, i::text)) FROM generate_series(1, %s) AS i", (CHANNEL, count)
            )
            report = _wait_for_burst(reports)
        finally:
            client.stop()
            supervisor.join()

    if report is None:
        return DemoResult(count, 0, False, RESULT_TIMEOUT, implementation)
    kind, received, in_order, finished = report
    return DemoResult(count, received, in_order, finished - started, implementation)


def _wait_for_start_gap(reports: Any) -> None:
    # The start gap arrives after LISTEN is active: sending before it could lose the burst.
    try:
        kind, *_ = reports.get(timeout=60)
    except queue.Empty:
        raise HermesLiteError("the listener did not start within 60 s; run with --log-level debug") from None
    if kind != "gap":
        raise HermesLiteError(f"unexpected first report from the processor: {kind!r}")


def _wait_for_burst(reports: Any) -> Any:
    """Return the processor's last report: "done", or the last "progress" at the deadline."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    last = None
    while True:
        try:
            report = reports.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            logger.error("the burst did not complete within %.0f s", RESULT_TIMEOUT)
            return last
        if report[0] in ("done", "progress"):
            last = report
        if report[0] == "done":
            return report
