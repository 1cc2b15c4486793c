"""Redis stores for the cluster mode: ``RedisMemberStore`` (roster, attendance, bans) and
``RedisChatLog`` (chat history, sequence numbers and the relay between instances).

redis-py's asyncio client does not run on Trio, so both use the sync client from worker threads
(``trio.to_thread.run_sync``), one thread hop per store call, with the call's commands batched in
one Lua script or transaction. A Redis that does not answer (refused, timed out, still loading its
AOF) raises ``StoreUnavailable``; redis-py's own retries are off so that happens at once, and the
next call reconnects.

Key layout (``P`` is the prefix, ``rmeeting`` by default; ``{M}`` is the meeting id as a hash tag,
so one meeting's keys share a Redis Cluster slot and its Lua scripts touch only that slot):

=========================  ======  =============================================================
``P:m:{M}:roster``         hash    member id -> JSON member record (present members)
``P:m:{M}:open``           hash    member id -> "<index in ledger> <join token>" of its open
                                   session
``P:m:{M}:ledger``         list    attendance sessions in join order, never trimmed: JSON
                                   ``{"session": {...}}``; closing appends ``left_at``,
                                   ``reason`` and ``last`` (the record at leave time)
``P:m:{M}:banned``         set     banned member ids (and ``sub:<user>``: a join token's user)
``P:m:{M}:lobby``          hash    member id -> JSON ``{name, since}`` of who waits in the lobby
``P:m:{M}:seq``            string  the meeting's last chat seq (INCR)
``P:m:{M}:chat``           stream  the last ``history_limit`` chat events, entry id ``<seq>-0``,
                                   one field ``e`` = the event's JSON
``P:c:{M}``                channel every event of the meeting, JSON (meeting_id, kind, data,
                                   seq, ts), published by the same script that numbers and
                                   stores it, so publish order is seq order is delivery order
``P:i:<instance>``         set     JSON ``[meeting, member, join token]`` of each presence
                                   joined through that instance: a superset of the truth that
                                   ``by_instance`` checks against the rosters
``P:relay:<uuid>``         channel one relay's private wake-up channel
=========================  ======  =============================================================

On a Redis Cluster (detected from the server, see ``redis_link``) the layout is the same: a
meeting's keys and channel share its slot, so each script and each ``MULTI`` touches one slot on
one primary; ``P:c:{M}`` is a shard channel (``SPUBLISH``/``SSUBSCRIBE``, see ``_redis_shards``);
``P:i:<instance>`` lives wherever its own name hashes to, which is why a join writes it in a
command of its own; and ``instances()`` scans every primary. The relay's ``P:relay:<uuid>`` is
not used there (a local socket pair wakes its thread).

When a meeting ends, every one of its ``P:m:{M}:*`` keys gets a TTL of the ``retention`` setting
(``MemberStore.retire``): its ledger and bans stay readable that long, then Redis drops them by
itself (issue #10, item 10), whether or not any instance is running.

Everything that must survive a Redis restart (roster, ledger, bans, seq, history) lives in Redis,
none of it only in instance memory, so with AOF on a restart loses nothing that was acknowledged.
The relay (``RedisChatLog.serve``) reconnects and re-subscribes by itself after an outage and
reports it through ``on_relay_state``; see ``_redis_relay`` for its threading and backpressure.
"""

from __future__ import annotations

from ._redis_chat import RedisChatLog
from ._redis_members import RedisMemberStore

__all__ = ["RedisChatLog", "RedisMemberStore"]
