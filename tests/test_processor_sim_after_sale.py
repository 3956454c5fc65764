"""The processor simulator after a sale, as the payments service meets it through the `stripe` SDK:
refunds (full, partial, repeated, refused as Stripe refuses them, replayed by an idempotency key,
listed), disputes (chargebacks and inquiries, opened by test cards or a control, closed won, lost or
warning_closed), early fraud warnings, the webhooks they send (signed, under the webhook faults),
and all of it kept across a restart.

Each test runs its own simulator in-process on a free port, with a journal of its own, and a
webhook receiver of its own that checks each event's signature with the SDK's verifier.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import stripe

from tests.processor_sim_after_sale_support import SK, Sim, refused, running, s

__all__ = ["s"]  # the fixture, imported for this module's tests

# -- refunds --------------------------------------------------------------------------------------


async def test_a_full_refund_by_payment_intent(s: Sim) -> None:
    pi = await s.pay()
    refund = await s.refund(payment_intent=pi.id, reason="requested_by_customer", metadata={"refund_id": "rf_1"})
    assert refund.id.startswith("re_")
    assert {k: refund[k] for k in ("object", "amount", "charge", "payment_intent", "currency", "reason", "status")} == {
        "object": "refund",
        "amount": 1000,
        "charge": pi.latest_charge,
        "payment_intent": pi.id,
        "currency": "usd",
        "reason": "requested_by_customer",
        "status": "succeeded",
    }
    assert refund.metadata.to_dict() == {"refund_id": "rf_1"} and isinstance(refund.created, int)
    assert (await s.client.v1.refunds.retrieve_async(refund.id)).to_dict() == refund.to_dict()

    [event] = await s.hooks.wait("charge.refunded", id=pi.latest_charge)
    charge = event["data"]["object"]
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (1000, 1000, True)
    assert "refunds" not in charge  # as Stripe's: the charge in the event does not list its refunds
    assert s.charge(pi)["amount_refunded"] == 1000


async def test_two_partial_refunds_then_the_rest(s: Sim) -> None:
    pi = await s.pay()
    first = await s.refund(payment_intent=pi.id, amount=300)
    second = await s.refund(charge=pi.latest_charge, amount=200)  # by charge, as the dashboard does
    rest = await s.refund(payment_intent=pi.id)  # no amount: what remains
    assert [r.amount for r in (first, second, rest)] == [300, 200, 500]
    assert {r.charge for r in (first, second, rest)} == {pi.latest_charge}
    events = await s.hooks.wait("charge.refunded", 3, id=pi.latest_charge)
    seen = sorted((e["data"]["object"]["amount_refunded"], e["data"]["object"]["refunded"]) for e in events)
    assert seen == [(300, False), (500, False), (1000, True)]
    listed = await s.client.v1.refunds.list_async(params={"charge": pi.latest_charge})
    assert [r.id for r in listed.data] == [rest.id, second.id, first.id]  # newest first


async def test_an_over_refund_or_a_wrong_parameter_is_refused_and_changes_nothing(s: Sim) -> None:
    pi = await s.pay()
    await s.refund(payment_intent=pi.id, amount=600)
    await s.hooks.wait("charge.refunded", id=pi.latest_charge)
    # Held, every event the refused calls might send is counted below.
    assert (await s.control("faults", webhook_hold=True))[0] == 200
    for params, param in (
        ({"amount": 401}, "amount"),
        ({"amount": 1001}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 100, "reason": "changed_my_mind"}, "reason"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await s.refund(payment_intent=pi.id, **params)
        assert refused(exc) == (400, None, param), params
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await s.refund(amount=100)  # neither a charge nor a payment intent
    assert exc.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await s.refund(charge="ch_nope")
    assert refused(exc) == (404, "resource_missing", "charge")
    assert (s.charge(pi)["amount_refunded"], s.charge(pi)["refunded"]) == (600, False)
    assert len(s.sim.refunds) == 1
    assert await s.control("release_webhooks") == (200, {"released": 0})
    # What remains may still be refunded.
    assert (await s.refund(payment_intent=pi.id, amount=400)).amount == 400


async def test_a_fully_refunded_charge_is_refused_as_already_refunded(s: Sim) -> None:
    pi = await s.pay()
    await s.refund(payment_intent=pi.id)
    for params in ({}, {"amount": 1}):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await s.refund(payment_intent=pi.id, **params)
        assert refused(exc)[:2] == (400, "charge_already_refunded")
    assert len(s.sim.refunds) == 1


async def test_a_refund_replayed_with_its_idempotency_key_is_one_refund(s: Sim) -> None:
    pi = await s.pay()
    await s.hooks.wait("payment_intent.succeeded", id=pi.id)
    await s.control("faults", webhook_hold=True)  # every event the calls below send, counted
    params: Any = {"payment_intent": pi.id, "amount": 250, "metadata": {"refund_id": "rf_2"}}
    first = await s.client.v1.refunds.create_async(params=params, options={"idempotency_key": "refund-rf_2"})
    again = await s.client.v1.refunds.create_async(params=params, options={"idempotency_key": "refund-rf_2"})
    assert again.id == first.id and again.to_dict() == first.to_dict()
    # The same key with other parameters is Stripe's idempotency error, and refunds nothing.
    with pytest.raises(stripe.IdempotencyError):
        await s.client.v1.refunds.create_async(
            params={**params, "amount": 300}, options={"idempotency_key": "refund-rf_2"}
        )
    assert s.charge(pi)["amount_refunded"] == 250
    listed = await s.client.v1.refunds.list_async(params={"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [first.id]
    assert await s.control("release_webhooks") == (200, {"released": 1})
    [event] = await s.hooks.wait("charge.refunded", id=pi.latest_charge)
    assert event["data"]["object"]["amount_refunded"] == 250


async def test_refunds_are_listed_by_charge_and_by_payment_intent(s: Sim) -> None:
    one, two = await s.pay(), await s.pay(amount=2000)
    a = await s.refund(payment_intent=one.id, amount=100)
    b = await s.refund(payment_intent=two.id, amount=200)
    c = await s.refund(payment_intent=one.id, amount=300)
    by_pi = await s.client.v1.refunds.list_async(params={"payment_intent": one.id})
    assert [r.id for r in by_pi.data] == [c.id, a.id] and not by_pi.has_more
    by_charge = await s.client.v1.refunds.list_async(params={"charge": two.latest_charge})
    assert [r.id for r in by_charge.data] == [b.id]
    page = await s.client.v1.refunds.list_async(params={"payment_intent": one.id, "limit": 1})
    assert [r.id for r in page.data] == [c.id] and page.has_more
    after = await s.client.v1.refunds.list_async(params={"payment_intent": one.id, "starting_after": c.id})
    assert [r.id for r in after.data] == [a.id] and not after.has_more
    everything = await s.client.v1.refunds.list_async()
    assert [r.id for r in everything.data] == [c.id, b.id, a.id]
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await s.client.v1.refunds.retrieve_async("re_nope")
    assert refused(exc)[:2] == (404, "resource_missing")


async def test_a_dashboard_refund_has_none_of_our_metadata(s: Sim) -> None:
    pi = await s.pay()
    status, refund = await s.control("refund", payment_intent=pi.id, amount=250)
    assert status == 200
    assert (refund["amount"], refund["payment_intent"], refund["metadata"], refund["reason"]) == (250, pi.id, {}, None)
    # The same by Stripe's API without our metadata, as a test calling it directly would.
    async with s.http.post(
        f"{s.url}/v1/refunds", data={"charge": pi.latest_charge}, headers={"Authorization": f"Bearer {SK}"}
    ) as resp:
        assert resp.status == 200
        direct = await resp.json()
    assert (direct["amount"], direct["metadata"]) == (750, {})
    events = await s.hooks.wait("charge.refunded", 2, id=pi.latest_charge)
    assert max(e["data"]["object"]["amount_refunded"] for e in events) == 1000
    status, body = await s.control("refund", payment_intent=pi.id)
    assert status == 400 and body["error"]["code"] == "charge_already_refunded"


# -- disputes -------------------------------------------------------------------------------------


async def test_a_refund_is_refused_on_an_open_or_lost_chargeback_but_not_on_an_inquiry(s: Sim) -> None:
    won, lost, inquiry = await s.pay(), await s.pay(), await s.pay()
    for pi in (won, lost):
        status, dispute = await s.control("dispute", payment_intent=pi.id)
        assert status == 200 and dispute["status"] == "needs_response" and not dispute["is_charge_refundable"]
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await s.refund(payment_intent=pi.id, amount=100)
        assert refused(exc)[:2] == (400, "charge_disputed")
    status, dispute = await s.control("dispute", payment_intent=inquiry.id, inquiry=True)
    assert status == 200 and dispute["status"] == "warning_needs_response" and dispute["is_charge_refundable"]
    assert (await s.refund(payment_intent=inquiry.id, amount=100)).amount == 100

    assert (await s.control("dispute", payment_intent=won.id, close="won"))[1]["status"] == "won"
    assert (await s.control("dispute", payment_intent=lost.id, close="lost"))[1]["status"] == "lost"
    assert (await s.refund(payment_intent=won.id)).amount == 1000  # a won dispute leaves the charge refundable
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await s.refund(payment_intent=lost.id)
    assert refused(exc)[:2] == (400, "charge_disputed")
    assert s.charge(lost)["amount_refunded"] == 0


async def test_the_dispute_cards_open_a_chargeback_and_an_inquiry(s: Sim) -> None:
    by_id = await s.pay("pm_card_createDispute")
    by_number = await s.pay(await s.card("4000000000000259"))
    inquiry_by_id = await s.pay("pm_card_createDisputeInquiry")
    inquiry_by_number = await s.pay(await s.card("4000000000001976"))
    for pi, status in (
        (by_id, "needs_response"),
        (by_number, "needs_response"),
        (inquiry_by_id, "warning_needs_response"),
        (inquiry_by_number, "warning_needs_response"),
    ):
        [event] = await s.hooks.wait("charge.dispute.created", payment_intent=pi.id)
        dispute = event["data"]["object"]
        assert dispute["id"].startswith("dp_")
        assert {k: dispute[k] for k in dispute if k not in ("id", "created")} == {
            "object": "dispute",
            "amount": 1000,
            "charge": pi.latest_charge,
            "payment_intent": pi.id,
            "currency": "usd",
            "reason": "fraudulent",
            "status": status,
            "is_charge_refundable": status.startswith("warning_"),
            "metadata": {},
            "livemode": False,
        }
        assert (await s.client.v1.disputes.retrieve_async(dispute["id"])).to_dict() == dispute
        assert s.charge(pi)["disputed"] is True


async def test_a_dispute_opens_and_closes_won_lost_or_warning_closed_with_its_events(s: Sim) -> None:
    won, lost, inquiry = await s.pay(), await s.pay(), await s.pay()
    status, chargeback = await s.control("dispute", payment_intent=lost.id, amount=400, reason="product_not_received")
    assert status == 200 and (chargeback["amount"], chargeback["reason"]) == (400, "product_not_received")
    await s.control("dispute", payment_intent=won.id)
    await s.control("dispute", payment_intent=inquiry.id, inquiry=True)
    for pi in (won, lost, inquiry):
        await s.hooks.wait("charge.dispute.created", payment_intent=pi.id)

    # One open dispute at a time, and each closes only as its kind does.
    for body in (
        {"payment_intent": won.id},
        {"payment_intent": won.id, "close": "warning_closed"},
        {"payment_intent": inquiry.id, "close": "won"},
        {"payment_intent": inquiry.id, "close": "lost"},
        {"payment_intent": won.id, "close": "maybe"},
        {"payment_intent": won.id, "amount": 1001},
        {"payment_intent": won.id, "reason": "bored"},
    ):
        status, answer = await s.control("dispute", **body)
        assert status == 400 and answer["error"]["type"] == "invalid_request_error", body
    assert (await s.control("dispute", payment_intent="pi_nope", close="won"))[0] == 404

    for pi, close in ((won, "won"), (lost, "lost"), (inquiry, "warning_closed")):
        status, dispute = await s.control("dispute", payment_intent=pi.id, close=close)
        assert status == 200 and dispute["status"] == close
        [event] = await s.hooks.wait("charge.dispute.closed", payment_intent=pi.id)
        assert event["data"]["object"] == dispute
        assert (await s.client.v1.disputes.retrieve_async(dispute["id"])).status == close
        # Closed: closing it again is refused.
        assert (await s.control("dispute", payment_intent=pi.id, close=close))[0] == 400
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await s.client.v1.disputes.retrieve_async("dp_nope")
    assert refused(exc)[:2] == (404, "resource_missing")
    listed = await s.client.v1.disputes.list_async(params={"payment_intent": lost.id})
    assert [d.id for d in listed.data] == [chargeback["id"]]


# -- early fraud warnings -------------------------------------------------------------------------


async def test_an_early_fraud_warning_by_card_and_by_control(s: Sim) -> None:
    by_id = await s.pay("pm_card_radarEarlyFraudWarning")
    by_number = await s.pay(await s.card("4000000000005423"))
    for pi in (by_id, by_number):
        [event] = await s.hooks.wait("radar.early_fraud_warning.created", payment_intent=pi.id)
        efw = event["data"]["object"]
        assert efw["id"].startswith("issfr_") and isinstance(efw["created"], int)
        assert {k: efw[k] for k in ("object", "actionable", "charge", "fraud_type", "livemode")} == {
            "object": "radar.early_fraud_warning",
            "actionable": True,
            "charge": pi.latest_charge,
            "fraud_type": "made_with_stolen_card",
            "livemode": False,
        }
        assert (await s.client.v1.radar.early_fraud_warnings.retrieve_async(efw["id"])).to_dict() == efw

    plain = await s.pay()
    status, efw = await s.control("efw", payment_intent=plain.id, actionable=False, fraud_type="misc")
    assert status == 200 and (efw["actionable"], efw["fraud_type"], efw["charge"]) == (
        False,
        "misc",
        plain.latest_charge,
    )
    status, default = await s.control("efw", payment_intent=plain.id)
    assert status == 200 and (default["actionable"], default["fraud_type"]) == (True, "made_with_stolen_card")
    events = await s.hooks.wait("radar.early_fraud_warning.created", 2, payment_intent=plain.id)
    assert {e["data"]["object"]["id"] for e in events} == {efw["id"], default["id"]}
    for body in ({"fraud_type": "nonsense"}, {"actionable": "yes"}):
        assert (await s.control("efw", payment_intent=plain.id, **body))[0] == 400, body
    assert (await s.control("efw", payment_intent="pi_nope"))[0] == 404
    assert len(s.sim.early_fraud_warnings) == 4


# -- the webhook faults ---------------------------------------------------------------------------


async def test_held_events_are_released_newest_first_and_duplicates_sent_twice(s: Sim) -> None:
    pi = await s.pay()
    await s.hooks.wait("payment_intent.succeeded", id=pi.id)
    await s.control("faults", webhook_hold=True)
    await s.refund(payment_intent=pi.id, amount=100)
    await s.control("dispute", payment_intent=pi.id, inquiry=True)
    await s.control("efw", payment_intent=pi.id)
    await s.control("dispute", payment_intent=pi.id, close="warning_closed")
    await s.control("faults", webhook_hold=False)
    assert await s.control("release_webhooks") == (200, {"released": 4})
    after_sale = [e["type"] for e in s.hooks.events if e["type"] != "payment_intent.succeeded"]
    assert after_sale == [
        "charge.dispute.closed",
        "radar.early_fraud_warning.created",
        "charge.dispute.created",
        "charge.refunded",
    ]

    await s.control("faults", webhook_duplicate=True)
    await s.refund(payment_intent=pi.id, amount=100)
    events = await s.hooks.wait("charge.refunded", 3, id=pi.latest_charge)
    twice = [e for e in events if e["data"]["object"]["amount_refunded"] == 200]
    assert len(twice) == 2 and twice[0]["id"] == twice[1]["id"]


# -- a restart ------------------------------------------------------------------------------------


async def test_refunds_disputes_and_warnings_survive_a_restart(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "state.jsonl"
    async with running(journal) as first:
        pi = await first.pay()
        other = await first.pay()
        refund = await first.refund(payment_intent=pi.id, amount=300, metadata={"refund_id": "rf_3"})
        _, inquiry = await first.control("dispute", payment_intent=pi.id, inquiry=True)
        _, chargeback = await first.control("dispute", payment_intent=other.id)
        _, efw = await first.control("efw", payment_intent=pi.id)
        await first.control("dispute", payment_intent=other.id, close="lost")

    async with running(journal) as second:
        assert (await second.client.v1.refunds.retrieve_async(refund.id)).to_dict() == refund.to_dict()
        listed = await second.client.v1.refunds.list_async(params={"payment_intent": pi.id})
        assert [r.id for r in listed.data] == [refund.id]
        assert (await second.client.v1.disputes.retrieve_async(inquiry["id"])).to_dict() == inquiry
        assert (await second.client.v1.disputes.retrieve_async(chargeback["id"])).status == "lost"
        assert (await second.client.v1.radar.early_fraud_warnings.retrieve_async(efw["id"])).to_dict() == efw
        # What remains is what the first one left: 700, and the lost chargeback still refuses.
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await second.refund(payment_intent=pi.id, amount=701)
        assert refused(exc) == (400, None, "amount")
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await second.refund(payment_intent=other.id)
        assert refused(exc)[:2] == (400, "charge_disputed")
        assert (await second.refund(payment_intent=pi.id)).amount == 700
        status, closed = await second.control("dispute", payment_intent=pi.id, close="warning_closed")
        assert status == 200 and closed["id"] == inquiry["id"]
        await second.hooks.wait("charge.dispute.closed", id=inquiry["id"])


async def test_a_refund_journaled_without_its_charge_is_counted_at_start(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "state.jsonl"
    async with running(journal) as first:
        pi = await first.pay()
        charge = dict(first.charge(pi))
    # A process killed between the refund's line and its charge's: the refund alone is on record.
    line = {"k": "refunds", "id": "re_cut", "o": {"id": "re_cut", "object": "refund", "amount": 400,
            "charge": charge["id"], "payment_intent": pi.id, "currency": "usd", "metadata": {}, "reason": None,
            "status": "succeeded", "created": charge["created"]}}  # fmt: skip
    with open(journal, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    async with running(journal) as second:
        assert (second.charge(pi)["amount_refunded"], second.charge(pi)["refunded"]) == (400, False)
        with pytest.raises(stripe.InvalidRequestError):
            await second.refund(payment_intent=pi.id, amount=601)
        assert (await second.refund(payment_intent=pi.id)).amount == 600
