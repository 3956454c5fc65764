"""The ACH simulator (devstack/ach_sim) as the payouts service meets it: through Modern Treasury's
official SDK, against the session stack's simulator (INVO_ACH_API_BASE, settling every 0.3 s).

Create (201, the whole payment order, only the last four digits of the account), retrieve, list by
metadata and page, the idempotent replay and the 409 of a key still in flight, the 422s (never
echoing the account number), the 401, each magic account number's life with its webhooks (as the
simulator made them: `/_sim/webhooks`), and the stack's wiring. What a simulator process of our
own shows (the signed deliveries, a restart, the controls) is in test_ach_sim_process.py; the
helpers here serve both. After the module, neither the stack simulator's log nor its journal holds
any account number the tests sent.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from modern_treasury import (
    AsyncModernTreasury,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)
from modern_treasury.types import PaymentOrder

from devstack.stack import Stack
from devstack.stackcli import _banner
from tests.helpers import eventually

ROUTING = "021000021"  # a valid ABA routing number (JPMorgan Chase)
COMPLETES = "123456789"
FAILS = ("111111110", "1111111100042")
RETURNS = {"10001": ("R01", "Insufficient Funds"), "10003": ("R03", "No Account/Unable to Locate Account")}
SECRET_NUMBER = "987654321012"  # sent only in refused requests
USED_NUMBERS: set[str] = set()  # every account number this module sent the stack's simulator


# -- helpers (test_ach_sim_process.py uses them too) ----------------------------------------------


def receiving_account(number: str, routing: str = ROUTING) -> dict[str, Any]:
    """The inline receiving account, as the payouts service sends it."""
    USED_NUMBERS.add(number)
    return {
        "account_details": [{"account_number": number}],
        "routing_details": [{"routing_number": routing, "routing_number_type": "aba"}],
        "party_name": "Acme Games LLC",
        "account_type": "checking",
        "party_type": "business",
    }


def order_params(originating_account_id: str, number: str = COMPLETES, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "type": "ach",
        "direction": "credit",
        "amount": 1234,
        "currency": "USD",
        "originating_account_id": originating_account_id,
        "receiving_account": receiving_account(number),
        "description": "INVO partner payout",
        "metadata": {"payout_id": "po_" + uuid.uuid4().hex},
    }
    return {**params, **overrides}


async def create(client: AsyncModernTreasury, originating: str, number: str = COMPLETES, **kw: Any) -> PaymentOrder:
    return await client.payment_orders.create(**order_params(originating, number, **kw))


async def settled(client: AsyncModernTreasury, order_id: str, status: str, timeout_s: float = 10.0) -> PaymentOrder:
    """The order once it has reached `status`."""
    deadline = time.monotonic() + timeout_s
    while (po := await client.payment_orders.retrieve(order_id)).status != status:
        assert time.monotonic() < deadline, f"still {po.status}, not {status}, after {timeout_s} s"
        await asyncio.sleep(0.05)
    return po


async def control(base_url: str, action: str, *, get: bool = False, **body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        method = "GET" if get else "POST"
        async with http.request(method, f"{base_url}/_sim/{action}", json=None if get else body) as resp:
            return resp.status, await resp.json()


def assert_whole(order: dict[str, Any], number: str) -> None:
    """The full payment order of Modern Treasury's API (strictly valid for the SDK's model), with
    the account's last four digits and never the number itself."""
    PaymentOrder.model_validate(order)  # every required field, every type
    [detail] = order["receiving_account"]["account_details"]
    assert detail["account_number_safe"] == number[-4:] and "account_number" not in detail
    assert number not in json.dumps(order)


def assert_no_account_numbers(paths: list[pathlib.Path], numbers: set[str]) -> None:
    """No file holds a whole account number (short ones read as whole tokens: "10001" may be part
    of a trace number or a timestamp). Numbers too short to be one (refused at once) are skipped."""
    for path in paths:
        text = path.read_text(errors="replace") if path.exists() else ""
        tokens = set(re.findall(r"[0-9A-Za-z]+", text))
        for number in (n for n in numbers if len(n) >= 5):
            found = number in text if len(number) >= 8 else number in tokens
            assert not found, f"account number ending {number[-4:]} found in {path}"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_account_number_left(stack: Stack) -> Iterator[None]:
    yield
    assert_no_account_numbers(
        [stack.logs / "ach_sim.log", stack.home / "ach_sim" / "state.jsonl"], USED_NUMBERS | {SECRET_NUMBER}
    )


@pytest.fixture
async def mt(stack: Stack) -> AsyncIterator[AsyncModernTreasury]:
    """The SDK as the payouts service holds it: our own retries, so max_retries=0."""
    assert (await control(stack.env["INVO_ACH_API_BASE"], "reset"))[0] == 200
    async with AsyncModernTreasury(
        organization_id=stack.env["INVO_ACH_ORGANIZATION_ID"],
        api_key=stack.env["INVO_ACH_API_KEY"],
        base_url=stack.env["INVO_ACH_API_BASE"],
        max_retries=0,
        timeout=10.0,
    ) as client:
        yield client


@pytest.fixture
def originating(stack: Stack) -> str:
    return stack.env["INVO_ACH_ORIGINATING_ACCOUNT_ID"]


# -- the stack ------------------------------------------------------------------------------------


def test_the_stack_runs_the_simulator_with_its_secrets_and_names_it(stack: Stack) -> None:
    assert "ach_sim" in stack.procs and stack.procs["ach_sim"].poll() is None
    stored = json.loads((stack.home / "secrets.json").read_text())
    env = stack.env
    assert env["INVO_ACH_ORGANIZATION_ID"] == stored["ach_organization_id"]
    assert env["INVO_ACH_API_KEY"] == stored["ach_api_key"]
    assert env["INVO_ACH_WEBHOOK_KEYS"] == stored["ach_webhook_key"]
    assert env["INVO_ACH_ORIGINATING_ACCOUNT_ID"] == stored["ach_originating_account_id"]
    assert env["INVO_ACH_API_BASE"] == "http://" + env["INVO_ACH_SIM_LISTEN"]
    assert env["INVO_ACH_SIM_WEBHOOK_URL"] == stack.gateway_url + "/webhooks/ach"
    assert env["INVO_ACH_SIM_SETTLE_DELAY_S"] == "0.3"
    dev = stack.dev_env()
    for key in ("INVO_ACH_API_BASE", "INVO_ACH_ORGANIZATION_ID", "INVO_ACH_API_KEY", "INVO_ACH_ORIGINATING_ACCOUNT_ID"):
        assert dev[key] == env[key]
    banner = _banner(dev, logs_dir=stack.logs, simulator=True, ach_simulator=True, secrets_shown=False)
    assert f"ACH provider:   {env['INVO_ACH_API_BASE']} (the Modern Treasury simulator" in banner
    assert env["INVO_ACH_API_KEY"] not in banner


# -- the API --------------------------------------------------------------------------------------


async def test_create_answers_201_with_the_whole_order_then_retrieve_and_list_find_it(
    mt: AsyncModernTreasury, originating: str
) -> None:
    params = order_params(originating)
    raw = await mt.payment_orders.with_raw_response.create(**params, idempotency_key="k-" + uuid.uuid4().hex)
    assert raw.status_code == 201
    po = raw.parse()
    body = json.loads(raw.content)
    assert_whole(body, COMPLETES)
    assert (po.status, po.amount, po.currency, po.direction, po.type) == ("approved", 1234, "USD", "credit", "ach")
    assert po.originating_account_id == originating and po.metadata == params["metadata"]
    assert (po.receiving_account_type, po.reconciliation_status, po.transaction_ids) == (
        "external_account",
        "unreconciled",
        [],
    )
    assert (await mt.payment_orders.retrieve(po.id)).id == po.id
    page = await mt.payment_orders.list(metadata=params["metadata"])
    assert [o.id for o in page.items] == [po.id] and not page.has_next_page()
    with pytest.raises(NotFoundError):
        await mt.payment_orders.retrieve(str(uuid.uuid4()))


async def test_list_filters_by_metadata_newest_first_and_pages_by_cursor(
    mt: AsyncModernTreasury, originating: str
) -> None:
    tag = {"batch": uuid.uuid4().hex}
    made = [await create(mt, originating, metadata=tag) for _ in range(5)]
    await create(mt, originating)  # another batch's
    first = await mt.payment_orders.list(metadata=tag, per_page=2)
    assert [o.id for o in first.items] == [made[4].id, made[3].id] and first.has_next_page()
    assert first.per_page == 2 and first.after_cursor == made[3].id
    walked = [o.id async for o in mt.payment_orders.list(metadata=tag, per_page=2)]
    assert walked == [o.id for o in reversed(made)]
    assert (await mt.payment_orders.list(metadata={"batch": "none"})).items == []


async def test_the_same_idempotency_key_replays_the_first_answer(mt: AsyncModernTreasury, originating: str) -> None:
    key = "invo-payout-" + uuid.uuid4().hex
    params = order_params(originating)
    first = await mt.payment_orders.with_raw_response.create(**params, idempotency_key=key)
    # A retry (even with another amount, as Modern Treasury: it replays, it does not compare).
    again = await mt.payment_orders.with_raw_response.create(**{**params, "amount": 999}, idempotency_key=key)
    assert (again.status_code, again.content) == (first.status_code, first.content) == (201, first.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len((await mt.payment_orders.list(metadata=params["metadata"])).items) == 1


async def test_a_retry_while_the_first_is_in_flight_gets_409(
    mt: AsyncModernTreasury, originating: str, stack: Stack
) -> None:
    base = stack.env["INVO_ACH_API_BASE"]
    await control(base, "faults", hold_next=1, hold_s=1.0, match="POST /api/payment_orders")
    key = "invo-payout-" + uuid.uuid4().hex
    params = order_params(originating)
    first = asyncio.ensure_future(mt.payment_orders.create(**params, idempotency_key=key))

    async def held() -> bool:
        return (await control(base, "state", get=True))[1]["faults"]["hold_next"] == 0

    await eventually(held)
    with pytest.raises(ConflictError) as refused:
        await mt.payment_orders.create(**params, idempotency_key=key)
    assert refused.value.status_code == 409 and refused.value.body["errors"]["code"] == "conflict"  # type: ignore[index]
    made = await first
    assert (await mt.payment_orders.create(**params, idempotency_key=key)).id == made.id  # then replayed
    assert len((await mt.payment_orders.list(metadata=params["metadata"])).items) == 1


BAD_REQUESTS = [
    ("routing", {"receiving_account": receiving_account(SECRET_NUMBER, routing="021000022")}, "routing_number"),
    ("short account", {"receiving_account": receiving_account("123")}, "account_number"),
    ("long account", {"receiving_account": receiving_account("9" * 18)}, "account_number"),
    ("letters", {"receiving_account": receiving_account(SECRET_NUMBER[:8] + "abcd")}, "account_number"),
    ("zero amount", {"amount": 0}, "amount"),
    ("negative amount", {"amount": -5}, "amount"),
    ("fractional amount", {"amount": 12.5}, "amount"),
    ("wire", {"type": "wire"}, "type"),
    ("debit", {"direction": "debit"}, "direction"),
    ("euros", {"currency": "EUR"}, "currency"),
    ("another account", {"originating_account_id": str(uuid.uuid4())}, "originating_account_id"),
]


@pytest.mark.parametrize(("case", "change", "parameter"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_a_bad_request_is_a_422_that_never_echoes_the_account_number(
    mt: AsyncModernTreasury, originating: str, case: str, change: dict[str, Any], parameter: str
) -> None:
    params = {**order_params(originating, SECRET_NUMBER), **change}
    with pytest.raises(UnprocessableEntityError) as refused:
        await mt.payment_orders.create(**params, idempotency_key="k-" + uuid.uuid4().hex)
    errors = refused.value.body["errors"]  # type: ignore[index]
    assert errors["code"] == "parameter_invalid" and errors["parameter"].endswith(parameter), errors
    raw = refused.value.response.text
    for number in (SECRET_NUMBER, SECRET_NUMBER[:8] + "abcd", "9" * 18):
        assert number not in raw and number not in str(refused.value)
    assert (await mt.payment_orders.list(metadata=params["metadata"])).items == []


async def test_wrong_credentials_are_a_401(stack: Stack) -> None:
    base = stack.env["INVO_ACH_API_BASE"]
    org, key = stack.env["INVO_ACH_ORGANIZATION_ID"], stack.env["INVO_ACH_API_KEY"]
    for org_id, api_key in ((org, key + "x"), (str(uuid.uuid4()), key), (org, "")):
        async with AsyncModernTreasury(
            organization_id=org_id, api_key=api_key or "-", base_url=base, max_retries=0
        ) as client:
            with pytest.raises(AuthenticationError) as refused:
                await client.payment_orders.list()
            assert refused.value.body["errors"]["code"] == "invalid_key"  # type: ignore[index]
            with pytest.raises(AuthenticationError):
                await client.ping()


# -- the lifecycle --------------------------------------------------------------------------------


async def events_of(stack: Stack, order_id: str) -> list[tuple[str, str]]:
    """(event, the order's status in it) of each webhook the simulator made for the order."""
    _, listed = await control(stack.env["INVO_ACH_API_BASE"], f"webhooks?payment_order_id={order_id}", get=True)
    return [(w["event"], w["data"]["status"]) for w in listed["webhooks"]]


async def test_an_ordinary_account_is_processed_sent_and_completed(
    mt: AsyncModernTreasury, originating: str, stack: Stack
) -> None:
    po = await create(mt, originating)
    done = await settled(mt, po.id, "completed")
    assert done.reconciliation_status == "reconciled" and len(done.transaction_ids) == 1
    assert [r.reference_number_type for r in done.reference_numbers] == ["ach_trace_number"]
    assert done.current_return is None and done.vendor_failure_reason is None
    assert await events_of(stack, po.id) == [
        ("begin_processing", "processing"),
        ("finish_processing", "sent"),
        ("completed", "completed"),
    ]
    await asyncio.sleep(0.6)  # two more delays: nothing follows a completion
    assert (await mt.payment_orders.retrieve(po.id)).status == "completed"


@pytest.mark.parametrize("number", FAILS)
async def test_an_account_of_ones_fails_after_processing(
    mt: AsyncModernTreasury, originating: str, stack: Stack, number: str
) -> None:
    po = await create(mt, originating, number)
    failed = await settled(mt, po.id, "failed")
    assert failed.vendor_failure_reason and not failed.transaction_ids
    assert await events_of(stack, po.id) == [("begin_processing", "processing"), ("failed", "failed")]
    _, listed = await control(stack.env["INVO_ACH_API_BASE"], f"webhooks?payment_order_id={po.id}", get=True)
    assert listed["webhooks"][-1]["data"]["vendor_failure_reason"] == failed.vendor_failure_reason


@pytest.mark.parametrize("number", sorted(RETURNS))
async def test_a_100xx_account_completes_then_is_returned_with_its_code(
    mt: AsyncModernTreasury, originating: str, stack: Stack, number: str
) -> None:
    code, reason = RETURNS[number]
    po = await create(mt, originating, number, amount=2500)
    returned = await settled(mt, po.id, "returned")
    ret = returned.current_return
    assert ret is not None and (ret.code, ret.reason, ret.amount, ret.returnable_id) == (code, reason, 2500, po.id)
    assert returned.transaction_ids  # it had completed
    assert await events_of(stack, po.id) == [
        ("begin_processing", "processing"),
        ("finish_processing", "sent"),
        ("completed", "completed"),
        ("returned", "returned"),
    ]
    _, listed = await control(stack.env["INVO_ACH_API_BASE"], f"webhooks?payment_order_id={po.id}", get=True)
    assert listed["webhooks"][-1]["data"]["current_return"]["code"] == code
    assert_whole(listed["webhooks"][-1]["data"], number)
