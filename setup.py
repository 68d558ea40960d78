"""Build of the optional C listener, hermes_lite._listener; the metadata is in pyproject.toml.

The package works without the extension. Its build is skipped when HERMES_LITE_NO_EXTENSION=1
or cffi is missing, and a failed compile or link (no C compiler, no libpq headers or library)
prints a warning and installs the package without it.
"""

import os
import platform
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

CFFI_MODULE = "csrc/build_listener.py:ffibuilder"

BUILD_FAILURES = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


def warn(message):
    print(f"WARNING: {message}", file=sys.stderr)


def extension_skip_reason():
    """Return why the extension is not built, or None to build it."""
    if os.environ.get("HERMES_LITE_NO_EXTENSION", "") not in ("", "0"):
        return "HERMES_LITE_NO_EXTENSION is set"
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed"
    return None


class OptionalBuildExt(build_ext):
    """build_ext that drops an extension which fails to build instead of failing the install."""

    def build_extensions(self):
        self.failed_extensions = []
        super().build_extensions()

        # Forget failed extensions, so that --inplace and editable installs do not try to
        # copy files that were never built.
        self.extensions = [ext for ext in self.extensions if ext.name not in self.failed_extensions]

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_FAILURES as error:
            warn(
                f"could not build the C extension {ext.name}, so hermes-lite is installed without "
                "it and uses its pure-Python listener. To build it, install a C compiler and the "
                "libpq headers and library (pg_config on PATH, or the libpq-dev package), then "
                f"reinstall. The build error: {error}"
            )
            self.failed_extensions.append(ext.name)


setup_options = {"cmdclass": {"build_ext": OptionalBuildExt}}

skip_reason = extension_skip_reason()
if skip_reason is None:
    setup_options["cffi_modules"] = [CFFI_MODULE]
    # cffi compiles against the limited API, so one wheel serves every CPython from 3.9 on.
    # Free-threaded builds have no limited API, and cffi then builds a version-specific module.
    if platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
        setup_options["options"] = {"bdist_wheel": {"py_limited_api": "cp39"}}
else:
    warn(f"not building the C extension hermes_lite._listener: {skip_reason}.")

setup(**setup_options)
