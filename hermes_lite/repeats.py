"""RepeatLimiter: keeps a message that repeats, such as a failed reconnection, from flooding the log."""

import time
from typing import Dict, Optional, Tuple


class RepeatLimiter:
    """Lets the first ``burst`` occurrences of a message through, then one per ``interval`` seconds.

    ``check(message)`` returns None to drop the message, or the number of occurrences
    dropped since the last one let through (0 for none), which the caller logs with it.
    """

    def __init__(self, burst: int = 3, interval: float = 60.0) -> None:
        self.burst = burst
        self.interval = interval
        self._seen: Dict[str, Tuple[int, float, int]] = {}

    def check(self, message: str, now: Optional[float] = None) -> Optional[int]:
        """Count one occurrence of ``message``; return None to drop it, else the count dropped before it."""
        now = time.monotonic() if now is None else now
        count, last_logged, dropped = self._seen.get(message, (0, now, 0))
        count += 1

        if count <= self.burst or now - last_logged >= self.interval:
            self._seen[message] = (count, now, 0)
            return dropped

        self._seen[message] = (count, last_logged, dropped + 1)
        return None

    def reset(self) -> None:
        """Forget every message, for example after the condition behind them has cleared."""
        self._seen.clear()
