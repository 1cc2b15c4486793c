"""The web console end to end, in headless Chromium (Debian's ``chromium``, driven by Playwright).

Real pages against a real server: ``rmeeting serve`` in a subprocess (embedded mode), the members
behind a small TCP proxy the test can cut, as a network would, to make the pages reconnect. A
second test runs a host and a member on two instances of a local cluster and changes a control
with the real etcdctl.

Set ``CONSOLE_SCREENSHOTS=docs/screenshots`` to refresh the README's screenshots (they are always
written under the test's tmp_path too).

A missing browser (or Playwright) fails these tests, it does not skip them: install Debian's
``chromium`` and the test extra (scripts/install-test-deps), or point ``CHROMIUM_PATH`` at one.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rmeeting.cluster.launcher import Instance, LocalCluster

from .clients import Api

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: history_limit for the embedded server: small, so a long absence makes a gap
HISTORY = 8
WAIT = 5000  # ms: any single wait for the page
pytestmark = pytest.mark.timeout(120)


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Chromium is not installed: the console tests need a headless Chromium "
                "(Debian: apt-get install chromium; or set CHROMIUM_PATH). "
                "scripts/install-test-deps installs it.", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]' "
                    "(scripts/install-test-deps does it)", pytrace=False)
    executable = _chromium()
    with sync_playwright() as playwright:
        # launch() gives the browser a fresh, temporary user data dir of its own
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                              timeout=30000)
        try:
            yield chromium
        finally:
            chromium.close()


class CuttableProxy:
    """A TCP proxy to ``upstream`` that can drop every connection at once, as a network does.

    ``cut()`` closes all the connections and holds new ones (they wait, unanswered) until
    ``resume()``: a page that reconnects meanwhile gets through only then."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait(timeout=30)
        try:
            if self._stopped:
                raise OSError("proxy stopped")
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            socks = list(self._sockets)
        self._drop(*socks)

    def resume(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()
        self.cut()
        self.resume()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Instance]:
    server = Instance("console", "", "", tmp_path / "server.log", env={
        "RMEETING_HISTORY_LIMIT": str(HISTORY), "RMEETING_WELCOME_HISTORY": str(HISTORY),
        "RMEETING_LOG_FORMAT": "text",
    })
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=10)


class Pages:
    """Browser contexts (one per person) and the page errors they report."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.errors: list[str] = []

    def open(self, name: str) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900},
                                           accept_downloads=True)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT)
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: {exc}"))
        page.on("dialog", lambda dialog: dialog.accept())  # kick / end ask to confirm
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    opened = Pages(browser)
    try:
        yield opened
    finally:
        opened.close()


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def chat_of(page: Any) -> Any:
    return page.locator("#chat li.msg .text")


def say(page: Any, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def roster_ids(page: Any) -> set[str]:
    return set(page.locator("#roster li").evaluate_all(
        "(items) => items.map(i => i.dataset.member)"))


def seqs(page: Any) -> list[int]:
    return [int(s) for s in page.locator("#chat li.msg").evaluate_all(
        "(items) => items.map(i => i.dataset.seq)")]


def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(target) / name)


def test_console_two_members_and_a_host(
    embedded: Instance, pages: Pages, tmp_path: Path
) -> None:
    expect = _expect()
    started = time.monotonic()
    proxy = CuttableProxy(embedded.port)
    try:
        # the host starts a meeting from the start page (directly on the server)
        host = pages.open("host")
        ws_urls: list[str] = []
        host.on("websocket", lambda ws: ws_urls.append(ws.url))
        host.goto(embedded.url + "/")
        host.fill("#create-name", "Design review")
        host.fill("#create-you", "Hana")
        host.get_by_role("button", name="Create and join as host").click()
        expect(host.locator("#room")).to_be_visible()
        expect(host.locator("#conn")).to_have_text("Connected")
        meeting_id = host.url.split("/m/", 1)[1].split("#", 1)[0]
        host_key = host.url.split("#host_key=", 1)[1]
        assert host_key and "host_key" not in host.url.split("#")[0]
        expect(host.locator("#me-role")).to_have_text("host")
        expect(host.locator("#invite-link")).to_have_value(f"{embedded.url}/m/{meeting_id}")

        # Ann opens the invite link (through the proxy); Bo pastes the API's join_url
        ann = pages.open("ann")
        ann.goto(f"{proxy.url}/m/{meeting_id}")
        expect(ann.locator("#lobby-title")).to_have_text("Join “Design review”")
        ann.fill("#lobby-you", "Ann")
        ann.click("#lobby-join")
        expect(ann.locator("#room")).to_be_visible()
        join_url = httpx.get(f"{proxy.url}/v1/meetings/{meeting_id}", timeout=5).json()["join_url"]
        assert join_url.startswith("ws://")
        bo = pages.open("bo")
        bo.goto(proxy.url + "/")
        bo.fill("#join-link", join_url)
        bo.fill("#join-you", "Bo")
        bo.locator("#join-form").get_by_role("button", name="Join").click()
        expect(bo.locator("#room")).to_be_visible()
        everyone = (host, ann, bo)
        for page in everyone:
            expect(page.locator("#roster li")).to_have_count(3)
        expect(ann.locator("#flag-camera")).to_be_disabled()  # only the host switches them
        expect(host.locator("#flag-camera")).to_be_enabled()

        # chat between them: the same history, in the same order, for everyone
        say(ann, "hello from Ann")
        expect(chat_of(host)).to_have_text(["hello from Ann"])
        say(bo, "hi Ann")
        expect(chat_of(host)).to_have_text(["hello from Ann", "hi Ann"])
        say(host, "welcome, both")
        history = ["hello from Ann", "hi Ann", "welcome, both"]
        for page in everyone:
            expect(chat_of(page)).to_have_text(history)

        # Bo turns the camera on; the host forbids cameras through the HTTP API
        bo.click("#camera-toggle")
        expect(bo.locator("#camera-toggle")).to_have_attribute("aria-pressed", "true")
        expect(host.locator("#roster li", has_text="Bo").locator(".dev.on")).to_have_count(1)
        flip = time.monotonic()
        response = httpx.patch(
            f"{embedded.url}/v1/meetings/{meeting_id}/controls",
            json={"controls": {"camera": False}},
            headers={"Authorization": f"Bearer {host_key}"}, timeout=5)
        assert response.status_code == 200, response.text
        for page in everyone:
            left = max(0.05, 1.0 - (time.monotonic() - flip))
            expect(page.locator("#flag-camera")).not_to_be_checked(timeout=left * 1000)
        shown_after = time.monotonic() - flip
        for page in everyone:
            expect(page.locator("[data-flag=camera] .who")).to_contain_text("by the host (API)")
        # that switched Bo's camera off, and a member may not turn one on: the server says why
        expect(bo.locator("#camera-toggle")).to_have_attribute("aria-pressed", "false")
        ann.click("#mic-toggle")
        expect(ann.locator("#mic-toggle")).to_have_attribute("aria-pressed", "true")
        ann.click("#camera-toggle")
        expect(ann.locator("#media-error")).to_have_text(
            "Refused: the host does not allow the camera now")
        expect(ann.locator("#camera-toggle")).to_have_attribute("aria-pressed", "false")

        # the network drops the members; the host chats on; they come back and catch up
        members_before = roster_ids(host)
        proxy.cut()
        for page in (ann, bo):
            expect(page.locator("#conn")).to_contain_text("Reconnecting")
        say(host, "while you were away 1")
        say(host, "while you were away 2")
        history += ["while you were away 1", "while you were away 2"]
        expect(chat_of(host)).to_have_text(history)
        host.click("#flag-camera")  # cameras allowed again, while the members cannot hear it
        expect(host.locator("[data-flag=camera] .who")).to_contain_text("by you")
        proxy.resume()
        for page in (ann, bo):
            expect(page.locator("#conn")).to_have_text("Connected")
            expect(chat_of(page)).to_have_text(history)
            # the welcome says what the flag is, not who changed it: the page says so
            expect(page.locator("#flag-camera")).to_be_checked()
            expect(page.locator("[data-flag=camera] .who")).to_contain_text(
                "changed while you were away")
            expect(page.locator("#chat .note.ok").last).to_have_text(
                "Reconnected. 2 messages sent while you were away:")
            expect(page.locator("#chat .note.gap")).to_have_count(0)
        expect(host.locator("#roster li")).to_have_count(3)
        assert roster_ids(host) == members_before  # the same members (their tokens), not new ones
        say(bo, "back")
        history.append("back")
        for page in everyone:
            expect(chat_of(page)).to_have_text(history)

        # a longer absence: more chat than the server keeps; the pages say so
        proxy.cut()
        expect(ann.locator("#conn")).to_contain_text("Reconnecting")
        burst = [f"burst {i}" for i in range(1, HISTORY + 3)]
        for text in burst:
            say(host, text)
        expect(chat_of(host)).to_have_count(len(history) + len(burst))
        proxy.resume()
        kept = history + burst[-HISTORY:]
        for page in (ann, bo):
            expect(page.locator("#conn")).to_have_text("Connected")
            expect(page.locator("#chat .note.gap")).to_have_text(
                "2 messages from while you were away are no longer kept by the server and "
                "cannot be shown.")
            expect(page.locator("#chat .note.ok").last).to_have_text(
                f"Reconnected. The last {HISTORY} messages sent while you were away:")
            expect(chat_of(page)).to_have_text(kept)
            numbers = seqs(page)
            assert numbers == sorted(set(numbers)), numbers  # no repeats, in order
        say(ann, "still here")
        for page in everyone:
            expect(chat_of(page).last).to_have_text("still here")
        expect(chat_of(ann)).to_have_count(len(kept) + 1)

        # a timed change from the host's switches: microphones off for 6 seconds. Only now,
        # with everyone connected to the end: a timer that runs out while a member is cut off
        # is told as "changed while you were away" (checked above), not "by the timer"
        host.fill("#duration", "0.1")
        host.click("#flag-mic")
        for page in everyone:
            expect(page.locator("#flag-mic")).not_to_be_checked()
            expect(page.locator("[data-flag=mic] .timer")).to_contain_text("back to on in 0:0")
        expect(host.locator("[data-flag=mic] .who")).to_contain_text("by you")
        expect(ann.locator("[data-flag=mic] .who")).to_contain_text("by Hana")
        expect(ann.locator("#mic-toggle")).to_have_attribute("aria-pressed", "false")
        timed_at = time.monotonic()
        screenshot(host, tmp_path, "console-host.png")
        screenshot(ann, tmp_path, "console-member.png")

        # the timer ran out: microphones are allowed again, for everyone, "by the timer"
        remaining = max(0.0, 6.0 - (time.monotonic() - timed_at))
        for page in everyone:
            expect(page.locator("#flag-mic")).to_be_checked(timeout=(remaining + 3) * 1000)
            expect(page.locator("[data-flag=mic] .who")).to_contain_text("by the timer")
            expect(page.locator("[data-flag=mic] .timer")).to_have_text("")

        # attendance as CSV, downloaded by the host's page (fetch + Bearer + Blob)
        with host.expect_download(timeout=WAIT) as download:
            host.click("#download-attendance")
        assert download.value.suggested_filename == f"attendance-{meeting_id}.csv"
        csv_text = Path(download.value.path()).read_text()
        rows = list(csv.reader(io.StringIO(csv_text)))  # every cell is quoted
        assert rows[0] == ["name", "member_id", "role", "joined_at", "left_at", "duration_s",
                           "reason", "sub"]
        assert sum(row[0] == "Ann" for row in rows) == 3  # joined, and back twice
        assert any(row[0] == "Hana" and row[2] == "host" for row in rows)

        # the host removes Bo, then ends the meeting
        host.get_by_role("button", name="Remove Bo").click()
        expect(bo.locator("#over-title")).to_have_text("You were removed")
        expect(host.locator("#roster li")).to_have_count(2)
        expect(ann.locator("#chat .note").last).to_have_text("Bo left (removed by the host).")
        host.click("#end-meeting")
        for page in (host, ann):
            expect(page.locator("#over-title")).to_have_text("The meeting has ended")
        # the ended meeting's attendance, for its host only, now and on a later visit
        expect(host.locator("#over-sessions tr")).to_have_count(len(rows) - 1)
        expect(host.locator("#over-sessions tr").first).to_contain_text("Hana")
        expect(ann.locator("#over-attendance")).to_be_hidden()
        host.goto(f"{embedded.url}/m/{meeting_id}#host_key={host_key}")
        host.reload()
        expect(host.locator("#over-title")).to_have_text("The meeting has ended")
        expect(host.locator("#over-text")).to_contain_text("Reason: ended by the host.")
        expect(host.locator("#over-sessions tr")).to_have_count(len(rows) - 1)
        assert pages.errors == []
        # the host key rode in the URL's fragment and the WebSocket's first frame: never in a
        # URL the server (or a proxy) sees, nor in the log
        assert host_key not in (tmp_path / "server.log").read_text()
        assert ws_urls and all(host_key not in url and "token" not in url for url in ws_urls)
    finally:
        proxy.stop()
    elapsed = time.monotonic() - started
    print(f"\nconsole scenario: {elapsed:.1f} s; API flag change shown on 3 pages after "
          f"{shown_after * 1000:.0f} ms")


async def test_console_pages_and_assets_are_served(api: Api) -> None:
    """No browser needed: the routes, types and headers of the page and its files."""
    for path in ("/", "/m/some-meeting"):
        page = await api.request("GET", path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert '<script src="/console/console.js" defer></script>' in page.text
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        asset = await api.request("GET", f"/console/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        again = await api.request("GET", f"/console/{name}",
                                  headers={"If-None-Match": asset.headers["etag"]})
        assert again.status_code == 304
    for missing in ("/console/nope.js", "/console/..%2Fapp.py", "/console/index.htm"):
        assert (await api.request("GET", missing)).status_code == 404


def _etcdctl(cluster: LocalCluster, *args: str) -> None:
    etcdctl = shutil.which("etcdctl")
    assert etcdctl, "etcdctl is not installed (Debian: etcd-client)"
    subprocess.run([etcdctl, "--endpoints", cluster.etcd.endpoint, *args], check=True,
                   timeout=10, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})


@pytest.mark.cluster
@pytest.mark.etcd
@pytest.mark.redis
def test_console_shows_an_operator_change_on_two_instances(
    pages: Pages, tmp_path: Path
) -> None:
    expect = _expect()
    with LocalCluster(size=2, directory=tmp_path / "cluster") as cluster:
        first, second = cluster.instances
        made = httpx.post(f"{first.url}/v1/meetings", json={"name": "Ops"}, timeout=5).json()
        host = pages.open("host")
        host.goto(f"{first.url}/m/{made['id']}#host_key={made['host_key']}")
        host.fill("#lobby-you", "Hana")
        host.click("#lobby-join")
        expect(host.locator("#room")).to_be_visible()
        member = pages.open("member")
        member.goto(f"{second.url}/m/{made['id']}")
        member.fill("#lobby-you", "Max")
        member.click("#lobby-join")
        for page in (host, member):
            expect(page.locator("#roster li")).to_have_count(2)

        # an operator turns chat off in etcd: both instances' pages show it, and by whom
        flip = time.monotonic()
        _etcdctl(cluster, "put", f"/rmeeting/meetings/{made['id']}/controls/chat", "false")
        for page in (host, member):
            expect(page.locator("#flag-chat")).not_to_be_checked(timeout=2000)
            expect(page.locator("[data-flag=chat] .who")).to_contain_text("by an operator")
            expect(page.locator("#chat .note.controls").last).to_have_text(
                "An operator turned chat off.")
        shown_after = time.monotonic() - flip
        say(member, "can I still talk?")
        expect(member.locator("#chat-error")).to_have_text(
            "Not sent: the host has turned chat off")
        expect(member.locator("#chat-input")).to_have_value("can I still talk?")
        assert pages.errors == []
    print(f"\noperator change (etcdctl) shown on 2 instances' pages after "
          f"{shown_after * 1000:.0f} ms")


@pytest.mark.cluster
@pytest.mark.etcd
@pytest.mark.redis
def test_console_waiting_room_across_two_instances(pages: Pages, tmp_path: Path) -> None:
    """join_policy lobby: the knockers (on one instance) wait in a waiting-room view; the host
    (on another) admits one and refuses one from the waiting-room list."""
    expect = _expect()
    with LocalCluster(size=2, directory=tmp_path / "cluster") as cluster:
        first, second = cluster.instances
        made = httpx.post(f"{first.url}/v1/meetings", json={
            "name": "Clinic", "join_policy": "lobby"}, timeout=5).json()
        host = pages.open("host")
        host.goto(f"{first.url}/m/{made['id']}#host_key={made['host_key']}")
        host.fill("#lobby-you", "Dr Hana")
        host.click("#lobby-join")
        expect(host.locator("#room")).to_be_visible()
        expect(host.locator("#lobby-card")).to_be_visible()  # empty, the meeting has a lobby
        expect(host.locator("#lobby-list li")).to_have_count(0)

        knockers = {}
        for name in ("Ann", "Bo"):
            page = knockers[name] = pages.open(name)
            page.goto(f"{second.url}/m/{made['id']}")
            page.fill("#lobby-you", name)
            page.click("#lobby-join")
            expect(page.locator("#waiting")).to_be_visible()
            expect(page.locator("#waiting-text")).to_contain_text(f"You are “{name}”")
        expect(host.locator("#lobby-list li")).to_have_count(2)
        expect(host.locator("#lobby-count")).to_have_text("(2)")
        screenshot(host, tmp_path, "console-waiting-room.png")

        host.get_by_role("button", name="Admit Ann").click()
        expect(knockers["Ann"].locator("#room")).to_be_visible()
        expect(knockers["Ann"].locator("#conn")).to_have_text("Connected")
        expect(knockers["Ann"].locator("#lobby-card")).to_be_hidden()  # not a member's business
        host.get_by_role("button", name="Refuse Bo").click()
        expect(knockers["Bo"].locator("#over-title")).to_have_text("Not let in")
        expect(host.locator("#lobby-list li")).to_have_count(0)
        for page in (host, knockers["Ann"]):
            expect(page.locator("#roster li")).to_have_count(2)
        assert pages.errors == []
