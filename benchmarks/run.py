"""Benchmark hermes-lite against raw libpq, psycopg2, psycopg 3 and asyncpg in one run.

    python benchmarks/run.py [--quick] [--runs N] [--only CLIENT,...] [--output FILE.json]

One throwaway PostgreSQL cluster serves the whole run. Each client runs in its own
process(es), one client at a time, against the same workloads; see benchmarks/README.md for
what every number means. The exit status is 1 when any run lost, duplicated or reordered a
notification, or did not finish, and 2 when the benchmark could not start.
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import procstat
import report

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hermes_lite.testing import PostgresCluster  # noqa: E402

CHANNEL = "bench"

CLIENTS = ["libpq", "psycopg2", "psycopg3", "asyncpg", "hermes-c", "hermes-python", "hermes-c-listener"]
"""Every client, in table order. Raw libpq comes first because every rate is compared with it."""

PEER_MODULES = {"psycopg2": "psycopg2", "psycopg3": "psycopg", "asyncpg": "asyncpg"}

READY_TIMEOUT = 60.0
"""Seconds a client may take to connect and LISTEN before the run counts as failed."""

EXIT_TIMEOUT = 15.0
"""Seconds a client may take to exit after its standard input closes before it is killed."""

RSS_SAMPLE_INTERVAL = 0.1
"""Seconds between two VmRSS samples in the workloads that track memory."""

FLAT_TOLERANCE_KIB = 1024
"""How far RSS in the second half of a backlog run may exceed the first half's peak and
still count as flat: allocator and page-granularity noise, not buffered notifications."""


class BenchmarkError(Exception):
    """Raised when a client or the sender fails in a way that ends its run."""


@dataclass
class Workload:
    """One workload: what the sender sends and how the clients consume it."""

    name: str
    title: str
    mode: str
    expected: int
    runs: int
    send: Optional[Dict[str, Any]] = None
    idle_seconds: float = 0.0
    slow_every: int = 0
    slow_delay: float = 0.0
    track_memory: bool = False
    clients: List[str] = field(default_factory=lambda: list(CLIENTS))

    @property
    def deadline(self) -> float:
        """Seconds after "ready" at which a client gives up and reports what it has.

        Generous on purpose: it only makes every run stop by itself. A run that reaches it
        fails, since its count is short.
        """
        seconds = 60.0 + self.expected / 2000
        if self.slow_every:
            seconds += self.expected / self.slow_every * self.slow_delay
        if self.send and self.send["kind"] == "steady":
            seconds += self.send["seconds"]
        return seconds


def build_workloads(quick: bool, runs: int) -> List[Workload]:
    """Return the workloads of a full run, or of a quick smoke run with small counts."""
    burst = 20_000 if quick else 1_000_000
    wide = 5_000 if quick else 200_000
    transactions = 50 if quick else 2_000
    per_transaction = 100
    rate, seconds = (200, 2.0) if quick else (1_000, 10.0)
    idle_seconds = 3.0 if quick else 60.0
    backlog = 20_000 if quick else 1_000_000
    throughput_clients = list(CLIENTS)
    decoded_clients = [client for client in CLIENTS if client != "hermes-c-listener"]

    return [
        Workload(
            "burst", f"{burst:,} notifications in one transaction, payload = the number as text",
            "count", burst, runs, send={"kind": "burst", "count": burst, "payload_bytes": 0},
            clients=throughput_clients,
        ),
        Workload(
            "wide", f"{wide:,} notifications in one transaction, 200-byte payloads (zero-padded number)",
            "count", wide, runs, send={"kind": "burst", "count": wide, "payload_bytes": 200},
            clients=throughput_clients,
        ),
        Workload(
            "transactions", f"{transactions:,} transactions of {per_transaction} notifications, one after another",
            "count", transactions * per_transaction, runs,
            send={"kind": "transactions", "transactions": transactions, "per_transaction": per_transaction},
            clients=throughput_clients,
        ),
        Workload(
            "steady", f"{rate:,} notifications/s for {seconds:g} s, one per transaction: commit-to-processor latency",
            "latency", int(rate * seconds), 1, send={"kind": "steady", "rate": rate, "seconds": seconds},
            clients=decoded_clients,
        ),
        Workload(
            "idle", f"{idle_seconds:g} s listening with nothing sent: wakeups and CPU",
            "idle", 0, 1, idle_seconds=idle_seconds,
        ),
        Workload(
            "backlog", f"{backlog:,} notifications in one transaction to a processor that sleeps 1 ms every 100",
            "slow", backlog, 1, send={"kind": "burst", "count": backlog, "payload_bytes": 0},
            slow_every=100, slow_delay=0.001, track_memory=True, clients=decoded_clients,
        ),
    ]


# -- running one client ------------------------------------------------------------------------


class ClientProcess:
    """A client program started in its own session, talking JSON lines on stdin and stdout."""

    def __init__(self, name: str, command: List[str], log_dir: str) -> None:
        self.name = name
        self.stderr_path = os.path.join(log_dir, f"{name}-{time.monotonic_ns()}.stderr")
        with open(self.stderr_path, "wb") as stderr:
            # A session of its own lets close() kill the client with every process it forked.
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
            )

    def read_event(self, expected: str, timeout: float) -> Dict[str, Any]:
        """Return the next JSON line, which must be the event ``expected``.

        Raises BenchmarkError after ``timeout`` seconds, or when the client exits first,
        with the tail of its standard error.
        """
        stdout = self.process.stdout
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise BenchmarkError(f"{self.name}: no {expected!r} line within {timeout:.0f} s{self.stderr_tail()}")

        line = stdout.readline()
        if not line:
            self.process.wait(5)
            raise BenchmarkError(
                f"{self.name} exited with status {self.process.returncode} before {expected!r}{self.stderr_tail()}"
            )
        event = json.loads(line)
        if event.get("event") != expected:
            raise BenchmarkError(f"{self.name}: expected a {expected!r} line, got {line!r}")
        return event

    def stderr_tail(self) -> str:
        """Return the last lines of the client's standard error, for an error message."""
        try:
            with open(self.stderr_path, errors="replace") as stderr:
                lines = stderr.read().strip().splitlines()[-8:]
        except OSError:
            return ""
        return ("; its stderr ends with:\n  " + "\n  ".join(lines)) if lines else ""

    def close(self) -> None:
        """Close standard input, which ends the client, and kill its session if it lingers."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Context:
    """Settings every run needs: the cluster's connection parameters and the compiled C client."""

    conninfo: str
    connect: Dict[str, Any]
    libpq_binary: Optional[str]
    log_dir: str


def client_command(client: str, workload: Workload, context: Context) -> List[str]:
    """Return the command line that starts ``client`` for ``workload``."""
    if client == "libpq":
        return [
            context.libpq_binary, context.conninfo, CHANNEL, workload.mode, str(workload.expected),
            str(workload.deadline if workload.mode != "idle" else 0), str(workload.slow_every),
            str(int(workload.slow_delay * 1_000_000)),
        ]

    config = {
        "client": client,
        "conninfo": context.conninfo,
        "connect": context.connect,
        "channel": CHANNEL,
        "mode": workload.mode,
        "expected": workload.expected,
        "deadline": workload.deadline if workload.mode != "idle" else 0,
        "slow_every": workload.slow_every,
        "slow_delay": workload.slow_delay,
    }
    return [sys.executable, os.path.join(HERE, "clients.py"), json.dumps(config)]


def start_sender(workload: Workload, context: Context) -> subprocess.Popen:
    """Start the sender process of ``workload``, which prints t0 when it has committed."""
    config = dict(workload.send, conninfo=context.conninfo, channel=CHANNEL)
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "send.py"), json.dumps(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish_sender(sender: subprocess.Popen, timeout: float) -> float:
    """Wait for the sender and return its t0; raise BenchmarkError if it failed."""
    try:
        stdout, stderr = sender.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sender.kill()
        sender.communicate()
        raise BenchmarkError(f"the sender did not finish within {timeout:.0f} s") from None
    if sender.returncode != 0:
        raise BenchmarkError(f"the sender failed with status {sender.returncode}: {stderr.strip()[-400:]}")
    return json.loads(stdout)["t0"]


class RssSampler(threading.Thread):
    """Samples the VmRSS of the given processes every RSS_SAMPLE_INTERVAL seconds."""

    def __init__(self, pids: Dict[str, int]) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.samples: List[Dict[str, Any]] = []
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopping.is_set():
            sample = {"t": round(time.monotonic() - self.started_at, 3)}
            for role, pid in self.pids.items():
                try:
                    sample[role] = procstat.rss_kib(pid)
                except FileNotFoundError:
                    sample[role] = 0
            self.samples.append(sample)
            self.stopping.wait(RSS_SAMPLE_INTERVAL)

    def stop(self) -> List[Dict[str, Any]]:
        """Stop sampling and return the samples: {"t": seconds, role: KiB, ...}."""
        self.stopping.set()
        self.join()
        return self.samples


def run_once(client: str, workload: Workload, context: Context) -> Dict[str, Any]:
    """Run ``client`` through one sending of ``workload``; return the measurements and checks."""
    process = ClientProcess(client, client_command(client, workload, context), context.log_dir)
    sender = None
    try:
        ready = process.read_event("ready", READY_TIMEOUT)
        processes = ready["processes"]
        backend_pid = ready["backend_pid"]
        rss_at_ready = {entry["role"]: procstat.rss_kib(entry["pid"]) for entry in processes}
        cpu_before = {entry["role"]: procstat.cpu_seconds(entry["pid"]) for entry in processes}
        backend_before = procstat.cpu_seconds(backend_pid)

        sampler = None
        if workload.track_memory:
            sampler = RssSampler({entry["role"]: entry["pid"] for entry in processes})
            sampler.start()
        sender = start_sender(workload, context)
        try:
            done = process.read_event("done", workload.deadline + 30)
        finally:
            samples = sampler.stop() if sampler else None

        cpu_after = {entry["role"]: procstat.cpu_seconds(entry["pid"]) for entry in processes}
        backend_after = procstat.cpu_seconds(backend_pid)
        peak_rss = {entry["role"]: procstat.peak_rss_kib(entry["pid"]) for entry in processes}
        t0 = finish_sender(sender, 120)
    except (BenchmarkError, FileNotFoundError) as error:
        if isinstance(error, FileNotFoundError):
            # /proc/<pid> vanished: a process of the client, or its backend, exited mid-run.
            error = BenchmarkError(f"{client}: {error.filename} is gone, so a process exited{process.stderr_tail()}")
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.communicate()
        return {"ok": False, "problem": str(error)}
    finally:
        process.close()

    return measure(workload, processes, done, t0, cpu_before, cpu_after, backend_after - backend_before,
                   rss_at_ready, peak_rss, samples)


def measure(
    workload: Workload, processes: List[Dict[str, Any]], done: Dict[str, Any], t0: float,
    cpu_before: Dict[str, float], cpu_after: Dict[str, float], backend_cpu: float,
    rss_at_ready: Dict[str, int], peak_rss: Dict[str, int], samples: Optional[List[Dict[str, Any]]],
) -> Dict[str, Any]:
    """Turn one run's raw readings into its result, with the count and order checks."""
    expected = workload.expected
    seconds = done["t1"] - t0
    cpu = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
    counted_cpu = sum(cpu[entry["role"]] for entry in processes if entry["counted"])

    problems = []
    if done["timed_out"] or done["received"] < expected:
        problems.append(f"received {done['received']:,} of {expected:,} before the deadline")
    elif done["received"] > expected:
        problems.append(f"received {done['received']:,}, {done['received'] - expected:,} more than sent")
    if done["disorder"]:
        first = done["first_disorder"]
        problems.append(
            f"{done['disorder']:,} out of order or missing; the first: expected {first['expected']}, got {first['got']}"
        )
    if done["bad_fields"]:
        problems.append(f"{done['bad_fields']:,} with a wrong channel or pid")

    result = {
        "ok": not problems,
        "problem": "; ".join(problems) or None,
        "expected": expected,
        "received": done["received"],
        "seconds": seconds,
        "rate": expected / seconds if seconds > 0 and not problems else None,
        "cpu_seconds": cpu,
        "cpu_us_per_notification": counted_cpu * 1e6 / expected,
        "backend_cpu_us_per_notification": backend_cpu * 1e6 / expected,
        "peak_rss_kib": peak_rss,
        "rss_at_ready_kib": rss_at_ready,
    }
    if "latency" in done:
        result["latency"] = done["latency"]
    if samples:
        result.update(describe_rss(samples, sum(rss_at_ready.values())))
    return result


def describe_rss(samples: List[Dict[str, Any]], rss_at_ready: int) -> Dict[str, Any]:
    """Summarise the RSS samples of a backlog run (KiB, all processes of the client added up).

    The run counts as flat when RSS stopped growing by the second half. A client that
    applies backpressure reaches its working size with its first full batch. One that
    buffers what the server sends keeps growing as the backlog moves into it.
    NOTE: a client that took the whole backlog within the first half would also level
    off; its ``rss_growth_kib`` then shows the size of the buffered backlog.
    """
    totals = [sum(value for role, value in sample.items() if role != "t") for sample in samples]
    half = max(1, len(totals) // 2)
    late_growth = max(0, max(totals[half:] or totals) - max(totals[:half]))
    return {
        "rss_samples": samples,
        "rss_quarters_kib": [totals[int(fraction * (len(totals) - 1))] for fraction in (0, 0.25, 0.5, 0.75, 1)],
        "rss_growth_kib": max(0, max(totals) - rss_at_ready),
        "rss_late_growth_kib": late_growth,
        "rss_flat": late_growth <= FLAT_TOLERANCE_KIB,
    }


def run_idle(workload: Workload, clients: List[str], context: Context) -> Dict[str, Dict[str, Any]]:
    """Start every client, let all of them listen for ``idle_seconds``, and count wakeups and CPU.

    The clients listen at the same time because they do nothing and so do not disturb each
    other, which keeps a full run short.
    """
    results: Dict[str, Dict[str, Any]] = {}
    started: Dict[str, ClientProcess] = {}
    readies: Dict[str, Dict[str, Any]] = {}
    try:
        for client in clients:
            process = ClientProcess(client, client_command(client, workload, context), context.log_dir)
            started[client] = process
            try:
                readies[client] = process.read_event("ready", READY_TIMEOUT)
            except BenchmarkError as error:
                results[client] = {"ok": False, "problem": str(error)}

        before = read_all_idle_counters(readies, started, results)
        time.sleep(workload.idle_seconds)
        after = read_all_idle_counters(readies, started, results)
    finally:
        for process in started.values():
            process.process.send_signal(signal.SIGTERM)
            process.close()

    per_minute = 60.0 / workload.idle_seconds
    for client, ready in readies.items():
        if client in results:
            continue
        roles = [entry["role"] for entry in ready["processes"] if entry["counted"]]
        wakeups = {role: (after[client][role][0] - before[client][role][0]) * per_minute for role in roles}
        cpu_ms = {role: (after[client][role][1] - before[client][role][1]) * 1000 * per_minute for role in roles}
        results[client] = {
            "ok": True,
            "problem": None,
            "wakeups_per_minute": wakeups,
            "cpu_ms_per_minute": cpu_ms,
            "total_wakeups_per_minute": sum(wakeups.values()),
            "total_cpu_ms_per_minute": sum(cpu_ms.values()),
        }
    return {client: results[client] for client in clients if client in results}


def read_all_idle_counters(
    readies: Dict[str, Dict[str, Any]], started: Dict[str, ClientProcess], results: Dict[str, Dict[str, Any]]
) -> Dict[str, Dict[str, tuple]]:
    """Return the idle counters of every client still running; record a failure for each one that exited."""
    counters = {}
    for client, ready in readies.items():
        if client in results:
            continue
        try:
            counters[client] = read_idle_counters(ready)
        except FileNotFoundError as error:
            problem = f"{client}: {error.filename} is gone, so a process exited{started[client].stderr_tail()}"
            results[client] = {"ok": False, "problem": problem}
    return counters


def read_idle_counters(ready: Dict[str, Any]) -> Dict[str, tuple]:
    """Return {role: (voluntary context switches, CPU seconds)} for a client's processes."""
    return {
        entry["role"]: (procstat.voluntary_switches(entry["pid"]), procstat.cpu_seconds(entry["pid"]))
        for entry in ready["processes"]
    }


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Return the median and range of a client's runs of one workload, and whether all passed."""
    finished = [run for run in runs if "seconds" in run]
    rates = [run["rate"] for run in finished if run["rate"] is not None]
    summary: Dict[str, Any] = {
        "ok": all(run["ok"] for run in runs),
        "problems": [run["problem"] for run in runs if run["problem"]],
        "runs": runs,
    }
    if rates:
        summary["rate_median"] = statistics.median(rates)
        summary["rate_min"] = min(rates)
        summary["rate_max"] = max(rates)
    if finished:
        summary["cpu_us_per_notification"] = statistics.median(run["cpu_us_per_notification"] for run in finished)
        summary["backend_cpu_us_per_notification"] = statistics.median(
            run["backend_cpu_us_per_notification"] for run in finished
        )
        summary["cpu_us_per_notification_by_role"] = {
            role: statistics.median(run["cpu_seconds"][role] * 1e6 / run["expected"] for run in finished)
            for role in finished[0]["cpu_seconds"]
        }
        summary["peak_rss_kib"] = {
            role: max(run["peak_rss_kib"][role] for run in finished) for role in finished[0]["peak_rss_kib"]
        }
        for key in ("latency", "rss_quarters_kib", "rss_growth_kib", "rss_late_growth_kib", "rss_flat"):
            if key in finished[-1]:
                summary[key] = finished[-1][key]
    return summary


def ratios(summaries: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Return rate(row client) / rate(column client) for every pair with a median rate."""
    rates = {client: summary["rate_median"] for client, summary in summaries.items() if "rate_median" in summary}
    return {row: {column: rates[row] / rates[column] for column in rates} for row in rates}


# -- setting up -------------------------------------------------------------------------------


def compile_libpq_client(build_dir: str) -> str:
    """Compile libpq_drain.c into ``build_dir``; return the binary's path or raise BenchmarkError."""
    try:
        include_dir = subprocess.run(["pg_config", "--includedir"], capture_output=True, text=True, check=True).stdout.strip()
        lib_dir = subprocess.run(["pg_config", "--libdir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise BenchmarkError(f"pg_config failed, so the libpq client cannot be built: {error}") from None

    binary = os.path.join(build_dir, "libpq_drain")
    command = [
        os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", binary, os.path.join(HERE, "libpq_drain.c"),
        f"-I{include_dir}", f"-L{lib_dir}", "-lpq",
    ]
    compiled = subprocess.run(command, capture_output=True, text=True)
    if compiled.returncode != 0:
        raise BenchmarkError(f"compiling libpq_drain.c failed:\n{' '.join(command)}\n{compiled.stderr}")
    return binary


def check_peers(clients: List[str]) -> None:
    """Raise BenchmarkError naming the fix when a peer library that ``clients`` need is missing."""
    import importlib.util

    missing = [module for client, module in PEER_MODULES.items() if client in clients and importlib.util.find_spec(module) is None]
    if missing:
        raise BenchmarkError(
            f"missing benchmark dependencies: {', '.join(missing)}; "
            f"run pip install -r {os.path.join(HERE, 'requirements.txt')}, or leave those clients out with --only"
        )


def describe_machine(cluster: PostgresCluster) -> Dict[str, Any]:
    """Return what the results depend on: CPU, memory, kernel, versions."""
    import psycopg2

    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory_kib = int(meminfo.readline().split()[1])

    versions = {"python": platform.python_version(), "psycopg2": psycopg2.__version__.split()[0]}
    for name in ("psycopg", "asyncpg", "hermes_lite"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = None
    versions["libpq"] = psycopg2.__libpq_version__
    versions["postgresql"] = cluster.execute("SHOW server_version")[0][0]

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
    }


def parse_arguments(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: every client and workload once, with small counts")
    parser.add_argument("--runs", type=int, help="runs per client of each throughput workload (default 3, 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated clients to run, of: {','.join(CLIENTS)}")
    parser.add_argument("--output", help="write the results as JSON to this file")
    arguments = parser.parse_args(argv)

    if arguments.runs is None:
        arguments.runs = 1 if arguments.quick else 3
    if arguments.runs < 1:
        parser.error(f"invalid --runs {arguments.runs}: expected at least 1")
    arguments.clients = list(CLIENTS)
    if arguments.only:
        requested = [name.strip() for name in arguments.only.split(",") if name.strip()]
        unknown = [name for name in requested if name not in CLIENTS]
        if unknown or not requested:
            parser.error(f"invalid --only {arguments.only!r}: expected names from {','.join(CLIENTS)}")
        arguments.clients = [client for client in CLIENTS if client in requested]
    return arguments


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    arguments = parse_arguments(argv)
    workloads = build_workloads(arguments.quick, arguments.runs)
    started = time.monotonic()

    build_dir = tempfile.mkdtemp(prefix="hermes-lite-bench-")
    try:
        check_peers(arguments.clients)
        libpq_binary = compile_libpq_client(build_dir) if "libpq" in arguments.clients else None
        with PostgresCluster() as cluster:
            connect = {"host": cluster.socket_dir, "port": cluster.port, "user": "postgres", "database": "postgres"}
            context = Context(cluster.dsn, connect, libpq_binary, build_dir)
            results = {
                "command": " ".join(["python3", "benchmarks/run.py"] + (argv if argv is not None else sys.argv[1:])),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": describe_machine(cluster),
                "runs": arguments.runs,
                "quick": arguments.quick,
                "workloads": {},
            }
            for workload in workloads:
                results["workloads"][workload.name] = run_workload(workload, arguments.clients, context)
    except BenchmarkError as error:
        print(f"benchmark not run: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)

    results["seconds"] = round(time.monotonic() - started, 1)
    table = report.format_results(results)
    print(table)
    if arguments.output:
        with open(arguments.output, "w") as output:
            json.dump(results, output, indent=1)
            output.write("\n")

    failed = [
        f"{name}/{client}"
        for name, workload in results["workloads"].items()
        for client, summary in workload["clients"].items()
        if not summary["ok"]
    ]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_workload(workload: Workload, clients: List[str], context: Context) -> Dict[str, Any]:
    """Run every selected client through ``workload``, one after another; return the summaries."""
    selected = [client for client in workload.clients if client in clients]
    load_before = os.getloadavg()
    print(f"{workload.name}: {workload.title}", file=sys.stderr, flush=True)

    if workload.mode == "idle":
        summaries = run_idle(workload, selected, context)
    else:
        summaries = {}
        for client in selected:
            runs = []
            for index in range(workload.runs):
                result = run_once(client, workload, context)
                runs.append(result)
                rate = f"{result['rate']:,.0f}/s" if result.get("rate") else "-"
                status = "ok" if result["ok"] else f"FAILED: {result['problem']}"
                print(f"  {client} run {index + 1}/{workload.runs}: {rate} {status}", file=sys.stderr, flush=True)
            summaries[client] = summarise(runs)

    return {
        "title": workload.title,
        "mode": workload.mode,
        "expected": workload.expected,
        "runs": workload.runs,
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "clients": summaries,
        "ratios": ratios(summaries),
    }


if __name__ == "__main__":
    sys.exit(main())
