"""The hermes-lite command and the README quickstart, run as a user runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hermes_lite.listeners

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "hermes_lite"]


def run_command(*arguments, timeout=120):
    return subprocess.run([*COMMAND, *arguments], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["listen", "notify", "demo"])
def test_help_of_each_command(command):
    result = run_command(command, "--help")

    assert result.returncode == 0
    assert "usage: hermes-lite" in result.stdout


@pytest.mark.timeout(180)
def test_demo_reports_every_notification_in_order():
    result = run_command("demo", "--count", "20000", timeout=170)

    assert result.returncode == 0, result.stderr
    assert "received:       20,000 of 20,000" in result.stdout
    assert "in order:       yes" in result.stdout
    expected = hermes_lite.listeners.IMPLEMENTATION
    assert f"listener:       {expected}" in result.stdout


@pytest.mark.timeout(180)
def test_demo_with_python_listener():
    result = run_command("demo", "--count", "5000", "--implementation", "python", timeout=170)

    assert result.returncode == 0, result.stderr
    assert "listener:       python" in result.stdout


def test_demo_rejects_zero_count():
    result = run_command("demo", "--count", "0")

    assert result.returncode == 2
    assert "invalid --count 0" in result.stderr


@pytest.mark.timeout(120)
def test_listen_prints_json_and_stops_on_sigterm(postgres_cluster, implementation):
    listener = subprocess.Popen(
        [*COMMAND, "listen", "--dsn", postgres_cluster.dsn, "--implementation", implementation, "Cli_Channel"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_listener(postgres_cluster, "Cli_Channel")
        sent = run_command("notify", "--dsn", postgres_cluster.dsn, "Cli_Channel", "payload ü")
        other = run_command("notify", "--dsn", postgres_cluster.dsn, "cli_channel", "other channel")
        line = listener.stdout.readline()
        listener.send_signal(signal.SIGTERM)
        rest, errors = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()

    assert sent.returncode == 0, sent.stderr
    assert other.returncode == 0, other.stderr
    received = json.loads(line)
    assert received["channel"] == "Cli_Channel"
    assert received["payload"] == "payload ü"
    assert isinstance(received["pid"], int)
    assert "received_at" in received
    assert rest == ""
    assert listener.returncode == 0, errors


def test_notify_rejects_payload_of_8000_bytes(postgres_cluster):
    result = run_command("notify", "--dsn", postgres_cluster.dsn, "ch", "a" * 8000)

    assert result.returncode == 2
    assert "8000 bytes" in result.stderr


def test_notify_reports_unreachable_server(tmp_path):
    result = run_command("notify", "--dsn", f"host={tmp_path} port=1 user=x password=s3cret-pw", "ch", "x")

    assert result.returncode == 1
    assert result.stderr.startswith("hermes-lite: ")
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr


@pytest.mark.timeout(120)
def test_readme_quickstart_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    script = tmp_path / "quickstart.py"
    script.write_text(code)

    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "resynchronise: start"
    assert [line.split(" (")[0] for line in lines[1:]] == ["orders: order 0", "orders: order 1", "orders: order 2"]


def wait_for_listener(cluster, channel, timeout=30):
    """Wait until a session is LISTENing on ``channel``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s", (f'LISTEN "{channel}"',))
        if rows[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"no session LISTENs on {channel!r} after {timeout} s")


def test_module_flag_honours_environment():
    environment = dict(os.environ, HERMES_LITE_PURE="1")
    result = subprocess.run(
        [sys.executable, "-c", "import hermes_lite; print(hermes_lite.IMPLEMENTATION)"],
        capture_output=True, text=True, env=environment, timeout=60,
    )

    assert result.stdout.strip() == "python"


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must have the C listener built")
def test_c_listener_is_built_in_ci():
    assert hermes_lite.listeners.C_EXTENSION_AVAILABLE


GROUP_SIGTERM_SCRIPT = """
import sys
from hermes_lite import Client, Component, PostgresNotificationListener

class Idle(Component):
    def execute(self, batch):
        pass

client = Client(sys.argv[1])
client.add_listener(PostgresNotificationListener(sys.argv[1], "group_term"))
client.add_processor(Idle())
client.start()
print("returned", flush=True)
"""


@pytest.mark.timeout(120)
def test_client_stops_cleanly_on_group_sigterm(postgres_cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(GROUP_SIGTERM_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), postgres_cluster.dsn],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        wait_for_listener(postgres_cluster, "group_term")
        # As systemd does by default: the signal reaches the supervisor and its components at once.
        os.killpg(process.pid, signal.SIGTERM)
        output, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 0, errors
    assert output.strip() == "returned"
    assert "unexpectedly" not in errors
    assert "restarting" not in errors
