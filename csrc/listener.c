/*
 * Listener hot path; the contracts are in listener.h.
 */
#define _POSIX_C_SOURCE 200809L

#include "listener.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* Frame layout of hermes_lite/frames.py: a little-endian header "<2sBBHHiI" (magic 0xFE 0x4E,
 * kind, flags, channel length, reserved 0, pid, payload length), then the channel bytes, then
 * the payload bytes. A batch frame carries many notifications, and its pid field is their
 * count. Its payload is a u32 size of the channel section, the pids as int32, the channels, then
 * the payloads, each channel and payload followed by a NUL byte (text in PostgreSQL never
 * contains NUL, so the reader can split on it). */
#define FRAME_HEADER_SIZE 16
#define FRAME_MAGIC_0 0xfe
#define FRAME_MAGIC_1 0x4e
#define FRAME_KIND_GAP 2
#define FRAME_KIND_BATCH 4
#define FRAME_GAP_OVERFLOW 2
#define FRAME_MAX_CHANNEL ((size_t)255)
#define FRAME_MAX_PAYLOAD ((size_t)1 << 20)

/* Framing stops while this many bytes are pending, and the rest of the notifications wait
 * in libpq's list. A buffer therefore never grows beyond the mark plus one largest frame. */
#define BUFFER_INITIAL_SIZE ((size_t)64 * 1024)
#define BUFFER_HIGH_WATER ((size_t)256 * 1024)

/* Limits of one batch frame, so that the reader's 1 MiB frame limit always holds. */
#define BATCH_MAX_ITEMS ((size_t)16384)
#define BATCH_MAX_BODY ((size_t)512 * 1024)

#define ERROR_TEXT_SIZE 2048
#define NOTICE_TEXT_SIZE 1024

struct hl_listener {
    char *conninfo;
    PGconn *conn;

    /* Frames; bytes [start, end) are not yet written to the pipe. */
    unsigned char *buffer;
    size_t capacity;
    size_t start;
    size_t end;

    /* Notifications taken from libpq and not yet framed, with the size of their batch frame
     * body. They are framed before any other, so running out of memory while framing delays
     * them but does not lose them. */
    PGnotify **batch;
    size_t batch_count;
    size_t batch_body;

    /* Set when framing stopped at BUFFER_HIGH_WATER, so libpq may still hold notifications. */
    int libpq_has_more;

    uint64_t received;
    char error[ERROR_TEXT_SIZE];

    /* The server's FATAL or PANIC message on this connection, if any. A server that ends a
     * connection sends it while no command runs, so libpq passes it to the notice receiver,
     * and PQerrorMessage only reports that the server closed the connection. */
    char fatal_notice[NOTICE_TEXT_SIZE];
};

enum flush_result { FLUSH_DONE, FLUSH_BLOCKED, FLUSH_CLOSED, FLUSH_FAILED };

static void set_error(hl_listener *listener, const char *format, ...)
{
    va_list args;

    va_start(args, format);
    vsnprintf(listener->error, sizeof listener->error, format, args);
    va_end(args);
}

static void strip_newlines(char *text)
{
    size_t length = strlen(text);

    while (length > 0 && (text[length - 1] == '\n' || text[length - 1] == '\r'))
        text[--length] = '\0';
}

/* Copies libpq's error text, without the trailing newline that libpq appends. */
static void set_libpq_error(hl_listener *listener, const char *text, const char *fallback)
{
    if (text == NULL || text[0] == '\0')
        text = fallback;
    set_error(listener, "%s", text);
    strip_newlines(listener->error);
}

/* Reports a lost connection: the server's FATAL message if one came, then libpq's text. */
static void set_connection_lost_error(hl_listener *listener, const char *text)
{
    if (text == NULL || text[0] == '\0')
        text = "the connection to the server was lost";
    if (listener->fatal_notice[0] != '\0')
        set_error(listener, "%s\n%s", listener->fatal_notice, text);
    else
        set_error(listener, "%s", text);
    strip_newlines(listener->error);
}

/* Notice receiver: keeps FATAL and PANIC messages for the error text of the lost connection.
 * NOTE: other notices (WARNING, NOTICE) are dropped, where libpq's default receiver prints
 * them to stderr. LISTEN and UNLISTEN raise none. */
static void receive_notice(void *arg, const PGresult *result)
{
    hl_listener *listener = arg;
    const char *severity = PQresultErrorField(result, PG_DIAG_SEVERITY_NONLOCALIZED);

    if (severity == NULL)
        severity = PQresultErrorField(result, PG_DIAG_SEVERITY);
    if (severity == NULL || (strcmp(severity, "FATAL") != 0 && strcmp(severity, "PANIC") != 0))
        return;

    snprintf(listener->fatal_notice, sizeof listener->fatal_notice, "%s", PQresultErrorMessage(result));
    strip_newlines(listener->fatal_notice);
}

static int64_t monotonic_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static size_t pending_bytes(const hl_listener *listener)
{
    return listener->end - listener->start;
}

/* Makes room for `needed` more bytes at the end of the buffer; returns -1 with errno ENOMEM. */
static int reserve(hl_listener *listener, size_t needed)
{
    size_t pending = pending_bytes(listener);
    size_t capacity;
    unsigned char *buffer;

    if (listener->end + needed <= listener->capacity)
        return 0;

    if (listener->start > 0) {
        memmove(listener->buffer, listener->buffer + listener->start, pending);
        listener->start = 0;
        listener->end = pending;
        if (pending + needed <= listener->capacity)
            return 0;
    }

    capacity = listener->capacity > 0 ? listener->capacity : BUFFER_INITIAL_SIZE;
    while (capacity < pending + needed)
        capacity *= 2;
    buffer = realloc(listener->buffer, capacity);
    if (buffer == NULL) {
        errno = ENOMEM;
        return -1;
    }
    listener->buffer = buffer;
    listener->capacity = capacity;
    return 0;
}

static void put_u16_le(unsigned char *out, uint16_t value)
{
    out[0] = (unsigned char)(value & 0xff);
    out[1] = (unsigned char)(value >> 8);
}

static void put_u32_le(unsigned char *out, uint32_t value)
{
    out[0] = (unsigned char)(value & 0xff);
    out[1] = (unsigned char)((value >> 8) & 0xff);
    out[2] = (unsigned char)((value >> 16) & 0xff);
    out[3] = (unsigned char)(value >> 24);
}

static int append_frame(hl_listener *listener, int kind, int flags, const char *channel,
                        size_t channel_length, int pid, const char *payload, size_t payload_length)
{
    unsigned char *out;

    if (reserve(listener, FRAME_HEADER_SIZE + channel_length + payload_length) < 0)
        return -1;

    out = listener->buffer + listener->end;
    out[0] = FRAME_MAGIC_0;
    out[1] = FRAME_MAGIC_1;
    out[2] = (unsigned char)kind;
    out[3] = (unsigned char)flags;
    put_u16_le(out + 4, (uint16_t)channel_length);
    put_u16_le(out + 6, 0);
    put_u32_le(out + 8, (uint32_t)pid);
    put_u32_le(out + 12, (uint32_t)payload_length);
    memcpy(out + FRAME_HEADER_SIZE, channel, channel_length);
    memcpy(out + FRAME_HEADER_SIZE + channel_length, payload, payload_length);
    listener->end += FRAME_HEADER_SIZE + channel_length + payload_length;
    return 0;
}

/* Appends one batch frame holding every notification in listener->batch, then frees them.
 * Returns -1 with errno ENOMEM, keeping the batch. */
static int append_batch(hl_listener *listener)
{
    size_t count = listener->batch_count, channels_size = 0, i;
    size_t body = 4 + listener->batch_body;
    unsigned char *out;

    if (count == 0)
        return 0;
    if (reserve(listener, FRAME_HEADER_SIZE + body) < 0)
        return -1;

    for (i = 0; i < count; i++)
        channels_size += strlen(listener->batch[i]->relname) + 1;

    out = listener->buffer + listener->end;
    out[0] = FRAME_MAGIC_0;
    out[1] = FRAME_MAGIC_1;
    out[2] = FRAME_KIND_BATCH;
    out[3] = 0;
    put_u16_le(out + 4, 0);
    put_u16_le(out + 6, 0);
    put_u32_le(out + 8, (uint32_t)count);
    put_u32_le(out + 12, (uint32_t)body);
    out += FRAME_HEADER_SIZE;

    put_u32_le(out, (uint32_t)channels_size);
    out += 4;
    for (i = 0; i < count; i++, out += 4)
        put_u32_le(out, (uint32_t)listener->batch[i]->be_pid);
    for (i = 0; i < count; i++) {
        size_t length = strlen(listener->batch[i]->relname) + 1;
        memcpy(out, listener->batch[i]->relname, length);
        out += length;
    }
    for (i = 0; i < count; i++) {
        size_t length = strlen(listener->batch[i]->extra) + 1;
        memcpy(out, listener->batch[i]->extra, length);
        out += length;
        PQfreemem(listener->batch[i]);
    }

    listener->end += FRAME_HEADER_SIZE + body;
    listener->received += count;
    listener->batch_count = 0;
    listener->batch_body = 0;
    return 0;
}

/*
 * Frames the notifications in libpq's list, in batch frames, while less than `limit` bytes
 * are pending. PQnotifies only parses input that libpq already read (libpq documentation,
 * "Asynchronous Notification"), so this does no I/O.
 * Returns -1 with errno ENOMEM, keeping what was taken from libpq in listener->batch.
 */
static int frame_notifications(hl_listener *listener, size_t limit)
{
    listener->libpq_has_more = 0;

    for (;;) {
        int exhausted = 0;

        while (listener->conn != NULL && listener->batch_count < BATCH_MAX_ITEMS
               && pending_bytes(listener) + FRAME_HEADER_SIZE + listener->batch_body < limit) {
            PGnotify *notify = PQnotifies(listener->conn);
            size_t size;

            if (notify == NULL) {
                exhausted = 1;
                break;
            }

            /* NOTE: only a server built with a larger NAMEDATALEN or block size can exceed
             * these limits. Such a notification cannot be framed, so the reader gets an
             * overflow gap in its place, the signal that notifications were missed. */
            size = 4 + strlen(notify->relname) + 1 + strlen(notify->extra) + 1;
            if (strlen(notify->relname) > FRAME_MAX_CHANNEL || size > BATCH_MAX_BODY) {
                int failed = append_batch(listener) < 0
                             || append_frame(listener, FRAME_KIND_GAP, FRAME_GAP_OVERFLOW, "", 0,
                                             PQbackendPID(listener->conn), "", 0) < 0;
                /* NOTE: out of memory, the gap frame for it is lost too. */
                PQfreemem(notify);
                if (failed)
                    return -1;
                continue;
            }
            if (listener->batch_body + size > BATCH_MAX_BODY && append_batch(listener) < 0) {
                /* NOTE: this one notification is lost when memory runs out here. */
                PQfreemem(notify);
                return -1;
            }
            listener->batch[listener->batch_count++] = notify;
            listener->batch_body += size;
        }

        if (append_batch(listener) < 0)
            return -1;
        if (listener->conn == NULL || exhausted)
            return 0;
        if (pending_bytes(listener) + FRAME_HEADER_SIZE >= limit) {
            listener->libpq_has_more = 1;
            return 0;
        }
    }
}

/*
 * Writes pending frames to the non-blocking pipe until it is empty or full. *progress is set
 * when at least one byte was written. FLUSH_FAILED leaves errno set.
 *
 * SIGPIPE stays blocked during the writes, so a closed reader gives EPIPE instead of the
 * signal. A SIGPIPE that the writes raise is then taken off the pending set, unless one was
 * already pending before, because that one belongs to someone else.
 */
static enum flush_result flush_frames(hl_listener *listener, int pipe_fd, int *progress)
{
    enum flush_result result = FLUSH_DONE;
    sigset_t sigpipe_only, old_mask, pending_signals;
    int sigpipe_was_pending, saved_errno = 0, signal_number;
    ssize_t written;

    sigemptyset(&sigpipe_only);
    sigaddset(&sigpipe_only, SIGPIPE);
    sigpending(&pending_signals);
    sigpipe_was_pending = sigismember(&pending_signals, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigpipe_only, &old_mask);

    while (listener->start < listener->end) {
        written = write(pipe_fd, listener->buffer + listener->start, pending_bytes(listener));
        if (written > 0) {
            listener->start += (size_t)written;
            *progress = 1;
            continue;
        }
        if (written < 0 && errno == EINTR)
            continue;

        if (written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            result = FLUSH_BLOCKED;
        } else if (written < 0 && errno == EPIPE) {
            result = FLUSH_CLOSED;
        } else {
            /* write() returns 0 for a non-empty request only on broken special files. */
            saved_errno = written < 0 ? errno : EIO;
            result = FLUSH_FAILED;
        }
        break;
    }

    if (listener->start == listener->end)
        listener->start = listener->end = 0;

    if (result == FLUSH_CLOSED && !sigpipe_was_pending) {
        sigpending(&pending_signals);
        if (sigismember(&pending_signals, SIGPIPE))
            sigwait(&sigpipe_only, &signal_number);
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);

    if (result == FLUSH_FAILED)
        errno = saved_errno;
    return result;
}

/* Returns 0 while the connection can be polled, else HL_DRAIN_CONNECTION_LOST with the
 * reason in the error text. */
static int check_connection(hl_listener *listener)
{
    if (listener->conn == NULL) {
        set_error(listener, "the listener is not connected");
        return HL_DRAIN_CONNECTION_LOST;
    }
    if (PQstatus(listener->conn) == CONNECTION_BAD) {
        set_connection_lost_error(listener, PQerrorMessage(listener->conn));
        return HL_DRAIN_CONNECTION_LOST;
    }
    if (PQsocket(listener->conn) < 0) {
        set_error(listener, "the connection to the server has no socket");
        return HL_DRAIN_CONNECTION_LOST;
    }
    return 0;
}

/* Reads the input waiting on the socket; returns 0, or HL_DRAIN_CONNECTION_LOST with the
 * reason set. libpq appends to its error text until the next command starts. Only the text
 * after `known_error_length` bytes is therefore new, and the start may be an older error. */
static int consume_input(hl_listener *listener, size_t known_error_length)
{
    const char *text;

    if (PQconsumeInput(listener->conn) && PQstatus(listener->conn) != CONNECTION_BAD)
        return 0;

    text = PQerrorMessage(listener->conn);
    set_connection_lost_error(listener, strlen(text) > known_error_length ? text + known_error_length : "");
    return HL_DRAIN_CONNECTION_LOST;
}

static int fail_drain(hl_listener *listener, const char *call)
{
    int saved_errno = errno;

    set_error(listener, "%s failed: %s", call, strerror(saved_errno));
    errno = saved_errno;
    return HL_DRAIN_ERROR;
}

hl_listener *hl_listener_new(const char *conninfo)
{
    hl_listener *listener = calloc(1, sizeof *listener);

    if (listener == NULL)
        return NULL;
    listener->conninfo = strdup(conninfo);
    listener->batch = calloc(BATCH_MAX_ITEMS, sizeof *listener->batch);
    if (listener->conninfo == NULL || listener->batch == NULL) {
        free(listener->conninfo);
        free(listener->batch);
        free(listener);
        return NULL;
    }
    return listener;
}

int hl_listener_connect(hl_listener *listener)
{
    hl_listener_close(listener);
    listener->error[0] = '\0';
    listener->fatal_notice[0] = '\0';

    listener->conn = PQconnectdb(listener->conninfo);
    if (listener->conn == NULL) {
        set_error(listener, "out of memory while connecting");
        return HL_ERROR_NO_MEMORY;
    }
    if (PQstatus(listener->conn) != CONNECTION_OK) {
        set_libpq_error(listener, PQerrorMessage(listener->conn), "connection failed");
        PQfinish(listener->conn);
        listener->conn = NULL;
        return HL_ERROR_CONNECTION;
    }
    PQsetNoticeReceiver(listener->conn, receive_notice, listener);
    return HL_OK;
}

int hl_listener_exec(hl_listener *listener, const char *sql)
{
    PGresult *result;
    ExecStatusType status;

    listener->error[0] = '\0';
    if (listener->conn == NULL) {
        set_error(listener, "the listener is not connected");
        return HL_ERROR_CONNECTION;
    }

    /* Notifications that arrive during the command go to libpq's list, where drain finds them. */
    result = PQexec(listener->conn, sql);
    if (PQstatus(listener->conn) == CONNECTION_BAD) {
        set_connection_lost_error(listener, PQerrorMessage(listener->conn));
        PQclear(result);
        return HL_ERROR_CONNECTION;
    }
    if (result == NULL) {
        /* With the connection still good, PQexec returns NULL when out of memory (or in COPY
         * BOTH or pipeline mode, which this listener never enters). */
        set_libpq_error(listener, PQerrorMessage(listener->conn), "out of memory while running a command");
        return HL_ERROR_NO_MEMORY;
    }

    status = PQresultStatus(result);
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY) {
        PQclear(result);
        return HL_OK;
    }
    if (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR || status == PGRES_BAD_RESPONSE) {
        set_libpq_error(listener, PQresultErrorMessage(result), "the command failed");
        PQclear(result);
        return HL_ERROR_QUERY;
    }

    /* A COPY leaves libpq in COPY mode, where neither draining nor other commands work, so
     * the connection is closed and the caller reconnects. */
    set_error(listener, "the command returned the unexpected result status %s; the connection was closed",
              PQresStatus(status));
    PQclear(result);
    hl_listener_close(listener);
    return HL_ERROR_CONNECTION;
}

int hl_listener_backend_pid(const hl_listener *listener)
{
    return listener->conn != NULL ? PQbackendPID(listener->conn) : 0;
}

const char *hl_listener_client_encoding(const hl_listener *listener)
{
    const char *name;

    if (listener->conn == NULL)
        return NULL;
    name = PQparameterStatus(listener->conn, "client_encoding");
    if (name == NULL)
        name = pg_encoding_to_char(PQclientEncoding(listener->conn));
    return name;
}

int hl_listener_drain(hl_listener *listener, int pipe_fd, int wake_fd, int timeout_ms)
{
    int status = 0; /* the result once it is decided, returned after the flush */
    int pipe_error_seen = 0;
    int64_t deadline = timeout_ms >= 0 ? monotonic_ms() + timeout_ms : -1;
    size_t known_error_length = listener->conn != NULL ? strlen(PQerrorMessage(listener->conn)) : 0;

    listener->error[0] = '\0';

    for (;;) {
        struct pollfd fds[3];
        int progress = 0, wait_ms = -1, ready;
        size_t pending;

        if (status == 0)
            status = check_connection(listener);

        /* Frame what libpq holds. On WOKEN the caller wants control back, so the rest can
         * wait in libpq until the next call. */
        if (status != HL_DRAIN_WOKEN && pending_bytes(listener) < BUFFER_HIGH_WATER) {
            if (frame_notifications(listener, BUFFER_HIGH_WATER) < 0)
                return fail_drain(listener, "framing a notification");
        }

        if (pending_bytes(listener) > 0) {
            switch (flush_frames(listener, pipe_fd, &progress)) {
            case FLUSH_CLOSED:
                listener->start = listener->end = 0;
                return HL_DRAIN_PIPE_CLOSED;
            case FLUSH_FAILED:
                return fail_drain(listener, "write() to the notification pipe");
            case FLUSH_BLOCKED:
                /* A pipe that reported an error but still does not take bytes has no reader. */
                if (pipe_error_seen) {
                    listener->start = listener->end = 0;
                    return HL_DRAIN_PIPE_CLOSED;
                }
                break;
            case FLUSH_DONE:
                break;
            }
            if (progress && deadline >= 0)
                deadline = monotonic_ms() + timeout_ms;
        }

        pending = pending_bytes(listener);
        if (status == HL_DRAIN_WOKEN)
            return status;
        if (pending == 0 && listener->libpq_has_more)
            continue;
        if (status != 0 && pending == 0)
            return status;

        /* Wait. The socket is polled only while nothing is pending, which is the backpressure:
         * unread input stays in the kernel and then in the server's notification queue. */
        fds[0].fd = wake_fd;
        fds[0].events = POLLIN;
        fds[1].fd = pipe_fd;
        fds[1].events = pending > 0 ? POLLOUT : 0; /* errors are reported even without events */
        fds[2].fd = (status == 0 && pending == 0) ? PQsocket(listener->conn) : -1;
        fds[2].events = POLLIN;

        if (status == 0 && deadline >= 0) {
            int64_t remaining = deadline - monotonic_ms();
            if (remaining <= 0) {
                status = HL_DRAIN_TIMEOUT;
                continue;
            }
            wait_ms = remaining > 0x7fffffff ? 0x7fffffff : (int)remaining;
        }

        ready = poll(fds, 3, wait_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return fail_drain(listener, "poll()");
        }
        if (ready == 0)
            continue; /* the deadline check above turns this into TIMEOUT */

        if ((fds[0].revents | fds[1].revents) & POLLNVAL) {
            errno = EBADF;
            return fail_drain(listener, "poll() on the wake fd or the notification pipe");
        }

        /* POLLHUP and POLLERR on the socket also end up here: PQconsumeInput finds out
         * whether the connection is still usable. */
        if (fds[2].revents != 0) {
            status = consume_input(listener, known_error_length);
            if (deadline >= 0)
                deadline = monotonic_ms() + timeout_ms;
        }

        if (fds[1].revents & (POLLERR | POLLHUP)) {
            if (pending == 0)
                return HL_DRAIN_PIPE_CLOSED;
            pipe_error_seen = 1; /* the next write gets EPIPE */
        }

        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
            status = HL_DRAIN_WOKEN;
    }
}

const char *hl_listener_error_message(const hl_listener *listener)
{
    return listener->error;
}

uint64_t hl_listener_received(const hl_listener *listener)
{
    return listener->received;
}

int hl_listener_ping(hl_listener *listener, int timeout_ms)
{
    int64_t deadline = monotonic_ms() + timeout_ms;
    size_t known_error_length;
    int status = check_connection(listener);

    if (status != 0)
        return status;

    known_error_length = strlen(PQerrorMessage(listener->conn));
    /* The connection is in blocking mode, but the query is a few bytes on an idle socket, so
     * the send does not wait for the server. */
    if (!PQsendQuery(listener->conn, "")) {
        set_connection_lost_error(listener, PQerrorMessage(listener->conn));
        return HL_DRAIN_CONNECTION_LOST;
    }

    for (;;) {
        struct pollfd socket_fd;
        int64_t remaining;
        int ready;

        /* Any result counts, an error too, because the check only tests whether the server responds. */
        while (!PQisBusy(listener->conn)) {
            PGresult *result = PQgetResult(listener->conn);
            if (result == NULL)
                return HL_OK;
            PQclear(result);
        }

        remaining = deadline - monotonic_ms();
        if (remaining <= 0) {
            set_error(listener, "health check failed: no answer from the server within %d ms", timeout_ms);
            return HL_DRAIN_CONNECTION_LOST;
        }

        socket_fd.fd = PQsocket(listener->conn);
        socket_fd.events = POLLIN;
        if (socket_fd.fd < 0) {
            set_error(listener, "the connection to the server has no socket");
            return HL_DRAIN_CONNECTION_LOST;
        }
        ready = poll(&socket_fd, 1, remaining > 0x7fffffff ? 0x7fffffff : (int)remaining);
        if (ready < 0 && errno != EINTR)
            return fail_drain(listener, "poll()");
        if (ready > 0) {
            status = consume_input(listener, known_error_length);
            if (status != 0)
                return status;
        }
    }
}

int hl_listener_queue(hl_listener *listener, const char *data, size_t length)
{
    if (reserve(listener, length) < 0) {
        set_error(listener, "out of memory queuing %zu bytes of frames", length);
        return HL_ERROR_NO_MEMORY;
    }
    memcpy(listener->buffer + listener->end, data, length);
    listener->end += length;
    return HL_OK;
}

size_t hl_listener_pending_bytes(const hl_listener *listener)
{
    return pending_bytes(listener);
}

void hl_listener_close(hl_listener *listener)
{
    if (listener->conn == NULL)
        return;

    /* NOTE: when memory runs out here, the notifications still in libpq's list are lost
     * with the connection. */
    (void)frame_notifications(listener, (size_t)-1);
    listener->libpq_has_more = 0;

    PQfinish(listener->conn);
    listener->conn = NULL;
}

void hl_listener_free(hl_listener *listener)
{
    if (listener == NULL)
        return;
    hl_listener_close(listener);
    while (listener->batch_count > 0)
        PQfreemem(listener->batch[--listener->batch_count]);
    free(listener->batch);
    free(listener->buffer);
    free(listener->conninfo);
    free(listener);
}
