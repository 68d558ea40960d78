"""Values a processor receives: notifications, gap signals and the batches that carry them."""

import codecs
from itertools import repeat
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Union, overload


class Notification(NamedTuple):
    """One NOTIFY as PostgreSQL delivered it.

    ``pid`` is the process ID of the backend that sent it. The channel name is case-sensitive
    and arrives exactly as the sender spelled it in ``pg_notify()``.
    """

    channel: str
    payload: str
    pid: int

    @property
    def is_gap(self) -> bool:
        """Whether this item is a Gap: always False for a Notification."""
        return False


class Gap(NamedTuple):
    """A signal that notifications may have been missed, so the processor should resynchronise.

    PostgreSQL queues notifications only for sessions that are listening, so whatever was
    sent while the listener was not connected (before start, during a reconnect) is gone.
    A gap arrives after LISTEN is active again and before any notification of the new
    connection. ``reason`` is "start", "reconnect", "overflow" (``dropped`` counts the
    notifications discarded by a drop policy) or "restart" (a processor that crashed had read
    part of the pipe, so at least one notification was lost with it). ``pid`` is the
    listener's backend pid, 0 where unknown.
    """

    reason: str
    pid: int
    dropped: int = 0

    @property
    def is_gap(self) -> bool:
        """Whether this item is a Gap: always True for a Gap."""
        return True


Item = Union[Notification, Gap]

_new_tuple = tuple.__new__


class Batch(Sequence[Item]):
    """What a processor receives per iteration: an optional Gap, then notifications in order.

    It is a sequence of Gap and Notification values. It also keeps the notifications as three
    columns, ``channels``, ``payloads`` and ``pids``. A processor that reads these lists
    directly skips building one Notification object per notification, which costs more than
    receiving it. A gap only ever starts a batch, so ``gap`` (None when there is none) is
    what comes before every notification of the batch.
    """

    __slots__ = ("gap", "channels", "payloads", "pids", "_items")

    def __init__(
        self,
        gap: Optional[Gap] = None,
        channels: Optional[List[str]] = None,
        payloads: Optional[List[str]] = None,
        pids: Optional[List[int]] = None,
    ) -> None:
        self.gap = gap
        self.channels: List[str] = channels if channels is not None else []
        self.payloads: List[str] = payloads if payloads is not None else []
        self.pids: List[int] = pids if pids is not None else []
        self._items: Optional[List[Item]] = None

    def notifications(self) -> List[Notification]:
        """Return the batch's notifications as Notification values, without the gap."""
        return list(map(_new_tuple, repeat(Notification), zip(self.channels, self.payloads, self.pids)))

    def _materialise(self) -> List[Item]:
        if self._items is None:
            items: List[Item] = [self.gap] if self.gap is not None else []
            items.extend(self.notifications())
            self._items = items
        return self._items

    def __len__(self) -> int:
        return len(self.payloads) + (self.gap is not None)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._materialise())

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> List[Item]: ...

    def __getitem__(self, index: Any) -> Any:
        return self._materialise()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Batch, list, tuple)):
            return self._materialise() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Batch(gap={self.gap!r}, notifications={len(self.payloads)})"

# PostgreSQL encoding names that Python spells differently. SQL_ASCII means that the server
# does no conversion at all, so the bytes are decoded as UTF-8, keeping undecodable bytes as
# lone surrogates (see decode_text) rather than failing.
_PYTHON_CODECS = {
    "SQL_ASCII": "utf-8",
    "UTF8": "utf-8",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "SJIS": "shift_jis",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}

DECODE_ERRORS = "surrogateescape"
"""Bytes that are invalid in the client encoding become lone surrogates (U+DC80 to U+DCFF).

``text.encode(codec, "surrogateescape")`` gives the original bytes back.
"""


def python_codec(client_encoding: str) -> str:
    """Return the Python codec for a PostgreSQL client encoding name, UTF-8 if unknown."""
    name = _PYTHON_CODECS.get(client_encoding.upper())
    if name is not None:
        return name

    try:
        return codecs.lookup(client_encoding).name
    except LookupError:
        return "utf-8"
