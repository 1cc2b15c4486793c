"""The chat log's JSON form of the events (Redis relay and history), on its own."""

from __future__ import annotations

import pytest

from rmeeting.closes import Close, LeaveReason
from rmeeting.events import (
    BusEvent,
    ChatPosted,
    LobbyChanged,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
)
from rmeeting.stores._event_json import decode, encode

EVENTS: list[BusEvent] = [
    ChatPosted("m", "u", "Ann", "member", "hi ☃ \ud7ff", 7, 2.5),
    MemberJoined("m", "u", "Ann", "host", True, False, 1.25, 2.5),
    MemberUpdated("m", "u", "Bea", "host", False, False, 1.25, {"name": "Bea", "mic": False},
                  2.5),
    MemberLeft("m", "u", "Bea", "member", 1.25, LeaveReason.SLOW_CONSUMER, None, 2.5),
    MemberLeft("m", "u", "Bea", "member", 1.25, LeaveReason.REPLACED,
               (Close.REPLACED, "replaced by a newer connection"), 2.5),
    MemberJoined("m", "u", "Co", "cohost", False, False, 1.25, 2.5),  # a join token's role
    LobbyChanged("m", "k", "Ann", "waiting", 2.5),
    LobbyChanged("m", "k", "Ann", "refused", 2.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: BusEvent) -> None:
    kind, data = encode(event)
    seq = event.seq if isinstance(event, ChatPosted) else 0
    assert decode("m", kind, data, seq, 2.5) == event


def test_the_format_is_the_one_rmeeting_always_wrote() -> None:
    # what the untyped events wrote: history and a mixed-version cluster depend on it
    assert encode(EVENTS[0]) == ("chat", {"id": "u", "name": "Ann", "role": "member",
                                          "text": "hi ☃ \ud7ff"})
    assert encode(EVENTS[4]) == ("left", {"id": "u", "name": "Bea", "role": "member",
                                          "reason": "replaced", "joined_at": 1.25,
                                          "close": [4009, "replaced by a newer connection"]})


@pytest.mark.parametrize(("kind", "data", "seq"), [
    ("typing", {}, 0),
    ("lobby", {"id": "k", "name": "n", "state": "maybe"}, 0),
    ("lobby", {"id": "k", "name": "n", "state": "waiting"}, 2),
    ("chat", {"id": "u", "name": "n", "role": "member", "text": "x"}, 0),
    ("chat", {"id": "u", "name": "n", "role": "owner", "text": "x"}, 1),
    ("chat", {"id": "u", "name": ["n"], "role": "member", "text": "x"}, 1),
    ("chat", {"id": "u", "name": "n", "role": "member"}, 1),
    ("joined", {"id": "u", "name": "n", "role": "member", "camera": 1, "mic": False,
                "joined_at": 1.0}, 0),
    ("joined", {"id": "u", "name": "n", "role": "member", "camera": True, "mic": False,
                "joined_at": True}, 0),
    ("joined", {"id": "u", "name": "n", "role": "member", "camera": True, "mic": False,
                "joined_at": 1.0}, 3),
    ("left", {"id": "u", "name": "n", "role": "member", "joined_at": 1.0, "reason": "x"}, 0),
    ("left", {"id": "u", "name": "n", "role": "member", "joined_at": 1.0, "reason": "left",
              "close": [4001]}, 0),
    ("left", {"id": "u", "name": "n", "role": "member", "joined_at": 1.0, "reason": "left",
              "close": [1234, "x"]}, 0),
    ("updated", {"id": "u", "name": "n", "role": "member", "camera": True, "mic": False,
                 "joined_at": 1.0, "changes": {"mic": "yes"}}, 0),
    ("updated", {"id": "u", "name": "n", "role": "member", "camera": True, "mic": False,
                 "joined_at": 1.0, "changes": []}, 0),
])
def test_what_rmeeting_never_writes_is_refused(kind: str, data: dict[str, object],
                                               seq: int) -> None:
    with pytest.raises(ValueError):
        decode("m", kind, data, seq, 1.0)
