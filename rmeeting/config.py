"""Configuration: defaults, then a TOML file, then ``RMEETING_*`` variables, then flags.

Every layer is checked against the known keys: a misspelled key is an error that names it, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Config", "ConfigError", "load_config"]

ENV_PREFIX = "RMEETING_"
#: read by the operator CLI (``rmeeting meetings ...``), not settings of a server: skipped here so
#: a shell set up for the CLI can still run ``rmeeting serve``
CLIENT_ENV = frozenset({"RMEETING_URL", "RMEETING_HOST_KEY"})


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    #: HOST:PORT to listen on; port 0 picks a free one (the bound address is printed)
    bind: str = "127.0.0.1:8080"
    #: etcd endpoints (cluster mode); empty means in-memory meetings and controls
    etcd: tuple[str, ...] = ()
    etcd_prefix: str = "/rmeeting"
    #: Redis URL (cluster mode); empty means in-memory members and chat. Or the URLs of Redis
    #: Cluster nodes, comma separated: a cluster is detected from the server
    redis: str = ""
    redis_prefix: str = "rmeeting"
    #: this instance's id in the cluster (default: a random one)
    instance_id: str = ""
    #: seconds the instance's liveness lease in etcd outlives it: after a crash, the others
    #: clean up its members within about this plus a second (cluster mode)
    instance_ttl: float = 5.0
    shards: int = 8
    #: largest WebSocket message accepted, in bytes (larger: close 1009)
    max_frame_bytes: int = 65536
    max_chat_chars: int = 2000
    max_name_chars: int = 64
    #: chat messages per second per member, sustained, and the burst allowed above it
    chat_rate: float = 20.0
    chat_burst: int = 40
    max_members: int = 1000
    max_meetings: int = 10000
    #: bytes a member's outgoing queue may hold before it is dropped as a slow consumer
    outbox_bytes: int = 1 << 20
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    #: chat messages kept per meeting for late joiners and resume
    history_limit: int = 500
    #: chat messages a joining member gets in its welcome
    welcome_history: int = 50
    #: seconds members get to go when the server stops
    shutdown_grace: float = 5.0
    #: bearer token for operator routes (``GET /v1/meetings``); empty turns them off
    admin_token: str = field(default="", repr=False)
    #: "auto" (JSON when stderr is not a terminal), "json" or "text"
    log_format: str = "auto"
    log_level: str = "info"
    # --- input validation and application limits (issue 10; docs/security.md) ---
    #: the public base URL clients reach this server at (``https://meet.example.com``); join_url
    #: is built from it. Empty: from the request's Host, only if it names this server itself
    public_url: str = ""
    #: control changes (set_controls, PATCH controls, seed control frames) per second per
    #: connection and per meeting, sustained, and the bursts allowed above that
    control_rate: float = 2.0
    control_burst: int = 20
    meeting_control_rate: float = 5.0
    meeting_control_burst: int = 50
    #: audit records kept per meeting; past it, the oldest are dropped
    audit_limit: int = 1000
    #: failed credential guesses (LeaveMeeting, Export) per client address per minute, then 429
    max_failed_guesses: int = 20
    # --- webhooks (docs/integration.md) ---
    #: endpoints that receive every meeting event (POST, signed); comma separated in the env
    webhook_urls: tuple[str, ...] = ()
    #: the Standard Webhooks secret that signs every delivery: ``whsec_`` + base64
    webhook_secret: str = field(default="", repr=False)
    # --- transport limits (docs/security.md, "Limits"; the front door and the HTTP bridge) ---
    #: open client connections (HTTP and WebSocket) at most; more are answered 503 and closed
    max_connections: int = 10000
    #: open connections from one client address at most (0: no such cap); behind a proxy or a
    #: load balancer every client has its address: raise it or set 0 there
    max_connections_per_ip: int = 1000
    #: largest request head (request line and headers) in bytes; larger: 431
    max_head_bytes: int = 16384
    #: seconds a new connection has to send its first request head whole; then 408 and close
    head_timeout: float = 10.0
    #: seconds an idle HTTP keep-alive connection stays open
    keep_alive_timeout: float = 5.0
    #: seconds an HTTP read (a piece of a body, a later head) may wait, then the connection is
    #: closed; also the time a whole request body has from its head (then 408), and how long
    #: a client may take none of its response's bytes (then closed)
    read_timeout: float = 30.0
    # --- moderation (issue 14; docs/protocol.md, Moderation) ---
    #: hand raises and lowers, and asks to unmute, per second per member, sustained, and the
    #: burst allowed above it (past it: rate_limited)
    hand_rate: float = 0.5
    hand_burst: int = 5

    # --- deployments (#12): API keys, join tokens, lifecycle (docs/integration.md) ---------
    #: keys of the application's backend and operators (``Authorization: Bearer <key>``): may
    #: create, list, end and read any meeting and change its controls; they also sign join tokens
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    #: "open": anyone may create a meeting; "api_key": creating needs one of ``api_keys``
    create_policy: str = "open"
    #: seconds a meeting may stay empty (nobody joined since it was created, or the last member
    #: left) before it ends by itself (reason "empty"); 0: never
    empty_timeout: float = 300.0
    #: seconds after its creation a meeting ends by itself (reason "max_duration"); 0: no limit
    max_duration: float = 0.0
    #: seconds an ended meeting's attendance and audit stay readable; then every trace is purged
    retention: float = 604800.0

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"bind must be HOST:PORT, not {self.bind!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def cluster(self) -> bool:
        return bool(self.etcd or self.redis)

    def validate(self) -> Config:
        self.host_port  # noqa: B018 - raises on a malformed bind
        positive = ("shards", "max_frame_bytes", "max_chat_chars", "max_name_chars", "chat_burst",
                    "max_members", "max_meetings", "outbox_bytes", "history_limit",
                    "control_burst", "meeting_control_burst", "audit_limit", "max_failed_guesses",
                    "hand_burst")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("chat_rate", "ping_interval", "ping_timeout", "shutdown_grace",
                     "control_rate", "meeting_control_rate", "hand_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_connections < 0 or self.max_connections_per_ip < 0:
            raise ConfigError("max_connections and max_connections_per_ip must be 0 (no cap) "
                              "or more")
        if self.max_head_bytes < 1024:
            raise ConfigError("max_head_bytes must be at least 1024")
        for name in ("head_timeout", "keep_alive_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.instance_ttl < 1:
            raise ConfigError("instance_ttl must be at least 1 (etcd leases count seconds)")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError("log_format must be auto, json or text")
        if self.welcome_history < 0 or self.welcome_history > self.history_limit:
            raise ConfigError("welcome_history must be between 0 and history_limit")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("public_url must start with http:// or https://")
        _validate_webhooks(self.webhook_urls, self.webhook_secret)
        self._validate_deployment()
        return self

    def _validate_deployment(self) -> None:
        if self.create_policy not in ("open", "api_key"):
            raise ConfigError("create_policy must be open or api_key")
        if self.create_policy == "api_key" and not self.api_keys:
            raise ConfigError("create_policy api_key needs at least one of api_keys")
        for name in ("empty_timeout", "max_duration", "retention"):
            if not 0 <= getattr(self, name) < 10 * 365 * 86400:
                raise ConfigError(f"{name} must be between 0 and ten years (seconds)")
        if any(len(key.encode()) < 32 for key in self.api_keys):
            # they sign join tokens (HS256): a short key can be brute-forced from one token
            raise ConfigError("each of api_keys must be at least 32 bytes (RFC 7518, HS256)")


def _validate_webhooks(urls: tuple[str, ...], secret: str) -> None:
    from urllib.parse import urlsplit

    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook_urls: {url!r} is not an http(s) URL")
    if len(set(urls)) != len(urls):
        raise ConfigError("webhook_urls: an endpoint is listed twice")
    if not secret:
        if urls:
            raise ConfigError("webhook_urls needs webhook_secret (whsec_ + base64)")
        return
    import base64
    import binascii

    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or len(key) < 16:
        raise ConfigError("webhook_secret must be whsec_ + base64 of at least 16 bytes "
                          "(make one with: rmeeting webhooks secret)")


_FIELDS = {f.name: f for f in fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if isinstance(value, (dict, list)):
            raise TypeError
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r}") from exc


def _apply(values: dict[str, Any], layer: Mapping[str, Any], origin: str) -> None:
    for key, value in layer.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r} in {origin}")
        values[name] = _coerce(name, value)


def load_config(
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from its layers; ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = file or env.get(ENV_PREFIX + "CONFIG") or None
    if file:
        try:
            data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
        _apply(values, data.get("rmeeting", data), str(file))
    from_env = {
        k[len(ENV_PREFIX):].lower(): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "CONFIG" and k not in CLIENT_ENV
    }
    _apply(values, from_env, "the environment (RMEETING_*)")
    _apply(values, {k: v for k, v in (overrides or {}).items() if v is not None}, "flags")
    return dataclasses.replace(Config(), **values).validate()
