"""Credentials: random secrets handed out once; only hashes kept, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["bearer", "hash_secret", "new_id", "new_secret", "secret_matches"]


def new_secret() -> str:
    return secrets.token_urlsafe(24)


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
