"""What an idle member costs the server: one task, its session's, and no nursery of its own.

Memory per idle member is what bounds a server of many members (docs/benchmarks.md, "idle");
a task with its coroutine chain, cancel status and nursery is the largest part of it, so the
count is pinned here rather than measured in a timed test. The writer task exists only while
frames wait (tests/test_transport_coalesced_writes.py)."""

from __future__ import annotations

from urllib.parse import urlencode

import trio
import trio.testing

from rmeeting.server import RunningServer

from .clients import Api, masked_frame, open_raw_ws

MEMBERS = 12


def _tasks_and_nurseries() -> tuple[int, int]:
    """Every task in this Trio run, and every nursery, from the root down."""
    tasks = nurseries = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    while todo:
        task = todo.pop()
        tasks += 1
        nurseries += len(task.child_nurseries)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return tasks, nurseries


async def test_an_idle_member_costs_one_task_and_no_nursery(
    server: RunningServer, api: Api
) -> None:
    seed_mid = str((await api.create_seed_meeting(meeting_name="idle"))["meetingUid"])
    created = (await api.request("POST", "/v1/meetings", json={"name": "idle v1"})).json()
    paths = [
        "/AddMeeting?" + urlencode({"username": f"s{i}", "meetingUid": seed_mid})
        for i in range(MEMBERS // 2)
    ] + [
        f"/v1/meetings/{created['id']}/ws?" + urlencode({"name": f"v{i}"})
        for i in range(MEMBERS // 2)
    ]
    with trio.fail_after(20):
        await trio.testing.wait_all_tasks_blocked(0.05)
        tasks_before, nurseries_before = _tasks_and_nurseries()
        # raw sockets: the client side of these connections runs no task in this run
        streams = [await open_raw_ws(server.url, path) for path in paths]
        try:
            # each member's welcome is larger than nothing, but fits the socket buffer: no
            # writer task is left once the server is idle
            await trio.testing.wait_all_tasks_blocked(0.05)
            tasks, nurseries = _tasks_and_nurseries()
        finally:
            for stream in streams:
                await stream.aclose()
    assert tasks - tasks_before == MEMBERS
    assert nurseries - nurseries_before == 0


async def test_the_chat_of_one_read_reaches_each_member_in_one_write(
    server: RunningServer, api: Api
) -> None:
    """A sender's frames that arrive together are handed on together: the session queues them
    all before the hub runs (no yield per message while the queue has room), so each other
    member gets them in one ``send``, not one per message."""
    mid = str((await api.create_seed_meeting(meeting_name="burst"))["meetingUid"])
    count = 40
    with trio.fail_after(20):
        listener = await open_raw_ws(
            server.url, "/AddMeeting?" + urlencode({"username": "ear", "meetingUid": mid}))
        sender = await open_raw_ws(
            server.url, "/AddMeeting?" + urlencode({"username": "mouth", "meetingUid": mid}))
        try:
            await trio.testing.wait_all_tasks_blocked(0.05)
            before = server.hub.statistics()["coalesced_frames"]
            await sender.send_all(b"".join(
                masked_frame(1, f"burst {i}".encode()) for i in range(count)))
            seen = b""
            while seen.count(b"burst ") < count:
                seen += await listener.receive_some(65536)
            await trio.testing.wait_all_tasks_blocked(0.05)
            coalesced = server.hub.statistics()["coalesced_frames"] - before
        finally:
            await sender.aclose()
            await listener.aclose()
    # both members (the sender hears its own echo) get all `count` in one send each
    assert coalesced >= 2 * (count - 1), coalesced
