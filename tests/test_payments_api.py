"""Currency purchases through the public gateway (the seed's "Direct API"): every documented
response, idempotency on purchase_reference, 3-D Secure and confirm-payment, order details and
their transition history, purchase.completed / purchase.failed on JetStream, identity_id, the
processor's signed webhooks in, and spending caps. The card processor is the Stripe simulator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest

from services.common.stack import Stack
from tests.helpers import Api, Response, assert_envelope, eventually

PURCHASE = "/api/currency-purchases/purchase-currency"
CONFIRM = "/api/currency-purchases/confirm-payment"
DETAILS = "/api/currency-purchases/order-details"
PROCESSOR_WEBHOOK = "/webhooks/processor"

VISA = "pm_card_visa"
DECLINED = "pm_card_chargeDeclined"
INSUFFICIENT = "pm_card_chargeDeclinedInsufficientFunds"
THREE_DS = "pm_card_authenticationRequired"


# -- helpers ------------------------------------------------------------------------------------


def email() -> str:
    """A fresh player for each use: per-player velocity limits are never hit by accident. The
    local part holds letters that are not hex digits, so it can never appear in an identity_id."""
    return f"zoe.player-{secrets.token_hex(4)}@example.com"


def ref() -> str:
    return f"ref-{secrets.token_hex(8)}"


def purchase_body(player: str, reference: str | None, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "player_email": player,
        "usd_amount": "10.00",
        "payment_method_id": VISA,
        **kw,
    }
    if reference is not None:
        body["purchase_reference"] = reference
    return body


async def buy(api: Api, t: dict[str, Any], player: str, reference: str | None = None, **kw: Any) -> Response:
    return await api.post(PURCHASE, key=t["sdk_key"], json=purchase_body(player, reference or ref(), **kw))


async def balance(api: Api, t: dict[str, Any], player: str) -> str:
    resp = await api.get(f"/api/players/balance?player_email={player}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def details(api: Api, t: dict[str, Any], order_id: str) -> Response:
    return await api.get(f"{DETAILS}?order_id={order_id}", key=t["sdk_key"])


async def order(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    resp = await details(api, t, order_id)
    assert resp.status == 200, resp
    return dict(resp.body)


async def order_reaches(api: Api, t: dict[str, Any], order_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        o = await order(api, t, order_id)
        return o if o["status"] == status else {}

    return await eventually(check, timeout_s=10)


def transitions(o: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(h["from"], h["to"]) for h in o["history"]]


async def check_ledger(api: Api) -> None:
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200, check
    assert check.body["ok"] is True, check.body


async def sim(api: Api, stack: Stack, action: str, body: dict[str, Any] | None = None) -> Any:
    """A test control of the processor simulator."""
    assert api.session is not None
    url = f"{stack.env['INVO_PROCESSOR_API_BASE']}/_sim/{action}"
    method = "GET" if action == "state" else "POST"
    async with api.session.request(method, url, json=body if body is not None else {}) as resp:
        payload = await resp.json()
        assert resp.status == 200, (action, resp.status, payload)
        return payload


@asynccontextmanager
async def sim_faults(api: Api, stack: Stack, **faults: Any) -> AsyncIterator[None]:
    await sim(api, stack, "faults", faults)
    try:
        yield
    finally:
        await sim(api, stack, "reset")


def stripe_signature(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme (as processor_sim.app.sign): v1 = hex HMAC-SHA256 of "<t>.<payload>"."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


async def send_processor_event(api: Api, payload: str, signature: str | None) -> Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await api.post(PROCESSOR_WEBHOOK, data=payload, headers=headers)


def processor_event(event_type: str, obj: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": f"evt_test_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": "2025-01-27.acacia",
            "created": int(time.time()),
            "livemode": False,
            "type": event_type,
            "data": {"object": obj},
        }
    )


class Events:
    """Every purchase.* event of one tenant on JetStream, by order."""

    def __init__(self, stack: Stack, tenant_id: str) -> None:
        self.stack = stack
        self.tenant_id = tenant_id
        self.seen: dict[str, dict[str, Any]] = {}  # event_id -> event

    def of(self, order_id: str, event_type: str) -> list[dict[str, Any]]:
        return [
            e for e in self.seen.values() if e["event_type"] == event_type and e["data"].get("order_id") == order_id
        ]

    async def collect_until(self, order_id: str, event_type: str) -> None:
        prefix = self.stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
        stream = self.stack.env.get("INVO_NATS_STREAM", "INVO_EVENTS")
        nc = await nats.connect(self.stack.env["INVO_NATS_URL"])
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(f"{prefix}.{self.tenant_id}.purchase.>", stream=stream)

            async def fetched() -> bool:
                try:
                    msgs = await sub.fetch(50, timeout=0.5)
                except nats.errors.TimeoutError:
                    msgs = []
                for m in msgs:
                    event = json.loads(m.data)
                    assert m.headers is not None and m.headers["Nats-Msg-Id"] == event["event_id"]
                    assert m.subject == f"{prefix}.{self.tenant_id}.{event['event_type']}"
                    self.seen[event["event_id"]] = event
                    await m.ack()
                return bool(self.of(order_id, event_type))

            await eventually(fetched, timeout_s=15)
            await sub.unsubscribe()
        finally:
            await nc.close()


# -- 1. the documented responses ------------------------------------------------------------------


async def test_success_credits_usd_times_ten(api: Api) -> None:
    t = await api.create_tenant(currency_name="Gold Coins")
    player = email()
    resp = await buy(api, t, player, metadata={"your_user_id": "u_42"})
    assert resp.status == 200, resp
    b = resp.body
    assert b["status"] == "success" and b["duplicate"] is False
    assert b["transaction_id"].startswith("txn_")
    assert b["order_id"].startswith("ord_")
    assert b["new_balance"] == "100"
    assert (b["usd_amount"], b["currency_amount"], b["currency_name"]) == ("10.00", "100", "Gold Coins")
    assert await balance(api, t, player) == "100"
    # USD x 10 for an amount that is not round: 12.34 USD is 123.4 units.
    more = await buy(api, t, player, usd_amount="12.34")
    assert more.status == 200, more
    assert (more.body["currency_amount"], more.body["new_balance"]) == ("123.40", "223.40")
    # The smallest purchase allowed.
    least = await buy(api, t, player, usd_amount="0.50")
    assert least.status == 200 and least.body["currency_amount"] == "5", least
    assert await balance(api, t, player) == "228.40"
    await check_ledger(api)


async def test_requires_action_charges_nothing(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    resp = await buy(api, t, player, payment_method_id=THREE_DS)
    assert resp.status == 200, resp
    b = resp.body
    # The seed's answer, exactly: no transaction_id (nothing was credited), no balance yet.
    assert set(b) == {"status", "client_secret", "payment_intent_id", "order_id", "new_balance", "duplicate"}, b
    assert b["status"] == "requires_action" and b["duplicate"] is False
    assert b["new_balance"] is None
    assert b["payment_intent_id"].startswith("pi_")
    assert b["client_secret"].startswith(b["payment_intent_id"] + "_secret_")
    assert b["order_id"].startswith("ord_")
    assert await balance(api, t, player) == "0"
    assert (await order(api, t, b["order_id"]))["status"] == "requires_action"


async def test_replay_of_a_completed_purchase_is_a_duplicate_credited_once(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    first = await buy(api, t, player, reference)
    assert first.status == 200 and first.body["duplicate"] is False, first
    for _ in range(2):
        again = await buy(api, t, player, reference)
        assert again.status == 200, again
        assert again.body["status"] == "success" and again.body["duplicate"] is True
        assert again.body["transaction_id"] == first.body["transaction_id"]
        assert again.body["order_id"] == first.body["order_id"]
        assert again.body["new_balance"] == "100"
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_purchase_in_flight_is_409_pending_then_a_duplicate(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    # The processor answers late; its webhook is held so only the API response can settle the order.
    async with sim_faults(api, stack, slow_next=1, slow_s=2, webhook_hold=True):
        first_task = asyncio.ensure_future(buy(api, t, player, reference))
        try:

            async def at_processor() -> bool:
                state = await sim(api, stack, "state")
                return any(pi["metadata"].get("purchase_reference") == reference for pi in state["intents"])

            await eventually(at_processor, timeout_s=5)
            pending = await buy(api, t, player, reference)
        finally:
            first = await first_task
        assert pending.status == 409, pending
        assert pending.body["status"] == "pending" and pending.body["duplicate"] is True
        assert first.status == 200, first
        assert first.body["status"] == "success" and first.body["duplicate"] is False
        assert pending.body["order_id"] == first.body["order_id"]
        # The held payment_intent.succeeded arrives after the API settled the order: no second credit.
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] >= 1
    later = await buy(api, t, player, reference)
    assert later.status == 200, later
    assert later.body["duplicate"] is True
    assert later.body["transaction_id"] == first.body["transaction_id"]
    assert await balance(api, t, player) == "100"
    assert transitions(await order(api, t, first.body["order_id"])) == [
        (None, "pending_payment"),
        ("pending_payment", "completed"),
    ]
    await check_ledger(api)


@pytest.mark.parametrize("missing", [None, ""], ids=["omitted", "empty"])
async def test_missing_purchase_reference(api: Api, missing: str | None) -> None:
    t = await api.create_tenant()
    player = email()
    body = purchase_body(player, missing)
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert_envelope(resp, 400, "MISSING_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "0"


async def test_purchase_reference_length(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    too_long = await buy(api, t, player, "r" * 256)
    assert_envelope(too_long, 400, "INVALID_PURCHASE_REFERENCE")
    not_text = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, None), "purchase_reference": 7})
    assert_envelope(not_text, 400, "INVALID_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "0"
    longest = await buy(api, t, player, "r" * 255)
    assert longest.status == 200, longest
    assert longest.body["status"] == "success" and longest.body["new_balance"] == "100"
    assert (await order(api, t, longest.body["order_id"]))["purchase_reference"] == "r" * 255
    await check_ledger(api)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"usd_amount": "10.001"}, "INVALID_AMOUNT"),
        ({"usd_amount": "-1"}, "INVALID_AMOUNT"),
        ({"usd_amount": "0"}, "INVALID_AMOUNT"),
        ({"usd_amount": "abc"}, "INVALID_AMOUNT"),
        ({"usd_amount": None}, "MISSING_PARAMETER"),
        ({"usd_amount": "0.49"}, "INVALID_AMOUNT"),
        ({"surprise": 1}, "UNKNOWN_FIELD"),
    ],
    ids=["three_decimals", "negative", "zero", "not_a_number", "missing", "below_minimum", "unknown_field"],
)
async def test_bad_input_is_400_and_reserves_nothing(api: Api, change: dict[str, Any], code: str) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    body = {k: v for k, v in {**purchase_body(player, reference), **change}.items() if v is not None}
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert_envelope(resp, 400, code)
    assert await balance(api, t, player) == "0"
    # The refused request recorded nothing under its reference: a valid one goes through as new.
    ok = await buy(api, t, player, reference)
    assert ok.status == 200 and ok.body["duplicate"] is False, ok
    await check_ledger(api)


@pytest.mark.parametrize(
    ("card", "decline_code"),
    [(DECLINED, "generic_decline"), (INSUFFICIENT, "insufficient_funds")],
)
async def test_card_decline_is_402_with_decline_code(api: Api, card: str, decline_code: str) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    resp = await buy(api, t, player, reference, payment_method_id=card)
    assert_envelope(resp, 402, "CARD_DECLINED")
    assert resp.body["decline_code"] == decline_code
    assert resp.body["error"] == "card_declined"
    assert await balance(api, t, player) == "0"
    # A replay of the declined reference is the same decline, still not a 5xx.
    again = await buy(api, t, player, reference, payment_method_id=card)
    assert_envelope(again, 402, "CARD_DECLINED")
    assert again.body["decline_code"] == decline_code
    assert await balance(api, t, player) == "0"


# -- 2, 3. idempotency --------------------------------------------------------------------------------


async def test_client_request_id_is_an_alias(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    body = {**purchase_body(player, None), "client_request_id": reference}
    first = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert first.status == 200 and first.body["duplicate"] is False, first
    # The same key under either name, or both names agreeing, is a replay.
    for replay in (body, purchase_body(player, reference), {**body, "purchase_reference": reference}):
        again = await api.post(PURCHASE, key=t["sdk_key"], json=replay)
        assert again.status == 200 and again.body["duplicate"] is True, again
        assert again.body["transaction_id"] == first.body["transaction_id"]
    both = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, ref()), "client_request_id": ref()})
    assert_envelope(both, 400, "INVALID_PARAMETER")
    missing = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, None), "client_request_id": ""})
    assert_envelope(missing, 400, "MISSING_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_reference_reused_with_another_body_is_refused(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    first = await buy(api, t, player, reference)
    assert first.status == 200, first
    for change in (
        {"usd_amount": "20.00"},
        {"player_email": email()},
        {"payment_method_id": "pm_card_mastercard"},
        {"metadata": {"coin_pack": "other"}},
    ):
        resp = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, reference), **change})
        assert_envelope(resp, 400, "IDEMPOTENCY_KEY_REUSED")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_purchase_reference_is_unique_per_tenant(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    player = email()
    reference = ref()
    ra = await buy(api, a, player, reference)
    rb = await buy(api, b, player, reference, usd_amount="5.00")
    assert ra.status == rb.status == 200, (ra, rb)
    assert ra.body["duplicate"] is rb.body["duplicate"] is False
    assert ra.body["order_id"] != rb.body["order_id"]
    assert ra.body["transaction_id"] != rb.body["transaction_id"]
    assert (await balance(api, a, player), await balance(api, b, player)) == ("100", "50")
    await check_ledger(api)


async def test_same_reference_sent_at_once_is_one_charge(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    player = email()
    reference = ref()
    results = await asyncio.gather(*(buy(api, t, player, reference) for _ in range(10)))
    assert {r.status for r in results} <= {200, 409}, results
    firsts = [r for r in results if r.status == 200 and r.body["duplicate"] is False]
    assert len(firsts) == 1, results
    for r in results:
        if r.status == 409:
            assert (r.body["status"], r.body["duplicate"]) == ("pending", True)
        else:
            assert r.body["transaction_id"] == firsts[0].body["transaction_id"]
        assert r.body["order_id"] == firsts[0].body["order_id"]
    state = await sim(api, stack, "state")
    intents = [pi for pi in state["intents"] if pi["metadata"].get("purchase_reference") == reference]
    assert len(intents) == 1, intents
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_same_reference_for_two_players_at_once_is_never_a_5xx(api: Api) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    for _ in range(5):
        reference = ref()
        players = [email() for _ in range(8)]
        results = await asyncio.gather(*(buy(api, t, p, reference) for p in players))
        assert all(r.status < 500 for r in results), [(r.status, r.body.get("error_code")) for r in results]
        winners = [r for r in results if r.status == 200]
        assert len(winners) == 1, results
        for r in results:
            if r.status != 200:
                assert_envelope(r, 400, "IDEMPOTENCY_KEY_REUSED")
        credited = [await balance(api, t, p) for p in players]
        assert sorted(credited) == ["0"] * 7 + ["100"]
    await check_ledger(api)


# -- 4. 3-D Secure ----------------------------------------------------------------------------------


async def test_three_d_secure_then_confirm_credits_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    other = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    confirm = {"payment_intent_id": pi, "order_id": order_id}

    early = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert_envelope(early, 409, "PAYMENT_REQUIRES_ACTION")
    foreign = await api.post(CONFIRM, key=other["sdk_key"], json=confirm)
    assert_envelope(foreign, 404, "ORDER_NOT_FOUND")
    unknown = await api.post(CONFIRM, key=t["sdk_key"], json={**confirm, "order_id": "ord_" + "0" * 26})
    assert_envelope(unknown, 404, "ORDER_NOT_FOUND")
    mismatch = await api.post(CONFIRM, key=t["sdk_key"], json={**confirm, "payment_intent_id": "pi_not_this_one"})
    assert_envelope(mismatch, 400, "PAYMENT_INTENT_MISMATCH")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    assert await balance(api, t, player) == "0"

    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
    done = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert done.status == 200, done
    # The simulator's payment_intent.succeeded webhook may have credited first: both are valid.
    assert set(done.body) == {"status", "transaction_id", "order_id", "new_balance", "already_processed"}
    assert done.body["status"] == "success" and done.body["order_id"] == order_id
    assert done.body["transaction_id"].startswith("txn_")
    assert done.body["new_balance"] == "100"
    assert isinstance(done.body["already_processed"], bool)

    again = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert again.status == 200, again
    assert again.body["already_processed"] is True
    assert again.body["transaction_id"] == done.body["transaction_id"]
    assert again.body["new_balance"] == "100"
    # Let the webhook land (it is the other settler), then the balance is still credited once.
    o = await order_reaches(api, t, order_id, "completed")
    assert o["transaction_id"] == done.body["transaction_id"]
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_three_d_secure_confirm_before_webhook_and_webhook_after(api: Api, stack: Stack) -> None:
    """Held webhook: confirm-payment settles the order (already_processed false), then the late
    payment_intent.succeeded changes nothing."""
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    confirm = {"payment_intent_id": start.body["payment_intent_id"], "order_id": start.body["order_id"]}
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "three_d_secure", {"payment_intent": confirm["payment_intent_id"], "result": "succeed"})
        done = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
        assert done.status == 200, done
        assert done.body["already_processed"] is False and done.body["new_balance"] == "100"
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] == 1
    again = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert again.status == 200 and again.body["already_processed"] is True, again
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_failed_challenge_fails_the_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "fail"})
    o = await order_reaches(api, t, order_id, "failed")
    assert transitions(o) == [
        (None, "pending_payment"),
        ("pending_payment", "requires_action"),
        ("requires_action", "failed"),
    ]
    assert o["transaction_id"] is None and o["completed_at"] is None
    resp = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert resp.status == 402, resp
    assert resp.body["status"] == "error" and resp.body["error_code"] == "AUTHENTICATION_FAILED"
    assert await balance(api, t, player) == "0"
    assert (await order(api, t, order_id))["status"] == "failed"


# -- 5. order details -------------------------------------------------------------------------------


async def test_order_details_of_a_plain_purchase(api: Api) -> None:
    t = await api.create_tenant(currency_name="Gems")
    other = await api.create_tenant()
    player = email()
    reference = ref()
    resp = await buy(api, t, player, reference, metadata={"coin_pack": "starter"})
    assert resp.status == 200, resp
    o = await order(api, t, resp.body["order_id"])
    assert o["order_id"] == resp.body["order_id"] and o["status"] == "completed"
    assert o["purchase_reference"] == reference and o["player_email"] == player
    assert (o["usd_amount"], o["currency_amount"], o["currency_name"]) == ("10.00", "100", "Gems")
    assert o["transaction_id"] == resp.body["transaction_id"]
    assert o["identity_id"] == resp.body["identity_id"]
    assert o["payment_intent_id"].startswith("pi_")
    assert o["metadata"] == {"coin_pack": "starter"}
    assert o["failure_code"] is None and o["decline_code"] is None
    assert o["created_at"] <= o["completed_at"] <= o["updated_at"]
    assert transitions(o) == [(None, "pending_payment"), ("pending_payment", "completed")]
    ats = [h["at"] for h in o["history"]]
    assert ats == sorted(ats)
    assert o["created_at"] <= ats[0] and ats[-1] <= o["updated_at"]

    assert_envelope(await details(api, other, o["order_id"]), 404, "ORDER_NOT_FOUND")
    assert_envelope(await details(api, t, "ord_" + "0" * 26), 404, "ORDER_NOT_FOUND")
    assert_envelope(await details(api, t, "nonsense"), 404, "ORDER_NOT_FOUND")
    assert_envelope(await api.get(DETAILS, key=t["sdk_key"]), 400, "MISSING_PARAMETER")
    await check_ledger(api)


async def test_order_details_of_a_three_d_secure_purchase(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id = start.body["order_id"]
    o = await order(api, t, order_id)
    assert o["status"] == "requires_action" and o["completed_at"] is None
    assert o["payment_intent_id"] == start.body["payment_intent_id"]
    await sim(api, stack, "three_d_secure", {"payment_intent": start.body["payment_intent_id"], "result": "succeed"})
    o = await order_reaches(api, t, order_id, "completed")
    assert transitions(o) == [
        (None, "pending_payment"),
        ("pending_payment", "requires_action"),
        ("requires_action", "completed"),
    ]
    assert o["history"][-1]["source"] == "webhook"
    assert (o["usd_amount"], o["currency_amount"]) == ("10.00", "100")
    assert o["completed_at"] is not None and o["transaction_id"].startswith("txn_")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_order_details_of_a_declined_purchase(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    resp = await buy(api, t, player, payment_method_id=DECLINED)
    assert_envelope(resp, 402, "CARD_DECLINED")
    order_id = resp.body["order_id"]
    o = await order(api, t, order_id)
    assert o["status"] == "failed"
    assert transitions(o) == [(None, "pending_payment"), ("pending_payment", "failed")]
    assert (o["failure_code"], o["decline_code"]) == ("card_declined", "generic_decline")
    assert o["failure_message"]
    assert o["transaction_id"] is None and o["completed_at"] is None
    assert await balance(api, t, player) == "0"


# -- 6. events ----------------------------------------------------------------------------------------


async def test_purchase_events_reach_jetstream_once_per_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(currency_name="Gold Coins")
    player = email()
    metadata = {"your_user_id": "u_42", "coin_pack": "starter"}
    # Webhooks are held and released after the API settled each order: both paths settle every one.
    async with sim_faults(api, stack, webhook_hold=True):
        plain = await buy(api, t, player, metadata=metadata)
        assert plain.status == 200, plain
        declined = await buy(api, t, player, payment_method_id=DECLINED)
        assert_envelope(declined, 402, "CARD_DECLINED")
        tds = await buy(api, t, player, payment_method_id=THREE_DS)
        assert tds.status == 200, tds
        pi = tds.body["payment_intent_id"]
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        confirmed = await api.post(
            CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": tds.body["order_id"]}
        )
        assert confirmed.status == 200 and confirmed.body["already_processed"] is False, confirmed
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] == 3
    # A later purchase is the sentinel: anything the webhooks above emitted was written before it.
    sentinel = await buy(api, t, player)
    assert sentinel.status == 200, sentinel
    events = Events(stack, t["tenant_id"])
    await events.collect_until(sentinel.body["order_id"], "purchase.completed")

    completed = events.of(plain.body["order_id"], "purchase.completed")
    assert len(completed) == 1, completed
    event = completed[0]
    assert event["event_type"] == "purchase.completed" and event["tenant_id"] == t["tenant_id"]
    assert event["event_id"] and event["created_at"]
    assert event["data"] == {
        "transaction_id": plain.body["transaction_id"],
        "order_id": plain.body["order_id"],
        "player_email": player,
        "identity_id": plain.body["identity_id"],
        "usd_amount": "10.00",
        "currency_amount": "100",
        "currency_name": "Gold Coins",
        "metadata": metadata,
    }
    tds_completed = events.of(tds.body["order_id"], "purchase.completed")
    assert len(tds_completed) == 1, tds_completed
    assert tds_completed[0]["data"]["transaction_id"] == confirmed.body["transaction_id"]
    assert tds_completed[0]["data"]["metadata"] == {}

    failed = events.of(declined.body["order_id"], "purchase.failed")
    assert len(failed) == 1, failed
    data = failed[0]["data"]
    assert {"payment_intent_id", "order_id", "player_email", "usd_amount", "failure_code", "failure_message"} <= set(
        data
    )
    assert data["order_id"] == declined.body["order_id"]
    assert data["payment_intent_id"].startswith("pi_")
    assert data["payment_intent_id"] == (await order(api, t, declined.body["order_id"]))["payment_intent_id"]
    assert (data["player_email"], data["usd_amount"]) == (player, "10.00")
    assert (data["failure_code"], data["failure_message"]) == ("card_declined", "Your card was declined.")
    assert not events.of(declined.body["order_id"], "purchase.completed")
    for o in (plain, tds, sentinel):
        assert not events.of(o.body["order_id"], "purchase.failed")
    assert await balance(api, t, player) == "300"
    await check_ledger(api)


# -- 7. identity_id -----------------------------------------------------------------------------------


async def test_identity_id_is_per_person_across_tenants_and_never_the_email(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    player, someone_else = email(), email()
    ra = await buy(api, a, player)
    rb = await buy(api, b, player)
    rc = await buy(api, a, someone_else)
    assert ra.status == rb.status == rc.status == 200, (ra, rb, rc)
    ida, idb, idc = ra.body["identity_id"], rb.body["identity_id"], rc.body["identity_id"]
    assert ida and ida == idb
    assert idc and idc != ida
    assert (await order(api, b, rb.body["order_id"]))["identity_id"] == idb
    for identity, mail in ((ida, player), (idc, someone_else)):
        local = mail.split("@")[0]
        assert mail.lower() not in identity.lower()
        assert local.lower() not in identity.lower()
        assert "@" not in identity
    await check_ledger(api)


# -- 8. processor webhooks in -------------------------------------------------------------------------


async def test_processor_webhook_signature_and_dedupe(api: Api, stack: Stack) -> None:
    secret = stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"]
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    payload = processor_event(
        "payment_intent.succeeded",
        {
            "id": pi,
            "object": "payment_intent",
            "amount": 1000,
            "amount_received": 1000,
            "currency": "usd",
            "status": "succeeded",
            "metadata": {"order_id": order_id, "tenant_id": t["tenant_id"]},
        },
    )
    now = int(time.time())
    refused = {
        "missing": None,
        "empty": "",
        "garbage": "nonsense",
        "wrong secret": stripe_signature(payload, "whsec_not_the_secret"),
        "tampered": stripe_signature(payload.replace("1000", "9000"), secret),
        "older than 5 minutes": stripe_signature(payload, secret, now - 330),
    }
    for name, signature in refused.items():
        resp = await send_processor_event(api, payload, signature)
        assert resp.status == 400, (name, resp)
        assert_envelope(resp, 400, "INVALID_SIGNATURE")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    assert await balance(api, t, player) == "0"

    # Signed (within the tolerance): applied once; the same event again is acknowledged as a duplicate.
    first = await send_processor_event(api, payload, stripe_signature(payload, secret, now - 60))
    assert first.status == 200, first
    assert first.body == {"received": True, "duplicate": False, "ignored": False}
    o = await order(api, t, order_id)
    assert o["status"] == "completed" and o["history"][-1]["source"] == "webhook"
    assert await balance(api, t, player) == "100"
    second = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert second.status == 200, second
    assert second.body["duplicate"] is True
    assert await balance(api, t, player) == "100"
    # confirm-payment afterwards sees the webhook's credit.
    confirmed = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert confirmed.status == 200 and confirmed.body["already_processed"] is True, confirmed
    assert confirmed.body["transaction_id"] == o["transaction_id"]
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_processor_webhook_of_an_unknown_type_is_acknowledged_and_ignored(api: Api, stack: Stack) -> None:
    secret = stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"]
    payload = processor_event("customer.created", {"id": "cus_test", "object": "customer"})
    first = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert first.status == 200, first
    assert first.body["received"] is True and first.body["ignored"] is True and first.body["duplicate"] is False
    again = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert again.status == 200 and again.body["duplicate"] is True, again
    # A signed body that is not an event is refused.
    junk = "not json"
    assert_envelope(await send_processor_event(api, junk, stripe_signature(junk, secret)), 400, "INVALID_EVENT")
    # A payment_intent event naming no order of ours is acknowledged too, and ignored.
    stray = processor_event(
        "payment_intent.succeeded",
        {"id": "pi_stranger", "object": "payment_intent", "status": "succeeded", "metadata": {}},
    )
    resp = await send_processor_event(api, stray, stripe_signature(stray, secret))
    assert resp.status == 200 and resp.body["ignored"] is True, resp
    await check_ledger(api)


# -- 9. spending limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["hourly", "daily", "monthly"])
async def test_spending_cap_is_429_naming_the_cap(api: Api, period: str) -> None:
    t = await api.create_tenant(spending_caps={f"{period}_usd": "15.00"})
    player = email()
    # A declined card first: it does not consume the cap.
    declined = await buy(api, t, player, payment_method_id=DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    ok = await buy(api, t, player)
    assert ok.status == 200 and ok.body["new_balance"] == "100", ok
    over = await buy(api, t, player)
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert over.body["error"] == "spending_limit_exceeded"
    assert period in over.body["message"]
    assert "15.00" in over.body["message"]
    # Within what is left is still fine; the refused purchase reserved nothing.
    rest = await buy(api, t, player, usd_amount="5.00")
    assert rest.status == 200 and rest.body["new_balance"] == "150", rest
    # Another player of the same tenant has a cap of their own.
    assert (await buy(api, t, email())).status == 200
    assert await balance(api, t, player) == "150"
    await check_ledger(api)


async def test_failed_three_d_secure_leaves_the_cap_untouched(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"})
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    await sim(api, stack, "three_d_secure", {"payment_intent": start.body["payment_intent_id"], "result": "fail"})
    await order_reaches(api, t, start.body["order_id"], "failed")
    ok = await buy(api, t, player)
    assert ok.status == 200 and ok.body["new_balance"] == "100", ok
    await check_ledger(api)


async def test_concurrent_purchases_never_exceed_the_cap(api: Api) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "25.00"}, rate_limit_per_second=1000)
    player = email()
    results = await asyncio.gather(*(buy(api, t, player) for _ in range(6)))
    assert sorted(r.status for r in results) == [200, 200, 429, 429, 429, 429], results
    for r in results:
        if r.status == 429:
            assert r.body["error"] == "spending_limit_exceeded" and "hourly" in r.body["message"]
    assert await balance(api, t, player) == "200"
    await check_ledger(api)


# -- metadata -------------------------------------------------------------------------------------------


async def test_metadata_numbers_pass_through_unchanged(api: Api) -> None:
    t = await api.create_tenant()
    metadata = {"score": 1.5, "level": 2, "vip": True, "note": None, "tags": ["a"], "nested": {"x": "y"}}
    resp = await buy(api, t, email(), metadata=metadata)
    assert resp.status == 200, resp
    assert (await order(api, t, resp.body["order_id"]))["metadata"] == metadata
