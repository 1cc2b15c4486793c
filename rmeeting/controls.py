"""Room-wide control flags: names, defaults, and the one parser for their stored values.

The flags and their text form are a fixed contract (docs/architecture.md): an operator may write
them by hand with ``etcdctl put``, so parsing is forgiving about case and whitespace but strict
about meaning; anything else is :class:`InvalidControlValue`, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULTS",
    "FLAGS",
    "Controls",
    "InvalidControlValue",
    "UnknownFlag",
    "format_flag_value",
    "parse_flag_value",
    "validate_changes",
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


@dataclass(frozen=True)
class Controls:
    """A meeting's flags at one revision. Revisions only grow; a larger one is newer."""

    values: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULTS))
    revision: int = 0

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
