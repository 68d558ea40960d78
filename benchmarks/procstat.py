"""Per-process counters read from /proc (Linux): CPU time, resident memory, context switches."""

import os
from typing import Dict

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Ticks per second of the utime and stime fields of /proc/<pid>/stat."""


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of every thread of ``pid``, in seconds.

    The resolution is one clock tick (10 ms where SC_CLK_TCK is 100). Raises
    FileNotFoundError once the process is gone.
    """
    with open(f"/proc/{pid}/stat") as stat_file:
        stat = stat_file.read()

    # The command name in brackets may contain spaces, so the fields are counted from its end.
    # After ")" come field 3 (state) onward, so utime (14) and stime (15) are at 11 and 12.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status(pid: int) -> Dict[str, int]:
    """Return the numeric fields of /proc/<pid>/status. The Vm* sizes are in KiB."""
    return _read_status(f"/proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """Return the resident set size of ``pid`` now (VmRSS), in KiB."""
    return status(pid).get("VmRSS", 0)


def peak_rss_kib(pid: int) -> int:
    """Return the highest resident set size of ``pid`` since it started (VmHWM), in KiB."""
    return status(pid).get("VmHWM", 0)


def voluntary_switches(pid: int) -> int:
    """Return the voluntary context switches of every thread of ``pid``.

    Each one is a wait that ended in sleeping, so the count approximates wakeups. The
    process's own status file counts only its main thread, so the threads are summed.
    """
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            total += _read_status(f"/proc/{pid}/task/{thread}/status").get("voluntary_ctxt_switches", 0)
        except FileNotFoundError:
            continue  # the thread ended between listdir and open
    return total


def _read_status(path: str) -> Dict[str, int]:
    values = {}
    with open(path) as status_file:
        for line in status_file:
            name, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0])
    return values
