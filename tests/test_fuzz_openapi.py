"""Schemathesis against the OpenAPI document the server serves (``GET /v1/openapi.json``).

Every operation, with requests generated from the document (valid ones and, in schemathesis'
negative mode, invalid ones): never a 5xx, every status code and content type is one the
document lists, every JSON body matches its schema, and every request is answered within a
per-request timeout. Twice: with generated ids and credentials (mostly refusals), and with a
real meeting and its host key (the paths that do something). Example counts follow the
Hypothesis profile (``HYPOTHESIS_PROFILE``, see tests/fuzz_support.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from requests.structures import CaseInsensitiveDict
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from rmeeting.api.openapi import openapi_document

from .conftest import make_config
from .fuzz_support import FUZZ, ThreadedServer, seed_meeting

pytestmark = pytest.mark.timeout(900)

#: seconds a request may take before it counts as unanswered
REQUEST_TIMEOUT = 5.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_server() -> Iterator[ThreadedServer]:
    # an admin token, so GET /v1/meetings can answer 200 as well as 401/403
    with ThreadedServer(make_config(admin_token="fuzz-admin-token-0123456789")) as running:
        yield running


def test_the_served_document_is_the_one_tested(api_server: ThreadedServer) -> None:
    served = httpx.get(api_server.url + "/v1/openapi.json", timeout=REQUEST_TIMEOUT)
    assert served.status_code == 200
    assert served.json() == openapi_document()


@schema.parametrize()
@FUZZ
def test_generated_requests(case: Case[Any], api_server: ThreadedServer) -> None:
    case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT)
    assert api_server.errors.take() == []


@schema.parametrize()
@FUZZ
def test_generated_requests_on_a_real_meeting(case: Case[Any], api_server: ThreadedServer) -> None:
    """The same, on a meeting that exists, as its host (a fresh meeting per case: a DELETE or
    a lock must not spoil the next one)."""
    if case.path_parameters is not None and "meeting_id" in case.path_parameters:
        meeting, host_key = seed_meeting(api_server.url)
        case.path_parameters["meeting_id"] = meeting
        if case.headers is None:
            case.headers = CaseInsensitiveDict()
        case.headers["Authorization"] = f"Bearer {host_key}"
    case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT)
    assert api_server.errors.take() == []
