"""``RedisMemberStore``: roster, attendance ledger and bans (keys in ``rmeeting.stores.redis``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from ._redis_common import SOCKET_TIMEOUT, Keys, call, connect, dumps, ping
from .base import AttendanceRecord, Knock, MeetingFull, MemberRecord, StoreUnavailable
from .memory import updated_fields

__all__ = ["RedisMemberStore"]

#: Attempts of update's read / compare-and-set loop before it gives up.
UPDATE_ATTEMPTS = 50

# KEYS of every member script: roster, open, ledger. ``open`` maps a present member to
# "<ledger index> <join token>"; the token names this presence's entry in the instance index.
#
# close() ends a member's open session by appending to the ledger entry's JSON object, so Lua
# never decodes and re-encodes numbers (cjson would round joined_at to 14 digits). It returns
# the member's ``open`` value (false if none).
_CLOSE = """
local function close(member, record, now, reason)
  local open = redis.call('HGET', KEYS[2], member)
  if open then
    local idx = string.match(open, '^%d+')
    local entry = redis.call('LINDEX', KEYS[3], idx)
    if entry then
      redis.call('LSET', KEYS[3], idx, string.sub(entry, 1, -2) .. ',"left_at":' .. now ..
        ',"reason":' .. reason .. ',"last":' .. record .. '}')
    end
    redis.call('HDEL', KEYS[2], member)
  end
  return open
end
"""

# ARGV: member, record, ledger entry, max_members, now, reason "replaced" (JSON), token, role.
# Returns {0} when full, else {1, replaced record or false, its open value or false}.
# max_members counts members, not hosts (the host always has a seat); the roster is scanned
# only when it holds at least max_members records, hosts included, i.e. when it may be full.
_JOIN = _CLOSE + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_open = false
if old then
  old_open = close(ARGV[1], old, ARGV[5], ARGV[6])
elseif ARGV[8] ~= 'host' and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  local members = 0
  for _, r in ipairs(redis.call('HVALS', KEYS[1])) do
    if not string.find(r, '"role":"host"', 1, true) then members = members + 1 end
  end
  if members >= tonumber(ARGV[4]) then return {0} end
end
local n = redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], (n - 1) .. ' ' .. ARGV[7])
return {1, old, old_open}
"""

# ARGV: member, now, reason (JSON), instance id or '', joined_at or ''. HGET and HDEL in one
# script: one caller gets the record. Returns false, or {record, open value or false}.
# joined_at compares as numbers: both sides are Python's shortest repr, parsed by strtod.
_LEAVE = _CLOSE + """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
if ARGV[4] ~= '' and cjson.decode(record)['instance_id'] ~= ARGV[4] then return false end
if ARGV[5] ~= '' and cjson.decode(record)['joined_at'] ~= tonumber(ARGV[5]) then
  return false
end
redis.call('HDEL', KEYS[1], ARGV[1])
return {record, close(ARGV[1], record, ARGV[2], ARGV[3])}
"""

# ARGV: now, reason (JSON). Returns record, open value (or ''), record, open value, ...
_CLEAR = _CLOSE + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  out[#out + 1] = all[i + 1]
  out[#out + 1] = close(all[i], all[i + 1], ARGV[1], ARGV[2]) or ''
end
redis.call('DEL', KEYS[1], KEYS[2])
return out
"""

# KEYS: roster. ARGV: member, expected record, new record. Compare-and-set: an update never
# brings back a member that left meanwhile, nor undoes a concurrent update.
_UPDATE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


# KEYS: lobby. ARGV: member. The knock, taken out of the lobby (false if it was not there).
_TAKE_KNOCK = """
local knock = redis.call('HGET', KEYS[1], ARGV[1])
if knock then redis.call('HDEL', KEYS[1], ARGV[1]) end
return knock
"""


def _record(raw: bytes | str) -> MemberRecord:
    return MemberRecord(**json.loads(raw))


def _token(open_value: bytes | str | None) -> str:
    if not open_value:
        return ""
    text = open_value.decode() if isinstance(open_value, bytes) else open_value
    return text.partition(" ")[2]


def _knock(meeting_id: str, member_id: bytes | str, raw: bytes | str) -> Knock:
    data = json.loads(raw)
    member = member_id.decode() if isinstance(member_id, bytes) else member_id
    return Knock(meeting_id, member, str(data["name"]), float(data["since"]))


def _session(raw: bytes | str) -> AttendanceRecord:
    entry = json.loads(raw)
    session = AttendanceRecord(**entry["session"])
    if "left_at" not in entry:
        return session
    return replace(
        session, name=entry["last"]["name"], left_at=entry["left_at"], reason=entry["reason"]
    )


class RedisMemberStore:
    """``MemberStore`` on Redis, shared by every instance.

    join, leave, update and clear_meeting are each one atomic script on the meeting's keys, so
    all instances (and processes) see one roster, ``max_members`` holds under racing joins, and
    of several racing ``leave`` calls exactly one gets the record. The ledger is kept only in
    Redis: with AOF on, a Redis restart keeps every acknowledged session.

    ``by_instance`` reads an index per instance that each join adds to before its script runs
    and each leave removes its own entry from after, so a crash in between leaves an entry too
    many, never one too few; ``by_instance`` checks entries against the rosters and drops the
    stale ones.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rmeeting",
        clock: Callable[[], float] = time.time,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        self._link = connect(url, socket_timeout)
        self._keys = Keys(prefix)
        self._clock = clock
        self._join = self._link.script(_JOIN)
        self._leave = self._link.script(_LEAVE)
        self._clear = self._link.script(_CLEAR)
        self._update = self._link.script(_UPDATE)
        self._take = self._link.script(_TAKE_KNOCK)

    def close(self) -> None:
        """Release the connections (idempotent)."""
        self._link.close()

    async def aclose(self) -> None:
        self.close()

    def _unindex(self, pipe: Any, meeting_id: str, record: MemberRecord, token: str) -> None:
        index = self._keys.instance(record.instance_id)
        pipe.srem(index, dumps([meeting_id, record.member_id, token]))

    async def join(self, record: MemberRecord, *, max_members: int) -> None:
        session = AttendanceRecord(
            record.meeting_id, record.member_id, record.name, record.role, record.joined_at,
            record.key_hash, sub=record.sub,
        )
        token = uuid.uuid4().hex
        index_entry = dumps([record.meeting_id, record.member_id, token])
        args: list[str | int] = [
            record.member_id, dumps(asdict(record)), dumps({"session": asdict(session)}),
            max_members, dumps(self._clock()), dumps("replaced"), token, record.role,
        ]
        index = self._keys.instance(record.instance_id)

        def work() -> bool:
            # Index first: it may name a presence that is gone, never miss one that is there.
            # (On a cluster the index lives in its instance's slot, the roster in its
            # meeting's: two commands, never one script.)
            client = self._link.client()
            client.sadd(index, index_entry)
            result = self._join(self._keys.members(record.meeting_id), args)
            pipe = client.pipeline(transaction=False)
            if not result[0]:
                pipe.srem(index, index_entry)
            elif result[1] is not None:
                self._unindex(pipe, record.meeting_id, _record(result[1]), _token(result[2]))
            pipe.execute()
            return bool(result[0])

        if not await call(work):
            raise MeetingFull(record.meeting_id)

    async def leave(
        self,
        meeting_id: str,
        member_id: str,
        *,
        reason: str,
        instance_id: str | None = None,
        joined_at: float | None = None,
    ) -> MemberRecord | None:
        args = [member_id, dumps(self._clock()), dumps(reason), instance_id or "",
                "" if joined_at is None else dumps(joined_at)]

        def work() -> MemberRecord | None:
            result = self._leave(self._keys.members(meeting_id), args)
            if result is None:
                return None
            record = _record(result[0])
            pipe = self._link.client().pipeline(transaction=False)
            self._unindex(pipe, meeting_id, record, _token(result[1]))
            pipe.execute()
            return record

        return await call(work)

    async def get(self, meeting_id: str, member_id: str) -> MemberRecord | None:
        roster = self._keys.meeting(meeting_id, "roster")
        raw = await call(lambda: self._link.client().hget(roster, member_id))
        return None if raw is None else _record(raw)

    async def roster(self, meeting_id: str) -> Sequence[MemberRecord]:
        key = self._keys.meeting(meeting_id, "roster")
        raw = await call(lambda: self._link.client().hvals(key))
        return sorted((_record(r) for r in raw), key=lambda r: (r.joined_at, r.member_id))

    async def update(
        self, meeting_id: str, member_id: str, changes: Mapping[str, Any]
    ) -> MemberRecord | None:
        roster = self._keys.meeting(meeting_id, "roster")

        def work() -> MemberRecord | None:
            client = self._link.client()
            for _ in range(UPDATE_ATTEMPTS):
                raw = client.hget(roster, member_id)
                if raw is None:
                    return None
                record = _record(raw)
                record = replace(record, **updated_fields(record, changes, self._clock))
                if self._update([roster], [member_id, raw, dumps(asdict(record))]):
                    return record
            raise StoreUnavailable(f"update of {member_id} kept conflicting")

        return await call(work)

    async def lower_hands(self, meeting_id: str) -> Sequence[MemberRecord]:
        lowered = []
        for record in await self.roster(meeting_id):
            if record.hand is not None:
                done = await self.update(meeting_id, record.member_id, {"hand": False})
                if done is not None:  # else it left meanwhile
                    lowered.append(record)
        return sorted(lowered, key=lambda r: r.hand or 0.0)

    async def attendance(self, meeting_id: str) -> Sequence[AttendanceRecord]:
        ledger = self._keys.meeting(meeting_id, "ledger")
        return [_session(r) for r in await call(lambda: self._link.client().lrange(ledger, 0, -1))]

    async def ban(self, meeting_id: str, member_id: str) -> None:
        key = self._keys.meeting(meeting_id, "banned")
        await call(lambda: self._link.client().sadd(key, member_id))

    async def is_banned(self, meeting_id: str, member_id: str) -> bool:
        key = self._keys.meeting(meeting_id, "banned")
        return bool(await call(lambda: self._link.client().sismember(key, member_id)))

    async def by_instance(self, instance_id: str) -> Sequence[MemberRecord]:
        """Members present through ``instance_id``: the index names candidates, the rosters
        decide (an entry whose presence ended or moved to another instance is dropped)."""
        index = self._keys.instance(instance_id)

        def work() -> list[MemberRecord]:
            client = self._link.client()
            entries = [(e, *json.loads(e)) for e in client.smembers(index)]
            if not entries:
                return []
            # not a transaction: on a cluster the meetings' keys span many slots and nodes
            pipe = client.pipeline(transaction=False)
            for _, meeting_id, member_id, _ in entries:
                pipe.hget(self._keys.meeting(meeting_id, "roster"), member_id)
                pipe.hget(self._keys.meeting(meeting_id, "open"), member_id)
            replies = pipe.execute()
            found: dict[tuple[str, str], MemberRecord] = {}
            stale = []
            for i, (entry, meeting_id, member_id, token) in enumerate(entries):
                raw, open_value = replies[2 * i], replies[2 * i + 1]
                record = None if raw is None else _record(raw)
                if (record is not None and record.instance_id == instance_id
                        and _token(open_value) == token):
                    found[(meeting_id, member_id)] = record
                else:
                    stale.append(entry)
            if stale:
                client.srem(index, *stale)
            return sorted(found.values(), key=lambda r: (r.meeting_id, r.joined_at, r.member_id))

        return await call(work)

    async def instances(self) -> Sequence[str]:
        """The instances with an index (an empty set is deleted by Redis, so an instance whose
        members all left has none). SCAN walks the keyspace, on a cluster every primary's (the
        cluster client's ``scan_iter`` runs one cursor per primary): call it rarely (liveness
        sweeps)."""
        head = self._keys.instance("")

        def work() -> list[str]:
            pattern = re.sub(r"([*?\[\]\\])", r"\\\1", head) + "*"  # the prefix, literally
            found = self._link.client().scan_iter(match=pattern, count=1000)
            return sorted({(k.decode() if isinstance(k, bytes) else k)[len(head):]
                           for k in found})

        return await call(work)

    async def clear_meeting(self, meeting_id: str, *, reason: str) -> Sequence[MemberRecord]:
        args = [dumps(self._clock()), dumps(reason)]

        def work() -> list[MemberRecord]:
            out = self._clear(self._keys.members(meeting_id), args)
            pairs = [(_record(out[i]), _token(out[i + 1])) for i in range(0, len(out), 2)]
            if pairs:
                pipe = self._link.client().pipeline(transaction=False)
                for record, token in pairs:
                    self._unindex(pipe, meeting_id, record, token)
                pipe.execute()
            return [record for record, _ in pairs]

        return await call(work)

    async def knock(self, knock: Knock) -> None:
        lobby = self._keys.meeting(knock.meeting_id, "lobby")
        value = dumps({"name": knock.name, "since": knock.since})
        await call(lambda: self._link.client().hset(lobby, knock.member_id, value))

    async def waiting(self, meeting_id: str) -> Sequence[Knock]:
        key = self._keys.meeting(meeting_id, "lobby")
        raw = await call(lambda: self._link.client().hgetall(key))
        knocks = [_knock(meeting_id, member, value) for member, value in raw.items()]
        return sorted(knocks, key=lambda k: (k.since, k.member_id))

    async def take_knock(self, meeting_id: str, member_id: str) -> Knock | None:
        lobby = self._keys.meeting(meeting_id, "lobby")
        # one script: read and delete as one step, one slot (the meeting's) on a Redis Cluster
        value = await call(lambda: self._take([lobby], [member_id]))
        return None if value is None else _knock(meeting_id, member_id, value)

    def _meeting_keys(self, meeting_id: str) -> list[str]:
        # seq and chat are the chat log's, dropped when the meeting ends; named here so that a
        # purge leaves nothing of the meeting behind whatever the order of events
        return [self._keys.meeting(meeting_id, k)
                for k in ("roster", "open", "ledger", "banned", "lobby", "seq", "chat")]

    async def retire(self, meeting_id: str, *, keep: float) -> None:
        """Redis forgets the meeting's keys by itself ``keep`` seconds from now (PEXPIRE), so
        the purge happens even if no instance is running then."""
        keys, ms = self._meeting_keys(meeting_id), max(1, int(keep * 1000))

        def work() -> None:
            pipe = self._link.client().pipeline(transaction=False)
            for key in keys:
                pipe.pexpire(key, ms)
            pipe.execute()

        await call(work)

    async def purge(self, meeting_id: str) -> None:
        keys = self._meeting_keys(meeting_id)
        await call(lambda: self._link.client().delete(*keys))

    async def ready(self) -> bool:
        """True when Redis answers PING."""
        return await ping(self._link)
