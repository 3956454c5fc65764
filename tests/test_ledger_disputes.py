"""Disputes in the ledger: a freeze holds what the player still has of the disputed currency (never
more than is available, never expiring); a release frees it; a lost dispute's clawback voids the
freeze in its own transaction; a wallet left below zero refuses every debit (PLAYER_IN_DEBT) until a
currency purchase repays it. Against the real ledger service, over gRPC."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from typing import Any

import pytest
from invo.v1 import ledger_pb2

from services.common import errors
from tests.helpers import Api
from tests.ledger_stateful_support import call_ledger, ledger

__all__ = ["ledger"]  # the fixture, imported for this module's tests


def _idem(key: str | None = None) -> ledger_pb2.Idempotency:
    return ledger_pb2.Idempotency(namespace="dispute-test", key=key or uuid.uuid4().hex)


def _ref(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:26].upper()}"


def _email() -> str:
    return f"p-{uuid.uuid4().hex[:12]}@example.com"


async def _tenant(api: Api) -> str:
    return str((await api.create_tenant())["tenant_id"])


async def _credit(ledger: Any, tenant_id: str, email: str, amount: int) -> ledger_pb2.TransactionResult:
    return await call_ledger(
        ledger.CreditPurchase,
        ledger_pb2.CreditPurchaseRequest(
            tenant_id=tenant_id, player_email=email, amount_minor=amount, idempotency=_idem(), order_id=_ref("ord")
        ),
    )


def _purchase_request(tenant_id: str, email: str, price: int) -> ledger_pb2.PurchaseItemRequest:
    return ledger_pb2.PurchaseItemRequest(
        tenant_id=tenant_id,
        player_email=email,
        item_id="gem",
        item_name="Gem",
        price_minor=price,
        quantity=1,
        idempotency=_idem(),
        network_fee_bps=1000,
        currency_name="Gold Coins",
    )


async def _buy(ledger: Any, tenant_id: str, email: str, price: int) -> ledger_pb2.PurchaseItemResponse:
    return await call_ledger(ledger.PurchaseItem, _purchase_request(tenant_id, email, price))


def _freeze_request(
    tenant_id: str, email: str, amount: int, key: str | None = None, order_id: str = "ord_DISPUTED"
) -> ledger_pb2.FreezeCurrencyRequest:
    return ledger_pb2.FreezeCurrencyRequest(
        tenant_id=tenant_id,
        player_email=email,
        amount_minor=amount,
        idempotency=_idem(key),
        order_id=order_id,
        dispute_id="dp_TEST",
    )


async def _freeze(ledger: Any, tenant_id: str, email: str, amount: int) -> ledger_pb2.TransactionResult:
    return await call_ledger(ledger.FreezeCurrency, _freeze_request(tenant_id, email, amount))


def _release_request(tenant_id: str, hold_id: str, key: str | None = None) -> ledger_pb2.ReleaseFreezeRequest:
    return ledger_pb2.ReleaseFreezeRequest(tenant_id=tenant_id, hold_id=hold_id, idempotency=_idem(key))


def _clawback_request(
    tenant_id: str, email: str, amount: int, hold_id: str = "", key: str | None = None
) -> ledger_pb2.ClawBackRequest:
    return ledger_pb2.ClawBackRequest(
        tenant_id=tenant_id,
        player_email=email,
        amount_minor=amount,
        idempotency=_idem(key),
        reason="dispute_lost",
        order_id="ord_DISPUTED",
        release_hold_id=hold_id,
    )


async def _wallet(ledger: Any, tenant_id: str, email: str) -> tuple[int, int, int]:
    resp = await call_ledger(
        ledger.GetPlayerBalances,
        ledger_pb2.GetPlayerBalancesRequest(players=[ledger_pb2.PlayerRef(tenant_id=tenant_id, player_email=email)]),
    )
    (b,) = resp.balances
    return b.balance_minor, b.pending_minor, b.available_minor


def _player_in(result: ledger_pb2.TransactionResult, email: str) -> tuple[int, int, int]:
    (b,) = [b for b in result.balances if b.player_email == email]
    return b.balance_minor, b.pending_minor, b.available_minor


async def _txn(ledger: Any, tenant_id: str, txn_id: str) -> ledger_pb2.Transaction:
    return await call_ledger(
        ledger.GetTransaction, ledger_pb2.GetTransactionRequest(transaction_id=txn_id, tenant_id=tenant_id)
    )


async def _refused(call: Any, code: str) -> errors.InvoError:
    with pytest.raises(errors.InvoError) as exc:
        await call
    assert exc.value.error_code == code, exc.value
    return exc.value


async def _check_clean(ledger: Any) -> ledger_pb2.CheckResponse:
    check = await call_ledger(ledger.Check, ledger_pb2.CheckRequest())
    assert check.ok and check.total_balance_minor == 0, check
    assert list(check.negative_accounts) == [] and list(check.drifted_accounts) == [], check
    return check


async def _in_debt(ledger: Any, tenant_id: str, email: str) -> None:
    """1000 bought, 800 spent, the 1000 clawed back: a debt of 800."""
    await _credit(ledger, tenant_id, email, 1000)
    await _buy(ledger, tenant_id, email, 800)
    clawed = await call_ledger(ledger.ClawBack, _clawback_request(tenant_id, email, 1000))
    assert (clawed.status, clawed.amount_minor, _player_in(clawed, email)) == ("posted", 1000, (-800, 0, -800))


# -- a freeze holds what is available, no more ----------------------------------------------------


async def test_a_freeze_holds_at_most_what_is_available_and_nothing_from_an_empty_wallet(api: Api, ledger: Any) -> None:
    tenant_id, email = await _tenant(api), _email()
    await _credit(ledger, tenant_id, email, 1000)

    full = await _freeze(ledger, tenant_id, email, 600)
    assert (full.status, full.amount_minor, full.duplicate) == ("pending", 600, False), full
    assert full.transaction_id.startswith("txn_")
    assert _player_in(full, email) == (1000, 600, 400)
    held = await _txn(ledger, tenant_id, full.transaction_id)
    assert held.kind == "dispute_hold" and held.status == "pending" and not held.HasField("expires_at"), held
    assert sorted((p.account.split(":")[0], p.amount_minor) for p in held.postings) == [
        ("player", -600),
        ("world", 600),
    ]

    partial = await _freeze(ledger, tenant_id, email, 1000)  # only 400 is left to hold
    assert (partial.status, partial.amount_minor) == ("pending", 400), partial
    assert _player_in(partial, email) == (1000, 1000, 0)

    nothing = await _freeze(ledger, tenant_id, email, 1000)
    assert (nothing.status, nothing.transaction_id, nothing.amount_minor) == ("none", "", 0), nothing
    assert _player_in(nothing, email) == (1000, 1000, 0)
    assert await _wallet(ledger, tenant_id, email) == (1000, 1000, 0)

    empty = await _freeze(ledger, tenant_id, _email(), 500)  # a player who never bought anything
    assert (empty.status, empty.transaction_id, empty.amount_minor) == ("none", "", 0), empty

    debtor = _email()
    await _in_debt(ledger, tenant_id, debtor)
    owing = await _freeze(ledger, tenant_id, debtor, 500)
    assert (owing.status, owing.transaction_id, owing.amount_minor) == ("none", "", 0), owing
    assert await _wallet(ledger, tenant_id, debtor) == (-800, 0, -800)
    await _check_clean(ledger)


async def test_frozen_currency_cannot_be_spent_survives_expiry_and_is_freed_by_its_release(
    api: Api, ledger: Any
) -> None:
    tenant_id, email = await _tenant(api), _email()
    await _credit(ledger, tenant_id, email, 1000)
    hold_id = (await _freeze(ledger, tenant_id, email, 1000)).transaction_id

    await _refused(_buy(ledger, tenant_id, email, 1), "INSUFFICIENT_BALANCE")
    await call_ledger(ledger.ExpireHolds, ledger_pb2.ExpireHoldsRequest())
    assert (await _txn(ledger, tenant_id, hold_id)).status == "pending"  # no expiry: disputes last months
    assert await _wallet(ledger, tenant_id, email) == (1000, 1000, 0)

    # Only this tenant's dispute holds: another tenant's, an unknown one, a transfer's are not found.
    other = await _tenant(api)
    await _refused(call_ledger(ledger.ReleaseFreeze, _release_request(other, hold_id)), "HOLD_NOT_FOUND")
    await _refused(call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, _ref("txn"))), "HOLD_NOT_FOUND")
    await _refused(call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, "nope")), "HOLD_NOT_FOUND")
    sender = _email()
    await _credit(ledger, tenant_id, sender, 1100)
    transfer = await call_ledger(
        ledger.HoldTransfer,
        ledger_pb2.HoldTransferRequest(
            source_tenant_id=tenant_id, sender_email=sender, amount_minor=1000, fee_minor=100, transfer_id=_ref("tr")
        ),
    )
    await _refused(
        call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, transfer.transaction_id)), "HOLD_NOT_FOUND"
    )

    released = await call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, hold_id))
    assert (released.transaction_id, released.status, released.amount_minor) == (hold_id, "voided", 1000)
    assert _player_in(released, email) == (1000, 0, 1000)
    assert (await _buy(ledger, tenant_id, email, 1000)).new_balance_minor == 0

    # Released already: answered quietly, nothing moves.
    again = await call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, hold_id))
    assert (again.transaction_id, again.status, again.amount_minor, again.duplicate) == (hold_id, "voided", 0, False)
    assert await _wallet(ledger, tenant_id, email) == (0, 0, 0)
    await _check_clean(ledger)


# -- a lost dispute: the freeze and the clawback in one transaction ----------------------------------


async def test_a_lost_dispute_claws_back_through_its_freeze_in_one_transaction(api: Api, ledger: Any) -> None:
    tenant_id = await _tenant(api)

    # Nothing spent: the freeze held it all, the clawback takes it all; no debt, nothing pending.
    whole = _email()
    await _credit(ledger, tenant_id, whole, 1000)
    hold_id = (await _freeze(ledger, tenant_id, whole, 1000)).transaction_id
    clawed = await call_ledger(ledger.ClawBack, _clawback_request(tenant_id, whole, 1000, hold_id))
    assert (clawed.status, clawed.amount_minor, _player_in(clawed, whole)) == ("posted", 1000, (0, 0, 0)), clawed
    assert (await _txn(ledger, tenant_id, hold_id)).status == "voided"

    # 300 spent before the dispute: the freeze held the 700 left; losing takes back all 1000, and
    # the 300 already spent (the partner's revenue, untouched) becomes the player's debt.
    spent = _email()
    await _credit(ledger, tenant_id, spent, 1000)
    await _buy(ledger, tenant_id, spent, 300)
    revenue = (await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))).owed_minor
    freeze = await _freeze(ledger, tenant_id, spent, 1000)
    assert (freeze.amount_minor, _player_in(freeze, spent)) == (700, (700, 700, 0))
    lost = await call_ledger(ledger.ClawBack, _clawback_request(tenant_id, spent, 1000, freeze.transaction_id))
    assert (lost.status, lost.amount_minor, _player_in(lost, spent)) == ("posted", 1000, (-300, 0, -300)), lost
    assert await _wallet(ledger, tenant_id, spent) == (-300, 0, -300)
    assert (await _txn(ledger, tenant_id, freeze.transaction_id)).status == "voided"
    txn = await _txn(ledger, tenant_id, lost.transaction_id)
    assert (txn.kind, txn.status) == ("clawback_dispute", "posted")
    assert f'"release_hold_id": "{freeze.transaction_id}"' in txn.metadata_json
    after = (await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))).owed_minor
    assert after == revenue
    # The freeze, once taken by the clawback, answers its status to a late release.
    late = await call_ledger(ledger.ReleaseFreeze, _release_request(tenant_id, freeze.transaction_id))
    assert (late.status, late.amount_minor) == ("voided", 0)

    # A hold already not pending is skipped: the clawback still applies.
    more = await call_ledger(ledger.ClawBack, _clawback_request(tenant_id, whole, 10, hold_id))
    assert (more.status, _player_in(more, whole)) == ("posted", (-10, 0, -10))

    # Another player's dispute hold, or a hold that is not a dispute's, is not this clawback's.
    other = _email()
    await _credit(ledger, tenant_id, other, 500)
    others = (await _freeze(ledger, tenant_id, other, 500)).transaction_id
    await _refused(call_ledger(ledger.ClawBack, _clawback_request(tenant_id, spent, 100, others)), "HOLD_NOT_FOUND")
    await _refused(
        call_ledger(ledger.ClawBack, _clawback_request(tenant_id, spent, 100, _ref("txn"))), "HOLD_NOT_FOUND"
    )
    assert await _wallet(ledger, tenant_id, spent) == (-300, 0, -300)  # refused: nothing moved
    assert await _wallet(ledger, tenant_id, other) == (500, 500, 0)
    check = await _check_clean(ledger)
    assert check.player_debts >= 2


# -- a debt refuses spending until it is repaid -------------------------------------------------------


async def test_a_debt_refuses_every_debit_until_a_currency_purchase_repays_it(api: Api, ledger: Any) -> None:
    tenant_id, email = await _tenant(api), _email()
    await _in_debt(ledger, tenant_id, email)

    refused = await _refused(_buy(ledger, tenant_id, email, 1), "PLAYER_IN_DEBT")
    assert refused.http_status == 402 and refused.error == "player_in_debt" and "debt" in refused.message
    batch = await call_ledger(
        ledger.PurchaseItems, ledger_pb2.PurchaseItemsRequest(items=[_purchase_request(tenant_id, email, 1)])
    )
    (item,) = batch.results
    assert {(m.key, m.value) for m in item.error.metadata} >= {
        (errors.MD_ERROR_CODE, "PLAYER_IN_DEBT"),
        (errors.MD_ERROR, "player_in_debt"),
    }, item
    await _refused(
        call_ledger(
            ledger.HoldTransfer,
            ledger_pb2.HoldTransferRequest(
                source_tenant_id=tenant_id, sender_email=email, amount_minor=10, fee_minor=1, transfer_id=_ref("tr")
            ),
        ),
        "PLAYER_IN_DEBT",
    )
    await _refused(
        call_ledger(
            ledger.AdjustBalance,
            ledger_pb2.AdjustBalanceRequest(
                tenant_id=tenant_id,
                player_email=email,
                amount_minor=-1,
                idempotency=_idem(),
                reason="test",
                operator_id="op_TEST",
            ),
        ),
        "PLAYER_IN_DEBT",
    )
    assert await _wallet(ledger, tenant_id, email) == (-800, 0, -800)

    # A currency purchase repays the debt first; part of it leaves the player still in debt.
    part = await _credit(ledger, tenant_id, email, 300)
    assert (part.amount_minor, _player_in(part, email)) == (300, (-500, 0, -500))
    await _refused(_buy(ledger, tenant_id, email, 1), "PLAYER_IN_DEBT")
    repaid = await _credit(ledger, tenant_id, email, 700)
    assert _player_in(repaid, email) == (200, 0, 200)
    # Out of debt, a purchase beyond the balance is the ordinary refusal again.
    await _refused(_buy(ledger, tenant_id, email, 201), "INSUFFICIENT_BALANCE")
    assert (await _buy(ledger, tenant_id, email, 200)).new_balance_minor == 0
    await _check_clean(ledger)


# -- every write replays its first answer ---------------------------------------------------------------


async def test_each_dispute_write_replayed_with_its_key_answers_its_first_result(api: Api, ledger: Any) -> None:
    tenant_id, email = await _tenant(api), _email()
    await _credit(ledger, tenant_id, email, 1000)

    async def twice(method: Any, first_request: Any, again_request: Any) -> ledger_pb2.TransactionResult:
        first = await call_ledger(method, first_request)
        again = await call_ledger(method, again_request)
        assert again.duplicate is True and first.duplicate is False, (first, again)
        first.duplicate = True
        assert again == first
        return first

    k = uuid.uuid4().hex
    frozen = await twice(
        ledger.FreezeCurrency, _freeze_request(tenant_id, email, 600, k), _freeze_request(tenant_id, email, 600, k)
    )
    assert (frozen.status, frozen.amount_minor) == ("pending", 600)
    # The wallet changed since (a purchase): a replay still answers what the freeze held then.
    await _buy(ledger, tenant_id, email, 400)
    replayed = await call_ledger(ledger.FreezeCurrency, _freeze_request(tenant_id, email, 600, k))
    assert (replayed.transaction_id, replayed.amount_minor, replayed.duplicate) == (frozen.transaction_id, 600, True)
    await _refused(
        call_ledger(ledger.FreezeCurrency, _freeze_request(tenant_id, email, 601, k)), "IDEMPOTENCY_KEY_REUSED"
    )

    k = uuid.uuid4().hex
    none = await twice(
        ledger.FreezeCurrency,
        _freeze_request(tenant_id, email, 100, k, "ord_OTHER"),
        _freeze_request(tenant_id, email, 100, k, "ord_OTHER"),
    )
    assert (none.status, none.transaction_id) == ("none", "")

    k = uuid.uuid4().hex
    released = await twice(
        ledger.ReleaseFreeze,
        _release_request(tenant_id, frozen.transaction_id, k),
        _release_request(tenant_id, frozen.transaction_id, k),
    )
    assert (released.status, released.amount_minor) == ("voided", 600)

    hold_id = (await _freeze(ledger, tenant_id, email, 600)).transaction_id
    k = uuid.uuid4().hex
    clawed = await twice(
        ledger.ClawBack,
        _clawback_request(tenant_id, email, 1000, hold_id, k),
        _clawback_request(tenant_id, email, 1000, hold_id, k),
    )
    assert _player_in(clawed, email) == (-400, 0, -400)
    # The hold it released is part of the request: the same key without it is another request.
    await _refused(
        call_ledger(ledger.ClawBack, _clawback_request(tenant_id, email, 1000, "", k)), "IDEMPOTENCY_KEY_REUSED"
    )
    assert await _wallet(ledger, tenant_id, email) == (-400, 0, -400)
    await _check_clean(ledger)


# -- a freeze racing spends ---------------------------------------------------------------------------


async def test_twenty_spends_racing_a_freeze_never_leave_the_wallet_overdrawn(api: Api, ledger: Any) -> None:
    tenant_id = await _tenant(api)
    for _ in range(3):
        email = _email()
        await _credit(ledger, tenant_id, email, 1500)  # 15 potions of 1 unit, or the freeze
        spends = [call_ledger(ledger.PurchaseItem, _purchase_request(tenant_id, email, 100)) for _ in range(20)]
        freeze = call_ledger(ledger.FreezeCurrency, _freeze_request(tenant_id, email, 1500))
        outcomes = await asyncio.gather(*spends[:10], freeze, *spends[10:], return_exceptions=True)
        frozen = outcomes[10]
        assert isinstance(frozen, ledger_pb2.TransactionResult), frozen
        bought = [o for o in outcomes if isinstance(o, ledger_pb2.PurchaseItemResponse)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(bought) + len(refused) == 20, outcomes
        assert {getattr(e, "error_code", e) for e in refused} <= {"INSUFFICIENT_BALANCE"}, refused
        balance, pending, available = await _wallet(ledger, tenant_id, email)
        assert balance == 1500 - 100 * len(bought)
        assert pending == frozen.amount_minor and available >= 0, (balance, pending, available)
        assert frozen.amount_minor + 100 * len(bought) <= 1500
        # Spends refused only for want of currency: everything is spent or frozen.
        if refused:
            assert available < 100
    await _check_clean(ledger)


async def test_the_gateway_shows_a_debt_beside_the_negative_balance(api: Api, ledger: Any) -> None:
    t = await api.create_tenant()
    email = _email()
    await _in_debt(ledger, t["tenant_id"], email)
    one = await api.get("/api/players/balance?" + urllib.parse.urlencode({"player_email": email}), key=t["sdk_key"])
    assert one.status == 200, one
    assert (one.body["balance"], one.body["available_balance"], one.body["pending"], one.body["debt"]) == (
        "-8",
        "-8",
        "0",
        "8",
    )
    many = await api.post("/api/players/balances", key=t["sdk_key"], json={"player_emails": [email, _email()]})
    assert many.status == 200, many
    assert [(b["balance"], b["debt"]) for b in many.body["balances"]] == [("-8", "8"), ("0", "0")]
