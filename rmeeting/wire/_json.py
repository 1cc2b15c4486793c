from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as the seed's Go server wrote it (non-ASCII kept as is)."""
    return _encoder.encode(obj).encode("utf-8")
