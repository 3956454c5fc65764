"""The processor simulator as a hosted checkout page meets it: cards entered in the browser
(`POST /v1/payment_methods` with the publishable key), saved cards on Customers, the intent read
by its client secret. In Chromium, the Stripe.js look-alike, its card iframe and the 3-D Secure
challenge are tests/test_processor_sim_elements_browser.py's.

Each test runs its own simulator in-process on a free port, with a journal of its own.
"""

from __future__ import annotations

import pathlib

import pytest
import stripe

from tests.browser_support import BROWSER_LOOP
from tests.processor_sim_elements_support import CARD, PK, SK, Sim, running, sdk, sim

__all__ = ["sim"]  # the fixture, imported for this module's tests
pytestmark = BROWSER_LOOP  # the loop the simulator's fixture runs in


# -- the REST additions ---------------------------------------------------------------------------


async def test_the_publishable_key_makes_payment_methods_and_nothing_else(sim: Sim) -> None:
    pm = await sim.new_card("4242 4242 4242 4242")
    assert pm["id"].startswith("pm_") and pm["customer"] is None
    assert {k: pm["card"][k] for k in ("brand", "last4", "exp_month", "exp_year")} == {
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2034,
    }
    # The secret key reads it back; the publishable key may not.
    assert (await sim.call("GET", f"/v1/payment_methods/{pm['id']}"))[1]["card"]["last4"] == "4242"
    for method, path in (
        ("GET", f"/v1/payment_methods/{pm['id']}"),
        ("POST", "/v1/payment_intents"),
        ("GET", "/v1/payment_intents"),
        ("POST", "/v1/customers"),
        ("POST", f"/v1/payment_methods/{pm['id']}/detach"),
        ("POST", "/v1/refunds"),
    ):
        status, body, _ = await sim.call(method, path, key=PK, data={"amount": "1000", "currency": "usd"})
        assert status == 401 and "publishable API key" in body["error"]["message"], (method, path, body)
    status, body, _ = await sim.call("POST", "/v1/payment_methods", key="pk_test_other", data={"type": "card"})
    assert status == 401 and body["error"]["message"] == "Invalid API Key provided."

    # A browser on another origin may call it: preflight, then the answer carries CORS.
    origin = {"Origin": "http://localhost:9"}
    async with sim.http.options(
        sim.url + "/v1/payment_methods",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:9"
        assert resp.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    data = {"type": "card", "card[number]": "5555555555554444", **CARD}
    status, body, headers = await sim.call("POST", "/v1/payment_methods", key=PK, data=data, headers=origin)
    assert status == 200 and body["card"]["brand"] == "mastercard"
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:9"


@pytest.mark.parametrize(
    ("number", "brand", "status", "outcome"),
    [
        ("4242424242424242", "visa", 200, "succeeded"),
        ("5555555555554444", "mastercard", 200, "succeeded"),
        ("4000000000000002", "visa", 402, "generic_decline"),
        ("4000000000009995", "visa", 402, "insufficient_funds"),
        ("4000002500003155", "visa", 200, "requires_action"),
        ("4000000000003220", "visa", 200, "requires_action"),
    ],
)
async def test_a_card_number_behaves_as_the_test_card_table_says(
    sim: Sim, number: str, brand: str, status: int, outcome: str
) -> None:
    pm = await sim.new_card(number)
    assert (pm["card"]["brand"], pm["card"]["last4"]) == (brand, number[-4:])
    got, body = await sim.charge(pm["id"])
    assert got == status, body
    if status == 402:
        assert (body["error"]["type"], body["error"]["code"]) == ("card_error", "card_declined")
        assert body["error"]["decline_code"] == outcome
    else:
        assert body["status"] == outcome


@pytest.mark.parametrize(
    ("fields", "status", "kind", "code"),
    [
        ({"card[number]": "4242424242424241"}, 402, "card_error", "incorrect_number"),
        ({"card[number]": "4242"}, 402, "card_error", "incorrect_number"),
        ({"card[number]": "4242424242424242", "card[exp_year]": "2020"}, 402, "card_error", "invalid_expiry_year"),
        ({"card[number]": "4242424242424242", "card[exp_month]": "13"}, 402, "card_error", "invalid_expiry_month"),
        ({"card[number]": "4242424242424242", "card[cvc]": "12"}, 402, "card_error", "invalid_cvc"),
        ({"card[number]": ""}, 400, "invalid_request_error", None),
        ({"type": "sepa_debit", "card[number]": "4242424242424242"}, 400, "invalid_request_error", None),
    ],
)
async def test_a_wrong_card_is_refused_with_stripes_error(
    sim: Sim, fields: dict[str, str], status: int, kind: str, code: str | None
) -> None:
    got, body, _ = await sim.call("POST", "/v1/payment_methods", key=PK, data={"type": "card", **CARD, **fields})
    assert got == status, body
    assert body["error"]["type"] == kind and body["error"].get("code") == code
    assert sim.sim.payment_methods == {}


async def test_a_card_paid_with_setup_future_usage_is_saved_to_its_customer_and_listed(sim: Sim) -> None:
    async with sdk(sim) as client:
        cus = await client.v1.customers.create_async(params={"email": "p@example.com"})
        other = await client.v1.customers.create_async(params={"email": "q@example.com"})
        first, second = await sim.new_card("4242424242424242"), await sim.new_card("5555555555554444")
        not_saved, declined = await sim.new_card("4242424242424242"), await sim.new_card("4000000000000002")
        three_ds = await sim.new_card("4000002500003155")

        for pm in (first, second):
            pi = await client.v1.payment_intents.create_async(
                params={
                    "amount": 1000,
                    "currency": "usd",
                    "customer": cus.id,
                    "payment_method": pm["id"],
                    "setup_future_usage": "off_session",
                    "confirm": True,
                }
            )
            assert pi.status == "succeeded" and pi.setup_future_usage == "off_session"
        # Without setup_future_usage, or declined, or awaiting 3-D Secure: not saved (yet).
        assert (await sim.charge(not_saved["id"], customer=cus.id))[1]["status"] == "succeeded"
        status, _ = await sim.charge(declined["id"], customer=cus.id, setup_future_usage="off_session")
        assert status == 402
        status, waiting = await sim.charge(three_ds["id"], customer=cus.id, setup_future_usage="off_session")
        assert waiting["status"] == "requires_action"
        listed = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card", "limit": 10})
        assert [pm.id for pm in listed.data] == [second["id"], first["id"]]  # newest first
        assert listed.data[0].card is not None and listed.data[0].card.last4 == "4444"

        # The challenge completed: now it is saved too.
        async with sim.http.post(
            sim.url + "/_sim/three_d_secure", json={"payment_intent": waiting["id"], "result": "complete"}
        ) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "succeeded"
        page = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card", "limit": 2})
        assert [pm.id for pm in page.data] == [three_ds["id"], second["id"]] and page.has_more

        # A saved card pays for its own Customer only.
        status, body = await sim.charge(first["id"], customer=other.id)
        assert status == 400 and body["error"]["param"] == "payment_method", body
        assert (await sim.charge(first["id"]))[0] == 400
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.payment_intents.create_async(
                params={"amount": 1000, "currency": "usd", "customer": other.id, "payment_method": second["id"]}
            )
        assert (await sim.charge(first["id"], customer=cus.id))[1]["status"] == "succeeded"

        # Detached: no longer listed; detaching again is refused.
        detached = await client.v1.payment_methods.detach_async(first["id"])
        assert detached.customer is None
        listed = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card"})
        assert [pm.id for pm in listed.data] == [three_ds["id"], second["id"]]
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.payment_methods.detach_async(first["id"])
        assert (await client.v1.customers.payment_methods.list_async(other.id)).data == []

        # Stripe's test ids stand for a fresh card each time: never attached, usable by anyone.
        await client.v1.payment_intents.create_async(
            params={
                "amount": 1000,
                "currency": "usd",
                "customer": cus.id,
                "payment_method": "pm_card_visa",
                "setup_future_usage": "off_session",
                "confirm": True,
            }
        )
        assert (await sim.charge("pm_card_visa", customer=other.id))[1]["status"] == "succeeded"
        assert (await sim.charge("pm_card_visa"))[1]["status"] == "succeeded"


async def test_the_browser_reads_an_intent_only_with_its_client_secret(sim: Sim) -> None:
    _, pi = await sim.charge("pm_card_authenticationRequired", **{"metadata[order]": "x"})
    path = f"/v1/payment_intents/{pi['id']}"
    origin = {"Origin": "http://localhost:9"}
    status, body, headers = await sim.call(
        "GET", path, key=PK, params={"client_secret": pi["client_secret"]}, headers=origin
    )
    assert status == 200 and body["status"] == "requires_action" and body["amount"] == 1000
    assert "metadata" not in body and "customer" not in body  # the browser's view, as Stripe's
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:9"
    for secret in ("", pi["client_secret"] + "x", "pi_other_secret_abc"):
        status, body, _ = await sim.call("GET", path, key=PK, params={"client_secret": secret})
        assert status == 400 and body["error"]["param"] == "client_secret", secret
    status, _, _ = await sim.call(
        "GET", "/v1/payment_intents/pi_unknown", key=PK, params={"client_secret": pi["client_secret"]}
    )
    assert status == 400

    # The challenge page's action: the publishable key and the client secret, once.
    form = {"payment_intent": pi["id"], "client_secret": pi["client_secret"], "result": "complete"}
    assert (await sim.call("POST", "/3ds/authenticate", key=SK, data=form))[0] == 401
    bad = {**form, "client_secret": pi["client_secret"][:-1]}
    assert (await sim.call("POST", "/3ds/authenticate", key=PK, data=bad))[0] == 400
    status, body, _ = await sim.call("POST", "/3ds/authenticate", key=PK, data=form)
    assert status == 200 and body["status"] == "succeeded"
    status, body, _ = await sim.call("POST", "/3ds/authenticate", key=PK, data=form)
    assert status == 400 and body["error"]["code"] == "payment_intent_unexpected_state"


async def test_a_cards_behaviour_survives_a_restart_and_its_number_is_never_kept(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "state.jsonl"
    async with running(journal) as first:
        declined = await first.new_card("4000000000000002", **{"card[cvc]": "987"})
        three_ds = await first.new_card("4000002500003155")
        # The secret key with an idempotency key too: its fingerprint is journaled, hashed.
        form = {"type": "card", "card[number]": "5555555555554444", **CARD}
        status, mc, _ = await first.call("POST", "/v1/payment_methods", data=form, headers={"Idempotency-Key": "k1"})
        assert status == 200
    async with running(journal) as second:
        status, body = await second.charge(declined["id"])
        assert status == 402 and body["error"]["decline_code"] == "generic_decline"
        assert (await second.charge(three_ds["id"]))[1]["status"] == "requires_action"
        assert (await second.charge(mc["id"]))[1]["status"] == "succeeded"
        replay = await second.call("POST", "/v1/payment_methods", data=form, headers={"Idempotency-Key": "k1"})
        assert replay[0] == 200 and replay[1]["id"] == mc["id"] and replay[2]["Idempotent-Replayed"] == "true"
    kept = journal.read_text()
    for number in ("4000000000000002", "4000002500003155", "5555555555554444"):
        assert number not in kept
    # As a JSON value (ids are hex, so the bare digits may turn up inside one by chance).
    assert '"cvc"' not in kept and '"987"' not in kept and "=987" not in kept
