"""The v1 WebSocket protocol (the modern API issue builds it out)."""

from __future__ import annotations

from ..service import MeetingService
from ..transport.frontdoor import Handshake
from ..wire import v1

__all__ = ["v1_session"]


async def v1_session(service: MeetingService, hs: Handshake) -> None:
    hs.reject(501, v1.error("not_implemented", "the v1 protocol is not served yet"))
