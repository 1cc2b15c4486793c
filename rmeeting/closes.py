"""Every WebSocket close code and every leave reason rmeeting uses: one table each, matching
docs/protocol.md ("Close codes"; "Attendance" for the reasons).

This module imports nothing of rmeeting: the transport (which knows no meetings) uses it as
well as the hub, the APIs, the presence repairs and the metrics.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["Close", "LeaveReason"]


class Close(IntEnum):
    """A WebSocket close code, as docs/protocol.md's table lists it."""

    NORMAL = 1000
    #: embedded mode's graceful drain: there is no other instance; reconnect when it is back
    GOING_AWAY = 1001
    #: a text frame that is not valid UTF-8 (wsproto sends it)
    INVALID_UTF8 = 1007
    #: keep-alive timeout
    POLICY = 1008
    #: a message larger than ``max_frame_bytes``
    TOO_BIG = 1009
    #: a bug cost this member its connection
    INTERNAL = 1011
    #: cluster mode's graceful drain (reconnect at once); also a join refused while draining
    RESTART = 1012
    #: a store is unavailable (or a presence could not be registered again): try again later
    TRY_AGAIN = 1013
    MEETING_ENDED = 4000
    #: left through the seed's ``PUT /LeaveMeeting``
    LEFT = 4001
    KICKED = 4003
    #: the member's outbox overflowed: it does not read what it is sent
    SLOW_CONSUMER = 4008
    #: the same member connected again (through this or another instance)
    REPLACED = 4009
    BAD_REQUEST = 4400
    BAD_TOKEN = 4401
    NOT_HOST = 4403
    NOT_FOUND = 4404
    #: a join refused: the meeting has ended (a tombstone until its retention passes)
    ENDED = 4410
    LOCKED = 4423
    #: not let in: the host (or a co-host) refused a knock in the lobby; a seed client knocking
    #: at a lobby (the seed has no way to wait)
    REFUSED = 4430
    FULL = 4429


class LeaveReason(StrEnum):
    """Why a presence ended: the attendance ledger's ``reason`` and ``member_left``'s."""

    CLOSED = "closed"
    LEFT = "left"
    KICKED = "kicked"
    REPLACED = "replaced"
    INSTANCE_LOST = "instance lost"
    TIMEOUT = "timeout"
    SLOW_CONSUMER = "slow consumer"
    SERVER_SHUTDOWN = "server shutdown"
    MEETING_ENDED = "meeting ended"
