"""``rmeeting bench``: each scenario at a tiny scale, and the counters on made-up faults.

The scale runs prove the bench sees a healthy server as healthy (nothing lost, nothing out of
order, every delivery counted); the made-up inputs prove it would notice if it were not.
"""

from __future__ import annotations

import json
import os
import socket
import time
from array import array
from pathlib import Path
from typing import Any

import pytest
import trio

from rmeeting.bench import main as bench_main
from rmeeting.bench.client import Member, Poller
from rmeeting.bench.protocol import V1, Seed, SocketIO, chat_text
from rmeeting.bench.report import analyse_sequence, format_text, percentiles, summarize
from rmeeting.bench.runner import run_bench
from rmeeting.bench.scenarios import Options, PartResult
from rmeeting.config import Config
from rmeeting.server import RunningServer

from .conftest import make_config


@pytest.fixture
def server_config() -> Config:
    return make_config(chat_rate=1e6, chat_burst=1_000_000, control_rate=1e6,
                       control_burst=1_000_000, meeting_control_rate=1e6,
                       meeting_control_burst=1_000_000)


async def _run(server: RunningServer, **options: Any) -> dict[str, Any]:
    opts = Options(url=server.url, **options)
    with trio.fail_after(20):
        parts, facts = await run_bench(opts, server_pid=os.getpid())
        while server.hub.statistics()["members"]:  # the members' leaves are done
            await trio.sleep(0.01)
    result = summarize(opts, parts, server=facts, command="test")
    assert format_text(result)  # the summary renders
    assert result["joined"] == opts.members and not result["join_errors"]
    assert not result["timed_out"] and not result["errors"]
    return result


def _sane_cpu(server: dict[str, Any], processes: int) -> None:
    """The server's CPU time over the measured phase: whole clock ticks (as /proc counts it), in
    seconds (not ticks), and no more than its processes could spend on this machine's cores in
    the measured wall time (one tick of slack at each end)."""
    cpu, wall = server["measured_cpu_s"], server["measured_wall_s"]
    ticks = cpu * os.sysconf("SC_CLK_TCK")
    assert abs(ticks - round(ticks)) < 1e-6, cpu
    assert 0 < wall and 0 <= ticks <= processes * (wall * os.sysconf("SC_CLK_TCK") + 2) * \
        (os.cpu_count() or 1), (cpu, wall)


def _sane_fanout(result: dict[str, Any], members: int, messages: int) -> None:
    assert result["sent"] == messages
    assert result["deliveries"] == result["expected_deliveries"] == members * messages
    assert result["lost"] == result["duplicated"] == result["out_of_order"] == 0
    latency = result["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"] < 10_000
    assert result["deliveries_per_s"] > 0 and result["timeline"]
    assert result["cdf"][-1][1] == 1.0


async def test_fanout_unthrottled_and_at_a_rate(server: RunningServer) -> None:
    _sane_fanout(await _run(server, scenario="fanout", members=6, messages=40), 6, 40)
    result = await _run(server, scenario="fanout", members=4, messages=10, rate=200.0)
    _sane_fanout(result, 4, 10)
    assert 100 < result["send_rate"] < 400


async def test_fanout_without_epoll(server: RunningServer) -> None:
    result = await _run(server, scenario="fanout", members=3, messages=15, use_epoll=False)
    _sane_fanout(result, 3, 15)


async def test_flip_join_and_idle(server: RunningServer) -> None:
    flip = await _run(server, scenario="flip", members=5, flips=6, gap=0.0)
    assert flip["flips"] == 6 and flip["flips_incomplete"] == 0 and flip["told_per_flip"] == 5
    assert 0 < flip["last_told_ms"]["p50"] <= flip["last_told_ms"]["max"] < 5000
    assert flip["each_told_ms"]["max"] == flip["last_told_ms"]["max"]

    join = await _run(server, scenario="join", members=12, concurrency=4)
    assert join["joins_per_s"] > 0 and join["join_latency_ms"]["p50"] > 0

    idle = await _run(server, scenario="idle", members=10, room_size=4)
    assert idle["server"]["rss_kib_joined"] > 0
    assert isinstance(idle["server"]["rss_per_member_bytes"], int)
    assert len(await server.service.meetings.list()) >= 3  # 10 members, 4 a meeting


def test_spawned_server_two_processes_and_json(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    code = bench_main(["fanout", "--spawn", "--procs", "2", "-n", "6", "-m", "25",
                       "--json", str(out), "-q", "--duration", "30"])
    assert code == 0
    result = json.loads(out.read_text())
    _sane_fanout(result, 6, 25)
    assert result["options"]["procs"] == 2
    assert result["server"]["spawned"]
    _sane_cpu(result["server"], processes=2)
    assert result["command"].startswith("rmeeting bench fanout --spawn")
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]


async def test_v1_protocol_fanout_and_flips(server: RunningServer) -> None:
    result = await _run(server, scenario="fanout", protocol="v1", members=5, messages=30)
    _sane_fanout(result, 5, 30)
    for via in ("member", "api"):
        flip = await _run(server, scenario="flip", protocol="v1", members=4, flips=4, gap=0.0,
                          via=via)
        assert flip["via"] == via and flip["flips"] == 4 and flip["told_per_flip"] == 4
        assert flip["flips_incomplete"] == 0 and flip["last_told_ms"]["max"] < 5000
        assert flip["write_ms"]["p50"] > 0


def test_v1_fanout_on_a_spawned_server(tmp_path: Path) -> None:
    out = tmp_path / "v1.json"
    code = bench_main(["fanout", "--spawn", "--protocol", "v1", "-n", "6", "-m", "20",
                       "--json", str(out), "-q", "--duration", "30"])
    assert code == 0
    result = json.loads(out.read_text())
    _sane_fanout(result, 6, 20)
    assert result["protocol"] == "v1"


@pytest.mark.cluster
def test_flip_via_etcd_on_a_two_instance_cluster(tmp_path: Path) -> None:
    """The bench starts a local cluster, spreads 6 members over its 2 instances and flips `mic`
    with puts straight into etcd: every member is told of every flip."""
    out = tmp_path / "flip.json"
    code = bench_main(["flip", "--cluster", "2", "--via", "etcd", "-n", "6", "--flips", "5",
                       "--gap", "0", "--json", str(out), "-q", "--duration", "60"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["joined"] == 6 and not result["join_errors"] and not result["errors"]
    assert result["via"] == "etcd" and result["flips"] == 5
    assert result["told_per_flip"] == 6 and result["flips_incomplete"] == 0
    assert 0 < result["last_told_ms"]["p50"] <= result["last_told_ms"]["max"] < 5000
    assert 0 < result["first_told_ms"]["min"] <= result["last_told_ms"]["min"]
    assert 0 < result["write_ms"]["p50"] <= result["write_ms"]["max"] < 5000
    cluster = result["server"]["cluster"]
    assert len(cluster["instances"]) == 2 and not cluster["through_nginx"]
    assert sorted(result["urls"]) == sorted(i["url"] for i in cluster["instances"])
    _sane_cpu(result["server"], processes=2)
    assert "etcd" in result["server"]["helpers"]
    assert "2 instances" in format_text(result)


def test_bad_arguments() -> None:
    assert bench_main(["fanout"]) == 2  # neither --url nor --spawn
    assert bench_main(["fanout", "--url", "http://127.0.0.1:1", "-n", "0"]) == 2
    assert bench_main(["fanout", "--spawn", "--cluster", "2"]) == 2
    assert bench_main(["fanout", "--spawn", "--nginx"]) == 2
    assert bench_main(["fanout", "--spawn", "--via", "etcd"]) == 2  # flips only
    assert bench_main(["flip", "--urls", "http://127.0.0.1:1", "--via", "etcd"]) == 2
    assert bench_main(["flip", "--url", "http://127.0.0.1:1", "--protocol", "socketio"]) == 2
    assert bench_main(["fanout", "--spawn", "--server-pid", "1"]) == 2


def test_flip_via_etcd_without_etcd_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["flip", "--spawn", "--via", "etcd", "--etcd", "http://127.0.0.1:1",
                       "-n", "2", "--flips", "2", "-q", "--duration", "30"])
    assert code == 1
    assert "etcd put /rmeeting/meetings/" in capsys.readouterr().err


# --- the counters, on made-up input -------------------------------------------------------


def test_sequence_analysis_counts_duplicates_reorders_and_losses() -> None:
    assert analyse_sequence(range(5)) == (5, 0, 0)
    assert analyse_sequence([0, 1, 1, 2]) == (3, 1, 0)  # one duplicate
    assert analyse_sequence([0, 2, 1, 3]) == (4, 0, 1)  # 1 came after 2
    assert analyse_sequence([3, 0, 1, 2]) == (4, 0, 3)
    assert analyse_sequence([0, 2, 2, 1, 1]) == (3, 2, 1)
    assert analyse_sequence([0, 3]) == (2, 0, 0)  # gaps are losses, counted against what was sent
    assert analyse_sequence([]) == (0, 0, 0)


def test_summary_reports_faults() -> None:
    opts = Options(scenario="fanout", url="http://x", members=2, messages=4)
    part = PartResult(0, members=2, joined=2, sent=4, first_send_ns=1_000_000,
                      last_send_ns=2_000_000, last_recv_ns=11_000_000)
    for seqs in ([0, 1, 1, 3, 2], [0, 1]):  # member 1: dup + reorder; member 2: lost 2
        distinct, duplicated, out_of_order = analyse_sequence(seqs)
        part.distinct += distinct
        part.duplicated += duplicated
        part.out_of_order += out_of_order
        part.deliveries += len(seqs)
    part.latencies = array("q", [3_000_000, 1_000_000, 2_000_000] + [4_000_000] * 4)
    result = summarize(opts, [part], host={"nproc": 2, "cpu": "x", "memory_gib": 1,
                                           "python": "3", "os": "y"})
    assert result["deliveries"] == 7 and result["expected_deliveries"] == 8
    assert result["lost"] == 2 and result["duplicated"] == 1 and result["out_of_order"] == 1
    assert result["deliveries_per_s"] == 700.0  # 7 in the 10 ms from first send to last receipt
    assert "lost 2  duplicated 1  out of order 1" in format_text(result)


def test_percentiles_nearest_rank() -> None:
    values = sorted(range(1, 101))
    stats = percentiles(values, scale=1)
    assert (stats["p50"], stats["p90"], stats["p99"], stats["max"]) == (50, 90, 99, 100)
    assert percentiles([]) == {}


def test_frames_split_anywhere_are_parsed_once() -> None:
    """Chat, notices and a ping, cut at every byte boundary: the same counts every time."""
    frames = [_server_frame(json.dumps({"notice": chat_text(i, 5, 40), "name": "a"},
                                       separators=(",", ":")).encode()) for i in range(3)]
    frames.insert(1, _server_frame(b'{"is_mute":false,"user_uid":"u"}'))
    frames.insert(2, bytes((0x89, 1)) + b"k")  # a ping
    frames.append(_server_frame('{"notice":"会议室状态发送变更","isMute":true}'.encode()))
    frames.append(_server_frame(b"x" * 300))  # a 16-bit length, not ours
    stream = b"".join(frames)
    for cut in range(1, len(stream)):
        ours, theirs = socket.socketpair()
        try:
            poller = Poller(Seed())
            member = Member(0, ours)
            poller.feed(member, stream[:cut], 10)
            poller.feed(member, stream[cut:], 20)
            assert list(member.seqs) == [0, 1, 2]
            assert all(lat in (5, 15) for lat in member.lat)
            assert member.t_joined and len(member.controls) == 1 and poller.controls == 1
            assert member.pending == b"" and poller.chats == 3
            pong = theirs.recv(64)
            assert pong[0] == 0x8A and pong[1] == 0x81  # a masked pong of one byte
            assert bytes([pong[6] ^ pong[2]]) == b"k"
        finally:
            ours.close()
            theirs.close()


async def test_a_notice_is_timed_when_it_reached_the_socket_not_when_it_was_read() -> None:
    # the flip's "told": a member with a reader of its own would have had it then
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    poller = Poller(Seed(), arrival_stamps=True)
    member = Member(0, ours)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(poller.run)
                poller.add(member, b"")
                # the kernel turns receive stamps on for the whole stack a moment after the
                # first socket asks (a deferred switch, slower on a busy machine); until then a
                # read is stamped when made: wait until a notice read late shows it
                for _ in range(50):
                    sent, told, read = await _notice_read_late(poller, member, theirs, 0.02)
                    if read - told >= 15_000_000:
                        break
                else:
                    pytest.fail("no notice was stamped when it arrived")
                sent, told, read = await _notice_read_late(poller, member, theirs, 0.2)
                nursery.cancel_scope.cancel()
    finally:
        ours.close()
        theirs.close()
    assert sent - 5_000_000 < told < sent + 50_000_000, (told - sent) / 1e6
    assert read - told >= 150_000_000, (read - told) / 1e6


async def _notice_read_late(
    poller: Poller, member: Member, theirs: socket.socket, late: float
) -> tuple[int, int, int]:
    """A control notice sent to the member while the poller cannot read for ``late`` s:
    (when it was sent, when it was told, when it was read), ns."""
    count = len(member.controls_read)
    sent = time.monotonic_ns()
    theirs.send(_server_frame('{"notice":"会议室状态发送变更","isMute":true}'.encode()))
    time.sleep(late)  # noqa: ASYNC251 - blocks the poller too: it reads that much later
    while len(member.controls_read) == count:
        await trio.sleep(0.01)
    return sent, member.controls[-1], member.controls_read[-1]


def test_v1_and_socketio_frames_are_recognised() -> None:
    """Each adapter's chat pattern and notices, on frames as their servers write them."""
    v1_chat = json.dumps({"type": "chat", "seq": 7, "ts": 1.5,
                          "from": {"id": "ab", "name": "m0", "role": "host"},
                          "text": chat_text(3, 9, 40)}, separators=(",", ":")).encode()
    io_chat = b'42["chat",' + json.dumps(chat_text(4, 9, 40)).encode() + b"]"
    cases: list[tuple[Any, list[bytes], int]] = [
        (V1(), [b'{"type":"welcome","you":{}}', v1_chat,
                b'{"type":"member_joined","member":{}}',
                b'{"type":"members_changed","events":[{"type":"member_joined"},'
                b'{"type":"member_left"},{"type":"member_joined"}]}',
                b'{"type":"controls","controls":{},"revision":3}',
                b'{"type":"ack","of":"chat","seq":7}'], 3),
        (SocketIO(), [b'0{"sid":"x","pingInterval":25000}', b'40{"sid":"y"}', io_chat, b"2"], 4),
    ]
    for protocol, payloads, seq in cases:
        ours, theirs = socket.socketpair()
        try:
            poller = Poller(protocol)
            member = Member(0, ours)
            poller.feed(member, b"".join(map(_server_frame, payloads)), 10)
            assert list(member.seqs) == [seq] and list(member.lat) == [1]
            assert member.t_joined and not member.errors
            if protocol.name == "v1":
                assert poller.controls == 1 and poller.join_notices == 1 + 2
            else:  # the Engine.IO ping is answered with a pong, "3"
                pong = theirs.recv(64)
                assert pong[0] == 0x81 and pong[1] == 0x81 and pong[6] ^ pong[2] == ord("3")
        finally:
            ours.close()
            theirs.close()
    assert SocketIO().chat("a\"b") == b'42["chat","a\\"b"]'
    assert json.loads(V1().chat("hi")) == {"type": "chat", "text": "hi"}
    assert json.loads(V1().control(Seed().created({"meetingUid": "m", "userUid": "k"}), True)) \
        == {"type": "set_controls", "controls": {"mic": False}}


def _server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload


def test_client_frames_are_masked() -> None:
    ours, theirs = socket.socketpair()
    try:
        member = Member(0, ours)
        for payload in (b"", b"hi", b"y" * 200, b"z" * 70000):
            frame = member.frame(0x1, payload)
            n = len(payload)
            head = 2 if n < 126 else 4 if n < 65536 else 10
            assert frame[1] & 0x80 and frame[head:head + 4] == member.mask
            body = frame[head + 4:]
            assert bytes(b ^ member.mask[i % 4] for i, b in enumerate(body)) == payload
    finally:
        ours.close()
        theirs.close()


def test_png_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rmeeting.bench import plot

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr("importlib.import_module", missing)
    with pytest.raises(plot.PlotUnavailable, match=r"pip install 'rmeeting\[bench\]'"):
        plot.write_png({"scenario": "fanout", "joined": 1}, str(tmp_path / "x.png"))


async def test_flip_camera_with_every_device_on_counts_frames(server: RunningServer) -> None:
    """``--flag camera --devices-on``: the switch off finds every camera on, and each member
    receives one frame for it (the host two: its ack); a flip costs every member ~1 frame."""
    for via in ("member", "api"):
        flip = await _run(server, scenario="flip", protocol="v1", members=6, flips=3, gap=0.0,
                          via=via, flag="camera", devices_on=True)
        assert flip["flag"] == "camera" and flip["devices_on"] is True
        assert flip["flips"] == 3 and flip["flips_incomplete"] == 0
        assert len(flip["frames_per_member"]) == 3
        assert all(1 <= f <= 2 for f in flip["frames_per_member"]), flip["frames_per_member"]
        assert max(flip["frames_per_member_max"]) <= 2
        assert flip["first_flip_last_told_ms"] is not None
    assert bench_main(["flip", "--spawn", "--devices-on"]) == 2  # v1 only
    assert bench_main(["fanout", "--spawn", "--flag", "camera"]) == 2  # flips only
