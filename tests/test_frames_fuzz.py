"""Property tests of the frame decoder: round trips, and clear errors for corrupt input."""

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from hermes_lite import frames

TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
ROW = st.tuples(TEXT, TEXT, st.integers(-(2**31), 2**31 - 1))


def batch_frame(rows):
    channels = "".join(channel + "\x00" for channel, _, _ in rows).encode()
    payloads = "".join(payload + "\x00" for _, payload, _ in rows).encode()
    return frames.encode_batch([pid for _, _, pid in rows], channels, payloads)


FRAME = st.one_of(
    st.lists(ROW, min_size=1, max_size=20).map(lambda rows: (rows, batch_frame(rows))),
    st.tuples(st.binary(max_size=64), st.binary(max_size=300), st.integers(-(2**31), 2**31 - 1)).map(
        lambda fields: (None, frames.encode_frame(frames.KIND_NOTIFICATION, 0, *fields[:1], fields[2], fields[1]))
    ),
    st.integers(0, 2).map(lambda reason: (None, frames.encode_frame(frames.KIND_GAP, reason, b"", 1, b""))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAME, max_size=10), st.lists(st.integers(0, 4000), max_size=10))
def test_frames_round_trip_in_any_chunking(items, cuts):
    data = b"".join(frame for _, frame in items)
    expected = [frames.FrameDecoder().feed(frame)[0] for _, frame in items]
    decoder = frames.FrameDecoder(resynchronise=True)
    decoded = []
    start = 0

    for cut in sorted(cut % (len(data) + 1) for cut in cuts) + [len(data)]:
        decoded += decoder.feed(data[start:cut])
        start = max(start, cut)
    decoder.finish()

    assert decoded == expected
    assert decoder.skipped_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=30))
def test_batch_columns_round_trip(rows):
    [(_kind, _flags, _channel, count, body)] = frames.FrameDecoder().feed(batch_frame(rows))

    channels, payloads, pids = frames.decode_batch(count, body, "utf-8", "strict")

    assert list(zip(channels, payloads, pids)) == rows


@settings(max_examples=300, deadline=None)
@given(FRAME, st.integers(1, 10_000))
def test_truncated_frame_raises_at_finish(item, cut):
    _, frame = item
    decoder = frames.FrameDecoder()
    kept = 1 + cut % (len(frame) - 1)

    assert decoder.feed(frame[:kept]) == []
    with pytest.raises(frames.FrameError):
        decoder.finish()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data):
    decoder = frames.FrameDecoder()
    try:
        decoded = decoder.feed(data)
        for kind, _flags, _channel, count, body in decoded:
            if kind == frames.KIND_BATCH:
                frames.decode_batch(count, body, "utf-8", "surrogateescape")
    except frames.FrameError:
        return

    # Whatever was not decoded is held, never more than was given: no bogus length allocated.
    assert decoder.pending_bytes <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2**32 - 1), st.integers(-(2**31), 2**31 - 1))
def test_length_beyond_data_waits_or_raises(payload_length, count):
    header = frames.HEADER.pack(frames.MAGIC, frames.KIND_BATCH, 0, 0, 0, count, payload_length)
    given_bytes = min(payload_length - 1, 10)
    decoder = frames.FrameDecoder()

    try:
        decoded = decoder.feed(header + b"x" * given_bytes)
    except frames.FrameError:
        assert payload_length > frames.MAX_PAYLOAD_BYTES
        return
    assert decoded == []
    assert payload_length <= frames.MAX_PAYLOAD_BYTES
    assert decoder.pending_bytes == frames.HEADER_SIZE + given_bytes


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=500))
def test_decode_batch_rejects_bad_bodies_clearly(count, body):
    try:
        channels, payloads, pids = frames.decode_batch(count, body, "utf-8", "surrogateescape")
    except frames.FrameError:
        return
    assert len(channels) == len(payloads) == len(pids) == count
