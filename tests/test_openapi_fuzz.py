"""schemathesis over the whole OpenAPI document, public and admin, against the running gateway.

For every operation, cases that fit the document (positive) and cases that do not (negative), a
bounded and derandomised number of each: no answer is a 5xx, every status is one the document
lists, every answer satisfies its documented schema, and a positive case is never refused as bad
input (400), save for the few refusals no schema can foresee (listed in `FORESEEABLE_400`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import Stack

# Per operation and mode: 35 operations x 2 modes x 25 take about a minute on the 2-core box.
EXAMPLES_MAX = 25
# Webhook endpoints point here: nothing listens on the discard port, and no event the fuzzer causes
# may ever leave the machine (a generated https://10.1.2.3 would).
SAFE_WEBHOOK_URL = "https://127.0.0.1:9/fuzz"
# 400s that a body fitting the document can still earn: a key already used with another request
# (the fuzzer reuses short strings), a payment method the processor never issued (no schema knows
# which tokens exist), a phone number its country's numbering plan does not assign or a country
# INVO does not text (libphonenumber's metadata, which no pattern carries), a routing number whose
# ABA checksum fails (no pattern carries a checksum), a payout of more than the tenant is owed.
FORESEEABLE_400 = {
    "IDEMPOTENCY_KEY_REUSED",
    "INVALID_PAYMENT_METHOD",
    "INVALID_PHONE_NUMBER",
    "PHONE_COUNTRY_NOT_ALLOWED",
    "INVALID_ROUTING_NUMBER",
    "AMOUNT_EXCEEDS_OWED",
    "DAY_IN_THE_FUTURE",  # a statement of a day after today, which no schema can foresee
}
# The providers' events need their signature over the body (Stripe's, Modern Treasury's), which no
# generated case carries: every positive case is a 400 INVALID_SIGNATURE by design.
UNSIGNABLE = {("POST", "/webhooks/processor"), ("POST", "/webhooks/ach")}
# NDJSON is not one JSON document: its lines are checked by tests/test_ledger_export.py instead.
STREAMED = {("GET", "/api/players/balances/export")}


class Fuzz:
    def __init__(self, stack: Stack) -> None:
        self.base_url = stack.gateway_url
        self.admin = {"Authorization": f"Bearer {stack.env['INVO_ADMIN_TOKEN']}"}
        self.http = requests.Session()
        # The partner whose key opens /api; the admin operations work on another tenant, so that
        # rotating or revoking keys, suspending or rate-limiting does not close /api mid-run.
        partner = self.create_tenant(rate_limit_per_second=100000)
        self.sdk = {"X-Game-Secret-Key": partner["sdk_key"]}
        target = self.create_tenant(rate_limit_per_second=100000)
        test = self.http.post(f"{self.base_url}/api/webhooks/test", headers=self.sdk, timeout=30)
        assert test.status_code == 201, test.text
        self.path_parameters = {
            "tenant_id": target["tenant_id"],
            "key_id": target["sdk_key_id"],
            "delivery_id": test.json()["delivery_id"],
        }

    def create_tenant(self, **settings_: Any) -> dict[str, Any]:
        body = {"name": "Fuzz", "currency_name": "Fuzz Coins", "webhook_url": SAFE_WEBHOOK_URL, **settings_}
        resp = self.http.post(f"{self.base_url}/admin/tenants", json=body, headers=self.admin, timeout=30)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def headers_for(self, path: str) -> dict[str, str]:
        if path.startswith("/api/"):
            return self.sdk
        if path.startswith("/admin/"):
            return self.admin
        return {}


@pytest.fixture(scope="module")
def fuzz(stack: Stack) -> Iterator[Fuzz]:
    f = Fuzz(stack)
    yield f
    f.http.close()


@pytest.fixture(scope="module")
def api_schema(fuzz: Fuzz) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz.base_url}/openapi.json")


def _tame(case: Case) -> None:
    """What the fuzzer must not send, for the reasons above each line."""
    if isinstance(case.body, dict) and "webhook_url" in case.body:
        case.body["webhook_url"] = SAFE_WEBHOOK_URL
    if isinstance(case.query, dict):
        # A cursor is opaque: only one the API returned is valid, and none is generated.
        case.query.pop("cursor", None)


def _error_code(response: Any) -> str:
    try:
        return str(json.loads(response.content).get("error_code", ""))
    except (ValueError, AttributeError):
        return ""


def _operations(schema: schemathesis.BaseSchema) -> list[Any]:
    ops = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise AssertionError(f"an operation schemathesis cannot read: {result.err()}")
        ops.append(result.ok())
    assert len(ops) > 30, "the document lost its operations"
    return ops


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


def _runner(fuzz: Fuzz, operation: Any, mode: GenerationMode) -> Any:
    key = (operation.method.upper(), operation.path)
    checks = [not_a_server_error, status_code_conformance]
    if key not in STREAMED:
        checks += [content_type_conformance, response_schema_conformance]

    @settings(
        max_examples=EXAMPLES_MAX,
        derandomize=True,  # the same cases on every run, in CI too
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fuzz.path_parameters))
    def run(case: Case) -> None:
        _tame(case)
        response = case.call_and_validate(
            base_url=fuzz.base_url, session=fuzz.http, headers=fuzz.headers_for(case.path), checks=checks
        )
        if (
            mode is GenerationMode.POSITIVE
            and response.status_code == 400
            and key not in UNSIGNABLE
            and _error_code(response) not in FORESEEABLE_400
        ):
            raise AssertionError(
                f"a case that fits the document was refused: {response.content[:300]!r}"
                f" (body {case.body!r:.300}, query {case.query!r})"
            )

    return run


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, fuzz: Fuzz, mode: GenerationMode
) -> None:
    failures: list[str] = []
    for operation in _operations(api_schema):
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to get wrong: /healthz takes no input
        try:
            _runner(fuzz, operation, mode)()
        except Exception as exc:  # every operation's failure, not just the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
