"""The one error of the operator commands (its own module: the parser needs it, not httpx)."""

from __future__ import annotations

__all__ = ["OpsError"]


class OpsError(Exception):
    """A command failed: ``status`` 1 (refused, unreachable) or 2 (bad usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
