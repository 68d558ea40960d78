"""Packaging: the sdist contains the C sources and tests, installs with and without the extension,
and builds a cp39-abi3 wheel.

Every install goes into a fresh venv under a temporary directory and fetches build,
psycopg2-binary, cffi and setuptools from the package index that pip is configured with, so
these tests need access to it. The smoke tests start their own PostgreSQL through run_demo.
"""

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Build outputs and caches of the working tree that must not end up in the copy that is packed.
IGNORED_IN_COPY = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", "*.so", ".hypothesis", ".pytest_cache"
)

REQUIRED_SDIST_FILES = [
    "setup.py",
    "pyproject.toml",
    "README.md",
    "csrc/listener.c",
    "csrc/listener.h",
    "csrc/build_listener.py",
    "tests/conftest.py",
    "tests/helpers.py",
    "tests/test_listener.py",
    "tests/test_packaging.py",
    "tests/memcheck/run.sh",
    "tests/memcheck/python.supp",
    "tests/memcheck/workload.py",
]

# Where csrc/build_listener.py looks for the libpq headers when pg_config is missing.
FALLBACK_LIBPQ_HEADER = "/usr/include/postgresql/libpq-fe.h"

DEMO_COUNT = 2000

# Run with the expected implementation as its argument. run_demo starts its own throwaway
# PostgresCluster on a unix socket, so the script needs no server.
SMOKE_SCRIPT = textwrap.dedent(
    f"""\
    import sys

    import hermes_lite
    from hermes_lite.demo import run_demo

    if __name__ == "__main__":
        expected = sys.argv[1]
        assert hermes_lite.IMPLEMENTATION == expected, hermes_lite.IMPLEMENTATION
        result = run_demo({DEMO_COUNT})
        print(result)
        assert result.implementation == expected, result
        assert result.received == {DEMO_COUNT}, result
        assert result.in_order, result
    """
)


def clean_environment(**overrides):
    """Return a copy of os.environ for the venvs, with ``overrides`` applied.

    It drops PYTHONPATH, which tests/conftest.py points at the repository for the other tests
    and which would hide the installed package behind the working tree. It also drops the
    variables that choose or skip the C listener.
    """
    environment = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "HERMES_LITE_PURE", "HERMES_LITE_NO_EXTENSION"):
        environment.pop(name, None)
    environment.update(overrides)
    return environment


def run(command, cwd, environment=None, timeout=300):
    """Run a command and return its stdout. A non-zero exit fails the test with both outputs."""
    completed = subprocess.run(
        command,
        cwd=cwd,
        env=environment or clean_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, (
        f"{' '.join(map(str, command))} exited with status {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return completed.stdout


def create_venv(path, cwd):
    """Create a venv at ``path`` and return the path of its python."""
    run([sys.executable, "-m", "venv", str(path)], cwd=cwd)
    return str(path / "bin" / "python")


def install_sdist(python, sdist, cwd, environment):
    # No wheel cache: pip would otherwise reuse the wheel built by the previous test, which
    # has a different extension build outcome, because the file name of the sdist is the same.
    run([python, "-m", "pip", "install", "-q", "--no-cache-dir", str(sdist)], cwd=cwd, environment=environment)


def installed_implementation(python, cwd):
    """Return hermes_lite.IMPLEMENTATION and the package directory as seen by ``python``."""
    code = "import os, hermes_lite; print(hermes_lite.IMPLEMENTATION); print(os.path.dirname(hermes_lite.__file__))"
    implementation, package_dir = run([python, "-c", code], cwd=cwd).split()
    return implementation, package_dir


def run_smoke_test(python, expected_implementation, cwd):
    script = cwd / "smoke.py"
    script.write_text(SMOKE_SCRIPT)
    run([python, str(script), expected_implementation], cwd=cwd)


def libpq_header_found():
    """Return whether libpq-fe.h is where csrc/build_listener.py looks for it."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        include_dir = subprocess.run([pg_config, "--includedir"], capture_output=True, text=True).stdout.strip()
        if include_dir and os.path.exists(os.path.join(include_dir, "libpq-fe.h")):
            return True
    return os.path.exists(FALLBACK_LIBPQ_HEADER)


def skip_without_compiler_or_libpq():
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on PATH")
    if not libpq_header_found():
        pytest.skip("libpq-fe.h not found; install the libpq headers (libpq-dev on Debian)")


@pytest.fixture(scope="module")
def build_python(tmp_path_factory):
    """The python of a venv that has the ``build`` package installed."""
    work_dir = tmp_path_factory.mktemp("buildenv")
    python = create_venv(work_dir / "venv", cwd=work_dir)
    run([python, "-m", "pip", "install", "-q", "build"], cwd=work_dir)
    return python


@pytest.fixture(scope="module")
def sdist(build_python, tmp_path_factory):
    """Build the sdist of the working tree once per module and return its path.

    The build runs on a copy, because setuptools writes hermes_lite.egg-info into the source
    directory, and the working tree's egg-info belongs to its editable install.
    """
    work_dir = tmp_path_factory.mktemp("sdist")
    source_dir = work_dir / "source"
    shutil.copytree(REPOSITORY, source_dir, ignore=IGNORED_IN_COPY)

    command = [build_python, "-m", "build", "--sdist", "--outdir", str(work_dir / "dist"), str(source_dir)]
    run(command, cwd=work_dir)

    archives = list((work_dir / "dist").glob("*.tar.gz"))
    assert len(archives) == 1, f"expected one sdist, found {archives}"
    return archives[0]


@pytest.mark.timeout(600)
def test_sdist_contains_sources_and_tests(sdist):
    with tarfile.open(sdist) as archive:
        # Every member name starts with the "<name>-<version>/" directory.
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}

    for path in REQUIRED_SDIST_FILES:
        assert path in members, f"{path} is missing from {sdist.name}"


@pytest.mark.timeout(600)
def test_sdist_install_builds_extension(sdist, tmp_path):
    skip_without_compiler_or_libpq()

    venv_dir = tmp_path / "venv"
    python = create_venv(venv_dir, cwd=tmp_path)
    install_sdist(python, sdist, cwd=tmp_path, environment=clean_environment())

    implementation, package_dir = installed_implementation(python, cwd=tmp_path)
    assert package_dir.startswith(str(venv_dir)), f"hermes_lite was imported from {package_dir}"
    assert implementation == "c"
    assert os.path.exists(os.path.join(package_dir, "_listener.abi3.so"))

    run_smoke_test(python, "c", cwd=tmp_path)


@pytest.mark.timeout(600)
def test_sdist_install_without_compiler(sdist, tmp_path):
    venv_dir = tmp_path / "venv"
    python = create_venv(venv_dir, cwd=tmp_path)
    # "false" exits with status 1, so every compile fails and setup.py drops the extension.
    install_sdist(python, sdist, cwd=tmp_path, environment=clean_environment(CC="false"))

    implementation, package_dir = installed_implementation(python, cwd=tmp_path)
    assert package_dir.startswith(str(venv_dir)), f"hermes_lite was imported from {package_dir}"
    assert implementation == "python"
    assert not [name for name in os.listdir(package_dir) if name.startswith("_listener")]

    run_smoke_test(python, "python", cwd=tmp_path)


@pytest.mark.timeout(600)
@pytest.mark.skipif(
    platform.python_implementation() != "CPython" or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="setup.py tags wheels abi3 only on CPython builds with the GIL",
)
def test_wheel_from_sdist_is_abi3(sdist, build_python, tmp_path):
    skip_without_compiler_or_libpq()

    # pip wheel builds in an isolated environment and installs nothing into build_python's venv.
    wheel_dir = tmp_path / "wheels"
    command = [build_python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "-w", str(wheel_dir), str(sdist)]
    run(command, cwd=tmp_path)

    wheels = list(wheel_dir.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    assert "-cp39-abi3-" in wheels[0].name
    with zipfile.ZipFile(wheels[0]) as archive:
        assert "hermes_lite/_listener.abi3.so" in archive.namelist()
