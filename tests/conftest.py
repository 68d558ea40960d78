import os
import sys

import pytest

# Test this checkout's hermes_lite, in this process and in the processes the tests start,
# even when another checkout is installed in editable mode in the same environment.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))

from hermes_lite.listeners import C_EXTENSION_AVAILABLE, IMPLEMENTATIONS  # noqa: E402


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    """The name of each listener implementation, "c" and "python". Tests of "c" are skipped when the extension is not built."""
    if request.param == "c" and not C_EXTENSION_AVAILABLE:
        pytest.skip("the C listener extension is not built")
    return request.param


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """Fail a test that leaves a child process or, on the shared cluster, a server session behind."""
    yield

    import multiprocessing
    import time

    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == [], "a test left child processes running"

    if "postgres_cluster" not in request.fixturenames:
        return
    cluster = request.getfixturevalue("postgres_cluster")
    query = (
        "SELECT pid, query FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    sessions = cluster.execute(query)
    while sessions and time.monotonic() < deadline:
        time.sleep(0.05)
        sessions = cluster.execute(query)
    assert sessions == [], f"a test left server sessions open: {sessions}"
