"""The benchmark's sender, run by run.py in its own process once every client is listening.

Usage: python send.py CONFIG_JSON

Prints one JSON line, {"t0": ...}: the sender's time.monotonic() just before the COMMIT of
the first transaction that carries notifications (CLOCK_MONOTONIC on Linux, so it compares
with the clients' clocks). Payloads are numbered from 1 in commit order. The config keys
are conninfo, channel, kind and the kind's parameters:

- burst: ``count`` notifications in one transaction; ``payload_bytes`` 0 sends the number
  as text, otherwise the number left-padded with zeros to that many bytes.
- transactions: ``transactions`` transactions of ``per_transaction`` notifications each.
- steady: ``rate`` notifications a second for ``seconds``, each in its own autocommitted
  statement, with payload "<number>:<time.monotonic() just before the statement is sent>".
"""

import json
import sys
import time
from typing import Any, Dict

import psycopg2

BURST_SQL = "SELECT count(pg_notify(%s, i::text)) FROM generate_series(%s, %s) AS i"
PADDED_BURST_SQL = "SELECT count(pg_notify(%s, lpad(i::text, %s, '0'))) FROM generate_series(%s, %s) AS i"


def send_burst(connection: Any, config: Dict[str, Any]) -> float:
    """Queue every notification in one transaction, then commit; return t0."""
    with connection.cursor() as cursor:
        if config["payload_bytes"]:
            cursor.execute(PADDED_BURST_SQL, (config["channel"], config["payload_bytes"], 1, config["count"]))
        else:
            cursor.execute(BURST_SQL, (config["channel"], 1, config["count"]))
    t0 = time.monotonic()
    connection.commit()
    return t0


def send_transactions(connection: Any, config: Dict[str, Any]) -> float:
    """Commit ``transactions`` transactions one after another; return t0 of the first."""
    per_transaction = config["per_transaction"]
    t0 = 0.0
    with connection.cursor() as cursor:
        for index in range(config["transactions"]):
            first = index * per_transaction + 1
            cursor.execute(BURST_SQL, (config["channel"], first, first + per_transaction - 1))
            if index == 0:
                t0 = time.monotonic()
            connection.commit()
    return t0


def send_steady(connection: Any, config: Dict[str, Any]) -> float:
    """Send one notification per statement on a fixed schedule; return t0 of the first."""
    connection.autocommit = True
    interval = 1.0 / config["rate"]
    count = int(config["rate"] * config["seconds"])
    start = time.monotonic()

    with connection.cursor() as cursor:
        for number in range(1, count + 1):
            # The schedule is absolute, so a late statement does not delay the ones after it.
            delay = start + (number - 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cursor.execute("SELECT pg_notify(%s, %s)", (config["channel"], f"{number}:{time.monotonic():.6f}"))
    return start


SENDERS = {"burst": send_burst, "transactions": send_transactions, "steady": send_steady}


def main() -> None:
    """Send the workload that the JSON config in argv[1] describes and print t0."""
    config = json.loads(sys.argv[1])
    connection = psycopg2.connect(config["conninfo"])
    try:
        t0 = SENDERS[config["kind"]](connection, config)
    finally:
        connection.close()
    print(json.dumps({"t0": t0}), flush=True)


if __name__ == "__main__":
    main()
