"""DSN forms, validation and password masking."""

import pytest

from hermes_lite.dsn import describe, mask_password, parse_dsn, to_conninfo
from hermes_lite.exceptions import InvalidConfigurationException

SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "text",
    [
        f"host=/tmp user=app password={SECRET}",
        f"host=/tmp password = '{SECRET} with space' user=app",
        f"postgresql://app:{SECRET}@localhost:5432/app",
        f"postgres://app:{SECRET}@localhost/app?sslmode=disable",
        f"postgresql://app@localhost/app?password={SECRET}&sslmode=disable",
        f'connection to server failed: FATAL: password authentication failed (dsn "password={SECRET}")',
    ],
)
def test_mask_password_hides_secret(text):
    assert SECRET not in mask_password(text)


def test_mask_password_keeps_other_text():
    text = "host=/tmp user=app dbname=app"

    assert mask_password(text) == text


def test_parse_hermes_dict_maps_database():
    keywords = parse_dsn({"database": "app", "host": "127.0.0.1", "port": 5432, "user": "app"})

    assert keywords == {"dbname": "app", "host": "127.0.0.1", "port": "5432", "user": "app"}


def test_parse_uri():
    keywords = parse_dsn("postgresql://app@localhost:6543/appdb?sslmode=disable")

    assert keywords["port"] == "6543"
    assert keywords["dbname"] == "appdb"
    assert keywords["sslmode"] == "disable"


def test_unknown_dict_key_raises():
    with pytest.raises(InvalidConfigurationException, match="hots"):
        parse_dsn({"hots": "localhost"})


def test_unparsable_string_raises_without_password():
    with pytest.raises(InvalidConfigurationException) as raised:
        parse_dsn(f"host=/tmp password={SECRET} bogus_option=1")

    assert "bogus_option" in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize("value", [["localhost"], {"a": 1}, True, object()])
def test_non_text_dict_value_raises(value):
    with pytest.raises(InvalidConfigurationException, match="'host'"):
        parse_dsn({"host": value})


def test_non_text_password_is_masked_in_error():
    with pytest.raises(InvalidConfigurationException) as raised:
        parse_dsn({"password": [SECRET]})

    assert SECRET not in str(raised.value)


def test_dsn_of_wrong_type_raises():
    with pytest.raises(InvalidConfigurationException, match="int"):
        parse_dsn(5432)


def test_defaults_fill_only_missing_keywords():
    conninfo = to_conninfo("host=/tmp keepalives_idle=99", {"keepalives_idle": "10", "keepalives": "1"})

    assert parse_dsn(conninfo) == {"host": "/tmp", "keepalives_idle": "99", "keepalives": "1"}


def test_describe_masks_dict_password():
    text = describe({"host": "db", "password": SECRET})

    assert SECRET not in text
    assert "host=db" in text


def test_connection_parameters_pass_through():
    conninfo = to_conninfo("host=/tmp sslmode=disable application_name=hermes target_session_attrs=read-write")

    keywords = parse_dsn(conninfo)
    assert keywords["sslmode"] == "disable"
    assert keywords["application_name"] == "hermes"
    assert keywords["target_session_attrs"] == "read-write"
