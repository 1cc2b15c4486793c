from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["dumps"]

log = logging.getLogger("rmeeting.wire")

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as the seed's Go server wrote it (non-ASCII kept as is).

    Never fails on text: input is checked where it is decoded (:mod:`._decode`), but a string
    that is not encodable (a lone surrogate stored before that check existed, or by hand) must
    not break the welcome or the fan-out of a whole meeting, so it is written as ``?``."""
    text = _encoder.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        log.warning("a string that is not UTF-8 was replaced on output")
        return text.encode("utf-8", "replace")
