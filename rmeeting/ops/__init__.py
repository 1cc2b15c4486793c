"""The operator CLI: ``rmeeting meetings|controls|attendance|chat ...`` against a running server
or cluster, over its public HTTP API and v1 WebSocket (docs/operations.md).

Where: ``--url`` (default ``$RMEETING_URL``, else http://127.0.0.1:8080). Credentials: the
meeting's host key (``--host-key`` or ``$RMEETING_HOST_KEY``) for host commands, the server's
admin token (``--admin-token`` or ``$RMEETING_ADMIN_TOKEN``) to list meetings.

Exit status: 0 done, 1 the server refused (4xx/5xx) or could not be reached, 2 bad usage.

Modules: :mod:`._parser` (the commands and their options), :mod:`._http` (the HTTP commands),
:mod:`._chat` (``chat tail`` and ``chat join``, on trio-websocket), :mod:`._errors`.
"""

from __future__ import annotations

from ._parser import COMMANDS, add_commands, run

__all__ = ["COMMANDS", "add_commands", "run"]
