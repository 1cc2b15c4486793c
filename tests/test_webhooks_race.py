"""A sender never sends its own just-acknowledged delivery again.

The race: a delivery is retrying while the outbox is away longer than ``reclaim_after`` (its keeps
fail, so its claim goes quiet). When the outbox is back, the sender's own claim loop may take the
entry over (XAUTOCLAIM in Redis, the take-over in memory) just before the delivery's ack lands,
and the claim's answer arrives after the delivery task has finished. The outbox below forces that
interleaving (the claim is taken, then the ack applied, then the claim answered) on the memory
outbox, with a real endpoint on loopback.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from rmeeting.stores.base import StoreUnavailable
from rmeeting.webhooks import RetryPolicy, Webhooks
from rmeeting.webhooks.events import WebhookEvent, event_id
from rmeeting.webhooks.memory import MemoryOutbox
from rmeeting.webhooks.outbox import Delivery

from .webhook_receiver import SECRET, Receiver


class RacingOutbox(MemoryOutbox):
    """Keeps always fail (the outbox is away for them). The first claim that takes an entry over
    answers only after that entry's ack went through, and the ack goes through only after
    that take-over: the server ran the claim, then the ack, and the claim's reply came last."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        super().__init__(endpoints)
        self.taken_over = trio.Event()
        self.acked = trio.Event()
        self.acks: list[str] = []
        self.claims_begun = 0

    async def keep(self, delivery: Delivery, consumer: str) -> bool:
        await trio.lowlevel.checkpoint()
        raise StoreUnavailable("webhook outbox away (test)")

    async def claim(
        self, endpoint: str, consumer: str, *, count: int, reclaim_after: float, wait: float
    ) -> Sequence[Delivery]:
        self.claims_begun += 1
        got = await super().claim(endpoint, consumer, count=count, reclaim_after=reclaim_after,
                                  wait=wait)
        if not self.taken_over.is_set() and any(d.claims > 1 for d in got):
            self.taken_over.set()
            await self.acked.wait()
        return got

    async def ack(self, delivery: Delivery) -> None:
        await self.taken_over.wait()
        await super().ack(delivery)
        self.acks.append(delivery.entry)
        self.acked.set()


def ended(name: str) -> WebhookEvent:
    return WebhookEvent(event_id("meeting.ended", name), "meeting.ended", 1.0,
                        {"meeting_id": name, "reason": "r"})


async def test_an_own_entry_taken_over_as_it_is_acked_is_not_sent_again(
    nursery: trio.Nursery,
) -> None:
    receiver = Receiver(mode="fail")
    await nursery.start(receiver.serve)
    outbox = RacingOutbox([receiver.url])
    # the retry waits longer than reclaim_after: the claim goes quiet while the keeps fail
    policy = RetryPolicy(first_delay=0.5, max_delay=0.5, reclaim_after=0.2, timeout=5)
    webhooks = Webhooks([receiver.url], SECRET, outbox, consumer="i1", policy=policy)
    await nursery.start(webhooks.serve)
    event = ended("raced")
    with trio.fail_after(20):
        webhooks.emit(event)
        while not receiver.attempts:
            await trio.sleep(0.01)
        receiver.set_mode("ok")  # the retry succeeds
        await outbox.acked.wait()  # ...and is acked while the take-over's answer is held
        # the held claim answers now; once the loop has begun two more claims, it has handled
        # that answer (a second delivery would have started) and a delivery started by it
        # has had a claim's wait (1 s) to post
        begun = outbox.claims_begun
        while outbox.claims_begun < begun + 2:
            await trio.sleep(0.01)
        assert await outbox.depth(receiver.url) == 0
    assert outbox.taken_over.is_set()
    assert [g.id for g in receiver.delivered] == [event.id]
    assert len(outbox.acks) == 1
    assert webhooks.stats.delivered == 1


async def test_a_quiet_claim_of_another_sender_is_still_taken_over_and_delivered_once(
    nursery: trio.Nursery,
) -> None:
    receiver = Receiver()
    await nursery.start(receiver.serve)
    outbox = MemoryOutbox([receiver.url])
    events = [ended(f"dead{n}") for n in range(3)]
    for event in events:
        await outbox.enqueue(event)
    # a sender that claims, then dies: it never keeps, never acks
    dead = await outbox.claim(receiver.url, "dead", count=3, reclaim_after=0.2, wait=0)
    assert len(dead) == 3
    policy = RetryPolicy(reclaim_after=0.2)
    webhooks = Webhooks([receiver.url], SECRET, outbox, consumer="alive", policy=policy)
    await nursery.start(webhooks.serve)
    with trio.fail_after(20):
        await receiver.wait_for(lambda got: len(got) == 3)
        while await outbox.depth(receiver.url):
            await trio.sleep(0.01)
        await trio.sleep(0.5)  # several more claims: nothing comes twice
    assert sorted(g.id for g in receiver.delivered) == sorted(e.id for e in events)
