/*
 * Listener hot path: receives PostgreSQL notifications through libpq and writes them as
 * frames to a pipe, in the layout of hermes_lite/frames.py.
 *
 * An hl_listener owns one PGconn and a buffer of frames not yet written to the pipe. It is
 * not thread-safe: use each listener from one thread at a time.
 */
#ifndef HERMES_LITE_LISTENER_H
#define HERMES_LITE_LISTENER_H

#include <stddef.h>
#include <stdint.h>

typedef struct hl_listener hl_listener;

/* Results of hl_listener_connect and hl_listener_exec. */
#define HL_OK 0
#define HL_ERROR_CONNECTION 1
#define HL_ERROR_QUERY 2
#define HL_ERROR_NO_MEMORY 3

/* Results of hl_listener_drain; the positive values equal those in hermes_lite/drain.py. */
#define HL_DRAIN_ERROR (-1)
#define HL_DRAIN_WOKEN 1
#define HL_DRAIN_TIMEOUT 2
#define HL_DRAIN_CONNECTION_LOST 3
#define HL_DRAIN_PIPE_CLOSED 4

/* Allocates a listener for a libpq conninfo string, without connecting.
 * Returns NULL when memory is exhausted. */
hl_listener *hl_listener_new(const char *conninfo);

/* Opens the connection with PQconnectdb, first closing any previous one.
 * Returns HL_OK, or HL_ERROR_CONNECTION with libpq's text in hl_listener_error_message,
 * or HL_ERROR_NO_MEMORY. */
int hl_listener_connect(hl_listener *listener);

/* Runs one command with PQexec, such as LISTEN "channel".
 * Returns HL_OK; HL_ERROR_CONNECTION when there is no connection, it broke, or the command
 * started a COPY (the connection is then closed);
 * HL_ERROR_QUERY when the server rejected the command and the connection is still good;
 * HL_ERROR_NO_MEMORY. Except for HL_OK, hl_listener_error_message contains the reason. */
int hl_listener_exec(hl_listener *listener, const char *sql);

/* Returns the pid of the server process serving the connection, or 0 when not connected. */
int hl_listener_backend_pid(const hl_listener *listener);

/* Returns the connection's client_encoding as PostgreSQL names it (such as "UTF8"), or
 * NULL when not connected. The string belongs to libpq and lives until the connection
 * is closed. */
const char *hl_listener_client_encoding(const hl_listener *listener);

/*
 * Moves notifications from the connection to pipe_fd until one of these happens:
 *
 *   HL_DRAIN_WOKEN            wake_fd became readable. Its bytes are left for the caller to
 *                             read. Frames that the pipe could not take without blocking stay
 *                             pending, and the next call writes them first.
 *   HL_DRAIN_TIMEOUT          neither socket input nor a write to the pipe happened for
 *                             timeout_ms milliseconds. A negative timeout_ms waits forever.
 *   HL_DRAIN_CONNECTION_LOST  the connection is missing or broken; the reason is in
 *                             hl_listener_error_message. Notifications that libpq received
 *                             before the loss are written first.
 *   HL_DRAIN_PIPE_CLOSED      the read end of the pipe is closed. Pending frames are
 *                             discarded, because the unwritten rest may start inside a frame.
 *   HL_DRAIN_ERROR            poll() or write() failed for another reason, or memory ran
 *                             out. errno is set and hl_listener_error_message names the call.
 *
 * TIMEOUT and CONNECTION_LOST return only after every pending frame is written, so a reader
 * that stops reading makes drain wait until wake_fd is written.
 *
 * pipe_fd must be non-blocking, and the same pipe on every call while frames are pending.
 * SIGPIPE is blocked in the calling thread around each write, so a closed reader gives
 * EPIPE even when the process does not ignore SIGPIPE. A negative wake_fd means no wake fd.
 *
 * Backpressure: the socket is read only while no frames are pending, and libpq's list of
 * received notifications is framed only up to a fixed buffer size. A slow reader therefore
 * makes the server hold the notifications in its queue instead of this process dropping them.
 */
int hl_listener_drain(hl_listener *listener, int pipe_fd, int wake_fd, int timeout_ms);

/* Returns the text of the last error, or "" when there was none. It belongs to the
 * listener and stays valid until the next call on it. */
const char *hl_listener_error_message(const hl_listener *listener);

/* Returns the number of notifications framed since hl_listener_new. */
uint64_t hl_listener_received(const hl_listener *listener);

/* Checks that the server responds: sends an empty query and waits up to `timeout_ms` for its
 * result. Notifications that arrive meanwhile stay in libpq's list for the next drain.
 * Returns HL_OK, or HL_DRAIN_CONNECTION_LOST with the reason set (including no response in
 * time, which is how a half-open connection or a stopped backend shows). */
int hl_listener_ping(hl_listener *listener, int timeout_ms);

/* Appends `length` bytes of ready-made frames after the pending ones, so that frames the
 * caller builds (session and gap frames) reach the pipe in order with the notifications.
 * Returns HL_OK, or HL_ERROR_NO_MEMORY with nothing appended. */
int hl_listener_queue(hl_listener *listener, const char *data, size_t length);

/* Returns the number of framed bytes not yet written to the pipe. */
size_t hl_listener_pending_bytes(const hl_listener *listener);

/* Closes the connection with PQfinish; does nothing when not connected. Notifications that
 * libpq had already received are framed first, so the next drain still writes them. */
void hl_listener_close(hl_listener *listener);

/* Closes the connection and frees the listener, including frames still pending.
 * Accepts NULL. */
void hl_listener_free(hl_listener *listener);

#endif
