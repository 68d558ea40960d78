"""Binary framing of notifications between the listener and the processor.

Each frame is a 16-byte little-endian header followed by the channel and the payload bytes:

    magic (2 bytes, 0xFE 0x4E), kind (u8), flags (u8), channel length (u16), reserved (u16, 0),
    pid (i32), payload length (u32)

A batch frame (kind 4) carries many notifications, and its pid field is their count. Its payload
is a u32 size of the channel section, the pids as little-endian int32, then every channel and
then every payload, each followed by a NUL byte. PostgreSQL text never contains NUL, so the
reader decodes each section with one call and splits it on NUL.

The magic lets a processor that replaces a crashed one find the next frame boundary when its
predecessor stopped reading in the middle of a frame: 0xFE never occurs in UTF-8 text. The C
listener in ``csrc/`` writes the same layout.
"""

import array
import struct
import sys
from typing import List, Tuple

MAGIC = b"\xfeN"
HEADER = struct.Struct("<2sBBHHiI")
HEADER_SIZE = HEADER.size

KIND_NOTIFICATION = 1
KIND_GAP = 2
KIND_SESSION = 3
KIND_BATCH = 4
KINDS = (KIND_NOTIFICATION, KIND_GAP, KIND_SESSION, KIND_BATCH)

GAP_START = 0
GAP_RECONNECT = 1
GAP_OVERFLOW = 2

# PostgreSQL limits a channel to NAMEDATALEN - 1 = 63 bytes and a payload to under 8000 bytes
# with the default build options. The decoder accepts more, for servers built with larger
# limits, but rejects lengths that no server can produce, so that a corrupt header never
# makes it wait for or allocate a bogus amount of data.
MAX_CHANNEL_BYTES = 255
MAX_PAYLOAD_BYTES = 1 << 20

Frame = Tuple[int, int, bytes, int, bytes]
"""A decoded frame: (kind, flags, channel, pid, payload)."""


class FrameError(ValueError):
    """Raised when bytes read from the notification pipe are not a valid frame."""


def encode_frame(kind: int, flags: int, channel: bytes, pid: int, payload: bytes) -> bytes:
    """Return one frame; raise FrameError if a field does not fit the format."""
    if kind not in KINDS:
        raise FrameError(f"invalid frame kind {kind!r}: expected one of {KINDS}")
    if len(channel) > MAX_CHANNEL_BYTES:
        raise FrameError(f"channel of {len(channel)} bytes exceeds the frame limit of {MAX_CHANNEL_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the frame limit of {MAX_PAYLOAD_BYTES}")

    return HEADER.pack(MAGIC, kind, flags, len(channel), 0, pid, len(payload)) + channel + payload


def _is_valid_header(buffer: bytes, offset: int) -> bool:
    magic, kind, _flags, channel_len, reserved, _pid, payload_len = HEADER.unpack_from(buffer, offset)
    return (
        magic == MAGIC
        and reserved == 0
        and kind in KINDS
        and channel_len <= MAX_CHANNEL_BYTES
        and payload_len <= MAX_PAYLOAD_BYTES
    )


def encode_batch(pids: List[int], channels: bytes, payloads: bytes) -> bytes:
    """Return one batch frame.

    ``channels`` and ``payloads`` are the encoded texts, each followed by a NUL byte, in the
    order of ``pids``. Raises FrameError if the body exceeds the frame limit.
    """
    body = struct.pack("<I", len(channels)) + array.array("i", pids).tobytes() + channels + payloads
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise FrameError("batch frames are only written on little-endian machines")
    return encode_frame(KIND_BATCH, 0, b"", len(pids), body)


def decode_batch(count: int, body: bytes, codec: str, errors: str) -> Tuple[List[str], List[str], List[int]]:
    """Return the (channels, payloads, pids) columns of a batch frame's body.

    Raises FrameError if the body does not hold ``count`` channels, payloads and pids.
    """
    pid_end = 4 + 4 * count
    if count < 0 or len(body) < pid_end:
        raise FrameError(f"invalid batch frame: {len(body)} bytes cannot hold {count} pids")
    (channels_size,) = struct.unpack_from("<I", body)
    channels_end = pid_end + channels_size
    if channels_end > len(body) or count == 0:
        raise FrameError(f"invalid batch frame: channel section of {channels_size} bytes does not fit")

    pids = array.array("i")
    pids.frombytes(body[4:pid_end])
    channel_bytes = body[pid_end:channels_end - 1]
    first = channel_bytes.split(b"\x00", 1)[0]
    # Most batches carry one channel: comparing bytes is cheaper than decoding each copy.
    if channel_bytes == b"\x00".join([first] * count):
        channels = [first.decode(codec, errors)] * count
    else:
        channels = channel_bytes.decode(codec, errors).split("\x00")
    payloads = body[channels_end:-1].decode(codec, errors).split("\x00")

    if len(channels) != count or len(payloads) != count:
        raise FrameError(
            f"invalid batch frame: {len(channels)} channels and {len(payloads)} payloads for {count} pids"
        )
    return channels, payloads, pids.tolist()


class FrameDecoder:
    """Incremental decoder: feed it the bytes read from the pipe, in any chunking.

    Bytes of an incomplete trailing frame are kept until the rest arrives. With
    ``resynchronise`` true (for a reader that may start where another stopped mid-frame),
    leading bytes up to the first valid header are skipped and counted in
    ``skipped_bytes``. After that, a header with an unknown kind or an impossible length
    raises FrameError, and the decoder is unusable, because the stream has lost its frame
    boundaries.
    """

    def __init__(self, resynchronise: bool = False) -> None:
        self._pending = b""
        self._synchronising = resynchronise
        self.skipped_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Number of bytes held back as the start of an incomplete frame."""
        return len(self._pending)

    def feed(self, data: bytes) -> List[Frame]:
        """Decode every complete frame in the pending bytes plus ``data``."""
        buffer = self._pending + data if self._pending else data
        if self._synchronising:
            buffer = self._skip_to_header(buffer)
            if self._synchronising:
                self._pending = buffer
                return []

        frames: List[Frame] = []
        unpack_header = HEADER.unpack_from
        offset = 0
        end = len(buffer)

        while end - offset >= HEADER_SIZE:
            magic, kind, flags, channel_len, reserved, pid, payload_len = unpack_header(buffer, offset)
            if magic != MAGIC or reserved != 0 or kind not in KINDS:
                raise FrameError(f"invalid frame header at byte {offset}: the pipe is corrupt")
            if channel_len > MAX_CHANNEL_BYTES or payload_len > MAX_PAYLOAD_BYTES:
                raise FrameError(
                    f"invalid frame lengths (channel {channel_len}, payload {payload_len}) "
                    f"at byte {offset}: the pipe is corrupt"
                )

            channel_start = offset + HEADER_SIZE
            payload_start = channel_start + channel_len
            frame_end = payload_start + payload_len
            if frame_end > end:
                break
            frames.append(
                (kind, flags, buffer[channel_start:payload_start], pid, buffer[payload_start:frame_end])
            )
            offset = frame_end

        self._pending = buffer[offset:]
        return frames

    def _skip_to_header(self, buffer: bytes) -> bytes:
        """Drop the bytes before the first valid header; keep a tail that may start one."""
        offset = buffer.find(MAGIC)
        while offset >= 0 and len(buffer) - offset >= HEADER_SIZE:
            if _is_valid_header(buffer, offset):
                self.skipped_bytes += offset
                self._synchronising = False
                return buffer[offset:]
            offset = buffer.find(MAGIC, offset + 1)

        # No valid header yet: keep only what could still become one.
        keep_from = offset if offset >= 0 else max(0, len(buffer) - 1)
        self.skipped_bytes += keep_from
        return buffer[keep_from:]

    def finish(self) -> None:
        """Raise FrameError if the stream ended inside a frame."""
        if self._pending:
            raise FrameError(
                f"the notification pipe closed inside a frame ({len(self._pending)} bytes left over)"
            )
