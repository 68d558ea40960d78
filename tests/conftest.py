import pytest

from hermes_lite.listeners import C_EXTENSION_AVAILABLE, IMPLEMENTATIONS

pytest_plugins = ["hermes_lite.pytest_plugin"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    """The name of each listener implementation, "c" and "python". Tests of "c" are skipped when the extension is not built."""
    if request.param == "c" and not C_EXTENSION_AVAILABLE:
        pytest.skip("the C listener extension is not built")
    return request.param
