"""The etcd key layout of meetings, and what one instance knows of them (no I/O here).

:class:`MeetingCache` is kept up to date by the store's watcher: it turns the raw key changes
of one revision into at most one :data:`MeetingEvent`, and a fresh snapshot into the events
that tell how it differs from what was known (after a compacted watch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..controls import (
    DEFAULTS,
    FLAGS,
    MEMBER_FLAGS,
    Controls,
    InvalidControlValue,
    parse_flag_value,
)
from .base import ControlsChanged, MeetingEnded, MeetingEvent, MeetingMeta, MeetingNotFound
from .etcd_client import Change

__all__ = ["AuditTask", "Keys", "MeetingCache", "MeetingState", "Read", "flag_bytes", "json_field"]

log = logging.getLogger("rmeeting.stores.etcd")

ENDED_IN_ETCD = "deleted in etcd"

#: (meeting id, revision, {flag: (old, new)}): a change to record in the audit trail.
AuditTask = tuple[str, int, dict[str, tuple[bool, bool]]]

#: member id -> flag -> (old, new): members' own flags that changed (None: unset)
MemberChanges = dict[str, dict[str, tuple[bool | None, bool | None]]]


def member_key(sub: str) -> tuple[str, str] | None:
    """(member id, flag) of a ``members/<member_id>/<flag>`` key, else None."""
    if not sub.startswith("members/"):
        return None
    member_id, slash, flag = sub[8:].partition("/")
    return (member_id, flag) if slash and member_id and "/" not in flag else None


def host_value(raw: bytes) -> str | None:
    """The ``host`` key's member id, or None if it cannot be one (logged by the caller)."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    ok = text and "/" not in text and len(text) <= 128 and text.isprintable()
    return text if ok else None


class Keys:
    """``<prefix>/meetings/<meeting_id>/{meta,controls/<flag>,actor,audit/<...>}``, and the
    end marker ``<prefix>/meetings/<meeting_id>`` (see :mod:`rmeeting.stores.etcd`)."""

    def __init__(self, prefix: str) -> None:
        self.root = (prefix.rstrip("/") + "/meetings/").encode()
        #: tombstones of ended meetings: outside ``root``, so the watch never takes one for a
        #: meeting (each is attached to a lease that runs out with the retention)
        self.ended_root = (prefix.rstrip("/") + "/ended/").encode()
        #: WebSocket tickets, by the hash of their secret, each on a lease of its lifetime
        self.tickets = (prefix.rstrip("/") + "/tickets/").encode()

    def home(self, meeting_id: str, sub: str = "") -> bytes:
        if not meeting_id or "/" in meeting_id:
            raise MeetingNotFound(meeting_id)
        return self.root + f"{meeting_id}/{sub}".encode()

    def meta(self, meeting_id: str) -> bytes:
        return self.home(meeting_id, "meta")

    def flag(self, meeting_id: str, flag: str) -> bytes:
        return self.home(meeting_id, f"controls/{flag}")

    def member_flag(self, meeting_id: str, member_id: str, flag: str) -> bytes:
        if not member_id or "/" in member_id:
            raise ValueError(f"invalid member id {member_id!r}")
        return self.home(meeting_id, f"members/{member_id}/{flag}")

    def host(self, meeting_id: str) -> bytes:
        return self.home(meeting_id, "host")

    def actor(self, meeting_id: str) -> bytes:
        return self.home(meeting_id, "actor")

    def audit(self, meeting_id: str, name: str = "") -> bytes:
        return self.home(meeting_id, f"audit/{name}")

    def end_marker(self, meeting_id: str) -> bytes:
        return self.root + meeting_id.encode()

    def tombstone(self, meeting_id: str) -> bytes:
        self.home(meeting_id)  # the same check of the id
        return self.ended_root + meeting_id.encode()

    def split(self, key: bytes) -> tuple[str, str | None]:
        """(meeting id, the rest after its slash); the rest is None for the end marker."""
        meeting_id, slash, sub = key[len(self.root):].decode("utf-8", "replace").partition("/")
        return meeting_id, sub if slash else None


def meta_bytes(meta: MeetingMeta, token: str) -> bytes:
    """``token`` identifies the create() call, so that a retry recognises its own write."""
    return json.dumps({
        "name": meta.name, "created_at": meta.created_at,
        "host_key_hash": meta.host_key_hash, "extra": dict(meta.extra), "txn": token,
    }).encode()


def meta_from(meeting_id: str, raw: bytes) -> MeetingMeta:
    try:
        data = json.loads(raw)
        return MeetingMeta(
            meeting_id, str(data["name"]), float(data["created_at"]),
            str(data["host_key_hash"]), dict(data.get("extra") or {}),
        )
    except (ValueError, TypeError, KeyError) as exc:
        # A meta key written by hand still means the meeting exists.
        log.warning("meeting %s: unreadable meta %r (%s)", meeting_id, raw[:100], exc)
        return MeetingMeta(meeting_id, "", 0.0, "")


def flag_bytes(value: bool) -> bytes:
    return b"true" if value else b"false"


def parse_or(raw: bytes, fallback: bool) -> bool:
    """A stored value, or ``fallback`` (the last valid one) if it is not a boolean."""
    try:
        return parse_flag_value(raw)
    except InvalidControlValue:
        return fallback


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def json_field(raw: bytes, name: str) -> str | None:
    value = json_object(raw).get(name)
    return value if isinstance(value, str) else None


@dataclass
class Read:
    """A meeting's meta and flag keys (and actor key revision) as read at one revision."""

    revision: int
    meta: bytes | None = None
    meta_mod: int = 0
    actor_mod: int = 0
    flags: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)  # (value, mod, lease)
    #: (member id, flag) -> (value, mod) of the members' own flags
    member_flags: dict[tuple[str, str], tuple[bytes, int]] = field(default_factory=dict)
    host: bytes | None = None
    host_mod: int = 0

    def absorb(self, sub: str | None, kv: Any) -> None:
        if sub == "meta":
            self.meta, self.meta_mod = kv.value, kv.mod_revision
        elif sub == "actor":
            self.actor_mod = kv.mod_revision
        elif sub == "host":
            self.host, self.host_mod = kv.value, kv.mod_revision
        elif sub is not None and sub.startswith("controls/") and sub[9:] in DEFAULTS:
            self.flags[sub[9:]] = (kv.value, kv.mod_revision, kv.lease)
        elif sub is not None and (mf := member_key(sub)) is not None and mf[1] in MEMBER_FLAGS:
            self.member_flags[mf] = (kv.value, kv.mod_revision)

    @property
    def mods(self) -> dict[str, int]:
        return {flag: mod for flag, (_, mod, _) in self.flags.items()}

    @property
    def member_mods(self) -> dict[tuple[str, str], int]:
        return {key: mod for key, (_, mod) in self.member_flags.items()}

    @property
    def last_change(self) -> int:
        return max([self.meta_mod, self.host_mod, *self.mods.values(),
                    *self.member_mods.values()])


@dataclass
class MeetingState:
    """What the watcher knows of one meeting, as of ``revision`` (its last change)."""

    meta: MeetingMeta
    meta_mod: int
    revision: int
    #: effective values: the last valid value of each flag, the default when its key is absent.
    values: dict[str, bool] = field(default_factory=lambda: dict(DEFAULTS))
    mods: dict[str, int] = field(default_factory=dict)  # flag -> mod_revision of its key
    leases: dict[str, int] = field(default_factory=dict)  # flag -> lease of its key (0: none)
    #: members' own flags (last valid values), the host after a hand-over, and the revisions
    #: at which flags last changed value (``Controls.changed_at``)
    members: dict[str, dict[str, bool]] = field(default_factory=dict)
    host: str | None = None
    changed_at: dict[str, int] = field(default_factory=dict)
    member_changed_at: dict[str, dict[str, int]] = field(default_factory=dict)
    member_mods: dict[tuple[str, str], int] = field(default_factory=dict)
    host_mod: int = 0

    def controls(self) -> Controls:
        return Controls(
            dict(self.values), self.revision,
            members={m: dict(f) for m, f in self.members.items() if f}, host=self.host,
            changed_at=dict(self.changed_at),
            member_changed_at={m: dict(f) for m, f in self.member_changed_at.items()},
        )

    def set_member(self, member_id: str, flag: str, value: bool | None, revision: int) -> bool:
        """Set (or unset) a member's own flag; True if its value changed."""
        own = self.members.setdefault(member_id, {})
        if own.get(flag) == value:
            return False
        if value is None:
            own.pop(flag, None)
            if not own:
                del self.members[member_id]
        else:
            own[flag] = value
        self.member_changed_at.setdefault(member_id, {})[flag] = revision
        return True


class MeetingCache:
    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self.meetings: dict[str, MeetingState] = {}
        #: hand-written flag values that were rejected / keys of flags that do not exist.
        self.invalid_values = 0
        self.unknown_keys = 0

    def values(self, meeting_id: str, read: Read) -> dict[str, bool]:
        """The flags of a direct read. An invalid stored value reads as the last valid one the
        watcher saw (else the default), so controls() never returns garbage; it is counted once,
        by the watcher, not on every read."""
        known = self.meetings.get(meeting_id)
        values = dict(DEFAULTS)
        for flag, (raw, _, _) in read.flags.items():
            values[flag] = parse_or(raw, known.values[flag] if known else DEFAULTS[flag])
        return values

    def controls_of_read(self, meeting_id: str, read: Read) -> Controls:
        """The controls of a direct read, members' flags and host included; when flags last
        changed value comes from the watcher (else from the keys' mod revisions)."""
        known = self.meetings.get(meeting_id)
        members: dict[str, dict[str, bool]] = {}
        for (member_id, flag), (raw, _) in read.member_flags.items():
            last = known.members.get(member_id, {}).get(flag) if known else None
            try:
                members.setdefault(member_id, {})[flag] = parse_flag_value(raw)
            except InvalidControlValue:
                if last is not None:
                    members.setdefault(member_id, {})[flag] = last
        host = host_value(read.host) if read.host is not None else None
        if known is not None:
            changed_at, member_changed_at = dict(known.changed_at), known.member_changed_at
        else:
            changed_at = {f: mod for f, (_, mod, _) in read.flags.items()}
            member_changed_at = {}
            for (member_id, flag), (_, mod) in read.member_flags.items():
                member_changed_at.setdefault(member_id, {})[flag] = mod
        return Controls(
            self.values(meeting_id, read), self.revision(meeting_id, read),
            members={m: f for m, f in members.items() if f}, host=host, changed_at=changed_at,
            member_changed_at={m: dict(f) for m, f in member_changed_at.items()},
        )

    def revision(self, meeting_id: str, read: Read) -> int:
        """The revision of a direct read: the watcher's when it has seen the same keys (it also
        knows of deletes, which leave no mod_revision behind), else the keys' last change."""
        known = self.meetings.get(meeting_id)
        if (known is not None and known.meta_mod == read.meta_mod and known.mods == read.mods
                and known.member_mods == read.member_mods and known.host_mod == read.host_mod):
            return known.revision
        return read.last_change

    def apply(
        self, meeting_id: str, revision: int, changes: Sequence[Change]
    ) -> tuple[MeetingEvent | None, bool]:
        """One meeting's key changes of one revision: (the event, whether it needs auditing)."""
        entry = self.meetings.get(meeting_id)
        reason, actor, meta_put, meta_deleted = None, None, None, False
        flags: list[tuple[str, Change]] = []
        member_flags: list[tuple[str, str, Change]] = []
        host: Change | None = None
        for change in changes:
            sub = self._keys.split(change.key)[1]
            if sub is None and not change.deleted:
                reason = json_field(change.value, "reason")
            elif sub == "meta":
                meta_put, meta_deleted = (None, True) if change.deleted else (change, False)
            elif sub == "actor" and not change.deleted:
                actor = json_object(change.value)
            elif sub == "host":
                host = change
            elif sub is not None and sub.startswith("controls/"):
                flags.append((sub[9:], change))
            elif sub is not None and (mf := member_key(sub)) is not None:
                member_flags.append((mf[0], mf[1], change))
            # audit/* and anything else under the meeting are not flags: ignored.
        if meta_deleted:
            if self.meetings.pop(meeting_id, None) is None:
                return None, False
            return MeetingEnded(meeting_id, reason or ENDED_IN_ETCD), False
        created = False
        if meta_put is not None:
            meta = meta_from(meeting_id, meta_put.value)
            if entry is None:
                entry = self.meetings[meeting_id] = MeetingState(meta, 0, 0)
                created = True
            entry.meta, entry.meta_mod, entry.revision = meta, meta_put.mod_revision, revision
        if entry is None:
            return None, False  # keys of a meeting that does not exist
        before = dict(entry.values)
        timer = self._apply_flags(entry, revision, flags)
        changed = {f: (before[f], entry.values[f]) for f in FLAGS if before[f] != entry.values[f]}
        for flag in changed:
            entry.changed_at[flag] = revision
        member_changed = self._apply_member_flags(entry, revision, member_flags)
        host_changed = self._apply_host(entry, revision, host) if host is not None else None
        if created or not (changed or member_changed or host_changed):
            return None, False  # creation is not a change; an invalid value changes nothing
        if actor is not None:  # set_controls recorded it in the same transaction
            expires, at = actor.get("expires_at"), actor.get("at")
            return ControlsChanged(
                meeting_id, entry.controls(), changed, str(actor.get("actor", "operator")),
                float(expires) if isinstance(expires, int | float) else None,
                written_at=float(at) if isinstance(at, int | float) else None,
                member_changed=member_changed, host_changed=host_changed,
            ), False
        who = "timer" if timer else "operator"
        return ControlsChanged(meeting_id, entry.controls(), changed, who,
                               member_changed=member_changed, host_changed=host_changed), True

    def _apply_member_flags(
        self, entry: MeetingState, revision: int, flags: Iterable[tuple[str, str, Change]]
    ) -> MemberChanges:
        """Members' own flags: the same parsing rules as the room's (an invalid value is logged,
        counted and ignored; a deleted key restores the default: the room decides)."""
        out: MemberChanges = {}
        for member_id, flag, change in flags:
            key = change.key.decode("utf-8", "replace")
            if flag not in MEMBER_FLAGS:
                if not change.deleted:
                    self.unknown_keys += 1
                    log.warning("ignoring %s: no such member flag", key)
                continue
            entry.revision = revision
            old = entry.members.get(member_id, {}).get(flag)
            if change.deleted:
                entry.member_mods.pop((member_id, flag), None)
                new: bool | None = None
            else:
                entry.member_mods[(member_id, flag)] = change.mod_revision
                try:
                    new = parse_flag_value(change.value)
                except InvalidControlValue:
                    self.invalid_values += 1
                    log.warning("ignoring invalid value %r of %s, keeping %s",
                                change.value[:100], key, old)
                    continue
            if entry.set_member(member_id, flag, new, revision):
                out.setdefault(member_id, {})[flag] = (old, new)
        return out

    def _apply_host(
        self, entry: MeetingState, revision: int, change: Change
    ) -> tuple[str | None, str | None] | None:
        old = entry.host
        entry.revision = revision
        if change.deleted:
            entry.host, entry.host_mod = None, 0
        else:
            entry.host_mod = change.mod_revision
            new = host_value(change.value)
            if new is None:
                self.invalid_values += 1
                log.warning("ignoring invalid host %r of meeting %s, keeping %s",
                            change.value[:100], entry.meta.meeting_id, old)
                return None
            entry.host = new
        return (old, entry.host) if entry.host != old else None

    def _apply_flags(
        self, entry: MeetingState, revision: int, flags: Iterable[tuple[str, Change]]
    ) -> bool:
        """Apply flag key changes; True if a leased key was deleted (a timed change ran out)."""
        timer = False
        for flag, change in flags:
            key = change.key.decode("utf-8", "replace")
            if flag not in DEFAULTS:
                if not change.deleted:
                    self.unknown_keys += 1
                    log.warning("ignoring %s: no such flag", key)
                continue
            entry.revision = revision
            if change.deleted:
                entry.values[flag] = DEFAULTS[flag]
                entry.mods.pop(flag, None)
                timer = bool(entry.leases.pop(flag, 0)) or timer
                continue
            entry.mods[flag], entry.leases[flag] = change.mod_revision, change.lease
            try:
                entry.values[flag] = parse_flag_value(change.value)
            except InvalidControlValue:
                self.invalid_values += 1
                log.warning("ignoring invalid value %r of %s, keeping %s",
                            change.value[:100], key, entry.values[flag])
        return timer

    def replace(
        self, revision: int, kvs: Iterable[Any]
    ) -> tuple[list[MeetingEvent], list[AuditTask]]:
        """Start over from a snapshot of every key at ``revision``: the events that tell how it
        differs from what was known (``"snapshot"`` changes, meetings gone), and the operator
        changes among them to audit."""
        reads: dict[str, Read] = {}
        for kv in kvs:
            meeting_id, sub = self._keys.split(kv.key)
            reads.setdefault(meeting_id, Read(revision)).absorb(sub, kv)
        old, self.meetings = self.meetings, {}
        events: list[MeetingEvent] = []
        audits: list[AuditTask] = []
        for meeting_id, read in reads.items():
            if read.meta is None:
                continue
            known = old.pop(meeting_id, None)
            entry = MeetingState(meta_from(meeting_id, read.meta), read.meta_mod, 0)
            for flag, (raw, mod, lease) in read.flags.items():
                entry.mods[flag], entry.leases[flag] = mod, lease
                try:
                    entry.values[flag] = parse_flag_value(raw)
                except InvalidControlValue:
                    entry.values[flag] = known.values[flag] if known else DEFAULTS[flag]
                    if not known or known.mods.get(flag) != mod:  # not counted before
                        self.invalid_values += 1
                        log.warning("ignoring invalid value %r of flag %s of meeting %s",
                                    raw[:100], flag, meeting_id)
            member_changed = self._replace_members(entry, known, read, revision)
            if (known and known.mods == entry.mods and known.meta_mod == entry.meta_mod
                    and known.member_mods == entry.member_mods
                    and known.host_mod == entry.host_mod):
                entry.revision = known.revision
            else:  # changed while unwatched, maybe by deletes: the snapshot's revision is exact
                entry.revision = revision if known else read.last_change
            self.meetings[meeting_id] = entry
            changed = {f: (known.values[f], entry.values[f]) for f in FLAGS
                       if known and known.values[f] != entry.values[f]}
            host_changed = (known.host, entry.host) if known and known.host != entry.host else None
            if known:
                entry.changed_at = dict(known.changed_at)
            else:
                entry.changed_at = {f: mod for f, (_, mod, _) in read.flags.items()}
            for flag in changed:
                entry.changed_at[flag] = revision
            if not (changed or member_changed or host_changed):
                continue
            events.append(ControlsChanged(meeting_id, entry.controls(), changed, "snapshot",
                                          member_changed=member_changed,
                                          host_changed=host_changed))
            # A flag put at a revision without an actor key was not set_controls' (which audits
            # its own changes): an operator's, recorded at its exact revision. Changes made by
            # deleting keys leave no revision behind and are not audited here.
            by_rev: dict[int, dict[str, tuple[bool, bool]]] = {}
            for flag, pair in changed.items():
                mod = entry.mods.get(flag, 0)
                if mod and mod != read.actor_mod:
                    by_rev.setdefault(mod, {})[flag] = pair
            audits += [(meeting_id, rev, pairs) for rev, pairs in by_rev.items()]
        events += [MeetingEnded(m, ENDED_IN_ETCD) for m in old]
        return events, audits

    def _replace_members(
        self, entry: MeetingState, known: MeetingState | None, read: Read, revision: int
    ) -> MemberChanges:
        """Members' own flags and the host from a snapshot; how they differ from ``known``."""
        if known is not None:
            entry.member_changed_at = {m: dict(f) for m, f in known.member_changed_at.items()}
        for (member_id, flag), (raw, mod) in read.member_flags.items():
            entry.member_mods[(member_id, flag)] = mod
            last = known.members.get(member_id, {}).get(flag) if known else None
            try:
                value: bool | None = parse_flag_value(raw)
            except InvalidControlValue:
                value = last
                if not known or known.member_mods.get((member_id, flag)) != mod:
                    self.invalid_values += 1
                    log.warning("ignoring invalid value %r of member flag %s/%s",
                                raw[:100], member_id, flag)
            if value is not None:
                entry.members.setdefault(member_id, {})[flag] = value
            if known is None:
                entry.member_changed_at.setdefault(member_id, {})[flag] = mod
        if read.host is not None:
            entry.host_mod = read.host_mod
            entry.host = host_value(read.host) or (known.host if known else None)
        out: MemberChanges = {}
        if known is None:
            return out
        for member_id in set(known.members) | set(entry.members):
            was, now = known.members.get(member_id, {}), entry.members.get(member_id, {})
            for flag in set(was) | set(now):
                if was.get(flag) != now.get(flag):
                    out.setdefault(member_id, {})[flag] = (was.get(flag), now.get(flag))
                    entry.member_changed_at.setdefault(member_id, {})[flag] = revision
        return out
