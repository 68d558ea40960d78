"""Run the examples of docs/guide.md, so that the guide cannot drift from the code.

Convention: a ```python block whose first line is exactly ``# runnable`` is a script; it is
run with ``python -c`` in a subprocess and must exit with status 0 without printing a
traceback. A block whose first line is exactly ``# runnable: pytest`` is a test module. It is
written into a temporary directory without conftest.py and run with ``python -m pytest``,
which must pass. Other
python blocks (such as deployment scripts that need a real server) are not run. The examples
start their own throwaway clusters with hermes_lite.testing.PostgresCluster.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"

SCRIPT_MARKER = "# runnable"
PYTEST_MARKER = "# runnable: pytest"

# A fenced python block at the start of a line, possibly indented inside a list item.
_PYTHON_BLOCK = re.compile(r"^(?P<indent>[ ]*)```python\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.MULTILINE | re.DOTALL)

EXAMPLE_TIMEOUT = 180


def python_blocks():
    """Return the body of every ```python block in the guide, in order."""
    return [match.group("body") for match in _PYTHON_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))]


def blocks_marked(marker):
    return [block for block in python_blocks() if block.split("\n", 1)[0].strip() == marker]


def run(argv, cwd):
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, env=dict(os.environ)
    )


def describe(completed):
    return f"exit status {completed.returncode}\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"


def test_guide_has_examples():
    assert len(blocks_marked(SCRIPT_MARKER)) >= 1
    assert len(blocks_marked(PYTEST_MARKER)) == 1


@pytest.mark.parametrize("index", range(len(blocks_marked(SCRIPT_MARKER))))
def test_guide_script_runs(index, tmp_path):
    source = blocks_marked(SCRIPT_MARKER)[index]

    completed = run([sys.executable, "-c", source], cwd=tmp_path)

    assert completed.returncode == 0, describe(completed)
    assert "Traceback" not in completed.stderr, describe(completed)


def test_first_processor_output(tmp_path):
    source = blocks_marked(SCRIPT_MARKER)[0]

    completed = run([sys.executable, "-c", source], cwd=tmp_path)

    lines = completed.stdout.splitlines()
    assert lines[0] == "gap (start): reloading state", describe(completed)
    assert re.fullmatch(r"orders: order 1 \(from backend \d+\)", lines[1]), describe(completed)
    assert re.fullmatch(r"Refunds: refund 7 \(from backend \d+\)", lines[2]), describe(completed)
    assert len(lines) == 3, describe(completed)


def test_pytest_plugin_example(tmp_path):
    """The plugin example passes in a directory without conftest.py: the pytest11 entry point loads the fixtures."""
    test_file = tmp_path / "test_orders_example.py"
    test_file.write_text(blocks_marked(PYTEST_MARKER)[0], encoding="utf-8")
    assert not (tmp_path / "conftest.py").exists()

    completed = run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider"], cwd=tmp_path)

    assert completed.returncode == 0, describe(completed)
    assert "2 passed" in completed.stdout, describe(completed)
