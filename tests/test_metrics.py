"""``GET /metrics``: the text format, and the values moving when things happen (embedded, and
against a real etcd for what only the watcher sees)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rmeeting.metrics import Registry
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import Api, open_raw_ws, open_v1
from .conftest import make_config
from .etcd_server import EtcdServer, running_etcd

DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


def value(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape, found by its name and labels (in any order)."""
    for line in text.splitlines():
        sample = SAMPLE.fullmatch(line)
        if sample and sample["name"] == name and _labels(sample["labels"]) == labels:
            return float(sample["value"])
    raise AssertionError(f"{name}{labels or ''} is not in the scrape")


SAMPLE = re.compile(r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)')


def _labels(text: str | None) -> dict[str, str]:
    return dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', text or ""))


async def scrape(api: Api) -> str:
    response = await api.request("GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def until(api: Api, name: str, at_least: float, **labels: str) -> str:
    while True:
        text = await scrape(api)
        if value(text, name, **labels) >= at_least:
            return text
        await trio.sleep(0.02)


def test_text_format() -> None:
    registry = Registry()
    registry.counter("c_total", "a counter\nwith a newline", ["path"]).labels('a"b\\').inc(2)
    registry.gauge("g", "a gauge").set(1.5)
    hist = registry.histogram("h_seconds", "a histogram", buckets=(0.1, 1.0))
    for observed in (0.05, 0.5, 5.0):
        hist.observe(observed)
    read: dict[tuple[str, ...], float] = {("x",): 3}
    registry.gauge_from("f", "read when scraped", lambda: read, ["k"])
    registry.counter_from("r_total", "a counter read when scraped", lambda: 7)
    text = registry.expose()
    assert "# HELP c_total a counter\\nwith a newline\n# TYPE c_total counter\n" in text
    assert value(text, "c_total", path='a\\"b\\\\') == 2
    assert "# TYPE g gauge\n" in text and value(text, "g") == 1.5
    assert "# TYPE h_seconds histogram\n" in text
    assert [value(text, "h_seconds_bucket", le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert value(text, "h_seconds_sum") == 5.55 and value(text, "h_seconds_count") == 3
    assert "# TYPE f gauge\n" in text and value(text, "f", k="x") == 3
    assert "# TYPE r_total counter\n" in text and value(text, "r_total") == 7
    assert "_created" not in text  # only the series docs/operations.md lists
    read[("y",)] = 4  # read again at each scrape
    assert value(registry.expose(), "f", k="y") == 4
    assert registry.names() == ["c_total", "g", "h_seconds", "f", "r_total"]


def test_registries_are_per_instance_and_refuse_a_name_twice() -> None:
    one, two = Registry(), Registry()
    one.counter("n_total", "in one").inc()
    two.counter("n_total", "in two")  # another instance in the same process: no clash
    assert value(one.expose(), "n_total") == 1 and value(two.expose(), "n_total") == 0
    with pytest.raises(ValueError):
        one.gauge("n_total", "again")
    with pytest.raises(ValueError):
        one.gauge_from("n_total", "again", lambda: 1)
    one.gauge_from("bad", "wrong labels", lambda: {("a", "b"): 1}, ["k"])
    with pytest.raises(ValueError, match="takes labels"):
        one.expose()


async def test_chat_controls_and_connections_move_the_metrics(
    server: RunningServer, api: Api
) -> None:
    created = (await api.request("POST", "/v1/meetings", json={"name": "m"})).json()
    mid, host = created["id"], {"Authorization": f"Bearer {created['host_key']}"}
    before = await scrape(api)
    assert value(before, "rmeeting_instance_info", instance_id=server.instance_id,
                 mode="embedded") == 1
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="a") as a, open_v1(server.url, mid, name="b"):
            text = await scrape(api)
            assert value(text, "rmeeting_websocket_connections", protocol="v1") == 2
            assert value(text, "rmeeting_members") == 2 and value(text, "rmeeting_meetings") == 1
            out = value(text, "rmeeting_frames_out_total")
            assert (await a.call("chat", text="hi"))["type"] == "ack"
            await a.recv_type("chat")
            text = await scrape(api)
            assert value(text, "rmeeting_chat_messages_in_total") == 1
            assert value(text, "rmeeting_frames_out_total") >= out + 2  # to a and to b
            assert value(text, "rmeeting_hub_wakeups_total") >= 1
            assert value(text, "rmeeting_hub_coalesced_frames_total") >= 0
            assert value(text, "rmeeting_hub_grow_rounds_total") >= 0
            assert value(text, "rmeeting_relay_lag_seconds_count") >= 1
            await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=host,
                              json={"controls": {"mic": False}})
            await a.recv_type("controls")
            text = await until(api, "rmeeting_flag_propagation_seconds_count", 1, origin="write")
            assert value(text, "rmeeting_flag_propagation_seconds_bucket",
                         origin="write", le="+Inf") == 1
    text = await scrape(api)
    assert value(text, "rmeeting_websocket_connections", protocol="v1") == 0


async def test_slow_consumer_is_counted(nursery: trio.Nursery) -> None:
    config = make_config(outbox_bytes=1 << 15, max_chat_chars=50000, chat_rate=1000.0,
                         chat_burst=1000)
    running: RunningServer = await nursery.start(serve_rmeeting, config)
    async with Api(running.url) as api:
        created = (await api.request("POST", "/v1/meetings", json={"name": "slow"})).json()
        mid = created["id"]
        sloth = await open_raw_ws(running.url, f"/v1/meetings/{mid}/ws?name=sloth", rcvbuf=4096)
        try:
            with trio.fail_after(20):
                async with open_v1(running.url, mid, name="talker") as talker:
                    while running.hub.statistics()["members"] < 2:
                        await trio.sleep(0.01)
                    # the sloth reads nothing: the kernel's buffers fill (a few MB), then its
                    # 32 KiB outbox
                    for i in range(200):
                        await talker.call("chat", text="x" * 50000)
                        if i % 10 == 0 and value(
                                await scrape(api), "rmeeting_slow_consumer_disconnects_total"):
                            break
                    await until(api, "rmeeting_slow_consumer_disconnects_total", 1)
        finally:
            await sloth.aclose()
    running.shutdown.set()


@pytest.mark.etcd
async def test_etcd_watch_metrics(nursery: trio.Nursery, etcd: EtcdServer) -> None:
    """A hand-written bad value is counted; etcdctl flips are timed from the watch, API writes
    from the write."""
    config = make_config(etcd=(etcd.endpoint,))
    running: RunningServer = await nursery.start(serve_rmeeting, config)
    async with Api(running.url) as api:
        created = (await api.request("POST", "/v1/meetings", json={"name": "w"})).json()
        mid, host = created["id"], {"Authorization": f"Bearer {created['host_key']}"}
        key = f"/rmeeting/meetings/{mid}/controls/camera"
        with trio.fail_after(20):
            text = await scrape(api)
            assert value(text, "rmeeting_etcd_watch_up") == 1
            assert value(text, "rmeeting_invalid_control_values_total") == 0
            await etcd.etcdctl("put", key, "maybe")
            text = await until(api, "rmeeting_invalid_control_values_total", 1)
            assert value(text, "rmeeting_etcd_watch_revision") > 0
            async with open_v1(running.url, mid, name="a") as a:
                await etcd.etcdctl("put", key, "false")
                assert (await a.recv_type("controls"))["by"] == "operator"
                await until(api, "rmeeting_flag_propagation_seconds_count", 1, origin="watch")
                await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=host,
                                  json={"controls": {"camera": True}})
                await a.recv_type("controls")
                text = await until(api, "rmeeting_flag_propagation_seconds_count", 1,
                                   origin="write")
                assert value(text, "rmeeting_etcd_watch_lag_seconds_count") >= 1
    running.shutdown.set()


def test_every_metric_is_documented() -> None:
    """The scrape has exactly the metrics of docs/operations.md's table: names, types, labels."""
    from rmeeting.instance_metrics import InstanceMetrics

    class Store:
        invalid_values = unknown_keys = watch_revision = watch_reconnects = malformed = 0
        watch_up = relay_up = True

    metrics = InstanceMetrics()
    stats = dict.fromkeys(("meetings", "members", "deliveries", "queued", "inbox_full", "wakeups",
                           "coalesced_frames", "grow_ticks"), 0)
    hub: Any = type("H", (), {"statistics": lambda self: stats})()
    metrics.bind(instance_id="i", cluster=True, hub=hub, meetings=Store(), chat=Store(),
                 service=type("S", (), {"accepting": True})(), tcp_connections=lambda: 0)
    documented = {
        (name, kind, frozenset(labels.split(",")) - {""})
        for name, labels, kind in re.findall(
            r"^\| `(rmeeting_[a-z_]+)(?:\{([a-z_,]+)\})?` \| (\w+) \|",
            DOCS.read_text(encoding="utf-8"), re.M)
    }
    text = metrics.expose()
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        labels: set[str] = set()
        for line in text.splitlines():
            sample = SAMPLE.fullmatch(line)
            if sample and sample["name"].removesuffix("_bucket").removesuffix("_sum") \
                    .removesuffix("_count") == name:
                labels |= set(_labels(sample["labels"])) - {"le"}
        exposed.add((name, kind, frozenset(labels)))
    # the webhook sender's metrics exist only with webhook_urls (bound apart: test_webhooks.py
    # reads them from a real server); every other documented one is exposed here
    webhook_metrics = {d for d in documented if d[0].startswith("rmeeting_webhook_")}
    assert len(webhook_metrics) == 5
    documented -= webhook_metrics
    assert len(documented) == 25
    assert exposed == documented
    assert set(metrics.registry.names()) == {name for name, _, _ in documented}
