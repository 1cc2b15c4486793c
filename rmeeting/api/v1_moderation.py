"""The v1 HTTP routes of moderation (docs/protocol.md, Moderation): one member's flags, turning
one member's device off, roles, the host hand-over, raised hands and asks to unmute.

They take the same bearer as the host routes (:func:`rmeeting.api.v1_http.v1_blueprint`): the
host key until a hand-over, or the member token of the host or a co-host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint

from ..moderator import Actor
from ..service import MeetingService
from ._http import BadRequest, field, json_body, json_response, only
from .v1_http import iso

__all__ = ["moderation_routes"]

RequireHost = Callable[..., Awaitable[Actor]]


def moderation_routes(bp: Blueprint, service: MeetingService, require_host: RequireHost) -> None:
    moderator = service.moderator

    @bp.patch("/meetings/<meeting_id>/members/<member_id>/controls")
    async def member_controls(meeting_id: str, member_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "controls")
        changes = field(body, "controls", dict)
        if changes is None:
            raise BadRequest("controls is required: an object of flag -> true/false/null")
        controls = await moderator.set_flags(meeting_id, actor, member_id, changes)
        own = controls.members.get(member_id, {})
        return json_response({"member_id": member_id, "revision": controls.revision,
                              "controls": {f: v for f, v in own.items() if f != "cohost"}})

    @bp.post("/meetings/<meeting_id>/members/<member_id>/turn-off")
    async def turn_off(meeting_id: str, member_id: str) -> Any:
        body = await json_body()  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "device")
        device = field(body, "device", str, "mic")
        if device not in ("mic", "camera"):
            raise BadRequest("device must be mic or camera")
        await moderator.turn_off(meeting_id, actor, member_id, device)
        return json_response({"member_id": member_id, "device": device})

    @bp.put("/meetings/<meeting_id>/members/<member_id>/role")
    async def set_role(meeting_id: str, member_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "role")
        role = field(body, "role", str)
        if role is None:
            raise BadRequest("role is required: cohost or member")
        controls = await moderator.set_role(meeting_id, actor, member_id, role)
        return json_response({"member_id": member_id, "role": role,
                              "revision": controls.revision})

    @bp.put("/meetings/<meeting_id>/host")
    async def hand_over(meeting_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "member_id")
        member_id = field(body, "member_id", str)
        if member_id is None:
            raise BadRequest("member_id is required")
        controls = await moderator.hand_over(meeting_id, actor, member_id)
        return json_response({"host": controls.host, "revision": controls.revision})

    @bp.get("/meetings/<meeting_id>/hands")
    async def hands(meeting_id: str) -> Any:
        """Raised hands, in the order they were raised."""
        raised = [r for r in await service.roster(meeting_id) if r.hand is not None]
        raised.sort(key=lambda r: (r.hand or 0.0, r.member_id))
        return json_response({"hands": [
            {"id": r.member_id, "name": r.name, "raised_at": iso(r.hand)} for r in raised]})

    @bp.delete("/meetings/<meeting_id>/members/<member_id>/hand")
    async def lower_hand(meeting_id: str, member_id: str) -> Any:
        actor = await require_host(meeting_id)
        was_up = await moderator.lower_hand(meeting_id, actor, member_id)
        return json_response({"member_id": member_id, "was_raised": was_up})

    @bp.delete("/meetings/<meeting_id>/hands")
    async def lower_hands(meeting_id: str) -> Any:
        actor = await require_host(meeting_id)
        return json_response({"lowered": list(await moderator.lower_all_hands(meeting_id,
                                                                               actor))})

    @bp.post("/meetings/<meeting_id>/members/<member_id>/unmute-request")
    async def answer_unmute(meeting_id: str, member_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "allow")
        allow = field(body, "allow", bool)
        if allow is None:
            raise BadRequest("allow is required: true or false")
        await moderator.answer_unmute(meeting_id, actor, member_id, allow)
        return json_response({"member_id": member_id, "allow": allow})
