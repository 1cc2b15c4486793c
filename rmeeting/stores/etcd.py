"""MeetingStore on etcd (cluster mode): meetings and their control flags, shared by instances.

Keys, under ``<prefix>/meetings/<meeting_id>/`` (fixed, see etcd/README.md):

==================  =========================================================================
``meta``            JSON ``{name, created_at, host_key_hash, extra}``; the meeting exists
                    while this key does. Deleting it (or the whole prefix) ends the meeting.
``controls/<flag>`` ``true``/``false``, or any spelling :func:`parse_flag_value` accepts (an
                    operator may ``etcdctl put`` it). A deleted key means the default.
``actor``           JSON ``{actor, ttl, expires_at, txn}``, put by :meth:`set_controls` in the
                    same transaction as the flags: flag changes at a revision without it are
                    an operator's (etcdctl), deletes of leased flag keys are the timer's.
``audit/<...>``     one JSON record per flag change (see :meth:`EtcdMeetingStore.audit`).
``members/<member_id>/<flag>``
                    a member's own flag (``MEMBER_FLAGS``), parsed like the room's; deleted:
                    the room's flag decides for the member again.
``host``            the member id of the host after a hand-over (plain text).
==================  =========================================================================

and ``<prefix>/meetings/<meeting_id>`` itself: the reason of an :meth:`end`, put in the same
revision as the deletion so that every instance reports it, and removed right after.

An ended meeting's tombstone is ``<prefix>/ended/<meeting_id>`` (JSON: the meta, ``ended_at``,
``reason``, ``purge_at`` and the audit trail), put by the same transaction that deletes the
meeting and attached to a lease of ``retention`` seconds, so etcd itself purges it. It lies
outside ``<prefix>/meetings/``: the watch never sees it, so it can never pass for a live meeting.
A meeting ended by deleting its prefix by hand gets a tombstone (without its audit, deleted with
it) from the first instance whose watch sees the deletion.

Revisions: ``Controls.revision`` is the etcd revision of the meeting's last change (the max
``mod_revision`` of its meta and flag keys, or, for a change made by deleting a key, the revision
of the delete as the watcher saw it). Compare-and-set is exact: it succeeds only if no meta or
flag key of the meeting changed after ``expected_revision`` (checked against etcd's history;
a compacted ``expected_revision`` counts as a conflict).
"""

from __future__ import annotations

import os

# Must precede the first protobuf import (etcd3 0.12 needs the pure-Python runtime).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]
import trio

from ..controls import DEFAULTS, FLAGS, Controls, validate_changes, validate_member_changes
from ._etcd_audit import ObservedAudits
from ._etcd_cache import (
    ENDED_IN_ETCD,
    AuditTask,
    Keys,
    MeetingCache,
    Read,
    flag_bytes,
    json_field,
    json_object,
    meta_bytes,
    meta_from,
)
from .base import (
    AuditEntry,
    ControlsChanged,
    MeetingEnded,
    MeetingEvent,
    MeetingMeta,
    MeetingNotFound,
    RevisionConflict,
    StoreUnavailable,
    Tombstone,
)
from .etcd_client import (
    Change,
    Connection,
    WatchCompacted,
    WatchEvents,
    WatchItem,
    WatchProgress,
    WatchSession,
    WatchStarted,
    compare,
    delete_op,
    prefix_end,
    put_op,
    range_op,
)

__all__ = ["EtcdMeetingStore", "open_etcd_meeting_store"]

log = logging.getLogger("rmeeting.stores.etcd")

Handler = Callable[[MeetingEvent], Awaitable[None]]

#: Watch responses waiting for the event loop. When full, the watch thread waits (and grpc flow
#: control makes etcd wait): nothing is dropped, a slow handler slows only this instance's watch.
WATCH_BUFFER = 64
#: The watch is re-opened after a failure with this backoff (seconds), doubling.
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
#: With several endpoints, a watch that has not started by then moves to the next endpoint.
WATCH_START_TIMEOUT = 5.0
#: Optimistic transactions that lose a race are retried this often, then StoreUnavailable.
TXN_ATTEMPTS = 20


class EtcdMeetingStore:
    """:class:`~rmeeting.stores.base.MeetingStore` on etcd.

    ``EtcdMeetingStore(endpoints, prefix="/rmeeting", timeout=2.0, audit_limit=1000)``:
    ``endpoints`` like ``["http://127.0.0.1:2379"]`` (the first reachable one is used, the next
    on failure); ``audit_limit`` records are kept per meeting (past it the oldest are dropped);
    ``timeout`` bounds every KV call, retries included, after which it raises
    :class:`StoreUnavailable`. Close it with :meth:`aclose`, or use
    :func:`open_etcd_meeting_store`. One :meth:`serve_events` at a time per store.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/rmeeting",
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        audit_limit: int = 1000,
        retention: float = 0.0,
    ) -> None:
        #: seconds the tombstone of a meeting ended by hand (its prefix deleted) is kept
        self.retention = retention
        self._conn = Connection(endpoints, timeout)
        self._audit_limit = audit_limit
        self._keys = Keys(prefix)
        self._clock = clock
        self._cache = MeetingCache(self._keys)
        self._serving = False
        self._watch_ok = False
        #: the records of changes every instance observed (``_etcd_audit``): its
        #: ``writes_now`` is set by the cluster's liveness, so that one instance writes each
        self.observed_audits = ObservedAudits(self._conn, self._keys)
        self._watch_rev = 0  # every change up to this revision has been handled
        self._backoff = BACKOFF_MIN
        self._waiting: trio.CancelScope | None = None
        self._closed = False
        self._reconnects = 0

    @property
    def invalid_values(self) -> int:
        """Hand-written flag values rejected by this instance's watcher (logged, not applied)."""
        return self._cache.invalid_values

    @property
    def unknown_keys(self) -> int:
        """Keys of flags that do not exist, seen by this instance's watcher (logged, ignored)."""
        return self._cache.unknown_keys

    @property
    def watch_up(self) -> bool:
        """True while the watch is established."""
        return self._watch_ok

    @property
    def watch_revision(self) -> int:
        """Every change up to this etcd revision has been handled."""
        return self._watch_rev

    @property
    def watch_reconnects(self) -> int:
        """Times the watch was re-opened after a failure or a compaction."""
        return self._reconnects

    async def aclose(self) -> None:
        """Close the connections; a running :meth:`serve_events` returns."""
        self._closed = True
        if self._waiting is not None:
            self._waiting.cancel()
        self._conn.close()

    # --- reads ----------------------------------------------------------------------------------

    async def _read(self, meeting_id: str, revision: int = 0) -> Read:
        # One range covers controls/* and meta, which sort next to each other.
        response = await self._conn.kv("Range", rpc.RangeRequest(
            key=self._keys.home(meeting_id, "controls/"),
            range_end=self._keys.home(meeting_id, "meta\0"), revision=revision,
        ))
        read = Read(response.header.revision)
        for kv in response.kvs:
            read.absorb(self._keys.split(kv.key)[1], kv)
        return read

    async def get(self, meeting_id: str) -> MeetingMeta | None:
        try:
            key = self._keys.meta(meeting_id)
        except MeetingNotFound:
            return None
        response = await self._conn.kv("Range", rpc.RangeRequest(key=key))
        return meta_from(meeting_id, response.kvs[0].value) if response.kvs else None

    async def list(self) -> Sequence[MeetingMeta]:
        root = self._keys.root
        response = await self._conn.kv("Range", rpc.RangeRequest(
            key=root, range_end=prefix_end(root)
        ))
        out = []
        for kv in response.kvs:
            meeting_id, sub = self._keys.split(kv.key)
            if sub == "meta":
                out.append(meta_from(meeting_id, kv.value))
        return out

    async def count(self) -> int:
        """From the watcher's cache; a store that is not watching (a tool) reads every key."""
        if self._serving:
            return len(self._cache.meetings)
        return len(await self.list())

    async def controls(self, meeting_id: str) -> Controls:
        read = await self._read(meeting_id)
        if read.meta is None:
            raise MeetingNotFound(meeting_id)
        return self._cache.controls_of_read(meeting_id, read)

    async def record_and_controls(self, meeting_id: str) -> tuple[MeetingMeta, Controls] | None:
        # the range of controls() covers the meta key too: one round trip for both
        try:
            read = await self._read(meeting_id)
        except MeetingNotFound:  # an id that cannot be a key
            return None
        if read.meta is None:
            return None
        return meta_from(meeting_id, read.meta), self._cache.controls_of_read(meeting_id, read)

    async def audit(self, meeting_id: str) -> Sequence[AuditEntry]:
        """Every change, oldest first: API changes recorded in their own transaction, the
        operator's and the timer's by the first instance whose watcher saw them."""
        trail = self._keys.audit(meeting_id)
        response = await self._conn.txn([], [
            range_op(self._keys.meta(meeting_id)), range_op(trail, prefix_end(trail)),
        ])
        if not response.responses[0].response_range.kvs:
            raise MeetingNotFound(meeting_id)
        return _audit_entries(meeting_id, response.responses[1].response_range.kvs)

    async def tombstone(self, meeting_id: str) -> Tombstone | None:
        try:
            key = self._keys.tombstone(meeting_id)
        except MeetingNotFound:
            return None
        response = await self._conn.kv("Range", rpc.RangeRequest(key=key))
        if not response.kvs:
            return None
        found = _tombstone_from(meeting_id, response.kvs[0].value)
        # the lease may run out a moment late: the deadline is the tombstone's own
        return found if found is not None and found.purge_at > self._clock() else None

    async def purge_due(self) -> Sequence[str]:
        # etcd deletes each tombstone with its lease, and the Redis keys expire by themselves
        # (MemberStore.retire): nothing is left for a sweep to do, even with no instance running
        return []

    async def snapshot(self) -> Sequence[MeetingMeta]:
        if self._serving and self._watch_ok:
            return [state.meta for state in self._cache.meetings.values()]
        return await self.list()

    async def put_ticket(self, ticket_hash: str, payload: Mapping[str, Any], ttl: float) -> None:
        lease = await self._conn.lease_grant(max(1, math.ceil(ttl)))
        body = json.dumps({**payload, "until": self._clock() + ttl}).encode()
        await self._conn.kv("Put", rpc.PutRequest(key=self._keys.tickets + ticket_hash.encode(),
                                                  value=body, lease=lease))

    async def take_ticket(self, ticket_hash: str) -> Mapping[str, Any] | None:
        key = self._keys.tickets + ticket_hash.encode()
        # read and delete in one transaction that only runs while the key exists: one taker
        response = await self._conn.txn([compare(key, "version", ">", 0)],
                                        [range_op(key), delete_op(key)])
        if not response.succeeded:
            return None
        kvs = response.responses[0].response_range.kvs
        payload = json_object(kvs[0].value) if kvs else {}
        until = payload.pop("until", 0)
        return payload if isinstance(until, int | float) and until > self._clock() else None

    async def update_meta(self, meeting_id: str, extra: Mapping[str, Any]) -> MeetingMeta:
        key = self._keys.meta(meeting_id)
        for _ in range(TXN_ATTEMPTS):
            response = await self._conn.kv("Range", rpc.RangeRequest(key=key))
            if not response.kvs:
                raise MeetingNotFound(meeting_id)
            kv = response.kvs[0]
            old = meta_from(meeting_id, kv.value)
            meta = replace(old, extra={**old.extra, **extra})
            done = await self._conn.txn([compare(key, "mod", "==", kv.mod_revision)],
                                        [put_op(key, meta_bytes(meta, uuid.uuid4().hex))])
            if done.succeeded:
                return meta
        raise StoreUnavailable(f"meta of meeting {meeting_id} keeps changing")

    async def ready(self) -> bool:
        """False while the watch is down (when serving) or etcd does not answer within 1 s."""
        if self._serving and not self._watch_ok:
            return False
        root = self._keys.root
        try:
            await self._conn.kv("Range", rpc.RangeRequest(
                key=root, range_end=prefix_end(root), limit=1, keys_only=True,
            ), timeout=min(1.0, self._conn.timeout))
        except (StoreUnavailable, grpc.RpcError):
            return False
        return True

    # --- writes ---------------------------------------------------------------------------------
    # Each is one transaction. A call retried after a lost reply recognises its own landed
    # write (the same meta, or its ``txn`` token in the actor key / end marker).

    async def create(self, meta: MeetingMeta, controls: Mapping[str, bool]) -> Controls:
        if not meta.meeting_id or "/" in meta.meeting_id:
            raise ValueError(f"invalid meeting id {meta.meeting_id!r}")
        values = validate_changes(controls) if controls else {}
        home, meta_key = self._keys.home(meta.meeting_id), self._keys.meta(meta.meeting_id)
        raw = meta_bytes(meta, uuid.uuid4().hex)
        puts = [put_op(meta_key, raw)] + [
            put_op(self._keys.flag(meta.meeting_id, f), flag_bytes(v)) for f, v in values.items()
        ]
        for _ in range(TXN_ATTEMPTS):
            # Only into an empty prefix, so leftover keys never leak into a new meeting.
            response = await self._conn.txn(
                [compare(home, "version", "==", 0, range_end=prefix_end(home))],
                puts, [range_op(meta_key)],
            )
            if response.succeeded:
                return Controls.from_partial(values, response.header.revision)
            found = response.responses[0].response_range.kvs
            if found:
                if found[0].value == raw:  # an earlier attempt of ours landed
                    return Controls.from_partial(values, found[0].mod_revision)
                raise ValueError(f"meeting {meta.meeting_id} exists")
            # Keys without a meta (an operator's, a half-done end): clear them, then retry.
            await self._conn.txn(
                [compare(meta_key, "version", "==", 0)], [delete_op(home, prefix_end(home))]
            )
        raise StoreUnavailable(f"could not create meeting {meta.meeting_id}: prefix keeps changing")

    async def end(self, meeting_id: str, *, reason: str, retention: float = 0.0) -> bool:
        """One compare-and-delete: of several instances (or timers) ending the same meeting,
        exactly one transaction succeeds, and only its caller gets True. The tombstone is put in
        that same transaction, from a read of the meeting that nothing changed since."""
        try:
            home = self._keys.home(meeting_id)
        except MeetingNotFound:
            return False
        # The reason rides along in the same revision, so every watcher reports it.
        marker, token = self._keys.end_marker(meeting_id), uuid.uuid4().hex
        grave = self._keys.tombstone(meeting_id)
        lease = await self._conn.lease_grant(max(1, math.ceil(retention))) if retention else 0
        ended = False
        for _ in range(TXN_ATTEMPTS):
            read = await self._conn.kv("Range", rpc.RangeRequest(key=home,
                                                                 range_end=prefix_end(home)))
            meta_kv = [kv for kv in read.kvs if kv.key == self._keys.meta(meeting_id)]
            ops = [delete_op(home, prefix_end(home)),
                   put_op(marker, json.dumps({"reason": reason, "txn": token}).encode())]
            if meta_kv and retention:
                audit_root = self._keys.audit(meeting_id)
                audit = _audit_entries(meeting_id, [kv for kv in read.kvs
                                                    if kv.key.startswith(audit_root)])
                now = self._clock()
                ops.append(put_op(grave, _tombstone_bytes(Tombstone(
                    meta_from(meeting_id, meta_kv[0].value), now, reason, now + retention, audit,
                ), token), lease))
            response = await self._conn.txn(
                # it exists, and none of its keys changed since the read (so the audit is whole)
                [compare(self._keys.meta(meeting_id), "version", ">", 0),
                 compare(home, "mod", "<", read.header.revision + 1, range_end=prefix_end(home))],
                ops, [range_op(marker), range_op(grave)],
            )
            ended = bool(response.succeeded) or _txn_of(response) == token or (
                len(response.responses) > 1 and _txn_of(response, 1) == token)
            if ended or not meta_kv:  # ours, or gone (another caller's end won)
                break
        else:
            raise StoreUnavailable(f"could not end meeting {meeting_id}: it keeps changing")
        if lease and not ended:
            await self._revoke_quietly(lease)
        if ended:
            try:  # the marker has done its job once the deletion's revision is in the log
                await self._conn.kv("DeleteRange", rpc.DeleteRangeRequest(key=marker))
            except StoreUnavailable:
                log.warning("meeting %s: could not remove the end marker", meeting_id)
        return ended

    async def _revoke_quietly(self, lease: int) -> None:
        try:
            await self._conn.lease_revoke(lease)
        except (StoreUnavailable, grpc.RpcError):
            pass  # it holds no key and runs out by itself

    async def _tombstone_observed(self, meta: MeetingMeta, reason: str) -> None:
        """A meeting ended by hand (its prefix deleted): the first watcher to see it leaves
        the tombstone (created only if absent, so there is one); best effort like the audit."""
        if self.retention <= 0:
            return
        grave, now = self._keys.tombstone(meta.meeting_id), self._clock()
        try:
            lease = await self._conn.lease_grant(max(1, math.ceil(self.retention)))
            done = await self._conn.txn([compare(grave, "version", "==", 0)], [put_op(
                grave, _tombstone_bytes(Tombstone(meta, now, reason, now + self.retention),
                                        uuid.uuid4().hex), lease)])
            if not done.succeeded:
                await self._revoke_quietly(lease)
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: tombstone not written: %s", meta.meeting_id, exc)

    async def set_controls(
        self,
        meeting_id: str,
        changes: Mapping[str, bool],
        *,
        actor: str,
        expected_revision: int | None = None,
        ttl: float | None = None,
    ) -> Controls:
        changes = validate_changes(changes)
        keys, token = self._keys, uuid.uuid4().hex
        # A timed change rides on a lease: when it runs out etcd deletes the flag keys (the
        # defaults return) even if no instance is alive. A later put without the lease detaches
        # the key. A lease left unused by a failed attempt holds no key and simply expires.
        lease = await self._conn.lease_grant(max(1, math.ceil(ttl))) if ttl is not None else 0
        for _ in range(TXN_ATTEMPTS):
            read = await self._read(meeting_id)
            if read.meta is None:
                raise MeetingNotFound(meeting_id)
            if expected_revision is not None and not await self._unchanged_since(
                meeting_id, expected_revision, read
            ):
                raise RevisionConflict(expected_revision, self._cache.revision(meeting_id, read))
            if (ttl is None and expected_revision is None
                    and all(_holds(read, f, v) for f, v in changes.items())):
                # nothing changes: a write would make a revision that no event reports (the
                # watcher sees no change) and the ack's would differ from the last one told.
                # A compare-and-set still writes: of concurrent ones exactly one wins
                return self._cache.controls_of_read(meeting_id, read)
            old = self._cache.values(meeting_id, read)
            new = {**old, **changes}
            now = self._clock()
            ops = [put_op(keys.flag(meeting_id, f), flag_bytes(v), lease)
                   for f, v in changes.items()]
            ops.append(self._actor_op(meeting_id, actor, token, now, ttl=ttl))
            ops += [self._audit_op(meeting_id, f"{token}-{f}", {
                "flag": f, "old": old[f], "new": new[f], "actor": actor, "at": now,
            }) for f in FLAGS if old[f] != new[f]]
            # Nothing of the meeting changed since the read, so the old values above are true.
            compares = [compare(keys.meta(meeting_id), "mod", "==", read.meta_mod)] + [
                compare(keys.flag(meeting_id, f), "mod", "==", read.mods.get(f, 0))
                for f in FLAGS
            ]
            revision = await self._commit_audited(meeting_id, compares, ops, token)
            if revision is not None:
                return replace(self._cache.controls_of_read(meeting_id, read), values=new,
                               revision=revision)
        raise StoreUnavailable(f"controls of meeting {meeting_id} keep changing")

    async def set_member_controls(
        self, meeting_id: str, member_id: str, changes: Mapping[str, bool | None], *, actor: str
    ) -> Controls:
        valid = validate_member_changes(changes)
        keys, token = self._keys, uuid.uuid4().hex
        flag_keys = {f: keys.member_flag(meeting_id, member_id, f) for f in valid}
        for _ in range(TXN_ATTEMPTS):
            read = await self._read(meeting_id)
            if read.meta is None:
                raise MeetingNotFound(meeting_id)
            before = self._cache.controls_of_read(meeting_id, read)
            own = dict(before.members.get(member_id, {}))
            for flag, value in valid.items():
                if value is None:
                    own.pop(flag, None)
                else:
                    own[flag] = value
            after = replace(before, members={**before.members, member_id: own})
            now = self._clock()
            ops = [delete_op(flag_keys[f]) if v is None else put_op(flag_keys[f], flag_bytes(v))
                   for f, v in valid.items()]
            ops.append(self._actor_op(meeting_id, actor, token, now))
            ops += [self._audit_op(meeting_id, f"{token}-{member_id}-{f}", {
                "flag": f, "old": _may(before, member_id, f), "new": _may(after, member_id, f),
                "actor": actor, "at": now, "member": member_id,
            }) for f in valid if before.members.get(member_id, {}).get(f) != own.get(f)]
            compares = [compare(keys.meta(meeting_id), "mod", "==", read.meta_mod)] + [
                compare(flag_keys[f], "mod", "==", read.member_mods.get((member_id, f), 0))
                for f in valid
            ]
            revision = await self._commit_audited(meeting_id, compares, ops, token)
            if revision is not None:
                return replace(after, revision=revision)
        raise StoreUnavailable(f"flags of member {member_id} keep changing")

    async def set_host(self, meeting_id: str, member_id: str, *, actor: str) -> Controls:
        keys, token = self._keys, uuid.uuid4().hex
        cohost = keys.member_flag(meeting_id, member_id, "cohost")  # checks the member id
        for _ in range(TXN_ATTEMPTS):
            read = await self._read(meeting_id)
            if read.meta is None:
                raise MeetingNotFound(meeting_id)
            before = self._cache.controls_of_read(meeting_id, read)
            own = {f: v for f, v in before.members.get(member_id, {}).items() if f != "cohost"}
            now = self._clock()
            ops = [put_op(keys.host(meeting_id), member_id.encode()), delete_op(cohost),
                   self._actor_op(meeting_id, actor, token, now),
                   self._audit_op(meeting_id, f"{token}-host", {
                       "flag": "host", "old": False, "new": True, "actor": actor, "at": now,
                       "member": member_id})]
            trail = keys.audit(meeting_id)
            ops.append(range_op(trail, prefix_end(trail), count_only=True))
            response = await self._conn.txn(
                [compare(keys.meta(meeting_id), "mod", "==", read.meta_mod),
                 compare(keys.host(meeting_id), "mod", "==", read.host_mod)],
                ops, [range_op(keys.actor(meeting_id))])
            after = replace(before, host=member_id, members={**before.members, member_id: own})
            if response.succeeded:
                await self._trim_audit(meeting_id, response.responses[-1].response_range.count)
                return replace(after, revision=response.header.revision)
            if _txn_of(response) == token:
                return replace(after,
                               revision=response.responses[0].response_range.kvs[0].mod_revision)
        raise StoreUnavailable(f"the host of meeting {meeting_id} keeps changing")

    async def record_audit(
        self, meeting_id: str, flag: str, old: bool, new: bool, *, actor: str, member: str
    ) -> None:
        trail = self._keys.audit(meeting_id)
        response = await self._conn.txn(
            [compare(self._keys.meta(meeting_id), "version", ">", 0)],
            [self._audit_op(meeting_id, f"{uuid.uuid4().hex}-{flag}", {
                "flag": flag, "old": old, "new": new, "actor": actor, "at": self._clock(),
                "member": member}),
             range_op(trail, prefix_end(trail), count_only=True)],
        )
        if not response.succeeded:
            raise MeetingNotFound(meeting_id)
        await self._trim_audit(meeting_id, response.responses[-1].response_range.count)

    def _actor_op(self, meeting_id: str, actor: str, token: str, now: float, *,
                  ttl: float | None = None) -> Any:
        """The actor key, in the same transaction as the change: the watchers name the actor.
        "at" lets every instance time the change from its write to its fan-out."""
        return put_op(self._keys.actor(meeting_id), json.dumps({
            "actor": actor, "ttl": ttl, "expires_at": now + ttl if ttl is not None else None,
            "txn": token, "at": now,
        }).encode())

    async def _commit_audited(
        self, meeting_id: str, compares: Sequence[Any], ops: Sequence[Any], token: str
    ) -> int | None:
        """Run a change's transaction (its ops include the actor key and audit records) and
        keep the audit trail bounded. The revision of the change, or None if a compare failed
        (the caller reads again and retries); a retried call whose first attempt landed gets
        that attempt's revision."""
        trail = self._keys.audit(meeting_id)
        ops = [*ops, range_op(trail, prefix_end(trail), count_only=True)]
        response = await self._conn.txn(compares, ops,
                                        [range_op(self._keys.actor(meeting_id))])
        if response.succeeded:
            await self._trim_audit(meeting_id, response.responses[-1].response_range.count)
            return int(response.header.revision)
        if _txn_of(response) == token:
            return int(response.responses[0].response_range.kvs[0].mod_revision)
        return None

    def _audit_op(self, meeting_id: str, name: str, record: dict[str, Any]) -> Any:
        return put_op(self._keys.audit(meeting_id, name), json.dumps(record).encode())

    async def _unchanged_since(self, meeting_id: str, revision: int, now: Read) -> bool:
        """Exact compare-and-set: no meta or flag key changed (nor was deleted) after it."""
        if revision <= 0 or now.last_change > revision:
            return False
        try:
            then = await self._read(meeting_id, revision)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # compacted, or from the future
                return False
            raise
        return then.meta_mod == now.meta_mod and then.mods == now.mods

    async def _trim_audit(self, meeting_id: str, count: int) -> None:
        """Keep the newest ``audit_limit`` records of the meeting: past it, drop the oldest (by
        the revision that created them). Best effort: a failed trim is retried by the next."""
        if count <= self._audit_limit:
            return
        trail = self._keys.audit(meeting_id)
        try:
            response = await self._conn.kv("Range", rpc.RangeRequest(
                key=trail, range_end=prefix_end(trail), keys_only=True,
            ))
            excess = len(response.kvs) - self._audit_limit
            oldest = sorted(response.kvs, key=lambda kv: (kv.create_revision, kv.key))[:excess]
            if oldest:
                await self._conn.txn([], [delete_op(kv.key) for kv in oldest])
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: audit trail not trimmed: %s", meeting_id, exc)

    async def _audit_observed(self, task: AuditTask, actor: str) -> None:
        """Record a change nobody recorded when making it (etcdctl, a lease running out).

        Every instance sees it; the key is the revision and the flag, created only if absent,
        so exactly one record is kept. Best effort: if etcd is unreachable, another instance
        may still write it.
        """
        meeting_id, revision, changed = task
        keys = {f: self._keys.audit(meeting_id, f"{revision:020d}-{f}") for f in changed}
        now = self._clock()
        trail = self._keys.audit(meeting_id)
        try:
            response = await self._conn.txn(
                [compare(self._keys.meta(meeting_id), "version", ">", 0)]
                + [compare(k, "version", "==", 0) for k in keys.values()],
                [put_op(k, json.dumps({
                    "flag": f, "old": changed[f][0], "new": changed[f][1],
                    "revision": revision, "actor": actor, "at": now,
                }).encode()) for f, k in keys.items()]
                + [range_op(trail, prefix_end(trail), count_only=True)],
            )
            if response.succeeded:
                await self._trim_audit(meeting_id, response.responses[-1].response_range.count)
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: audit of revision %d not written: %s",
                        meeting_id, revision, exc)

    async def _audit_members_observed(self, event: ControlsChanged, revision: int) -> None:
        """An operator's change of members' own flags (etcdctl), recorded once like a room
        flag's: the key names the revision, the member and the flag."""
        puts, keys = [], []
        for member_id, flags in event.member_changed.items():
            for flag, (old, new) in flags.items():
                key = self._keys.audit(meeting_id := event.meeting_id,
                                       f"{revision:020d}-{member_id}-{flag}")
                keys.append(key)
                puts.append(put_op(key, json.dumps({
                    "flag": flag, "revision": revision, "actor": event.actor,
                    "at": self._clock(), "member": member_id,
                    "old": _may_value(event.controls, old, flag),
                    "new": _may_value(event.controls, new, flag),
                }).encode()))
        if not puts:
            return
        try:
            await self._conn.txn(
                [compare(self._keys.meta(meeting_id), "version", ">", 0)]
                + [compare(k, "version", "==", 0) for k in keys], puts)
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: audit of revision %d not written: %s",
                        meeting_id, revision, exc)

    # --- events ---------------------------------------------------------------------------------

    async def serve_events(
        self, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load every meeting, open the watch, report started, then hand each change to
        ``handler`` in revision order until cancelled.

        The one watch covers ``<prefix>/meetings/``. If it breaks (etcd down, restarted,
        leaderless) the store is not ready until it is back; it is re-opened with backoff
        (0.1 s to 2 s) from the last handled revision + 1, so nothing is missed or repeated.
        If that revision was compacted meanwhile, a fresh snapshot is compared with what this
        instance knew: ``ControlsChanged`` (actor ``"snapshot"``) for meetings whose flags
        differ, ``MeetingEnded`` for those that are gone. Waiting for etcd at startup is part
        of the start: put a deadline around ``nursery.start`` if startup must not wait.
        """
        if self._serving:
            raise RuntimeError("serve_events is already running on this store")
        self._serving, self._watch_ok = True, False
        unstarted: trio.TaskStatus[None] | None = task_status
        try:
            async with trio.open_nursery() as nursery:
                # the records of observed changes are written after their fan-out, in their own
                # tasks, so that an operator's flip reaches the members first
                await nursery.start(self.observed_audits.serve)
                try:
                    await self._follow_until_closed(handler, unstarted)
                finally:
                    self.observed_audits.close()  # what is queued is still written
        finally:
            self._serving = self._watch_ok = False

    async def _follow_until_closed(
        self, handler: Handler, unstarted: trio.TaskStatus[None] | None
    ) -> None:
        """The watch, re-opened after each failure or compaction, until the store closes."""
        await self._resync(None)
        while not self._closed:
            outcome = await self._follow(handler, unstarted)
            unstarted = None if self._watch_ok else unstarted
            if outcome in ("compacted", "failed") and not self._closed:
                self._reconnects += 1
            if outcome == "compacted":
                await self._resync(handler)
            elif outcome == "failed" and not self._closed:
                self._watch_ok = False
                self._conn.fail_over()
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def _follow(self, handler: Handler, task_status: trio.TaskStatus[None] | None) -> str:
        """One watch session from the last revision + 1, until it fails or compacts;
        ``task_status`` is told once the watch is established."""
        send, receive = trio.open_memory_channel[WatchItem](WATCH_BUFFER)
        token = trio.lowlevel.current_trio_token()

        def deliver(item: WatchItem) -> None:  # in the watch thread; blocks while full
            trio.from_thread.run(send.send, item, trio_token=token)

        session = WatchSession(self._conn.channel, self._keys.root, self._watch_rev + 1, deliver)
        started = False
        with receive:  # closing it releases a watch thread blocked in deliver()
            session.start()
            try:
                while True:
                    deadline = math.inf
                    if not started and len(self._conn.endpoints) > 1:
                        deadline = trio.current_time() + WATCH_START_TIMEOUT
                    # Only the wait is cancellable (by failover or close), never a running handler.
                    with trio.CancelScope(deadline=deadline) as scope:
                        self._waiting = scope
                        item = await receive.receive()
                    self._waiting = None
                    if scope.cancelled_caught:
                        return "failed"
                    if isinstance(item, WatchStarted):
                        started, self._watch_ok, self._backoff = True, True, BACKOFF_MIN
                        if task_status is not None:
                            task_status.started()
                            task_status = None
                    elif isinstance(item, WatchEvents):
                        await self._handle(item, handler)
                    elif isinstance(item, WatchProgress):
                        self._watch_rev = max(self._watch_rev, item.revision)
                    elif isinstance(item, WatchCompacted):
                        log.warning("etcd watch compacted at %d: resyncing", item.compact_revision)
                        return "compacted"
                    else:
                        log.warning("etcd watch broke (%s): re-watching", item.reason)
                        return "failed"
            finally:
                self._waiting = None
                session.stop()

    async def _handle(self, batch: WatchEvents, handler: Handler) -> None:
        # Group by revision, then by meeting: one transaction is one change of one meeting.
        received = self._clock()
        groups: dict[int, dict[str, list[Change]]] = {}
        for revision, change in batch.changes:
            meeting_id, _ = self._keys.split(change.key)
            groups.setdefault(revision, {}).setdefault(meeting_id, []).append(change)
        for revision, meetings in groups.items():
            for meeting_id, changes in meetings.items():
                known = self._cache.meetings.get(meeting_id)
                event, audit = self._cache.apply(meeting_id, revision, changes)
                if isinstance(event, MeetingEnded) and event.reason == ENDED_IN_ETCD and known:
                    await self._tombstone_observed(known.meta, event.reason)
                if isinstance(event, ControlsChanged):
                    event = replace(event, received_at=received)
                if event is not None:
                    await handler(event)  # the members first, then the record
                if audit and isinstance(event, ControlsChanged):
                    records = len(event.changed) + sum(
                        len(flags) for flags in event.member_changed.values())
                    await self.observed_audits.record(meeting_id, revision, records, [
                        partial(self._audit_observed, (meeting_id, revision,
                                                       dict(event.changed)), event.actor),
                        partial(self._audit_members_observed, event, revision),
                    ])
            self._watch_rev = revision

    async def _resync(self, handler: Handler | None) -> None:
        """Rebuild the cache from a snapshot; with a handler, report how it differs."""
        root = self._keys.root
        while True:
            try:
                response = await self._conn.kv("Range", rpc.RangeRequest(
                    key=root, range_end=prefix_end(root)
                ))
                break
            except StoreUnavailable:
                self._watch_ok = False
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        known = {m: state.meta for m, state in self._cache.meetings.items()}
        events, audits = self._cache.replace(response.header.revision, response.kvs)
        self._watch_rev = response.header.revision
        if handler is None:
            return
        received = self._clock()
        for event in events:
            if isinstance(event, ControlsChanged):
                event = replace(event, received_at=received)
            elif event.meeting_id in known:  # deleted while unwatched: by hand, or by an end
                await self._tombstone_observed(known[event.meeting_id], event.reason)
            await handler(event)
        for task in audits:
            meeting_id, revision, changed = task
            await self.observed_audits.record(meeting_id, revision, len(changed), [
                partial(self._audit_observed, task, "operator")])


def _may(controls: Controls, member_id: str, flag: str) -> bool:
    """What the audit records of a member flag: may it (``cohost``: is it one)?"""
    return controls.is_cohost(member_id) if flag == "cohost" else controls.may(member_id, flag)


def _may_value(controls: Controls, own: bool | None, flag: str) -> bool:
    """A member flag's value as the audit records it: its own, else the room's."""
    if own is not None:
        return own
    return False if flag == "cohost" else controls.values.get(flag, True)


def _holds(read: Read, flag: str, value: bool) -> bool:
    """Whether ``flag`` already holds ``value`` for good in ``read``: its key says exactly that,
    with no lease (a timed value is taken off its timer by a plain change), or it has no key
    and the default is that value. An unreadable key does not hold: the write repairs it."""
    stored = read.flags.get(flag)
    if stored is None:
        return DEFAULTS[flag] == value
    raw, _, lease = stored
    return lease == 0 and raw == flag_bytes(value)


def _txn_of(response: Any, index: int = 0) -> str | None:
    """The ``txn`` token in the key read by a failed transaction's failure branch."""
    kvs = response.responses[index].response_range.kvs if len(response.responses) > index else []
    return json_field(kvs[0].value, "txn") if kvs else None


def _audit_entries(meeting_id: str, kvs: Sequence[Any]) -> list[AuditEntry]:
    entries = []
    for kv in kvs:
        try:
            data = json.loads(kv.value)
            member = data.get("member")
            entries.append(AuditEntry(
                meeting_id, str(data["flag"]), bool(data["old"]), bool(data["new"]),
                int(data.get("revision") or kv.create_revision), str(data["actor"]),
                float(data["at"]), member if isinstance(member, str) else None,
            ))
        except (ValueError, TypeError, KeyError):
            log.warning("meeting %s: unreadable audit record %r", meeting_id, kv.key)
    entries.sort(key=lambda e: (e.revision, e.flag))
    return entries


def _tombstone_bytes(grave: Tombstone, token: str) -> bytes:
    meta = grave.meta
    return json.dumps({
        "name": meta.name, "created_at": meta.created_at, "host_key_hash": meta.host_key_hash,
        "extra": dict(meta.extra), "ended_at": grave.ended_at, "reason": grave.reason,
        "purge_at": grave.purge_at, "txn": token,
        "audit": [{"flag": e.flag, "old": e.old, "new": e.new, "revision": e.revision,
                   "actor": e.actor, "at": e.at} for e in grave.audit],
    }).encode()


def _tombstone_from(meeting_id: str, raw: bytes) -> Tombstone | None:
    try:
        data = json.loads(raw)
        meta = MeetingMeta(meeting_id, str(data["name"]), float(data["created_at"]),
                           str(data["host_key_hash"]), dict(data.get("extra") or {}))
        audit = [AuditEntry(meeting_id, str(e["flag"]), bool(e["old"]), bool(e["new"]),
                            int(e["revision"]), str(e["actor"]), float(e["at"]))
                 for e in data.get("audit") or ()]
        return Tombstone(meta, float(data["ended_at"]), str(data["reason"]),
                         float(data["purge_at"]), audit)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("meeting %s: unreadable tombstone (%s)", meeting_id, exc)
        return None


@asynccontextmanager
async def open_etcd_meeting_store(
    endpoints: Sequence[str], *, prefix: str = "/rmeeting", timeout: float = 2.0,
    audit_limit: int = 1000, retention: float = 0.0,
) -> AsyncIterator[EtcdMeetingStore]:
    """An :class:`EtcdMeetingStore`, closed on exit."""
    store = EtcdMeetingStore(endpoints, prefix=prefix, timeout=timeout, audit_limit=audit_limit,
                             retention=retention)
    try:
        yield store
    finally:
        await store.aclose()
