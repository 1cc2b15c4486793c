"""Join tokens on their own (no server): every hostile token gets a clear code, never a crash.

The same refusals over a real WebSocket, embedded and on a cluster, are in
tests/test_deployments.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import pytest

from rmeeting.join_tokens import TokenRefused, mint_join_token, verify_join_token

KEY = "unit-test-key-0123456789abcdef-012345"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header: bytes, payload: bytes) -> str:
    """A token with any bytes as its parts, correctly signed with KEY."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def test_a_good_token_grants_its_claims() -> None:
    grant = verify_join_token(mint_join_token(KEY, "m", "  Ann  ", role="cohost", sub="u1"),
                              "m", ["another-key-0123456789abcdef-0123456", KEY])
    assert (grant.meeting_id, grant.name, grant.role, grant.sub) == ("m", "Ann", "cohost", "u1")


def test_names_are_trimmed_to_the_limit() -> None:
    grant = verify_join_token(mint_join_token(KEY, "m", "x" * 20), "m", [KEY], max_name_chars=8)
    assert grant.name == "x" * 8
    with pytest.raises(TokenRefused) as refused:  # past four times the limit: not a name
        verify_join_token(mint_join_token(KEY, "m", "x" * 33), "m", [KEY], max_name_chars=8)
    assert refused.value.code == "token_bad_claim"


@pytest.mark.parametrize(("token", "code"), ids=lambda v: str(v)[:24], argvalues=[
    ("", "token_malformed"),
    ("a.b", "token_malformed"),
    ("x" * 5000, "token_malformed"),
    (_b64(b"[" * 1500 + b"]" * 1500) + ".e30.sig", "token_malformed"),
    (_b64(b'{"alg":"HS256"}') + "." + _b64(b"[" * 1400 + b"]" * 1400) + ".sig",
     "token_signature"),
    (_signed(b'{"alg":"HS256"}', b"[" * 1400 + b"]" * 1400), "token_malformed"),
    (_signed(b'{"alg":"HS256"}', b'{"meeting": "m", "exp": 1' + b"0" * 5000 + b"}"),
     "token_malformed"),
    (_signed(b'{"alg":"HS256"}', b"\xff\xfe not json"), "token_malformed"),
    (_b64(b"\xff\xfe") + ".e30.sig", "token_malformed"),
    (_b64(b'{"alg":"HS512"}') + ".e30.sig", "token_algorithm"),
    (jwt.encode({"meeting": "m", "name": "n", "role": "member", "exp": 10**12}, KEY,
                algorithm="HS256")[:-4] + "AAAA", "token_signature"),
    (jwt.encode({"meeting": "m", "name": "n", "role": "member", "exp": "soon"}, KEY,
                algorithm="HS256"), "token_malformed"),
    (jwt.encode({"meeting": ["m"], "name": "n", "role": "member", "exp": 10**12}, KEY,
                algorithm="HS256"), "token_bad_claim"),
    (jwt.encode({"meeting": "m", "name": "", "role": "member", "exp": 10**12}, KEY,
                algorithm="HS256"), "token_bad_claim"),
    (jwt.encode({"meeting": "m", "name": "n", "role": "member", "exp": 10**12,
                 "sub": "\udfff"}, KEY, algorithm="HS256"), "token_bad_claim"),
])
def test_hostile_tokens_get_a_clear_code(token: str, code: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        verify_join_token(token, "m", [KEY])
    assert refused.value.code == code


def test_without_api_keys_tokens_are_off() -> None:
    with pytest.raises(TokenRefused) as refused:
        verify_join_token(mint_join_token(KEY, "m", "n"), "m", [])
    assert refused.value.code == "tokens_disabled"


def test_clock_skew_of_a_few_seconds_is_tolerated() -> None:
    token = mint_join_token(KEY, "m", "n", ttl=-2, now=time.time())
    assert verify_join_token(token, "m", [KEY]).name == "n"
