/*
 * The raw libpq client of the benchmark: the practical limit of receiving notifications.
 *
 * It LISTENs on one channel, then waits with poll() on PQsocket, calls PQconsumeInput and
 * takes every parsed notification with PQnotifies. Per notification it checks the channel,
 * the backend pid and that the numbered payloads arrive in order without gaps, and in the
 * latency mode it also records commit-to-receipt latency. run.py compiles and runs it and
 * reads its two JSON lines ("ready", then "done") from standard output.
 *
 * Usage: libpq_drain CONNINFO CHANNEL MODE EXPECTED DEADLINE_S SLOW_EVERY SLOW_DELAY_US
 *   MODE is count, latency, slow or idle. DEADLINE_S bounds the wait after "ready"
 *   (0: no bound). In the slow mode the loop sleeps SLOW_DELAY_US every SLOW_EVERY
 *   notifications, like a processor that cannot keep up.
 */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static double monotonic_seconds(void)
{
    struct timespec now;

    /* The same clock as Python's time.monotonic() on Linux, so the sender's timestamps compare. */
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static int compare_doubles(const void *left, const void *right)
{
    double a = *(const double *)left, b = *(const double *)right;

    return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted values, the same rule as clients.py. */
static double percentile(const double *sorted, long count, double fraction)
{
    long index = (long)(fraction * (double)(count - 1) + 0.5);

    return count ? sorted[index] : 0.0;
}

int main(int argc, char **argv)
{
    const char *conninfo, *channel, *mode;
    long expected, slow_every, received = 0, next_number = 1, disorder = 0, bad_fields = 0;
    long first_expected = 0, first_got = 0;
    double deadline_seconds, finished_at = 0.0, deadline = 0.0, *latencies = NULL;
    int slow_delay_us, latency_mode, timed_out = 0;
    PGconn *conn;
    PGresult *result;
    char *listen_sql, *quoted;

    if (argc != 8) {
        fprintf(stderr, "usage: %s CONNINFO CHANNEL MODE EXPECTED DEADLINE_S SLOW_EVERY SLOW_DELAY_US\n", argv[0]);
        return 2;
    }
    conninfo = argv[1];
    channel = argv[2];
    mode = argv[3];
    expected = atol(argv[4]);
    deadline_seconds = atof(argv[5]);
    slow_every = strcmp(mode, "slow") == 0 ? atol(argv[6]) : 0;
    slow_delay_us = atoi(argv[7]);
    latency_mode = strcmp(mode, "latency") == 0;

    conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "connection failed: %s", PQerrorMessage(conn));
        return 1;
    }

    quoted = PQescapeIdentifier(conn, channel, strlen(channel));
    listen_sql = malloc(strlen(quoted) + 8);
    if (quoted == NULL || listen_sql == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    sprintf(listen_sql, "LISTEN %s", quoted);
    result = PQexec(conn, listen_sql);
    if (PQresultStatus(result) != PGRES_COMMAND_OK) {
        fprintf(stderr, "LISTEN failed: %s", PQerrorMessage(conn));
        return 1;
    }
    PQclear(result);
    PQfreemem(quoted);
    free(listen_sql);

    if (latency_mode && expected > 0) {
        latencies = malloc(sizeof(double) * (size_t)expected);
        if (latencies == NULL) {
            fprintf(stderr, "out of memory for %ld latencies\n", expected);
            return 1;
        }
    }

    printf("{\"event\": \"ready\", \"processes\": [{\"role\": \"client\", \"pid\": %d, \"counted\": true}], "
           "\"backend_pid\": %d}\n", (int)getpid(), PQbackendPID(conn));
    fflush(stdout);
    if (deadline_seconds > 0)
        deadline = monotonic_seconds() + deadline_seconds;

    while (received < expected || strcmp(mode, "idle") == 0) {
        struct pollfd socket_fd = {.fd = PQsocket(conn), .events = POLLIN};
        PGnotify *notify;
        int wait_ms = -1, ready;

        if (deadline > 0) {
            double remaining = deadline - monotonic_seconds();
            if (remaining <= 0) {
                timed_out = 1;
                break;
            }
            wait_ms = (int)(remaining * 1000) + 1;
        }
        ready = poll(&socket_fd, 1, wait_ms);
        if (ready < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        if (ready <= 0)
            continue;

        if (!PQconsumeInput(conn)) {
            fprintf(stderr, "PQconsumeInput failed: %s", PQerrorMessage(conn));
            return 1;
        }
        while ((notify = PQnotifies(conn)) != NULL) {
            char *end;
            long number = strtol(notify->extra, &end, 10);

            if (latency_mode && *end == ':' && received < expected)
                latencies[received] = monotonic_seconds() - strtod(end + 1, NULL);
            if (number != next_number) {
                if (disorder == 0) {
                    first_expected = next_number;
                    first_got = number;
                }
                disorder++;
            }
            next_number = number + 1;
            if (strcmp(notify->relname, channel) != 0 || notify->be_pid <= 0)
                bad_fields++;
            PQfreemem(notify);

            received++;
            if (slow_every > 0 && received % slow_every == 0)
                usleep((useconds_t)slow_delay_us);
            if (received == expected)
                finished_at = monotonic_seconds();
        }
    }
    if (finished_at == 0.0)
        finished_at = monotonic_seconds();

    printf("{\"event\": \"done\", \"t1\": %.9f, \"received\": %ld, \"disorder\": %ld, \"bad_fields\": %ld, "
           "\"timed_out\": %s, \"first_disorder\": ",
           finished_at, received, disorder, bad_fields, timed_out ? "true" : "false");
    if (disorder)
        printf("{\"expected\": %ld, \"got\": %ld}", first_expected, first_got);
    else
        printf("null");
    if (latencies != NULL) {
        long count = received < expected ? received : expected;

        qsort(latencies, (size_t)count, sizeof(double), compare_doubles);
        printf(", \"latency\": {\"count\": %ld, \"p50\": %.9f, \"p99\": %.9f, \"max\": %.9f}", count,
               percentile(latencies, count, 0.50), percentile(latencies, count, 0.99),
               count ? latencies[count - 1] : 0.0);
    }
    printf("}\n");
    fflush(stdout);

    /* Stay alive until run.py has read this process's /proc counters and closes stdin. */
    while (getchar() != EOF)
        ;
    PQfinish(conn);
    return 0;
}
