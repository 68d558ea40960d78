#!/usr/bin/env bash
# Run the C listener under valgrind memcheck with two notification counts and compare them.
#
# Usage: tests/memcheck/run.sh [SMALL_COUNT LARGE_COUNT]    (default: 10000 100000)
#
# Each run starts tests/memcheck/workload.py under valgrind; that script starts its own
# PostgreSQL cluster on a unix socket. The check passes when all of these hold:
#   - both workloads finish every phase (valgrind's exit status 99 only means that memcheck
#     reported errors, which the next rules sort out);
#   - no memcheck error (invalid read or write, use of an uninitialised value, invalid free)
#     has a frame in csrc/listener.c or libpq;
#   - no definitely or indirectly lost block has csrc/listener.c or libpq in its allocation stack;
#   - the definitely plus indirectly lost bytes grow by at most 1 KiB from SMALL_COUNT to
#     LARGE_COUNT. The interpreter's one-time leaks differ by up to a few hundred bytes between
#     runs, while a leak of one byte per notification adds 90,000 bytes at the default counts.
# The last line is PASS or FAIL. The exit status is 0 for PASS, 1 for FAIL and 2 when the
# check could not run.
#
# Environment: PYTHON selects the interpreter (default python3). MEMCHECK_LOG_DIR keeps the
# valgrind logs there instead of in a new temporary directory.
#
# docs/memcheck.md explains the output and records a run.

set -euo pipefail

cd "$(dirname "$0")/../.."

small_count=${1:-10000}
large_count=${2:-100000}
if ! [[ $small_count =~ ^[1-9][0-9]*$ && $large_count =~ ^[1-9][0-9]*$ ]] || ((large_count <= small_count)); then
    echo "usage: $0 [SMALL_COUNT LARGE_COUNT], two positive integers with SMALL_COUNT < LARGE_COUNT" >&2
    exit 2
fi

if ! command -v valgrind >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "valgrind is missing; installing it with apt-get" >&2
        apt-get install -y valgrind >&2
    else
        echo "valgrind not found: install it (Debian and Ubuntu: apt-get install valgrind)" >&2
        exit 2
    fi
fi

# valgrind without --trace-children instruments only the program it starts. A pyenv shim or
# another wrapper script would be that program, so the real interpreter is looked up first.
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')

if ! extension=$("$python" -c 'import hermes_lite._listener as m; print(m.__file__)' 2>/dev/null); then
    echo "the C extension hermes_lite._listener does not import with $python;" \
        "build it with: $python setup.py build_ext --inplace" >&2
    exit 2
fi
for source in csrc/listener.c csrc/listener.h; do
    if [[ $source -nt $extension ]]; then
        echo "$extension is older than $source, so the run would test old code;" \
            "rebuild it with: $python setup.py build_ext --inplace" >&2
        exit 2
    fi
done

log_dir=${MEMCHECK_LOG_DIR:-$(mktemp -d -t hermes-lite-memcheck-XXXXXX)}
mkdir -p "$log_dir"

echo "valgrind: $(valgrind --version), python: $python, extension: $extension" >&2
echo "logs: $log_dir" >&2

statuses=()
for count in "$small_count" "$large_count"; do
    echo "running the workload with $count notifications under valgrind" >&2
    status=0
    # PYTHONMALLOC=malloc sends every Python allocation through malloc, so memcheck tracks
    # each block. pymalloc's arenas would hide Python's blocks and give false invalid reads.
    PYTHONMALLOC=malloc valgrind \
        --tool=memcheck \
        --leak-check=full \
        --show-leak-kinds=definite,indirect \
        --errors-for-leak-kinds=definite \
        --error-exitcode=99 \
        --num-callers=40 \
        --suppressions=tests/memcheck/python.supp \
        --log-file="$log_dir/valgrind-$count.log" \
        "$python" tests/memcheck/workload.py "$count" \
        2> >(tee "$log_dir/workload-$count.err" >&2) || status=$?
    statuses+=("$status")
done

# The logs are compared by a Python program that runs natively, outside valgrind.
"$python" - "$log_dir" "$small_count" "$large_count" "${statuses[@]}" <<'EOF'
import re
import sys

log_dir, small_count, large_count, small_status, large_status = sys.argv[1:]
counts = [int(small_count), int(large_count)]
statuses = {counts[0]: int(small_status), counts[1]: int(large_status)}

# A frame in the listener's own C file (not cffi's generated hermes_lite._listener.c) or in
# libpq, which has no debug symbols here and so shows as "(in .../libpq.so.5...)".
LISTENER_FRAME = re.compile(r"\((?:csrc/)?listener\.c:\d+\)|\bhl_listener_\w+ \(|libpq[^ /]*\.so")
RECORD_START = re.compile(
    r"^(Invalid (read|write|free)|Use of uninitialised|Conditional jump|Syscall param"
    r"|Source and destination overlap|Mismatched free|Jump to the invalid address|Argument '.*' of function"
    r"|.* bytes in .* blocks are (definitely|indirectly) lost)"
)
LOST_LINE = re.compile(r"^\s*(definitely|indirectly) lost: ([\d,]+) bytes in ([\d,]+) blocks")
GROWTH_TOLERANCE_BYTES = 1024  # see the header of run.sh
SUMMARY_LINE = re.compile(
    r"^(ERROR SUMMARY:.*|\s*(definitely|indirectly|possibly) lost:.*|\s*still reachable:.*|\s*suppressed:.*)$"
)


def read_records(path):
    """Split a valgrind log into records: lists of lines without the ==pid== prefix."""
    records, current = [], []
    with open(path, errors="replace") as log:
        for raw in log:
            line = re.sub(r"^==\d+== ?", "", raw.rstrip("\n"))
            if line.strip():
                current.append(line)
            elif current:
                records.append(current)
                current = []
    if current:
        records.append(current)
    return records


failures = []
lost_bytes = {}
for count in counts:
    path = f"{log_dir}/valgrind-{count}.log"
    status = statuses[count]
    if status not in (0, 99):
        failures.append(f"N={count}: the workload exited with status {status} (see workload-{count}.err)")

    try:
        records = read_records(path)
    except OSError as exc:
        failures.append(f"N={count}: no valgrind log: {exc}")
        continue

    print(f"N={count}:")
    lost = {"definitely": None, "indirectly": None}
    other_errors = 0
    for record in records:
        for line in record:
            summary = SUMMARY_LINE.match(line)
            if summary:
                print(f"    {line.strip()}")
            lost_match = LOST_LINE.match(line)
            if lost_match:
                lost[lost_match.group(1)] = int(lost_match.group(2).replace(",", ""))

        if not RECORD_START.match(record[0]):
            continue
        if any(LISTENER_FRAME.search(line) for line in record[1:]):
            failures.append(f"N={count}: in the listener or libpq: {record[0]} (see {path})")
        elif "lost in loss record" not in record[0]:
            other_errors += 1

    if other_errors:
        # Not a failure of the listener, but the suppressions no longer cover this interpreter.
        print(f"    {other_errors} error records outside the listener and libpq; see {path}")
    if lost["definitely"] is None:
        # valgrind prints "All heap blocks were freed" instead of a LEAK SUMMARY when nothing leaked.
        lost = {"definitely": 0, "indirectly": 0}
    lost_bytes[count] = lost["definitely"] + (lost["indirectly"] or 0)

if len(lost_bytes) == 2:
    small, large = lost_bytes[counts[0]], lost_bytes[counts[1]]
    print(f"definitely + indirectly lost: {small} bytes at N={counts[0]}, {large} bytes at N={counts[1]}")
    if large - small > GROWTH_TOLERANCE_BYTES:
        failures.append(
            f"lost bytes grow with the notification count: {small} -> {large}, "
            f"more than the tolerance of {GROWTH_TOLERANCE_BYTES} bytes"
        )

for failure in failures:
    print(f"FAIL: {failure}")
if failures:
    print(f"FAIL: memcheck of the C listener ({len(failures)} problems, logs in {log_dir})")
    sys.exit(1)
print(f"PASS: memcheck of the C listener: no error or leak in listener.c or libpq, and no leak that "
      f"grows from N={counts[0]} to N={counts[1]} (logs in {log_dir})")
EOF
