"""rmeeting: a control plane for online meetings, on Trio.

The public surface is small: run an instance with :func:`serve_rmeeting` (or ``rmeeting serve``),
configured by :class:`Config` / :func:`load_config`. Everything else is an implementation detail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from .server import RunningServer, serve_rmeeting

__all__ = ["Config", "ConfigError", "RunningServer", "__version__", "load_config", "serve_rmeeting"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The server (Quart, Hypercorn) is imported on first use, so that the command line's client
    # commands (`rmeeting controls show ...`) start in a fraction of the time.
    if name in ("RunningServer", "serve_rmeeting"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'rmeeting' has no attribute {name!r}")
