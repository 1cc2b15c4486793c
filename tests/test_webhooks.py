"""Webhooks on an embedded instance, to a real endpoint on loopback (tests/webhook_receiver.py):
every event type arrives once with a valid Standard Webhooks signature; a failing endpoint gets
every event it missed, under the same ids, once it recovers; a hanging endpoint slows no
meeting. The cluster's side (once per endpoint, not per instance; kill -9 mid-delivery) is in
tests/test_webhooks_cluster.py."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from standardwebhooks import Webhook

from rmeeting.server import RunningServer, serve_rmeeting
from rmeeting.stores.base import MemberRecord
from rmeeting.webhooks import EVENT_TYPES, RetryPolicy, Webhooks
from rmeeting.webhooks.events import WebhookEvent, event_id, member_joined
from rmeeting.webhooks.memory import MemoryOutbox
from rmeeting.webhooks.receiver import Request, serve_receiver
from rmeeting.webhooks.sender import EMIT_BUFFER, endpoint_label, sign

from .clients import Api, open_v1
from .conftest import make_config
from .test_metrics import value
from .webhook_receiver import SECRET, Got, Receiver


async def start(nursery: trio.Nursery, *receivers: Receiver) -> RunningServer:
    for receiver in receivers:
        await nursery.start(receiver.serve)
    # these tests flip often on purpose: the control-change limits are not their subject
    config = make_config(webhook_urls=tuple(r.url for r in receivers), webhook_secret=SECRET,
                         control_burst=200, meeting_control_burst=200)
    server: RunningServer = await nursery.start(serve_rmeeting, config)
    return server


async def new_meeting(api: Api) -> tuple[str, dict[str, str]]:
    created = (await api.request("POST", "/v1/meetings", json={"name": "wh"})).json()
    return created["id"], {"Authorization": f"Bearer {created['host_key']}"}


async def flip(api: Api, mid: str, auth: dict[str, str], **body: Any) -> None:
    response = await api.request("PATCH", f"/v1/meetings/{mid}/controls", json=body,
                                 headers=auth)
    assert response.status_code == 200, response.text


def counted(got: list[Got]) -> Counter[str]:
    return Counter(g.type for g in got)


async def test_every_event_type_arrives_once_signed(nursery: trio.Nursery) -> None:
    receiver = Receiver()
    server = await start(nursery, receiver)
    with trio.fail_after(30):
        async with Api(server.url) as api:
            mid, auth = await new_meeting(api)
            key = auth["Authorization"].split()[1]
            async with open_v1(server.url, mid, name="host", host_key=key) as host:
                async with open_v1(server.url, mid, name="ann") as ann:
                    ann_id = ann.me["id"]
                await flip(api, mid, auth, controls={"mic": False})  # HTTP API
                ack = await host.call("set_controls", controls={"chat": False})  # WebSocket
                assert ack["type"] == "ack", ack
                await flip(api, mid, auth, controls={"camera": False}, duration=0.3)  # + timer
                await receiver.wait_for(lambda got: any(
                    g.type == "controls.changed" and g.data["actor"] == "timer" for g in got))
                service = server.service
                service.notify_lobby("member.waiting", mid, "w1", {"name": "wanda"}, key="r1")
                service.notify_lobby("member.admitted", mid, "w1", {"by": "host"}, key="r1")
                service.notify_lobby("member.refused", mid, "w2", {"reason": "no"}, key="r2")
                ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=auth)
                assert ended.status_code in (200, 204)
                expected = {"meeting.created": 1, "member.joined": 2, "member.left": 2,
                            "controls.changed": 4, "member.waiting": 1, "member.admitted": 1,
                            "member.refused": 1, "meeting.ended": 1}
                assert set(expected) == set(EVENT_TYPES)
                got = await receiver.wait_for(lambda got: counted(got) == expected)
    assert not receiver.rejected
    assert len({g.id for g in got}) == len(got)  # each event once
    assert all(g.id.startswith("msg_") and g.timestamp.endswith("Z") for g in got)
    assert all(g.data["meeting_id"] == mid for g in got)
    left = {g.data["member"]["name"]: g.data["reason"] for g in receiver.of("member.left")}
    assert left["host"] == "meeting ended" and left["ann"]
    assert {g.data["member"]["id"] for g in receiver.of("member.joined")} >= {ann_id}
    # arrival order is not event order (deliveries run concurrently): compare as sets
    changes = {(json.dumps(g.data["changed"]), g.data["actor"] == "timer")
               for g in receiver.of("controls.changed")}
    assert changes == {('{"mic": false}', False), ('{"chat": false}', False),
                       ('{"camera": false}', False), ('{"camera": true}', True)}
    assert len({g.data["revision"] for g in receiver.of("controls.changed")}) == 4
    assert receiver.of("meeting.ended")[0].data["reason"] == "ended by the host"
    assert receiver.of("member.waiting")[0].data == {"meeting_id": mid, "member_id": "w1",
                                                      "name": "wanda"}


async def test_a_failing_endpoint_gets_every_event_it_missed_with_the_same_ids(
    nursery: trio.Nursery,
) -> None:
    receiver = Receiver(mode="fail")
    server = await start(nursery, receiver)
    with trio.fail_after(40):
        async with Api(server.url) as api:
            mid, auth = await new_meeting(api)
            for flag in ("mic", "chat", "rename"):
                await flip(api, mid, auth, controls={flag: False})
            # every one of the 4 events was tried and refused at least twice
            with trio.fail_after(20):
                while len({g.id for g in receiver.attempts}) < 4 or min(
                        Counter(g.id for g in receiver.attempts).values()) < 2:
                    await trio.sleep(0.05)
            assert receiver.delivered == []
            missed = {g.id for g in receiver.attempts}
            receiver.set_mode("ok")
            await receiver.wait_for(lambda got: {g.id for g in got} >= missed)
            scrape = (await api.request("GET", "/metrics")).text
    assert {g.id for g in receiver.delivered} == missed  # the same ids, nothing new
    assert counted(receiver.delivered) == {"meeting.created": 1, "controls.changed": 3}
    assert value(scrape, "rmeeting_webhook_deliveries_total", result="failed") >= 8
    assert value(scrape, "rmeeting_webhook_deliveries_total", result="ok") == 4
    assert value(scrape, "rmeeting_webhook_retries_total") >= 8
    assert value(scrape, "rmeeting_webhook_events_total", type="controls.changed",
                 result="new") == 3


async def test_a_hanging_endpoint_slows_no_meeting_and_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    dead, alive = Receiver(mode="hang"), Receiver()
    server = await start(nursery, dead, alive)
    flips = 40  # more than one endpoint's deliveries in flight (32)
    with trio.fail_after(40):
        async with Api(server.url) as api:
            mid, auth = await new_meeting(api)
            key = auth["Authorization"].split()[1]
            async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                    open_v1(server.url, mid, name="bob") as bob:
                await dead.wait_for(lambda _: len(dead.attempts) >= 1)  # it hangs already
                for n in range(flips):
                    ack = await host.call("set_controls", controls={"mic": n % 2 == 1})
                    assert ack["type"] == "ack", ack
                for n in range(20):
                    await bob.send(type="chat", text=f"hi {n}")
                texts = [(await host.recv_type("chat"))["text"] for _ in range(20)]
                assert texts == [f"hi {n}" for n in range(20)]
                # the healthy endpoint has everything so far; the dead one holds 32 requests
                await alive.wait_for(
                    lambda got: counted(got)["controls.changed"] == flips)
                await dead.wait_for(lambda _: len({g.id for g in dead.attempts}) >= 32)
                await trio.sleep(0.2)  # no 33rd comes: the rest wait in the outbox
                assert dead.delivered == [] and len({g.id for g in dead.attempts}) == 32
                # the rest wait in the outbox, and the metrics show them
                label = endpoint_label(dead.url)
                while value((await api.request("GET", "/metrics")).text,
                            "rmeeting_webhook_queue_depth", endpoint=label) < 2 + flips:
                    await trio.sleep(0.1)
            dead.set_mode("ok")  # it comes back: everything queued arrives
            await dead.wait_for(lambda got: {g.id for g in got} >= set(alive.ids()))
    assert len(set(dead.ids())) == len(alive.ids())


def test_the_emit_buffer_drops_new_events_when_full_and_counts_them() -> None:
    webhooks = Webhooks(["http://127.0.0.1:9/x"], SECRET, MemoryOutbox(["http://127.0.0.1:9/x"]),
                        consumer="i1")  # not serving: nothing drains the buffer
    for n in range(EMIT_BUFFER + 3):  # emit is synchronous: it cannot wait
        webhooks.emit(WebhookEvent(event_id("meeting.ended", n), "meeting.ended", 1.0, {}))
    assert webhooks.stats.dropped_emit == 3


def test_the_backoff_doubles_up_to_its_bound() -> None:
    policy = RetryPolicy(first_delay=0.5, max_delay=60.0)
    assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000) == 60
    total = sum(policy.delay(n) for n in range(1, policy.max_attempts))
    assert 5 * 3600 < total < 7 * 3600  # "about 6 hours", as the docs say


@pytest.mark.parametrize("url", ["ftp://x/y", "127.0.0.1:80/x", "http:///nohost"])
def test_config_refuses_what_cannot_be_an_endpoint(url: str) -> None:
    from rmeeting.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="webhook_urls"):
        load_config(env={"RMEETING_WEBHOOK_URLS": url, "RMEETING_WEBHOOK_SECRET": SECRET})


def test_config_reads_the_settings_from_env_and_checks_the_secret() -> None:
    from rmeeting.config import ConfigError, load_config

    config = load_config(env={"RMEETING_WEBHOOK_URLS": "http://127.0.0.1:1/a, https://h/b",
                              "RMEETING_WEBHOOK_SECRET": SECRET})
    assert config.webhook_urls == ("http://127.0.0.1:1/a", "https://h/b")
    assert SECRET not in repr(config)
    for secret in ("", "whsec_", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!",
                   "whsec_c2hvcnQ="):
        with pytest.raises(ConfigError, match="webhook_"):
            load_config(env={"RMEETING_WEBHOOK_URLS": "http://127.0.0.1:1/a",
                             "RMEETING_WEBHOOK_SECRET": secret})


DOCS = Path(__file__).resolve().parents[1] / "docs"


async def test_the_docs_snippet_verifies_a_real_delivery(nursery: trio.Nursery) -> None:
    text = (DOCS / "integration.md").read_text(encoding="utf-8")
    # the webhooks section's snippet (the guide has others: API keys, join tokens)
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                   if "def receive" in block)
    scope: dict[str, Any] = {}
    exec(snippet.replace("whsec_...", SECRET), scope)  # noqa: S102 - our own docs
    results: list[tuple[Any, Any]] = []

    async def handle(request: Request) -> int:
        tampered = request.body.replace(b"wh", b"WH")
        results.append((scope["receive"](request.body, request.headers),
                        scope["receive"](tampered, request.headers)))
        return 204

    port = await nursery.start(serve_receiver, "127.0.0.1", 0, handle)
    config = make_config(webhook_urls=(f"http://127.0.0.1:{port}/",), webhook_secret=SECRET)
    server: RunningServer = await nursery.start(serve_rmeeting, config)
    with trio.fail_after(20):
        async with Api(server.url) as api:
            await new_meeting(api)
        while not results:
            await trio.sleep(0.02)
    event, forged = results[0]
    assert event["type"] == "meeting.created" and event["data"]["name"] == "wh"
    assert forged is None


def test_the_webhook_metrics_are_documented() -> None:
    from rmeeting.instance_metrics import InstanceMetrics

    metrics = InstanceMetrics()
    url = "http://127.0.0.1:9/x"
    metrics.bind_webhooks(Webhooks([url], SECRET, MemoryOutbox([url]), consumer="i"))
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(rmeeting_[a-z_]+)[`{]", text))
    names = set(metrics.registry.names())
    assert {n for n in names if "webhook" in n} <= documented
    assert len({n for n in names if "webhook" in n}) == 5


def test_hostile_text_makes_a_body_that_signs_and_verifies() -> None:
    name = "\ud800" + "\u4f1a" * 3000 + "\x00\"\\"
    record = MemberRecord("m\udfff", "id", name, "member", "i1", 1.5, "0" * 64)
    event = member_joined(record)
    body = event.body()
    assert body.isascii()
    assert WebhookEvent.from_json(event.to_json()) == event
    webhook = Webhook(SECRET)
    payload = webhook.verify(body.encode(), sign(webhook, event, body, time.time()))
    assert payload["data"]["member"]["name"] == name


async def test_a_delivery_is_given_up_after_its_attempts_and_leaves_the_queue(
    nursery: trio.Nursery,
) -> None:
    receiver = Receiver(mode="fail")
    await nursery.start(receiver.serve)
    outbox = MemoryOutbox([receiver.url])
    policy = RetryPolicy(first_delay=0.01, max_delay=0.05, max_attempts=4, reclaim_after=5)
    webhooks = Webhooks([receiver.url], SECRET, outbox, consumer="i1", policy=policy)
    await nursery.start(webhooks.serve)
    webhooks.emit(WebhookEvent(event_id("meeting.ended", "gone"), "meeting.ended", 1.0,
                               {"meeting_id": "gone", "reason": "r"}))
    with trio.fail_after(10):
        while webhooks.stats.gave_up == 0:
            await trio.sleep(0.01)
        assert await outbox.depth(receiver.url) == 0
    assert [g.id for g in receiver.attempts] == [event_id("meeting.ended", "gone")] * 4
    assert (webhooks.stats.failed_attempts, webhooks.stats.retries) == (4, 3)
    assert webhooks.stats.delivered == 0 and receiver.delivered == []


@pytest.mark.redis
async def test_events_emitted_while_redis_is_down_wait_and_are_delivered(
    nursery: trio.Nursery,
) -> None:
    from rmeeting.cluster.processes import RedisServer
    from rmeeting.webhooks.redis import RedisOutbox

    receiver = Receiver()
    await nursery.start(receiver.serve)
    with RedisServer() as redis:
        webhooks = Webhooks([receiver.url], SECRET, RedisOutbox(redis.url, [receiver.url]),
                            consumer="i1")
        async with trio.open_nursery() as inner:
            await inner.start(webhooks.serve)
            events = [WebhookEvent(event_id("meeting.ended", n), "meeting.ended", float(n),
                                   {"meeting_id": str(n), "reason": "r"}) for n in range(3)]
            with trio.fail_after(30):
                webhooks.emit(events[0])
                await receiver.wait_for(lambda got: len(got) == 1)
                redis.kill()  # the outbox is gone: the service's emits must not notice
                for event in events[1:]:
                    webhooks.emit(event)
                await trio.sleep(0.5)
                assert len(receiver.delivered) == 1
                await trio.to_thread.run_sync(redis.restart)
                # concurrent deliveries arrive in any order; a delivery whose ack the outage
                # cut off may come twice (at least once), under its id
                await receiver.wait_for(lambda got: {g.id for g in got} == {e.id for e in events})
            inner.cancel_scope.cancel()
    assert webhooks.stats.dropped_emit == 0
