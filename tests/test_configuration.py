"""Invalid configuration raises InvalidConfigurationException where the value is given, naming it."""

import pytest

import hermes_lite
from hermes_lite import InvalidConfigurationException, PostgresNotificationListener


@pytest.mark.parametrize(
    "channel, fragment",
    [
        ("", "cannot be empty"),
        (5, "expected a str"),
        (b"bytes", "expected a str"),
        (None, "expected a str"),
        ("a\x00b", "NUL"),
        ("é" * 32, "64 bytes"),
        ("c" * 64, "64 bytes"),
    ],
)
def test_listener_rejects_invalid_channel(channel, fragment):
    with pytest.raises(InvalidConfigurationException, match=fragment):
        PostgresNotificationListener("host=/tmp", channel)


def test_listener_rejects_empty_channel_list():
    with pytest.raises(InvalidConfigurationException, match="at least one channel"):
        PostgresNotificationListener("host=/tmp", [])


def test_listener_accepts_63_byte_channel():
    listener = PostgresNotificationListener("host=/tmp", "c" * 63)

    assert listener.channels == ["c" * 63]


def test_listener_rejects_unknown_implementation():
    with pytest.raises(InvalidConfigurationException, match="'rust'"):
        PostgresNotificationListener("host=/tmp", "ch", implementation="rust")


@pytest.mark.parametrize(
    "channel, payload, fragment",
    [
        ("", "x", "cannot be empty"),
        ("ch", b"bytes", "expected a str"),
        ("ch", "a\x00b", "NUL"),
        ("ch", "a" * 8000, "8000 bytes"),
        ("ch", "é" * 4000, "8000 bytes"),
    ],
)
def test_notify_rejects_before_sending(postgres_cluster, channel, payload, fragment):
    with postgres_cluster.connect() as connection:
        with pytest.raises(InvalidConfigurationException, match=fragment):
            hermes_lite.notify(connection, channel, payload)
