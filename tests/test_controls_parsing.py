"""controls.py on its own (no server): the one parser of stored flag values, and change sets.

An operator writes values by hand with etcdctl, so the parser forgives case and surrounding
whitespace, and refuses everything else (docs/architecture.md)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmeeting.controls import (
    DEFAULTS,
    FLAGS,
    Controls,
    InvalidControlValue,
    UnknownFlag,
    format_flag_value,
    parse_flag_value,
    validate_changes,
)


@pytest.mark.parametrize("raw", ["true", "1", "on", "yes", "TRUE", "True", "yEs", "On",
                                 " true", "true\n", "\t 1 \r\n", b"true", b" YES "])
def test_true_spellings(raw: str | bytes) -> None:
    assert parse_flag_value(raw) is True


@pytest.mark.parametrize("raw", ["false", "0", "off", "no", "FALSE", "False", "nO", "OFF",
                                 " false ", "0\n", b"off", b"\tNo\n"])
def test_false_spellings(raw: str | bytes) -> None:
    assert parse_flag_value(raw) is False


@pytest.mark.parametrize("raw", [
    "", " ", "\n", "t", "f", "y", "n", "2", "-1", "01", "00", "1.0", "truee", "tru", "yes!",
    "ja", "null", "none", '"true"', "[true]", "{}", "true false", "on off", "t r u e",
    "\u0131", "ｔｒｕｅ", "true\x00", "\x00", "\ud800", "1" * 5000, "true" * 1000,
    b"", b"\xff", b"\xc3(", b"tru\xe9", b"\xed\xa0\x80",  # not UTF-8 (a lone surrogate's bytes)
])
def test_everything_else_is_refused(raw: str | bytes) -> None:
    with pytest.raises(InvalidControlValue) as refused:
        parse_flag_value(raw)
    assert len(str(refused.value)) < 120  # the message quotes at most 40 characters of it


def test_format_round_trips() -> None:
    for value in (True, False):
        assert parse_flag_value(format_flag_value(value)) is value
    assert format_flag_value(True) == "true" and format_flag_value(False) == "false"


def test_validate_changes() -> None:
    assert validate_changes({"mic": False, "locked": True}) == {"mic": False, "locked": True}
    with pytest.raises(ValueError, match="no flag"):
        validate_changes({})
    with pytest.raises(UnknownFlag):
        validate_changes({"volume": True})
    not_bools: tuple[object, ...] = (1, 0, "true", None, [], {}, 1.0)
    for not_a_bool in not_bools:
        with pytest.raises(ValueError, match="true or false"):
            validate_changes({"mic": not_a_bool})


def test_controls_fill_defaults_and_keep_the_flag_order() -> None:
    partial = Controls.from_partial({"mic": False, "bogus": True}, revision=7)
    assert partial.revision == 7 and partial["mic"] is False
    assert partial.as_dict() == {**DEFAULTS, "mic": False}
    assert list(partial.as_dict()) == list(FLAGS)
    assert Controls().as_dict() == dict(DEFAULTS) and Controls().revision == 0


# --- any input at all: a bool or InvalidControlValue, never another exception or a guess ------

ACCEPTED = {"true": True, "1": True, "on": True, "yes": True,
            "false": False, "0": False, "off": False, "no": False}


@settings(database=None, deadline=None, max_examples=500)
@given(st.text() | st.sampled_from(sorted(ACCEPTED)).map(lambda s: f" {s.upper()}\t"))
def test_any_text(raw: str) -> None:
    expected = ACCEPTED.get(raw.strip().lower())
    if expected is None:
        with pytest.raises(InvalidControlValue):
            parse_flag_value(raw)
    else:
        assert parse_flag_value(raw) is expected


@settings(database=None, deadline=None, max_examples=500)
@given(st.binary(max_size=64))
def test_any_bytes(raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InvalidControlValue, match="not UTF-8"):
            parse_flag_value(raw)
        return
    expected = ACCEPTED.get(text.strip().lower())
    if expected is None:
        with pytest.raises(InvalidControlValue):
            parse_flag_value(raw)
    else:
        assert parse_flag_value(raw) is expected
