"""Credentials: random secrets handed out once; only hashes kept, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections import OrderedDict, deque

import trio

__all__ = [
    "FailedGuesses",
    "bearer",
    "client_address",
    "hash_secret",
    "new_id",
    "new_secret",
    "secret_matches",
    "strong_user_uid",
]

#: a client-chosen seed ``userUid`` is a bearer credential: this long, of these characters,
#: and not a run of a few (a uuid4 has 36 characters; "1111111111111111" is refused)
MIN_USER_UID_CHARS = 16
MAX_USER_UID_CHARS = 128
MIN_DISTINCT_CHARS = 8
_USER_UID = re.compile(r"[A-Za-z0-9_-]+")


def new_secret() -> str:
    # never a leading "-": a secret is pasted after a flag (``--host-key <key>``), where a
    # leading dash reads as another option (1 secret in 64 did before)
    while True:
        secret = secrets.token_urlsafe(24)
        if not secret.startswith("-"):
            return secret


def new_id() -> str:
    return secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    # Secrets are 190-bit random strings (or the seed's uuid4 userUids): a plain digest is
    # enough, a slow KDF would only protect guessable passwords.
    # surrogatepass: a credential is compared, never written out; hashing must not raise
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def secret_matches(secret: object, stored_hash: str) -> bool:
    """``secret`` comes from a client and may be anything (a number in a JSON frame)."""
    if not isinstance(secret, str) or not secret or not stored_hash:
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, if that is one."""
    scheme, _, credential = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def strong_user_uid(user_uid: str) -> bool:
    """Whether a client-chosen seed ``userUid`` is long and varied enough to be a secret."""
    return (MIN_USER_UID_CHARS <= len(user_uid) <= MAX_USER_UID_CHARS
            and _USER_UID.fullmatch(user_uid) is not None
            and len(set(user_uid)) >= MIN_DISTINCT_CHARS)


def client_address(peer: str | None, forwarded_for: str | None) -> str:
    """Who is asking: the peer's address, or, when the peer is a proxy on loopback (the nginx
    in front of a cluster), the address that proxy appended last to ``X-Forwarded-For``."""
    peer = peer or ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if loopback and forwarded_for:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return peer


class FailedGuesses:
    """Failed credential checks per client address in a sliding window (``limit`` per
    ``window`` seconds): past it, :meth:`blocked` is true until old failures age out.
    At most ``max_clients`` addresses are tracked; past it the least recently failed is
    forgotten (a bound on memory, not a way around the limit for a single address)."""

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 10000) -> None:
        self.limit = limit
        self.window = window
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        horizon = trio.current_time() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def blocked(self, client: str) -> bool:
        times = self._recent(client)
        return times is not None and len(times) >= self.limit

    def failed(self, client: str) -> None:
        times = self._recent(client)
        if times is None:
            times = self._failures[client] = deque(maxlen=self.limit)
        times.append(trio.current_time())
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)
