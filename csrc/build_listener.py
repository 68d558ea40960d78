"""cffi build script of hermes_lite._listener, the C listener in csrc/listener.c linked to libpq.

It only declares which C file to compile, where libpq is, and which symbols Python can use.
"""

import os
import shutil
import subprocess

import cffi

# Used when pg_config is not on PATH: the Debian and Ubuntu location of the libpq headers.
FALLBACK_INCLUDE_DIR = "/usr/include/postgresql"

CSRC_DIR = os.path.dirname(os.path.abspath(__file__))


def pg_config(option):
    """Return one line of pg_config output, or None when pg_config is missing or fails."""
    executable = shutil.which("pg_config")
    if executable is None:
        return None
    try:
        output = subprocess.run([executable, option], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return output.strip() or None


include_dirs = [CSRC_DIR, pg_config("--includedir") or FALLBACK_INCLUDE_DIR]
library_dirs = [path for path in [pg_config("--libdir")] if path]

ffibuilder = cffi.FFI()

ffibuilder.cdef(
    """
    #define HL_OK ...
    #define HL_ERROR_CONNECTION ...
    #define HL_ERROR_QUERY ...
    #define HL_ERROR_NO_MEMORY ...

    #define HL_DRAIN_ERROR ...
    #define HL_DRAIN_WOKEN ...
    #define HL_DRAIN_TIMEOUT ...
    #define HL_DRAIN_CONNECTION_LOST ...
    #define HL_DRAIN_PIPE_CLOSED ...

    typedef struct hl_listener hl_listener;

    hl_listener *hl_listener_new(const char *conninfo);
    int hl_listener_connect(hl_listener *listener);
    int hl_listener_exec(hl_listener *listener, const char *sql);
    int hl_listener_backend_pid(const hl_listener *listener);
    const char *hl_listener_client_encoding(const hl_listener *listener);
    int hl_listener_drain(hl_listener *listener, int pipe_fd, int wake_fd, int timeout_ms);
    const char *hl_listener_error_message(const hl_listener *listener);
    uint64_t hl_listener_received(const hl_listener *listener);
    int hl_listener_ping(hl_listener *listener, int timeout_ms);
    int hl_listener_queue(hl_listener *listener, const char *data, size_t length);
    size_t hl_listener_pending_bytes(const hl_listener *listener);
    void hl_listener_close(hl_listener *listener);
    void hl_listener_free(hl_listener *listener);
    """
)

# Paths relative to the project root, because setup.py runs from there.
ffibuilder.set_source(
    "hermes_lite._listener",
    '#include "listener.h"',
    sources=["csrc/listener.c"],
    include_dirs=include_dirs,
    library_dirs=library_dirs,
    libraries=["pq"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
