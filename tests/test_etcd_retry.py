"""Which etcd errors a store call retries (until its timeout, then StoreUnavailable) and which
it raises at once. No etcd needed: the classification alone."""

from __future__ import annotations

import grpc  # type: ignore[import-untyped]
import pytest

from rmeeting.stores.etcd_client import _retryable


class _Failed(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "details", "retried"), [
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed", True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True),
    # etcd 3.4 passes its own request context's timeout on as UNKNOWN: a leader killed under
    # load made a v1 frame fail with it (tests/test_chaos_faults.py) before it was retried
    (grpc.StatusCode.UNKNOWN, "context deadline exceeded", True),
    (grpc.StatusCode.UNKNOWN, "something else", False),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", False),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", False),
])
def test_what_is_retried(code: grpc.StatusCode, details: str, retried: bool) -> None:
    assert _retryable(_Failed(code, details)) is retried
