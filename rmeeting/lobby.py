"""The knockers waiting on this instance for a decision (``join_policy`` lobby), by meeting.

Who waits is in the member store (every instance sees one lobby); a decision travels as a
:class:`~rmeeting.events.LobbyChanged` through the meeting's event stream, so it reaches the
knocker's instance wherever the host who made it is connected. This table only pairs such an
event with the knocker's session here. No I/O: the service drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import trio

__all__ = ["Outcome", "Waiters"]

#: how a wait ends: let in, turned away, or the meeting ended meanwhile
Outcome = Literal["admitted", "refused", "ended"]


@dataclass
class _Waiter:
    decided: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome = "refused"


class Waiters:
    def __init__(self) -> None:
        self._by_meeting: dict[str, dict[str, _Waiter]] = {}

    def add(self, meeting_id: str, member_id: str) -> None:
        self._by_meeting.setdefault(meeting_id, {})[member_id] = _Waiter()

    def remove(self, meeting_id: str, member_id: str) -> None:
        waiting = self._by_meeting.get(meeting_id, {})
        waiting.pop(member_id, None)
        if not waiting:
            self._by_meeting.pop(meeting_id, None)

    def decide(self, meeting_id: str, member_id: str, outcome: Outcome) -> bool:
        """Wake the knocker if it waits here; True if it did."""
        waiter = self._by_meeting.get(meeting_id, {}).get(member_id)
        if waiter is None or waiter.decided.is_set():
            return False
        waiter.outcome = outcome
        waiter.decided.set()
        return True

    def end_meeting(self, meeting_id: str) -> int:
        """The meeting ended: every knocker of it here hears so; how many there were."""
        waiting = list(self._by_meeting.get(meeting_id, {}))
        return sum(self.decide(meeting_id, member_id, "ended") for member_id in waiting)

    async def wait(self, meeting_id: str, member_id: str) -> Outcome:
        waiter = self._by_meeting[meeting_id][member_id]
        await waiter.decided.wait()
        return waiter.outcome

    def count(self) -> int:
        return sum(len(w) for w in self._by_meeting.values())
