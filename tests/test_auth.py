"""Credentials on their own (no server)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from rmeeting import auth


def test_a_new_secret_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # token_urlsafe's alphabet has "-": one secret in 64 started with it and read as a flag
    # after ``--host-key``
    drawn: Iterator[str] = iter(["-leading", "-again", "fine-secret"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert auth.new_secret() == "fine-secret"


def test_secrets_are_random_and_long() -> None:
    made = {auth.new_secret() for _ in range(200)}
    assert len(made) == 200
    assert all(len(s) >= 32 and not s.startswith("-") for s in made)
