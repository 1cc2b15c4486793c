"""ChatLog conformance: one order per meeting, sequence numbers, bounded history, resume."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from rmeeting.closes import Close, LeaveReason
from rmeeting.events import BusEvent, ChatPosted, MemberJoined, MemberLeft, MemberUpdated


def _chat(meeting: str, text: str, member: str = "s") -> ChatPosted:
    return ChatPosted(meeting, member, member, "member", text)


def _every_kind(meeting: str) -> list[BusEvent]:
    """One of each event the chat log carries, with every optional part filled in."""
    return [
        MemberJoined(meeting, "m1", "Ann ☃", "host", True, False, 1764211871.25),
        _chat(meeting, "hi \u00e9 \"quoted\" ☃", "m1"),
        MemberUpdated(meeting, "m1", "Bea", "host", False, True, 1764211871.25,
                      {"name": "Bea", "camera": False}),
        MemberLeft(meeting, "m1", "Bea", "host", 1764211871.25, LeaveReason.KICKED,
                   (Close.KICKED, "removed by the host")),
        MemberLeft(meeting, "m2", "Cy", "member", 1764211872.5, LeaveReason.INSTANCE_LOST),
    ]


class Sink:
    def __init__(self) -> None:
        self.events: list[BusEvent] = []

    async def __call__(self, event: BusEvent) -> None:
        self.events.append(event)

    async def wait_count(self, meeting: str, n: int) -> list[BusEvent]:
        with trio.fail_after(10):
            while True:
                mine = [e for e in self.events if e.meeting_id == meeting]
                if len(mine) >= n:
                    return mine
                await trio.sleep(0.01)


async def test_publish_delivers_in_order_with_seq(chat_log: Any) -> None:
    meeting = uuid.uuid4().hex
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            sink = Sink()
            await nursery.start(chat_log.serve, sink)
            await chat_log.subscribe(meeting)
            await chat_log.publish(MemberJoined(meeting, "m1", "m1", "member", False, False, 1.0))
            for i in range(20):
                await chat_log.publish(_chat(meeting, str(i)))
            got = await sink.wait_count(meeting, 21)
            assert isinstance(got[0], MemberJoined)
            chats = [e for e in got[1:] if isinstance(e, ChatPosted)]
            assert [e.text for e in chats] == [str(i) for i in range(20)]
            assert [e.seq for e in chats] == list(range(1, 21))
            nursery.cancel_scope.cancel()


async def test_concurrent_publishers_one_order(chat_log: Any) -> None:
    meeting = uuid.uuid4().hex
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            sink = Sink()
            await nursery.start(chat_log.serve, sink)
            await chat_log.subscribe(meeting)

            async def sender(name: str) -> None:
                for i in range(15):
                    await chat_log.publish(_chat(meeting, str(i), name))

            async with trio.open_nursery() as senders:
                for name in "abc":
                    senders.start_soon(sender, name)
            got = [e for e in await sink.wait_count(meeting, 45) if isinstance(e, ChatPosted)]
            assert [e.seq for e in got] == list(range(1, 46))
            for name in "abc":
                assert [e.text for e in got if e.member_id == name] == [str(i) for i in range(15)]
            nursery.cancel_scope.cancel()


async def test_unsubscribed_meetings_are_not_delivered(chat_log: Any) -> None:
    quiet, loud = uuid.uuid4().hex, uuid.uuid4().hex
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            sink = Sink()
            await nursery.start(chat_log.serve, sink)
            await chat_log.subscribe(loud)
            await chat_log.publish(_chat(quiet, "nobody here"))
            await chat_log.publish(_chat(loud, "hi"))
            await sink.wait_count(loud, 1)
            assert all(e.meeting_id == loud for e in sink.events)
            # history is kept whether or not anyone listens
            assert [e.text for e in (await chat_log.history(quiet, 0, 10)).events] == [
                "nobody here"
            ]
            nursery.cancel_scope.cancel()


async def test_history_resume_and_gaps(chat_log: Any) -> None:
    # the fixture keeps 50 chat messages per meeting
    meeting = uuid.uuid4().hex
    for i in range(60):
        await chat_log.publish(_chat(meeting, str(i)))
    # not chat: no seq, not in history
    await chat_log.publish(MemberLeft(meeting, "x", "x", "member", 1.0, LeaveReason.CLOSED))
    recent = await chat_log.history(meeting, 55, 100)
    assert recent.complete and recent.last_seq == 60
    assert [e.seq for e in recent.events] == [56, 57, 58, 59, 60]
    assert (await chat_log.history(meeting, 60, 100)).events == []
    assert (await chat_log.history(meeting, 60, 100)).complete
    gap = await chat_log.history(meeting, 2, 100)
    assert not gap.complete and gap.events[0].seq == 11 and gap.events[-1].seq == 60
    capped = await chat_log.history(meeting, 40, 5)
    assert [e.seq for e in capped.events] == [56, 57, 58, 59, 60] and not capped.complete
    empty = await chat_log.history(uuid.uuid4().hex, 0, 10)
    assert empty.events == [] and empty.last_seq == 0 and empty.complete


async def test_drop_forgets_history(chat_log: Any) -> None:
    meeting = uuid.uuid4().hex
    await chat_log.publish(_chat(meeting, "x"))
    await chat_log.drop(meeting)
    assert (await chat_log.history(meeting, 0, 10)).events == []


async def test_every_event_type_round_trips(chat_log: Any) -> None:
    """What a subscriber receives, and what history keeps, is the event as published."""
    meeting = uuid.uuid4().hex
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            sink = Sink()
            await nursery.start(chat_log.serve, sink)
            await chat_log.subscribe(meeting)
            published = [await chat_log.publish(event) for event in _every_kind(meeting)]
            got = await sink.wait_count(meeting, len(published))
            nursery.cancel_scope.cancel()
    assert got == published
    assert [type(e) for e in got] == [type(e) for e in _every_kind(meeting)]
    chat = published[1]
    assert isinstance(chat, ChatPosted) and chat.seq == 1 and chat.ts > 0
    assert all(e.ts > 0 for e in published)
    assert list((await chat_log.history(meeting, 0, 10)).events) == [chat]
