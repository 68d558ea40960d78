"""The notification pipe between a listener and a processor, and the hermes-style alternatives.

``notification_pipe()`` makes the fast path: an OS pipe carrying binary frames
(see ``frames``), written by the listener's drain loop and read in batches by the processor.
hermes users instead passed a ``multiprocessing.Queue`` (or a ``Pipe``) to the listener and
its reading end to the processor. ``send_item`` and ``make_source`` adapt those objects, which
carry pickled ``Notification`` and ``Gap`` values, one per message.
"""

import collections
import errno
import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import sys
from typing import Any, Deque, Dict, List, Optional

from . import frames
from .exceptions import InvalidConfigurationException
from .notifications import DECODE_ERRORS, Batch, Gap, Item, python_codec

logger = logging.getLogger(__name__)

READ_SIZE = 1 << 18
"""Bytes asked for per read(), which bounds a batch: about 10,000 small notifications. A larger
read saves little per notification but raises the processor's peak memory."""

PIPE_SIZE = 1 << 20
"""Pipe capacity requested on Linux (the default /proc/sys/fs/pipe-max-size); 64 KiB otherwise."""

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)

_GAP_REASONS = {frames.GAP_START: "start", frames.GAP_RECONNECT: "reconnect", frames.GAP_OVERFLOW: "overflow"}


class PipeClosed(Exception):
    """Raised when the other end of the notification pipe is gone."""


def wait_readable(fds: List[int], timeout: Optional[float]) -> List[int]:
    """Wait until one of ``fds`` is readable or hung up; return those that are, [] on timeout.

    ``timeout`` is in seconds, None waits without limit.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)

    milliseconds = None if timeout is None else max(0, int(timeout * 1000))
    return [fd for fd, _ in poller.poll(milliseconds)]


def drain_wake_fd(wake_fd: int) -> None:
    """Read and discard every byte waiting on a non-blocking wake descriptor."""
    while True:
        try:
            if not os.read(wake_fd, 4096):
                return
        except (BlockingIOError, InterruptedError):
            return


class NotificationWriter:
    """The listener's end of a notification pipe."""

    def __init__(self, connection: multiprocessing.connection.Connection) -> None:
        self._connection = connection

    def fileno(self) -> int:
        """Return the pipe's write descriptor."""
        return self._connection.fileno()

    def prepare(self) -> int:
        """Make the descriptor non-blocking and enlarge the pipe; return the descriptor.

        The drain loops need a non-blocking descriptor so that a full pipe never blocks them
        while a stop request is waiting.
        """
        fd = self.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        enlarge_pipe(fd)
        return fd

    def close(self) -> None:
        """Close this end of the pipe."""
        self._connection.close()


class NotificationReader:
    """The processor's end of a notification pipe; yields batches of decoded items."""

    def __init__(self, connection: multiprocessing.connection.Connection) -> None:
        self._connection = connection
        # Every reader resynchronises: a processor that replaces a crashed one may find the
        # rest of a frame its predecessor had half read.
        self._decoder = frames.FrameDecoder(resynchronise=True)
        self._codec = "utf-8"
        self._ready: Deque[Batch] = collections.deque()
        # True once a Gap("restart") went to the processor, which then needs no second one.
        self.restart_gap_sent = False

    def __getstate__(self) -> Dict[str, Any]:
        # A reader starts decoding afresh in the process it is sent to.
        return {"_connection": self._connection}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["_connection"])  # type: ignore[misc]

    def fileno(self) -> int:
        """Return the pipe's read descriptor."""
        return self._connection.fileno()

    def read_batch(self, timeout: Optional[float] = None, wake_fd: Optional[int] = None) -> Batch:
        """Return the next batch: what waits in the pipe, up to the next gap, in order.

        Waits up to ``timeout`` seconds (None: without limit) for the first notification.
        Returns an empty Batch on timeout or when ``wake_fd`` becomes readable. Raises
        PipeClosed when every writer has closed its end, and frames.FrameError for a corrupt
        stream.
        """
        if self._ready:
            return self._ready.popleft()

        fd = self.fileno()
        watched = [fd] if wake_fd is None else [fd, wake_fd]
        while True:
            ready = wait_readable(watched, timeout)
            if fd not in ready:
                return Batch()

            data = os.read(fd, READ_SIZE)
            if not data:
                self._decoder.finish()
                raise PipeClosed("every listener's end of the notification pipe is closed")

            batches = self._decode(self._decoder.feed(data))
            if batches:
                self._ready.extend(batches[1:])
                return batches[0]

    def _decode(self, decoded: List[frames.Frame]) -> List[Batch]:
        batches: List[Batch] = []
        current = Batch()
        if self._decoder.skipped_bytes and decoded:
            logger.warning("skipped %s bytes of a frame left half read by a previous processor", self._decoder.skipped_bytes)
            self._decoder.skipped_bytes = 0
            if not self.restart_gap_sent:
                current.gap = Gap("restart", 0)
                self.restart_gap_sent = True

        for kind, flags, channel, pid, payload in decoded:
            if kind == frames.KIND_BATCH:
                channels, payloads, pids = frames.decode_batch(pid, payload, self._codec, DECODE_ERRORS)
                current.channels += channels
                current.payloads += payloads
                current.pids += pids
            elif kind == frames.KIND_NOTIFICATION:
                current.channels.append(channel.decode(self._codec, DECODE_ERRORS))
                current.payloads.append(payload.decode(self._codec, DECODE_ERRORS))
                current.pids.append(pid)
            elif kind == frames.KIND_GAP:
                # A gap starts a batch, so that it precedes every notification of that batch.
                if current:
                    batches.append(current)
                dropped = int(payload) if payload else 0
                current = Batch(Gap(_GAP_REASONS.get(flags, "reconnect"), pid, dropped))
            else:
                self._codec = python_codec(payload.decode("ascii", "replace"))

        if current:
            batches.append(current)
        return batches

    def close(self) -> None:
        """Close this end of the pipe."""
        self._connection.close()


def notification_pipe() -> "tuple[NotificationReader, NotificationWriter]":
    """Create a fast notification pipe; return its (reader, writer) ends.

    Both ends can be handed to a child process under every ``multiprocessing`` start method.
    """
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    return NotificationReader(read_end), NotificationWriter(write_end)


def enlarge_pipe(fd: int) -> None:
    """Ask the kernel for a larger pipe buffer, keeping the default if it refuses."""
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as error:
        # EPERM when the size exceeds pipe-max-size for an unprivileged user; the default
        # 64 KiB pipe still works, with more wakeups.
        if error.errno not in (errno.EPERM, errno.EINVAL):
            raise
        logger.debug("keeping the default pipe size: %s", error)


class _QueueSource:
    """Reads pickled items from a hermes-style queue or connection, in Batches like the fast pipe's."""

    MAX_BATCH = 10000

    def __init__(self, source: Any) -> None:
        self._source = source
        self._ready: Deque[Batch] = collections.deque()
        self.restart_gap_sent = False

    def read_batch(self, timeout: Optional[float] = None, wake_fd: Optional[int] = None) -> Batch:
        if not self._ready:
            self._ready.extend(batches_of(self._receive(timeout, wake_fd)))
        return self._ready.popleft() if self._ready else Batch()

    def _receive(self, timeout: Optional[float], wake_fd: Optional[int]) -> List[Item]:
        source = self._source
        if isinstance(source, multiprocessing.connection.Connection):
            watched = [source.fileno()] if wake_fd is None else [source.fileno(), wake_fd]
            if source.fileno() not in wait_readable(watched, timeout):
                return []
            items = [source.recv()]
            while len(items) < self.MAX_BATCH and source.poll(0):
                items.append(source.recv())
            return items

        # A multiprocessing.Queue: its get() cannot also wait on the wake descriptor, so a
        # stop request is noticed after at most one poll interval.
        import queue

        try:
            items = [source.get(timeout=1.0 if timeout is None else min(timeout, 1.0))]
        except queue.Empty:
            return []
        while len(items) < self.MAX_BATCH:
            try:
                items.append(source.get_nowait())
            except queue.Empty:
                break
        return items


def batches_of(items: List[Item]) -> List[Batch]:
    """Group Notification and Gap values into Batches, starting a new one at every gap."""
    batches: List[Batch] = []
    current = Batch()
    for item in items:
        if isinstance(item, Gap):
            if current:
                batches.append(current)
            current = Batch(item)
        else:
            current.channels.append(item.channel)
            current.payloads.append(item.payload)
            current.pids.append(item.pid)
    if current:
        batches.append(current)
    return batches


def make_source(notification_pipe: Any) -> Any:
    """Return an object with ``read_batch`` for a processor's ``notification_pipe``.

    Accepts a NotificationReader, a ``multiprocessing`` Connection (such as the reading end
    of a Pipe, or a Queue's ``_reader``) carrying pickled items, or a Queue. Raises
    InvalidConfigurationException for anything else.
    """
    if isinstance(notification_pipe, NotificationReader):
        return notification_pipe
    if isinstance(notification_pipe, multiprocessing.connection.Connection) or hasattr(notification_pipe, "get"):
        return _QueueSource(notification_pipe)

    raise InvalidConfigurationException(
        f"invalid notification_pipe {notification_pipe!r}: expected the reader of "
        "hermes_lite.pipes.notification_pipe(), a multiprocessing Connection or a Queue"
    )


def send_item(sink: Any, item: Item) -> None:
    """Hand one item to a hermes-style sink: ``put`` on a Queue, ``send`` on a Connection."""
    if hasattr(sink, "put"):
        sink.put(item)
    else:
        sink.send(item)
