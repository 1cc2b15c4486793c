"""What goes over the WebSocket: one encoder module per protocol (the seed's, and v1)."""

from __future__ import annotations

from ._decode import BadInput, decode, readable_id
from ._json import dumps
from .seed import SeedEncoder
from .v1 import V1Encoder

__all__ = ["BadInput", "decode", "dumps", "encoders", "readable_id"]


def encoders() -> dict[str, SeedEncoder | V1Encoder]:
    """The hub's encoders (``rmeeting.hub.Encoder``), by the protocol name of a member."""
    return {"seed": SeedEncoder(), "v1": V1Encoder()}
