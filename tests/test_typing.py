"""The package type-checks under mypy --strict (configuration in mypy.ini)."""

import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(300)
def test_mypy_strict_passes():
    pytest.importorskip("mypy", reason="mypy comes with the test extra: pip install -e '.[test]'")

    result = subprocess.run(
        [sys.executable, "-m", "mypy", "hermes_lite"], cwd=REPOSITORY, capture_output=True, text=True, timeout=280
    )

    assert result.returncode == 0, result.stdout + result.stderr
