"""Control flags: the room's, each member's own, and the one parser for their stored values.

The flags and their text form are a fixed contract (docs/architecture.md): an operator may write
them by hand with ``etcdctl put``, so parsing is forgiving about case and whitespace but strict
about meaning; anything else is :class:`InvalidControlValue`, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = [
    "DEFAULTS",
    "DEVICES",
    "FLAGS",
    "MEMBER_FLAGS",
    "Controls",
    "InvalidControlValue",
    "UnknownFlag",
    "format_flag_value",
    "parse_flag_value",
    "validate_changes",
    "validate_member_changes",
]

#: Every flag, in the order they are shown. ``camera``/``mic``/``rename``/``chat``: members may
#: do that; ``locked``: no new member may join.
FLAGS: tuple[str, ...] = ("camera", "mic", "rename", "chat", "locked")

DEFAULTS: Mapping[str, bool] = {
    "camera": True,
    "mic": True,
    "rename": True,
    "chat": True,
    "locked": False,
}

#: The devices a room switch turns off for everyone (the member's own state is declared by it).
DEVICES: tuple[str, ...] = ("camera", "mic")

#: A member's own flags (``<prefix>/meetings/<id>/members/<member_id>/<flag>``). ``camera``,
#: ``mic``, ``rename``, ``chat``: absent, the room's flag decides for this member; ``false``
#: forbids it this member whatever the room says; ``true`` allows it even while the room's
#: flag is off (what granting an ask to unmute writes). ``cohost``: ``true`` makes the member
#: a co-host.
MEMBER_FLAGS: tuple[str, ...] = ("camera", "mic", "rename", "chat", "cohost")

_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


class InvalidControlValue(ValueError):
    """A stored flag value that is not one of the accepted boolean spellings."""


class UnknownFlag(KeyError):
    """A flag name that is not one of :data:`FLAGS`."""


def parse_flag_value(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidControlValue(f"not UTF-8: {raw[:40]!r}") from exc
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidControlValue(f"not a boolean: {raw[:40]!r}")


def format_flag_value(value: bool) -> str:
    return "true" if value else "false"


def validate_changes(changes: Mapping[str, object]) -> dict[str, bool]:
    """Check a requested change set: known flags, real booleans, at least one flag."""
    if not changes:
        raise ValueError("no flag to change")
    out: dict[str, bool] = {}
    for name, value in changes.items():
        if name not in DEFAULTS:
            raise UnknownFlag(name)
        if not isinstance(value, bool):
            raise ValueError(f"flag {name!r} needs true or false, not {value!r}")
        out[name] = value
    return out


def validate_member_changes(changes: Mapping[str, object]) -> dict[str, bool | None]:
    """A requested change of one member's flags: known flags, true/false, or null (remove the
    member's own value: the room's flag decides again)."""
    if not changes:
        raise ValueError("no flag to change")
    out: dict[str, bool | None] = {}
    for name, value in changes.items():
        if name not in MEMBER_FLAGS:
            raise UnknownFlag(name)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"flag {name!r} needs true, false or null, not {value!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class Controls:
    """A meeting's flags at one revision. Revisions only grow; a larger one is newer.

    Beside the room's flags: each member's own (``members``: member id -> the flags set for it,
    see :data:`MEMBER_FLAGS`), and the member id of the host after a hand-over (``host``; None
    while the creator's host key still makes its bearer the host).

    ``changed_at`` (device -> revision) and ``member_changed_at`` (member id -> flag ->
    revision) say when a flag last changed value: a member's declared camera or mic counts only
    if it was declared at or after that revision (:meth:`device_on`). That is how a room switch
    turns every device off with one event and no per-member write, from whatever source.
    """

    values: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULTS))
    revision: int = 0
    members: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    host: str | None = None
    changed_at: Mapping[str, int] = field(default_factory=dict, compare=False)
    member_changed_at: Mapping[str, Mapping[str, int]] = field(default_factory=dict,
                                                               compare=False)

    def may(self, member_id: str, flag: str) -> bool:
        """Whether the member may do ``flag`` (camera, mic, rename, chat): its own flag if it
        has one, else the room's."""
        own = self.members.get(member_id, {}).get(flag)
        return self.values[flag] if own is None else own

    def is_cohost(self, member_id: str) -> bool:
        return bool(self.members.get(member_id, {}).get("cohost", False))

    def device_on(self, member_id: str, device: str, declared: bool, declared_rev: int) -> bool:
        """A member's device as everyone should see it: declared on, allowed, and declared at
        or after the last change of the flags that rule it (a switch off turned it off)."""
        if not declared or not self.may(member_id, device):
            return False
        since = max(self.changed_at.get(device, 0),
                    self.member_changed_at.get(member_id, {}).get(device, 0))
        return declared_rev >= since

    def __getitem__(self, flag: str) -> bool:
        return self.values[flag]

    def as_dict(self) -> dict[str, bool]:
        return {flag: self.values[flag] for flag in FLAGS}

    @classmethod
    def from_partial(cls, values: Mapping[str, bool], revision: int) -> Controls:
        """Fill absent flags with their defaults (a missing key means the default)."""
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in values.items() if k in DEFAULTS})
        return cls(values=merged, revision=revision)

    def for_member(self, member_id: str) -> Controls:
        """The flags as they apply to one member (its own where it has them): what a protocol
        that knows only room flags (the seed's room state) tells that member."""
        values = dict(self.values)
        for flag in ("camera", "mic", "rename", "chat"):
            values[flag] = self.may(member_id, flag)
        return replace(self, values=values)

    def members_dict(self) -> dict[str, dict[str, bool]]:
        return {m: dict(flags) for m, flags in self.members.items() if flags}
