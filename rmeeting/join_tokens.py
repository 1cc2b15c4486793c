"""Join tokens: JWTs (HS256) that an application's backend signs with one of the ``api_keys``.

Claims: ``meeting`` (the meeting id), ``name``, ``role`` (``host``, ``cohost`` or ``member``),
``exp`` (required), and optionally ``sub`` (the application's user id, carried into attendance)
and ``nbf``. Every way a token can be wrong has its own error code (docs/integration.md), so an
integrator sees at once which of its claims or keys is off; the close code is always 4401.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jwt

__all__ = ["JoinGrant", "TokenRefused", "mint_join_token", "verify_join_token"]

TokenRole = Literal["host", "cohost", "member"]
ROLES: tuple[TokenRole, ...] = ("host", "cohost", "member")
#: longer than this is not a token anyone minted for us (a JWT of these claims is ~300 chars)
MAX_TOKEN_CHARS = 4096
MAX_SUB_CHARS = 256
#: seconds of clock difference tolerated on exp and nbf between the backend and this server
LEEWAY = 5.0


class TokenRefused(Exception):
    """``code`` is one of: token_malformed, token_algorithm, token_signature, token_expired,
    token_not_yet_valid, token_missing_claim, token_bad_claim, token_wrong_meeting,
    tokens_disabled."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JoinGrant:
    """What a valid token lets its holder do."""

    meeting_id: str
    name: str
    role: TokenRole
    sub: str


def _text(claims: dict[str, Any], name: str, limit: int) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip():
        raise TokenRefused("token_bad_claim", f"the {name} claim must be a non-empty string")
    if len(value) > limit:
        raise TokenRefused("token_bad_claim", f"the {name} claim is longer than {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800"): not text
        raise TokenRefused("token_bad_claim", f"the {name} claim is not valid text") from exc
    return value


def verify_join_token(
    token: str, meeting_id: str, keys: Sequence[str], *, max_name_chars: int = 64
) -> JoinGrant:
    """The grant of a token for ``meeting_id``, or :class:`TokenRefused` saying what is wrong."""
    if not keys:
        raise TokenRefused("tokens_disabled", "this server has no api_keys: join tokens are off")
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TokenRefused("token_malformed", "the access token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, ValueError, TypeError, RecursionError) as exc:
        # RecursionError: a header of 2,000 nested arrays is still under MAX_TOKEN_CHARS
        raise TokenRefused("token_malformed", "the access token is not a JWT") from exc
    if "alg" not in header:
        raise TokenRefused("token_malformed", "the access token's header has no alg")
    if header.get("alg") != "HS256":  # "none" above all: an unsigned token is no token
        raise TokenRefused("token_algorithm", "join tokens must be signed with HS256")
    claims: dict[str, Any] | None = None
    for key in keys:  # every key is tried, so the time taken does not say which one matched
        try:
            found = jwt.decode(
                token, key, algorithms=["HS256"], leeway=LEEWAY,
                options={"require": ["exp"], "verify_aud": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("token_expired", "the access token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRefused("token_not_yet_valid", "the access token is not valid yet "
                               "(nbf in the future)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused("token_missing_claim", f"the access token has no {exc.claim} "
                               "claim") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError, RecursionError) as exc:
            raise TokenRefused("token_malformed", f"the access token is malformed: {exc}") from exc
        if claims is None:
            claims = found
    if claims is None:
        raise TokenRefused("token_signature", "the access token is not signed with an api key "
                           "of this server")
    for name in ("meeting", "name", "role"):
        if name not in claims:
            raise TokenRefused("token_missing_claim", f"the access token has no {name} claim")
    meeting = _text(claims, "meeting", 128)
    if meeting != meeting_id:
        raise TokenRefused("token_wrong_meeting", "the access token is for another meeting")
    name = _text(claims, "name", max_name_chars * 4).strip()[:max_name_chars]
    role = claims["role"]
    if role not in ROLES:
        raise TokenRefused("token_bad_claim", "the role claim must be host, cohost or member")
    sub = _text(claims, "sub", MAX_SUB_CHARS) if claims.get("sub") is not None else ""
    return JoinGrant(meeting, name, role, sub)


def mint_join_token(
    key: str, meeting_id: str, name: str, *, role: TokenRole = "member", ttl: float = 3600,
    sub: str | None = None, now: float | None = None,
) -> str:
    """What an application's backend does (docs/integration.md); the CLI and tests use it."""
    import time

    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"meeting": meeting_id, "name": name, "role": role,
                              "iat": int(issued), "exp": int(issued + ttl)}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, key, algorithm="HS256")
