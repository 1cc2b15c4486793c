"""rmeeting: a control plane for online meetings, on Trio.

The public surface is small: run an instance with :func:`serve_rmeeting` (or ``rmeeting serve``),
configured by :class:`Config` / :func:`load_config`. Everything else is an implementation detail.
"""

from .config import Config, ConfigError, load_config
from .server import RunningServer, serve_rmeeting

__all__ = ["Config", "ConfigError", "RunningServer", "__version__", "load_config", "serve_rmeeting"]

__version__ = "0.1.0"
