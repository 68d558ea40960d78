"""The binary frame format between listener and processor, and the pipe reader built on it."""

import os

import pytest

from hermes_lite import frames
from hermes_lite.notifications import Batch, Gap, Notification
from hermes_lite.pipes import PipeClosed, notification_pipe


def notification_frame(channel, payload, pid=42):
    return frames.encode_frame(frames.KIND_NOTIFICATION, 0, channel, pid, payload)


def test_frame_round_trip():
    data = notification_frame(b"ch", b"payload") + notification_frame(b"other", b"", pid=7)

    decoded = frames.FrameDecoder().feed(data)

    assert decoded == [(1, 0, b"ch", 42, b"payload"), (1, 0, b"other", 7, b"")]


def test_frame_split_at_every_byte():
    data = notification_frame(b"channel", b"payload \xc3\xbc") * 3

    for split in range(len(data) + 1):
        decoder = frames.FrameDecoder()
        decoded = decoder.feed(data[:split]) + decoder.feed(data[split:])
        assert len(decoded) == 3, split
        assert decoder.pending_bytes == 0


def test_frame_header_layout():
    data = notification_frame(b"ab", b"xyz", pid=0x01020304)

    assert data[:2] == frames.MAGIC
    assert len(data) == frames.HEADER_SIZE + 5
    assert data[8:12] == bytes([4, 3, 2, 1])


def test_corrupt_header_raises():
    decoder = frames.FrameDecoder()

    with pytest.raises(frames.FrameError, match="corrupt"):
        decoder.feed(b"\x00" * frames.HEADER_SIZE)


def test_bogus_length_raises_without_waiting():
    header = frames.HEADER.pack(frames.MAGIC, frames.KIND_NOTIFICATION, 0, 2, 0, 1, 1 << 30)

    with pytest.raises(frames.FrameError, match="corrupt"):
        frames.FrameDecoder().feed(header)


def test_encode_rejects_oversized_channel():
    with pytest.raises(frames.FrameError, match="channel of 256 bytes"):
        frames.encode_frame(frames.KIND_NOTIFICATION, 0, b"c" * 256, 1, b"")


def test_finish_inside_frame_raises():
    decoder = frames.FrameDecoder()
    decoder.feed(notification_frame(b"ch", b"payload")[:-1])

    with pytest.raises(frames.FrameError, match="inside a frame"):
        decoder.finish()


def test_resynchronise_skips_partial_frame():
    whole = notification_frame(b"ch", b"first") + notification_frame(b"ch", b"second")
    decoder = frames.FrameDecoder(resynchronise=True)

    decoded = decoder.feed(whole[5:])

    assert [frame[4] for frame in decoded] == [b"second"]
    assert decoder.skipped_bytes == len(notification_frame(b"ch", b"first")) - 5


def test_resynchronise_at_boundary_skips_nothing():
    decoder = frames.FrameDecoder(resynchronise=True)

    decoded = decoder.feed(notification_frame(b"ch", b"x"))

    assert len(decoded) == 1
    assert decoder.skipped_bytes == 0


def test_reader_decodes_batch_in_order():
    reader, writer = notification_pipe()
    data = frames.encode_frame(frames.KIND_SESSION, 0, b"", 9, b"LATIN1")
    data += frames.encode_frame(frames.KIND_GAP, frames.GAP_START, b"", 9, b"")
    data += notification_frame(b"caf\xe9", b"\xe9t\xe9", pid=11)
    os.write(writer.fileno(), data)

    batch = reader.read_batch(timeout=5)

    assert batch == [Gap("start", 9), Notification("café", "été", 11)]
    assert batch[0].is_gap
    assert not batch[1].is_gap


def test_reader_keeps_undecodable_bytes():
    reader, writer = notification_pipe()
    os.write(writer.fileno(), notification_frame(b"ch", b"a\xffb"))

    [notification] = reader.read_batch(timeout=5)

    assert notification.payload.encode("utf-8", "surrogateescape") == b"a\xffb"


def test_reader_reports_restart_gap_after_partial_frame():
    reader, writer = notification_pipe()
    os.write(writer.fileno(), notification_frame(b"ch", b"lost")[3:] + notification_frame(b"ch", b"kept"))

    batch = reader.read_batch(timeout=5)

    assert batch == [Gap("restart", 0), Notification("ch", "kept", 42)]


def test_reader_times_out_empty():
    reader, _writer = notification_pipe()

    assert reader.read_batch(timeout=0.01) == []


def test_reader_raises_when_writers_closed():
    reader, writer = notification_pipe()
    writer.close()

    with pytest.raises(PipeClosed):
        reader.read_batch(timeout=5)


def batch_frame(rows):
    """Return a batch frame of (channel, payload, pid) rows, encoded as UTF-8."""
    channels = "".join(channel + "\x00" for channel, _, _ in rows).encode()
    payloads = "".join(payload + "\x00" for _, payload, _ in rows).encode()
    return frames.encode_batch([pid for _, _, pid in rows], channels, payloads)


def test_batch_round_trip_mixed_channels():
    rows = [("a", "1", 10), ("b", "", 11), ("a", "ü€😀", 12)]
    [(kind, _flags, _channel, count, body)] = frames.FrameDecoder().feed(batch_frame(rows))

    channels, payloads, pids = frames.decode_batch(count, body, "utf-8", "strict")

    assert kind == frames.KIND_BATCH
    assert list(zip(channels, payloads, pids)) == rows


def test_batch_single_channel_shortcut():
    rows = [("same", str(number), 1) for number in range(5)]
    [(_kind, _flags, _channel, count, body)] = frames.FrameDecoder().feed(batch_frame(rows))

    channels, payloads, _pids = frames.decode_batch(count, body, "utf-8", "strict")

    assert channels == ["same"] * 5
    assert payloads == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("count", [0, 3, 100])
def test_batch_with_wrong_count_raises(count):
    body = batch_frame([("a", "1", 10), ("b", "2", 11)])[frames.HEADER_SIZE:]

    with pytest.raises(frames.FrameError, match="invalid batch frame"):
        frames.decode_batch(count, body, "utf-8", "strict")


def test_reader_returns_batch_columns():
    reader, writer = notification_pipe()
    os.write(writer.fileno(), batch_frame([("ch", "1", 5), ("ch", "2", 6)]))

    batch = reader.read_batch(timeout=5)

    assert batch.gap is None
    assert batch.channels == ["ch", "ch"]
    assert batch.payloads == ["1", "2"]
    assert batch.pids == [5, 6]
    assert list(batch) == [Notification("ch", "1", 5), Notification("ch", "2", 6)]


def test_reader_starts_new_batch_at_gap():
    reader, writer = notification_pipe()
    data = batch_frame([("ch", "before", 5)])
    data += frames.encode_frame(frames.KIND_GAP, frames.GAP_RECONNECT, b"", 9, b"")
    data += batch_frame([("ch", "after", 6)])
    os.write(writer.fileno(), data)

    first = reader.read_batch(timeout=5)
    second = reader.read_batch(timeout=0)

    assert first == [Notification("ch", "before", 5)]
    assert second.gap == Gap("reconnect", 9)
    assert second.payloads == ["after"]


def test_batch_is_sequence_of_items():
    batch = Batch(Gap("start", 1), ["a"], ["p"], [3])

    assert len(batch) == 2
    assert batch[0].is_gap
    assert batch[1] == Notification("a", "p", 3)
    assert batch.notifications() == [Notification("a", "p", 3)]
    assert not Batch()
