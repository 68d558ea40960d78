"""File watching for failover files: watchdog when installed, else an ``os.stat`` polling watcher.

Both report events with ``event_type`` ("created", "deleted", "modified"), ``src_path`` and
``is_directory`` to one callback, for the files directly inside one directory.
"""

import logging
import os
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
"""Seconds between two scans of the polling watcher."""


class FileEvent(NamedTuple):
    """A change seen by the polling watcher, with the attributes of a watchdog event."""

    event_type: str
    src_path: str
    is_directory: bool = False
    dest_path: str = ""


_Signature = Tuple[int, int, int]


class PollingWatcher(threading.Thread):
    """Scans a directory with ``os.stat`` every ``interval`` seconds and reports differences."""

    def __init__(self, directory: str, callback: Callable[[Any], None], interval: float = POLL_INTERVAL) -> None:
        super().__init__(name="hermes-lite-watcher", daemon=True)
        self.directory = directory
        self.callback = callback
        self.interval = interval
        self._stopped = threading.Event()
        self._snapshot = self._take_snapshot()

    def stop(self) -> None:
        """Ask the watcher to stop; ``join()`` waits for it."""
        self._stopped.set()

    def run(self) -> None:
        logger.debug("polling %s every %.1f s", self.directory, self.interval)
        # Each wait honours stop() at once; the disk is only touched once per interval.
        while not self._stopped.wait(self.interval):
            snapshot = self._take_snapshot()
            for event in _diff(self.directory, self._snapshot, snapshot):
                try:
                    self.callback(event)
                except Exception:
                    logger.exception("the file event callback raised for %s", event.src_path)
            self._snapshot = snapshot

    def _take_snapshot(self) -> Dict[str, Tuple[bool, _Signature]]:
        snapshot = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError as error:
            logger.warning("cannot scan %s: %s", self.directory, error)
            return self._snapshot if hasattr(self, "_snapshot") else {}

        for entry in entries:
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed between scandir and stat
            signature = (status.st_ino, status.st_size, status.st_mtime_ns)
            snapshot[entry.name] = (entry.is_dir(follow_symlinks=False), signature)
        return snapshot


def _diff(directory: str, before: Dict[str, Tuple[bool, _Signature]], after: Dict[str, Tuple[bool, _Signature]]) -> List[FileEvent]:
    events: List[FileEvent] = []
    for name in sorted(before.keys() - after.keys()):
        events.append(FileEvent("deleted", os.path.join(directory, name), before[name][0]))
    for name in sorted(after.keys() - before.keys()):
        events.append(FileEvent("created", os.path.join(directory, name), after[name][0]))
    for name in sorted(before.keys() & after.keys()):
        if before[name] != after[name]:
            events.append(FileEvent("modified", os.path.join(directory, name), after[name][0]))
    return events


def start_observer(directory: str, callback: Callable[[Any], None], use_watchdog: Optional[bool] = None) -> Any:
    """Start watching ``directory`` and return the watcher; call ``stop()`` then ``join()`` on it.

    ``use_watchdog`` None uses watchdog when it is installed; True requires it (ImportError
    otherwise); False always polls.
    """
    if use_watchdog is not False:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            if use_watchdog:
                raise
        else:
            handler = FileSystemEventHandler()
            # mypy rejects assigning to a method, and compares the callback with the unbound
            # on_any_event(self, event); the instance attribute is what watchdog calls.
            handler.on_any_event = callback  # type: ignore[method-assign,assignment]
            observer = Observer()
            observer.schedule(handler, directory, recursive=False)
            observer.start()
            logger.info("watching %s with watchdog", directory)
            return observer

    watcher = PollingWatcher(directory, callback)
    watcher.start()
    logger.info("watching %s by polling every %.1f s", directory, watcher.interval)
    return watcher
