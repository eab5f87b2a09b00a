"""Schemathesis against the service's own OpenAPI schema, over real HTTP: no generated input gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from unistore import MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server

SECRET = b"schemathesis-secret-0123456789"
MAX_BODY = 64 * 1024


def _app(auth: bool) -> Any:
    settings = ServiceSettings(auth=auth, secret=SECRET if auth else None, max_body_size=MAX_BODY)
    return create_app(MemoryBackend(), settings=settings)


# The operations, read from the schema the app itself publishes (no server needed to collect them).
OPERATIONS = [
    f"{method.upper()} {path}" for path, item in _app(auth=False).openapi()["paths"].items() for method in item
]


@pytest.fixture(scope="module", params=["auth-on", "auth-off"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, dict[str, str]]]:
    auth = request.param == "auth-on"
    headers = {"authorization": "Bearer " + TokenAuthority(SECRET).issue(["admin"], expires_in=3600)} if auth else {}
    with running_server(_app(auth)) as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        yield schema, url, headers


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_generated_request_gets_a_server_error(
    served: tuple[Any, str, dict[str, str]], label: str, mode: GenerationMode
) -> None:
    schema, url, headers = served
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label

    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=10)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])
        case.validate_response(response, checks=[not_a_server_error], headers=headers)

    try:
        check()
    except Unsatisfiable:
        # Some operations have no way to be invalid by the schema (e.g. one free-form string path
        # parameter): negative generation can make nothing for them, which is not a failure.
        if mode is not GenerationMode.NEGATIVE:
            raise
