"""Plain-text tables of the benchmark results that run.py collects."""

from typing import Any, Dict, List, Optional

MIB = 1024.0


def format_table(header: List[str], rows: List[List[str]], right: Optional[List[bool]] = None) -> List[str]:
    """Return the lines of an aligned table; ``right`` marks the right-aligned (numeric) columns."""
    right = right or [False] + [True] * (len(header) - 1)
    widths = [max(len(row[index]) for row in [header] + rows) for index in range(len(header))]
    lines = []
    for row in [header] + rows:
        cells = [cell.rjust(width) if align else cell.ljust(width) for cell, width, align in zip(row, widths, right)]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_rate(rate: Optional[float]) -> str:
    """Return a rate as notifications a second with thousands separators, "-" when missing."""
    return "-" if rate is None else f"{rate:,.0f}"


def format_by_role(values: Dict[str, float], digits: int, scale: float = 1.0, total: Any = None) -> str:
    """Return "total" for one process, or "total (role value, ...)" for several.

    ``total`` defaults to the sum of ``values``; a client with a helper process that is shown
    but not counted passes its counted total.
    """
    total = (sum(values.values()) if total is None else total) / scale
    if len(values) == 1:
        return f"{total:.{digits}f}"
    parts = ", ".join(f"{role} {value / scale:.{digits}f}" for role, value in values.items())
    return f"{total:.{digits}f} ({parts})"


def check_cell(summary: Dict[str, Any]) -> str:
    """Return "ok", or FAILED with the first problem."""
    if summary["ok"]:
        return "ok"
    problems = summary.get("problems") or [summary.get("problem") or "unknown"]
    return "FAILED: " + problems[0]


def format_results(results: Dict[str, Any]) -> str:
    """Return the whole report: the run's context, then one table per workload."""
    machine = results["machine"]
    versions = ", ".join(f"{name} {value}" for name, value in machine["versions"].items() if value)
    lines = [
        f"command: {results['command']}",
        f"date: {results['date']}, duration {results.get('seconds', 0):.0f} s",
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux {machine['kernel']}",
        f"versions: {versions}",
    ]

    for name, workload in results["workloads"].items():
        load = f"load {workload['load_before'][0]:.2f} before, {workload['load_after'][0]:.2f} after"
        runs = f"{workload['runs']} run{'s' if workload['runs'] > 1 else ''} per client"
        lines += ["", f"== {name}: {workload['title']} ({runs}; {load})"]
        formatter = {"count": format_throughput, "latency": format_latency, "idle": format_idle, "slow": format_backlog}
        lines += formatter[workload["mode"]](workload)

    return "\n".join(lines)


def format_throughput(workload: Dict[str, Any]) -> List[str]:
    """Return the table of a throughput workload and its matrix of rate ratios."""
    clients = workload["clients"]
    baseline = clients.get("libpq", {}).get("rate_median")
    header = ["client", "notif/s (median)", "min-max", "vs libpq", "CPU us/notif", "server us/notif", "peak RSS MiB", "check"]
    rows = []
    for client, summary in clients.items():
        rate = summary.get("rate_median")
        rows.append(
            [
                client,
                format_rate(rate),
                f"{format_rate(summary.get('rate_min'))}-{format_rate(summary.get('rate_max'))}" if rate else "-",
                f"{rate / baseline:.2f}" if rate and baseline else "-",
                format_by_role(
                    summary["cpu_us_per_notification_by_role"], 2, total=summary.get("cpu_us_per_notification")
                )
                if "peak_rss_kib" in summary
                else "-",
                f"{summary['backend_cpu_us_per_notification']:.2f}" if "peak_rss_kib" in summary else "-",
                format_by_role(summary["peak_rss_kib"], 1, MIB) if "peak_rss_kib" in summary else "-",
                check_cell(summary),
            ]
        )
    right = [False, True, True, True, False, True, False, False]
    lines = format_table(header, rows, right)
    lines += ["", "rate ratios (row / column):"] + format_ratios(workload["ratios"])
    return lines


def format_ratios(ratios: Dict[str, Dict[str, float]]) -> List[str]:
    """Return the matrix of rate ratios, row client divided by column client."""
    names = list(ratios)
    rows = [[row] + [f"{ratios[row][column]:.2f}" for column in names] for row in names]
    return format_table([""] + names, rows)


def format_latency(workload: Dict[str, Any]) -> List[str]:
    """Return the latency table: commit to processor, in milliseconds."""
    header = ["client", "p50 ms", "p99 ms", "max ms", "CPU us/notif", "check"]
    rows = []
    for client, summary in workload["clients"].items():
        latency = summary.get("latency")
        cells = [f"{latency[key] * 1000:.3f}" for key in ("p50", "p99", "max")] if latency else ["-"] * 3
        cpu = format_by_role(summary["cpu_us_per_notification_by_role"], 1) if "peak_rss_kib" in summary else "-"
        rows.append([client] + cells + [cpu, check_cell(summary)])
    return format_table(header, rows, [False, True, True, True, False, False])


def format_idle(workload: Dict[str, Any]) -> List[str]:
    """Return the idle table: wakeups and CPU a minute, per process."""
    header = ["client", "wakeups/min", "CPU ms/min", "check"]
    rows = []
    for client, summary in workload["clients"].items():
        if not summary["ok"]:
            rows.append([client, "-", "-", check_cell(summary)])
            continue
        rows.append(
            [
                client,
                format_by_role(summary["wakeups_per_minute"], 0),
                format_by_role(summary["cpu_ms_per_minute"], 1),
                "ok",
            ]
        )
    return format_table(header, rows, [False, False, False, False])


def format_backlog(workload: Dict[str, Any]) -> List[str]:
    """Return the backlog table: throughput under a slow processor and how memory behaved."""
    header = ["client", "notif/s", "peak RSS MiB", "RSS MiB at 0/25/50/75/100%", "growth MiB", "late growth MiB", "flat", "check"]
    rows = []
    for client, summary in workload["clients"].items():
        if "rss_quarters_kib" not in summary:
            rows.append([client, format_rate(summary.get("rate_median"))] + ["-"] * 5 + [check_cell(summary)])
            continue
        rows.append(
            [
                client,
                format_rate(summary.get("rate_median")),
                format_by_role(summary["peak_rss_kib"], 1, MIB),
                " ".join(f"{value / MIB:.0f}" for value in summary["rss_quarters_kib"]),
                f"{summary['rss_growth_kib'] / MIB:.1f}",
                f"{summary['rss_late_growth_kib'] / MIB:.1f}",
                "yes" if summary["rss_flat"] else "no",
                check_cell(summary),
            ]
        )
    lines = format_table(header, rows, [False, True, False, False, True, True, False, False])
    lines += [
        "RSS: all processes of the client added up, sampled every 0.1 s from 'ready' to the last notification;",
        "growth: peak minus RSS at 'ready'; late growth: peak of the second half minus peak of the first;",
        "flat: late growth at most 1 MiB, so memory did not rise with the backlog.",
    ]
    return lines
