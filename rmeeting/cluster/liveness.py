"""Instance liveness in etcd, and the clean-up after an instance that died.

Each instance keeps ``<prefix>/instances/<instance_id>`` (JSON: id, URL, started_at) on an etcd
lease of ``instance_ttl`` seconds (5 by default), refreshed every third of it. When the instance
dies, etcd deletes the key once the lease runs out.

Every instance polls the instances prefix each second. An instance it saw before and no longer
sees is lost; exactly one survivor cleans up after it: the one whose create-if-absent
transaction on ``<prefix>/cleanup/<lost_id>`` wins. That claim rides on the claimer's own lease,
so if the claimer dies before it marks the claim done, the claim vanishes and another survivor
takes over. The clean-up ends every presence of the lost instance that joined before it was found
gone (:meth:`Presence.end_lost`): the ledger closes the sessions (``instance lost``) and the other
members are told. From a kill -9 that takes at most ``instance_ttl`` + about 1.5 s.

Instances that died while nobody watched (the whole cluster was restarted, or the only survivor
came up after the death) are found by a sweep, at startup and every ``SWEEP_EVERY`` seconds: the
instances the member store names (read first) that have no key in etcd (read second; an instance
registers before it takes members, so one not in etcd by then is dead) are lost as above. A new
run under the same instance id ends its own earlier run's presences itself, and deletes that id's
clean-up claim, so a later death is cleaned up again. The sweep also reconciles this instance's
own presences (:meth:`Presence.reconcile`).

If this instance loses its lease (cut off from etcd longer than the TTL while the others were
not), it grants a new one, registers again, and registers again any of its members that the
survivors removed meanwhile. etcd itself restarting loses no lease: a new leader renews them all.
The lease is revoked on graceful shutdown, so the others notice at once. Nothing here waits on
etcd unbounded: every call has the connection's timeout, and the revoke at shutdown two seconds.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Iterable
from typing import Any

import grpc  # type: ignore[import-untyped]
import trio

from ..config import Config
from ..stores.base import StoreUnavailable
from ..stores.etcd_client import Connection, compare, delete_op, prefix_end, put_op, range_op
from .presence import Presence

__all__ = ["Liveness", "chosen_instance"]

log = logging.getLogger("rmeeting.cluster")

#: seconds between two reads of the instances prefix
POLL = 1.0
#: seconds between two sweeps (orphaned instances, this instance's own presences)
SWEEP_EVERY = 30.0
#: the timeout of each etcd call made here, and of the revoke at shutdown
ETCD_TIMEOUT = 2.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0

_FAILURES = (StoreUnavailable, grpc.RpcError)


class Liveness:
    """This instance's liveness record and the clean-up of lost instances (module docstring).

    Run :meth:`serve` in the server's nursery (it reports started once registered) and call
    :meth:`announce` with the URL once the server listens.
    """

    def __init__(self, config: Config, presence: Presence) -> None:
        self._endpoints = list(config.etcd)
        root = config.etcd_prefix.rstrip("/")
        self._instances = f"{root}/instances/".encode()
        self._claims = f"{root}/cleanup/".encode()
        self._ttl = max(1, math.ceil(config.instance_ttl))
        self._presence = presence
        self._id = presence.instance_id
        self.url = ""
        self._lease = 0
        self._dirty = False  # the record in etcd lacks the URL
        self._known: set[str] = set()
        #: lost instance -> when it was found gone (wall clock, like MemberRecord.joined_at)
        self._pending: dict[str, float] = {}
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "serve() is not running"
        return self._conn

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register (waiting for etcd), report started, keep the lease and watch the others
        until cancelled; then revoke the lease."""
        self._conn = Connection(self._endpoints, ETCD_TIMEOUT)
        try:
            await self._register()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive)
                nursery.start_soon(self._watch)
                nursery.start_soon(self._sweep)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(ETCD_TIMEOUT):
                if self._lease:
                    try:
                        await self.conn.lease_revoke(self._lease, timeout=ETCD_TIMEOUT)
                    except _FAILURES as exc:
                        log.warning("liveness lease not revoked (%s): it runs out by itself", exc)
            self._conn.close()

    def announce(self, url: str) -> None:
        """The URL this instance serves at; written with the next lease refresh."""
        self.url, self._dirty = url, True

    # --- this instance's record ---------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({"instance_id": self._id, "url": self.url,
                           "started_at": self._presence.started_at}).encode()

    async def _register(self) -> None:
        """A new lease and the record on it; an earlier run's clean-up claim goes."""
        backoff = BACKOFF_MIN
        while True:
            try:
                lease = await self.conn.lease_grant(self._ttl)
                await self.conn.txn([], [
                    put_op(self._instances + self._id.encode(), self._record(), lease),
                    delete_op(self._claims + self._id.encode()),
                ])
            except _FAILURES as exc:
                level = logging.WARNING if backoff == BACKOFF_MIN else logging.DEBUG  # once
                log.log(level, "cannot register in etcd (%s); retrying", exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._lease, self._dirty = lease, False
            log.info("registered in etcd", extra={"instance": self._id, "lease": lease})
            return

    async def _keep_alive(self) -> None:
        failing = False
        while True:
            await trio.sleep(self._ttl / 3)
            try:
                ttl = await self.conn.lease_keepalive(self._lease)
                if ttl > 0 and self._dirty:
                    key = self._instances + self._id.encode()
                    await self.conn.txn([], [put_op(key, self._record(), self._lease)])
                    self._dirty = False
            except _FAILURES as exc:
                if not failing:
                    log.warning("etcd unreachable: liveness lease not refreshed (%s)", exc)
                failing = True
                continue
            if failing:
                log.info("liveness lease refreshed again")
                failing = False
            if ttl <= 0:
                log.warning("liveness lease expired (cut off from etcd?): registering again")
                await self._register()
                await self._reconcile()

    async def _reconcile(self) -> None:
        try:
            await self._presence.reconcile()
        except StoreUnavailable as exc:
            log.warning("presences not reconciled (%s); the next sweep retries", exc)

    # --- the others ---------------------------------------------------------------------------

    def writes_audit(self, change: str) -> bool:
        """Whether this instance is the one to record ``change`` (an operator's flip every
        instance observed): :func:`chosen_instance` among the live instances as last read. Two
        that disagree for a second (one died) both write, or neither: the others' later check
        (``stores._etcd_audit``) writes what is missing."""
        return chosen_instance(self._known | {self._id}, change) == self._id

    async def _alive(self) -> set[str]:
        prefix = self._instances
        response = await self.conn.txn([], [range_op(prefix, prefix_end(prefix), keys_only=True)])
        kvs = response.responses[0].response_range.kvs
        return {kv.key[len(prefix):].decode("utf-8", "replace") for kv in kvs}

    async def _watch(self) -> None:
        """Each second: who is gone since the last look; clean up after whoever is pending."""
        while True:
            try:
                alive = await self._alive()
            except _FAILURES:
                alive = None  # etcd down: nobody can be judged lost now
            if alive is not None:
                found = time.time()
                for lost in self._known - alive - {self._id}:
                    self._pending.setdefault(lost, found)
                self._known = alive
                for lost in list(self._pending):
                    if lost in alive:  # back (a new run under the same id): it cleans up itself
                        del self._pending[lost]
                    else:
                        await self._clean_up(lost)
            await trio.sleep(POLL)

    async def _sweep(self) -> None:
        while True:
            await self._reconcile()
            try:
                # the member store first, etcd second: see the module docstring
                suspects = set(await self._presence.service.instances_with_presences())
                alive = await self._alive()
            except _FAILURES as exc:
                log.warning("liveness sweep failed (%s); retrying", exc)
                await trio.sleep(POLL)
                continue
            found = time.time()
            for lost in suspects - alive - {self._id}:
                self._pending.setdefault(lost, found)
            await trio.sleep(SWEEP_EVERY)

    async def _clean_up(self, lost: str) -> None:
        found = self._pending[lost]
        try:
            claim = await self._claim(lost)
            if claim == "taken":
                return  # another survivor is on it; if it dies, its claim goes and we retry
            if claim == "mine":
                ended = await self._presence.end_lost(lost, before=found)
                await self._put_claim(lost, done=True)
                # a graceful stop leaves nobody behind: only a real loss is worth a warning
                log.log(logging.WARNING if ended else logging.INFO,
                        "instance %s gone: %d member(s) removed", lost, ended,
                        extra={"instance": self._id})
        except _FAILURES as exc:
            log.warning("clean-up after instance %s failed (%s); retrying", lost, exc)
            return
        self._pending.pop(lost, None)

    async def _claim(self, lost: str) -> str:
        """"mine" (ours to do), "taken" (another survivor's) or "done"."""
        key = self._claims + lost.encode()
        response = await self.conn.txn(
            [compare(key, "version", "==", 0)],
            [put_op(key, self._claim_value(False), self._lease)],
            [range_op(key)],
        )
        if response.succeeded:
            return "mine"
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            return "taken"  # released in between: the next poll claims again
        held = _json_object(kvs[0].value)
        if held.get("done"):
            return "done"
        return "mine" if held.get("by") == self._id else "taken"

    async def _put_claim(self, lost: str, *, done: bool) -> None:
        key = self._claims + lost.encode()
        await self.conn.txn([], [put_op(key, self._claim_value(done), self._lease)])

    def _claim_value(self, done: bool) -> bytes:
        return json.dumps({"by": self._id, "at": time.time(), "done": done}).encode()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def chosen_instance(instances: Iterable[str], key: str) -> str:
    """One of ``instances`` for ``key``, the same on every instance that knows the same set
    (highest random weight: a change of the set moves only the keys of who came or went)."""
    return max(instances, key=lambda name: (zlib.crc32(f"{name}\n{key}".encode()), name))
