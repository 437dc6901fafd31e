"""schemathesis against the OpenAPI document a real `trioscale serve` publishes, over https:
no server error, no answer outside the schema, and no operation reachable without a key.

Bounded for CI (SCHEMATHESIS_EXAMPLES per operation, default 20; raise it for a longer run by
hand)."""

from __future__ import annotations

import json
import os
import re

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance, negative_data_rejection, not_a_server_error, response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))
# positive_data_acceptance is left out: the server's rules go beyond what JSON Schema says (a
# time in the future, a policy the engine accepts, an address of the record's family), and
# schemathesis does not generate string formats it reads as "date-time" faithfully.
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def api_key(api_server):
    key = api_server.ok("apikeys", "create").strip()
    listed = json.loads(api_server.ok("apikeys", "list", "-o", "json"))
    KEY_IDS[key] = next(k["id"] for k in listed if key.startswith(k["prefix"].removesuffix("***")))
    return key


KEY_IDS: dict[str, str] = {}


@pytest.fixture(scope="module")
def trusted(api_server):
    old = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(api_server.certs.ca)
    yield
    if old is None:
        os.environ.pop("REQUESTS_CA_BUNDLE")
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = old


def load(api_server, api_key):
    loaded = schemathesis.openapi.from_url(f"{api_server.url}/api/v1/openapi.json")
    loaded.config.update(tls_verify=str(api_server.certs.ca))
    # The event stream never ends by itself: tests/api/test_events.py reads it instead (and the
    # keyless check below still covers it).
    return loaded.exclude(path=STREAMS)


@pytest.fixture
def served_schema(api_server, api_key, trusted):
    return load(api_server, api_key)


STREAMS = "/api/v1/events"
schema = schemathesis.pytest.from_fixture("served_schema").exclude(path=STREAMS)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_operations_keep_to_the_schema(case, api_key, api_server):
    with_key(case, api_key)
    case.call_and_validate(checks=CHECKS, timeout=30)


def with_key(case, api_key: str) -> None:
    """Every generated request carries the key, also the negative ones that would drop it: a
    request without a valid key is test_no_operation_is_reachable_without_a_key's subject, and
    failed attempts would get this address rate-limited (429) for the rest of the run."""
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {api_key}"}
    # Nor may a generated ID expire or delete the run's own key ("1" is a likely guess).
    mine = KEY_IDS[api_key]
    if isinstance(case.body, dict) and str(case.body.get("id")) == mine and "apikey" in case.path:
        case.body = {**case.body, "id": "999999"}
    if isinstance(case.query, dict) and str(case.query.get("id")) == mine and "apikey" in case.path:
        case.query = {**case.query, "id": "999999"}
    # A webhook the run creates gets every later event: it must point at loopback (a closed
    # port), never at a generated host name the resolver would look up outside.
    if case.path == "/api/v1/webhook" and isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        if re.fullmatch(r"https?://\S+", case.body["url"]):
            case.body = {**case.body, "url": "http://127.0.0.1:9/hook"}


def test_stateful_sequences_keep_to_the_schema(api_server, api_key, trusted):
    machine = load(api_server, api_key).as_state_machine()

    answered = []

    class Workflow(machine):
        def before_call(self, case):
            with_key(case, api_key)

        def after_call(self, response, case):
            answered.append(response.status_code)

        def get_call_kwargs(self, case):
            return {"timeout": 30}

        def validate_response(self, response, case, **kwargs):
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance,
                                                     status_code_conformance])

    Workflow.run(settings=settings(max_examples=max(EXAMPLES // 2, 5), stateful_step_count=6, deadline=None,
                                   derandomize=True, suppress_health_check=list(HealthCheck)))
    assert sum(200 <= s < 300 for s in answered) >= 5, answered  # sequences got past validation


def test_no_operation_is_reachable_without_a_key(api_server, trusted):
    doc = requests.get(f"{api_server.url}/api/v1/openapi.json", timeout=10).json()
    statuses = []
    for path, item in doc["paths"].items():
        concrete = path.replace("{nodeId}", "1").replace("{oldId}", "1").replace("{id}", "1")
        concrete = concrete.replace("{newName}", "bob").replace("{prefix}", "abc")
        for method in item:
            for auth in ({}, {"Authorization": "Bearer hskey-api-aaaaaaaaaaaa-" + "0" * 64}):
                r = requests.request(method.upper(), api_server.url + concrete, headers=auth, json={}, timeout=10)
                assert r.headers["content-type"] == "application/problem+json", (method, path)
                statuses.append(r.status_code)
    # Failed attempts from one address are limited: after the first ones, 429 (still no access).
    assert set(statuses) <= {401, 429} and statuses[:10] == [401] * 10 and 429 in statuses
