"""The listen options, run, bench and --log-format of the hermes-lite command, run as subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

COMMAND = [sys.executable, "-m", "hermes_lite"]

PROCESSOR_MODULE = """
from hermes_lite import Component


class Recorder(Component):
    def execute(self, batch):
        with open({output!r}, "a") as output:
            for item in batch:
                if not item.is_gap:
                    output.write(item.payload + "\\n")


class NotAComponent:
    pass
"""


def run_command(*arguments, timeout=60, env=None):
    return subprocess.run([*COMMAND, *arguments], capture_output=True, text=True, timeout=timeout, env=env)


def start_command(*arguments, env=None):
    return subprocess.Popen(
        [*COMMAND, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def stop_process(process):
    if process.poll() is None:
        process.kill()
        process.communicate()


def wait_for_listener(cluster, channel, timeout=30):
    """Wait until a session is LISTENing on ``channel``."""
    pattern = f'%LISTEN "{channel}"%'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()", (pattern,))
        if rows[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"no session LISTENs on {channel!r} after {timeout} s")


def environment_with_path(directory):
    """Return os.environ with ``directory`` added in front of PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


@pytest.mark.timeout(120)
def test_listen_count_with_text_format(postgres_cluster):
    listener = start_command("listen", "--dsn", postgres_cluster.dsn, "--format", "text", "--count", "2", "count_text")
    try:
        wait_for_listener(postgres_cluster, "count_text")
        postgres_cluster.execute("SELECT pg_notify('count_text', E'first\\tpart')")
        postgres_cluster.execute("SELECT pg_notify('count_text', 'second')")
        postgres_cluster.execute("SELECT pg_notify('count_text', 'third')")
        output, errors = listener.communicate(timeout=60)
    finally:
        stop_process(listener)

    assert listener.returncode == 0, errors
    lines = output.splitlines()
    assert len(lines) == 2
    channel, pid, payload = lines[0].split("\t")
    assert channel == "count_text"
    assert pid.isdigit()
    assert payload == "first\\tpart"
    assert lines[1].split("\t")[2] == "second"


@pytest.mark.timeout(60)
def test_listen_timeout_exits_quietly(postgres_cluster):
    started = time.monotonic()
    result = run_command("listen", "--dsn", postgres_cluster.dsn, "--timeout", "1", "quiet_channel")
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert elapsed >= 1


@pytest.mark.parametrize("option", [["--count", "0"], ["--timeout", "-1"], ["--format", "xml"]])
def test_listen_rejects_invalid_option(option):
    result = run_command("listen", "--dsn", "dbname=unused", *option, "channel")

    assert result.returncode == 2
    assert "invalid" in result.stderr


@pytest.mark.timeout(120)
def test_run_processor_until_sigterm(postgres_cluster, tmp_path):
    output = tmp_path / "received.txt"
    (tmp_path / "cli_run_processor.py").write_text(PROCESSOR_MODULE.format(output=str(output)))
    process = start_command(
        "run", "cli_run_processor:Recorder", "--dsn", postgres_cluster.dsn,
        "--channel", "run_one", "--channel", "run_two",
        env=environment_with_path(tmp_path),
    )
    try:
        wait_for_listener(postgres_cluster, "run_two")
        postgres_cluster.execute("SELECT pg_notify('run_one', 'alpha')")
        postgres_cluster.execute("SELECT pg_notify('run_two', 'beta')")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (output.exists() and len(output.read_text().splitlines()) == 2):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    finally:
        stop_process(process)

    assert process.returncode == 0, errors
    assert output.read_text().splitlines() == ["alpha", "beta"]
    assert "Traceback" not in errors


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cli_bad_spec_processor", "expected package.module:ClassName"),
        ("cli_no_such_module:Recorder", "module 'cli_no_such_module' not found"),
        ("cli_bad_spec_processor:Missing", "has no attribute 'Missing'"),
        ("cli_bad_spec_processor:NotAComponent", "is not a subclass of hermes_lite.Component"),
    ],
)
def test_run_rejects_bad_spec(tmp_path, spec, message):
    (tmp_path / "cli_bad_spec_processor.py").write_text(PROCESSOR_MODULE.format(output=str(tmp_path / "unused")))

    result = run_command("run", spec, "--dsn", "dbname=unused", "--channel", "ch", env=environment_with_path(tmp_path))

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(290)
def test_bench_prints_table():
    result = run_command("bench", "--count", "20000", timeout=280)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("client"))
    assert header.split() == ["client", "notifications/s", "vs", "psycopg2"]
    assert any(line.startswith("hermes-lite (python)") for line in lines)
    baseline = next(line for line in lines if line.startswith("psycopg2 "))
    assert baseline.endswith("1.00x")
    # Progress goes to a terminal only, and stderr is a pipe here.
    assert result.stderr == ""


@pytest.mark.timeout(60)
def test_log_format_json(postgres_cluster):
    result = run_command(
        "--log-level", "info", "--log-format", "json", "listen", "--dsn", postgres_cluster.dsn, "--timeout", "1", "json_logs"
    )

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records
    for record in records:
        assert set(record) >= {"time", "level", "logger", "process", "message"}
    assert all(record["level"] == "INFO" for record in records)


@pytest.mark.timeout(60)
def test_listen_exits_when_listener_stops_for_good(postgres_cluster):
    dsn = f"host={postgres_cluster.socket_dir} port={postgres_cluster.port} dbname=postgres user=nosuchrole"

    result = subprocess.run(
        [sys.executable, "-m", "hermes_lite", "listen", "--dsn", dsn, "--count", "1", "ch"],
        capture_output=True, text=True, timeout=50,
    )

    assert result.returncode == 1
    assert "nosuchrole" in result.stderr
    assert "the listener stopped" in result.stderr


def test_log_options_accepted_after_command():
    result = subprocess.run(
        [sys.executable, "-m", "hermes_lite", "listen", "--help", "--log-format", "json"],
        capture_output=True, text=True, timeout=50,
    )

    assert result.returncode == 0
