"""The console's moderation in headless Chromium (#14): the host's menu on a member in the
roster mutes one member and promotes another; a blocked member asks to unmute and the host
grants it; a raised hand shows for everyone, in order, and the host lowers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from rmeeting.cluster.launcher import Instance

from . import test_console
from .test_console import Pages, _expect, screenshot

browser, embedded, pages = test_console.browser, test_console.embedded, test_console.pages
pytestmark = pytest.mark.timeout(120)


def _menu(page: Any, name: str) -> Any:
    """Open the roster menu of the member called ``name``; its menu."""
    row = page.locator("#roster li", has_text=name)
    row.locator("details.member-menu summary").click()
    return row.locator(".menu")


def _join(pages: Pages, url: str, meeting_id: str, name: str) -> Any:
    page = pages.open(name)
    page.goto(f"{url}/m/{meeting_id}")
    page.fill("#lobby-you", name)
    page.click("#lobby-join")
    _expect()(page.locator("#room")).to_be_visible()
    return page


def test_console_mute_one_ask_to_unmute_hand_and_promotion(
    embedded: Instance, pages: Pages, tmp_path: Path
) -> None:
    expect = _expect()
    host = pages.open("host")
    host.goto(embedded.url + "/")
    host.fill("#create-name", "Moderated")
    host.fill("#create-you", "Hana")
    host.get_by_role("button", name="Create and join as host").click()
    expect(host.locator("#conn")).to_have_text("Connected")
    meeting_id = host.url.split("/m/", 1)[1].split("#", 1)[0]
    ann = _join(pages, embedded.url, meeting_id, "Ann")
    bo = _join(pages, embedded.url, meeting_id, "Bo")
    for page in (host, ann, bo):
        expect(page.locator("#roster li")).to_have_count(3)
    expect(ann.locator("#roster details.member-menu")).to_have_count(0)  # members have none

    # mute one: Ann's mic is on; the host's menu mutes her; she and Bo see it
    ann.click("#mic-toggle")
    expect(ann.locator("#mic-toggle")).to_have_attribute("aria-pressed", "true")
    expect(host.locator("#roster li", has_text="Ann").locator(".dev.on")).to_have_count(1)
    _menu(host, "Ann").get_by_role("menuitem", name="Mute").click()
    expect(ann.locator("#mic-toggle")).to_have_attribute("aria-pressed", "false")
    expect(ann.locator("#chat")).to_contain_text("muted you")
    expect(bo.locator("#roster li", has_text="Ann").locator(".dev.on")).to_have_count(0)

    # ask to unmute, granted: the host blocks Ann's mic; she asks; the host allows it
    expect(ann.locator("#ask-unmute")).to_be_hidden()
    _menu(host, "Ann").get_by_role("menuitem", name="Block unmuting").click()
    expect(ann.locator("#ask-unmute")).to_be_visible()
    ann.click("#mic-toggle")
    expect(ann.locator("#media-error")).to_contain_text("Refused")
    ann.click("#ask-unmute")
    expect(host.locator("#roster li", has_text="Ann").locator(".badge.ask")).to_be_visible()
    _menu(host, "Ann").get_by_role("menuitem", name="Allow to unmute").click()
    expect(ann.locator("#ask-unmute")).to_be_hidden()
    expect(host.locator("#roster li", has_text="Ann").locator(".badge.ask")).to_have_count(0)
    ann.click("#mic-toggle")
    expect(ann.locator("#mic-toggle")).to_have_attribute("aria-pressed", "true")

    # hands: Bo then Ann raise; everyone sees them in that order; the host lowers Bo's
    bo.click("#hand-toggle")
    expect(host.locator("#hands li")).to_have_text(["Bo"])
    ann.click("#hand-toggle")
    for page in (host, ann, bo):
        expect(page.locator("#hands li")).to_have_text(["Bo", "Ann"])
    screenshot(host, tmp_path, "console-moderation.png")
    _menu(host, "Bo").get_by_role("menuitem", name="Lower hand").click()
    for page in (host, bo):
        expect(page.locator("#hands li")).to_have_text(["Ann"])
    expect(bo.locator("#hand-toggle")).to_have_text("Raise hand")

    # promotion: Bo becomes a co-host, sees it, gets a menu on members and may switch flags
    _menu(host, "Bo").get_by_role("menuitem", name="Make co-host").click()
    expect(bo.locator("#me-role")).to_have_text("co-host")
    expect(ann.locator("#roster li", has_text="Bo").locator(".badge")).to_have_text("co-host")
    expect(bo.locator("#flag-chat")).to_be_enabled()
    menus = "details.member-menu"
    expect(bo.locator("#roster li", has_text="Ann").locator(menus)).to_have_count(1)
    expect(bo.locator("#roster li", has_text="Hana").locator(menus)).to_have_count(0)
    _menu(bo, "Ann").get_by_role("menuitem", name="Lower hand").click()
    expect(host.locator("#hands li")).to_have_count(0)
    members = httpx.get(f"{embedded.url}/v1/meetings/{meeting_id}/members", timeout=5).json()
    roles = {m["name"]: m["role"] for m in members["members"]}
    assert roles == {"Hana": "host", "Ann": "member", "Bo": "cohost"}
    assert not pages.errors, pages.errors
