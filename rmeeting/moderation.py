"""What the room's and the members' flags mean for one member: its role, its devices, its rights.

Pure functions over :class:`~rmeeting.controls.Controls` (no I/O): the hub applies them when it
encodes a member event, the service when it answers a read or checks a request. Nothing of this
is stored per member: a room switch (one ``controls`` event, whatever made it) turns every
member's device off because every reader computes the device from the flags, never because
each member's record was rewritten.

* A member's device (camera, mic) is on if the member declared it on, may use it (its own flag,
  else the room's), and declared it at or after the last change of those flags
  (``Controls.device_on``): a flag switched off and on again leaves devices off until their
  members turn them on.
* Roles: the host is the member named by a hand-over (``Controls.host``) or, before any, whoever
  joined with the host key; a co-host is a member whose ``cohost`` flag is true (or who joined
  as one, unless that flag is false).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from .controls import Controls
from .events import MemberJoined, MemberUpdated, Role
from .records import MemberRecord

__all__ = ["MODERATOR_ROLES", "role_of", "view", "view_event"]

#: who may moderate members (the host's rights except ending, roles and hand-over: host only)
MODERATOR_ROLES: frozenset[Role] = frozenset({"host", "cohost"})

_E = TypeVar("_E", MemberJoined, MemberUpdated)


def role_of(member_id: str, joined_as: Role, controls: Controls) -> Role:
    """The member's role now; ``joined_as`` is the role it joined with (its record's)."""
    if controls.host is not None:
        if member_id == controls.host:
            return "host"
    elif joined_as == "host":
        return "host"
    own = controls.members.get(member_id, {}).get("cohost")
    if own or (own is None and joined_as == "cohost"):
        return "cohost"
    return "member"


def view(record: MemberRecord, controls: Controls) -> MemberRecord:
    """The member as everyone should see it under ``controls``."""
    m = record.member_id
    role = role_of(m, record.role, controls)
    camera = controls.device_on(m, "camera", record.camera, record.media_rev)
    mic = controls.device_on(m, "mic", record.mic, record.media_rev)
    if role == record.role and camera == record.camera and mic == record.mic:
        # the common case, and the same object: a v1 welcome views the whole roster, so a
        # join storm into a meeting of N makes ~N²/2 of these (docs/benchmarks.md)
        return record
    return replace(record, role=role, camera=camera, mic=mic)


def view_event(event: _E, controls: Controls) -> _E:
    """A member event as everyone should see it under ``controls`` (the hub's, at encode time:
    an event published before a switch but fanned out after it shows the device off)."""
    m = event.member_id
    camera = controls.device_on(m, "camera", event.camera, event.media_rev)
    mic = controls.device_on(m, "mic", event.mic, event.media_rev)
    role = role_of(m, event.role, controls)
    if isinstance(event, MemberUpdated) and ("camera" in event.changes or "mic" in event.changes):
        changes = dict(event.changes)
        if "camera" in changes:
            changes["camera"] = camera
        if "mic" in changes:
            changes["mic"] = mic
        return replace(event, camera=camera, mic=mic, role=role, changes=changes)
    if camera == event.camera and mic == event.mic and role == event.role:
        return event
    return replace(event, camera=camera, mic=mic, role=role)
