"""The ledger owns its chart: domain writes build their own postings, a caller acting for one
tenant cannot touch another's accounts, the network fee is never a silent zero, and a movement
between two tenants shows in both tenants' entries. Against the real ledger service."""

from __future__ import annotations

import pathlib
import re
import uuid
from typing import Any

import pytest
from invo.v1 import ledger_pb2

from services.common import errors, money
from services.ledger import chart
from tests.helpers import Api
from tests.ledger_stateful_support import call_ledger, ledger

__all__ = ["ledger"]  # the fixture, imported for this module's tests

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What an account code looks like when spelled out in code: a quoted literal starting with one
# of the chart's prefixes.
ACCOUNT_LITERAL = re.compile(r"""["'](?:world:|network:fees|transfers:held|player:|tenant:[^"']*:revenue)""")


def test_no_code_outside_the_ledger_spells_an_account() -> None:
    offenders = []
    for folder in ("services", "bench", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "services" / "ledger"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if ACCOUNT_LITERAL.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_grep_sees_a_spelled_account() -> None:
    """The pattern above is not vacuous: it matches the forms that used to be written."""
    for line in ('account="world:processor"', 'f"player:{tenant_id}:{email}"', "'network:fees'"):
        assert ACCOUNT_LITERAL.search(line), line
    assert not ACCOUNT_LITERAL.search("chart.player(tenant_id, email)")


def _idem() -> ledger_pb2.Idempotency:
    return ledger_pb2.Idempotency(namespace="domain-test", key=uuid.uuid4().hex)


async def _tenant(api: Api) -> str:
    return str((await api.create_tenant())["tenant_id"])


async def _credit(ledger: Any, tenant_id: str, email: str, amount: int) -> ledger_pb2.TransactionResult:
    return await call_ledger(
        ledger.CreditPurchase,
        ledger_pb2.CreditPurchaseRequest(
            tenant_id=tenant_id,
            player_email=email,
            amount_minor=amount,
            idempotency=_idem(),
            order_id=f"ord_{uuid.uuid4().hex[:26].upper()}",
        ),
    )


async def _wallet(ledger: Any, tenant_id: str, email: str) -> ledger_pb2.AccountBalance:
    resp = await call_ledger(
        ledger.GetPlayerBalances,
        ledger_pb2.GetPlayerBalancesRequest(players=[ledger_pb2.PlayerRef(tenant_id=tenant_id, player_email=email)]),
    )
    (b,) = resp.balances
    return b


async def _entries(ledger: Any, tenant_id: str) -> list[ledger_pb2.Entry]:
    resp = await call_ledger(ledger.ListEntries, ledger_pb2.ListEntriesRequest(tenant_id=tenant_id, limit=1000))
    return list(resp.entries)


async def _check_clean(ledger: Any) -> None:
    check = await call_ledger(ledger.Check, ledger_pb2.CheckRequest())
    assert check.ok and check.total_balance_minor == 0, check


async def test_a_posting_to_another_tenants_account_is_refused(api: Api, ledger: Any) -> None:
    mine, theirs = await _tenant(api), await _tenant(api)
    await _credit(ledger, theirs, "victim@example.com", 5000)
    before = await _wallet(ledger, theirs, "victim@example.com")
    steal = [
        ledger_pb2.Posting(account=chart.player(theirs, "victim@example.com"), amount_minor=-5000),
        ledger_pb2.Posting(account=chart.player(mine, "thief@example.com"), amount_minor=5000),
    ]
    with pytest.raises(errors.Forbidden) as exc:
        await call_ledger(
            ledger.Transfer,
            ledger_pb2.TransferRequest(tenant_id=mine, kind="steal", postings=steal, idempotency=_idem()),
        )
    assert exc.value.error_code == "ACCOUNT_NOT_OWNED"
    with pytest.raises(errors.Forbidden):
        await call_ledger(
            ledger.CreateHold,
            ledger_pb2.CreateHoldRequest(
                tenant_id=mine, kind="steal", postings=steal, idempotency=_idem(), expires_in_ms=60_000
            ),
        )
    # Another tenant's revenue is refused the same way.
    with pytest.raises(errors.Forbidden):
        await call_ledger(
            ledger.Transfer,
            ledger_pb2.TransferRequest(
                tenant_id=mine,
                kind="steal",
                postings=[
                    ledger_pb2.Posting(account=chart.revenue(theirs), amount_minor=-1),
                    ledger_pb2.Posting(account=chart.NETWORK_FEES, amount_minor=1),
                ],
                idempotency=_idem(),
            ),
        )
    after = await _wallet(ledger, theirs, "victim@example.com")
    assert after.balance_minor == before.balance_minor == 5000
    assert (await _wallet(ledger, mine, "thief@example.com")).balance_minor == 0


async def test_a_purchase_without_a_network_fee_is_refused(api: Api, ledger: Any) -> None:
    tenant_id = await _tenant(api)
    await _credit(ledger, tenant_id, "p@example.com", 1000)
    request = ledger_pb2.PurchaseItemRequest(
        tenant_id=tenant_id,
        player_email="p@example.com",
        item_id="sword",
        item_name="Sword",
        price_minor=500,
        quantity=1,
        idempotency=_idem(),
        currency_name="Gold Coins",
    )
    with pytest.raises(errors.InvalidRequest) as exc:
        await call_ledger(ledger.PurchaseItem, request)
    assert "network_fee_bps" in exc.value.message
    assert (await _wallet(ledger, tenant_id, "p@example.com")).balance_minor == 1000
    # An explicit zero is a fee like any other: everything to the partner.
    request.network_fee_bps = 0
    res = await call_ledger(ledger.PurchaseItem, request)
    assert (res.partner_amount_minor, res.network_fee_minor, res.new_balance_minor) == (500, 0, 500)


@pytest.mark.parametrize(
    ("total", "bps", "partner", "fee"),
    [(35, 1000, 32, 3), (100, 1250, 88, 12), (1, 1000, 1, 0), (1000, 1000, 900, 100), (7, 10_000, 0, 7)],
)
def test_a_fee_rounds_down_and_the_parts_add_up(total: int, bps: int, partner: int, fee: int) -> None:
    assert money.split_item_purchase(total, network_fee_bps=bps) == (partner, fee)


@pytest.mark.parametrize(
    ("amount", "source_bps", "expected"),
    [
        (10_000, 350, (1000, 350, 350, 300)),  # the seed's default: 3.5 / 3.5 / 3
        (10_000, 650, (1000, 650, 350, 0)),  # a negotiated 6.5% takes all of the network's 3%
        (10_000, 500, (1000, 500, 350, 150)),
        (99, 350, (9, 3, 3, 3)),  # rounding: the tenants' shares down, the network the rest
    ],
)
def test_a_transfer_fee_split_follows_the_seed(amount: int, source_bps: int, expected: tuple[int, ...]) -> None:
    fee, source, destination, network = money.split_transfer_fee(amount, source_bps=source_bps)
    assert (fee, source, destination, network) == expected
    assert source + destination + network == fee


async def test_a_transfer_between_tenants_shows_in_both_tenants_entries(api: Api, ledger: Any) -> None:
    source, destination = await _tenant(api), await _tenant(api)
    await _credit(ledger, source, "alice@example.com", 20_000)
    amount = 10_000
    fee, source_share, destination_share, network_share = money.split_transfer_fee(amount, source_bps=350)
    held = await call_ledger(
        ledger.HoldTransfer,
        ledger_pb2.HoldTransferRequest(
            source_tenant_id=source,
            sender_email="alice@example.com",
            amount_minor=amount,
            fee_minor=fee,
            transfer_id="tr_test1",
        ),
    )
    assert (await _wallet(ledger, source, "alice@example.com")).balance_minor == 20_000 - amount - fee
    settle = ledger_pb2.SettleTransferRequest(
        source_tenant_id=source,
        destination_tenant_id=destination,
        recipient_email="bob@example.com",
        amount_minor=amount,
        source_fee_minor=source_share,
        destination_fee_minor=destination_share,
        network_fee_minor=network_share,
        transfer_id="tr_test1",
    )
    settled = await call_ledger(ledger.SettleTransfer, settle)
    replay = await call_ledger(ledger.SettleTransfer, settle)
    assert replay.duplicate and replay.transaction_id == settled.transaction_id
    assert (await _wallet(ledger, destination, "bob@example.com")).balance_minor == amount
    revenue = await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=destination))
    assert revenue.owed_minor == destination_share
    # Each tenant sees its own side of the settlement, tagged with itself.
    dest_entries = [e for e in await _entries(ledger, destination) if e.transaction_id == settled.transaction_id]
    assert {(e.account_kind, e.player_email, e.amount_minor) for e in dest_entries} == {
        ("player", "bob@example.com", amount),
        ("revenue", "", destination_share),
    }
    assert all(e.account_tenant_id == destination for e in dest_entries)
    source_entries = await _entries(ledger, source)
    assert {e.transaction_id for e in source_entries} >= {held.transaction_id, settled.transaction_id}
    assert not any(e.account_kind == "player" and e.player_email == "bob@example.com" for e in source_entries)
    # Shares that do not add up to the fee are refused.
    settle.network_fee_minor += 1
    with pytest.raises(errors.InvalidRequest):
        await call_ledger(ledger.SettleTransfer, settle)
    # Settled once: a return of the same transfer is refused, whatever it claims.
    with pytest.raises(errors.InvalidRequest) as exc:
        await call_ledger(
            ledger.ReturnTransfer,
            ledger_pb2.ReturnTransferRequest(
                source_tenant_id=source,
                sender_email="alice@example.com",
                amount_minor=amount + fee,
                transfer_id="tr_test1",
            ),
        )
    assert exc.value.error_code == "IDEMPOTENCY_KEY_REUSED"
    assert (await _wallet(ledger, source, "alice@example.com")).balance_minor == 20_000 - amount - fee
    await _check_clean(ledger)


async def test_a_returned_transfer_gives_the_sender_back_everything(api: Api, ledger: Any) -> None:
    source = await _tenant(api)
    await _credit(ledger, source, "carol@example.com", 1100)
    await call_ledger(
        ledger.HoldTransfer,
        ledger_pb2.HoldTransferRequest(
            source_tenant_id=source,
            sender_email="carol@example.com",
            amount_minor=1000,
            fee_minor=100,
            transfer_id="tr_test2",
        ),
    )
    assert (await _wallet(ledger, source, "carol@example.com")).balance_minor == 0
    with pytest.raises(errors.InvalidRequest):  # the fee is the seed's 10%, nothing else
        await call_ledger(
            ledger.HoldTransfer,
            ledger_pb2.HoldTransferRequest(
                source_tenant_id=source,
                sender_email="carol@example.com",
                amount_minor=1000,
                fee_minor=0,
                transfer_id="tr_test3",
            ),
        )
    await call_ledger(
        ledger.ReturnTransfer,
        ledger_pb2.ReturnTransferRequest(
            source_tenant_id=source,
            sender_email="carol@example.com",
            amount_minor=1100,
            transfer_id="tr_test2",
        ),
    )
    assert (await _wallet(ledger, source, "carol@example.com")).balance_minor == 1100
    await _check_clean(ledger)


async def test_a_clawback_may_leave_a_debt_and_a_payout_may_not_overdraw(api: Api, ledger: Any) -> None:
    tenant_id = await _tenant(api)
    await _credit(ledger, tenant_id, "dave@example.com", 1000)
    await call_ledger(
        ledger.PurchaseItem,
        ledger_pb2.PurchaseItemRequest(
            tenant_id=tenant_id,
            player_email="dave@example.com",
            item_id="gem",
            item_name="Gem",
            price_minor=800,
            quantity=1,
            idempotency=_idem(),
            network_fee_bps=1000,
            currency_name="Gold Coins",
        ),
    )
    clawed = await call_ledger(
        ledger.ClawBack,
        ledger_pb2.ClawBackRequest(
            tenant_id=tenant_id,
            player_email="dave@example.com",
            amount_minor=1000,
            idempotency=_idem(),
            reason="refund",
            order_id="ord_TEST",
        ),
    )
    (wallet,) = [b for b in clawed.balances if b.player_email == "dave@example.com"]
    assert wallet.balance_minor == -800
    revenue = await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))
    assert revenue.owed_minor == 720
    with pytest.raises(errors.PaymentRequired) as exc:
        await call_ledger(
            ledger.HoldPayout, ledger_pb2.HoldPayoutRequest(tenant_id=tenant_id, payout_id="po_1", amount_minor=721)
        )
    assert exc.value.error_code == "INSUFFICIENT_BALANCE"
    await call_ledger(
        ledger.HoldPayout, ledger_pb2.HoldPayoutRequest(tenant_id=tenant_id, payout_id="po_2", amount_minor=720)
    )
    await call_ledger(ledger.SettlePayout, ledger_pb2.PayoutRef(tenant_id=tenant_id, payout_id="po_2"))
    revenue = await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))
    assert (revenue.owed_minor, revenue.paid_out_minor, revenue.lifetime_minor) == (0, 720, 720)
    await _check_clean(ledger)


async def test_a_transfer_is_released_once_and_only_as_it_was_held(api: Api, ledger: Any) -> None:
    """transfers:held pools every tenant's transfers in flight: a release must fit its own hold,
    or one transfer could be paid out of another's escrow."""
    source = await _tenant(api)
    await _credit(ledger, source, "erin@example.com", 1100)

    def give_back(amount: int, transfer_id: str = "tr_pool") -> ledger_pb2.ReturnTransferRequest:
        return ledger_pb2.ReturnTransferRequest(
            source_tenant_id=source, sender_email="erin@example.com", amount_minor=amount, transfer_id=transfer_id
        )

    with pytest.raises(errors.NotFound) as exc:  # nothing held for it
        await call_ledger(ledger.ReturnTransfer, give_back(1100))
    assert exc.value.error_code == "PREREQUISITE_NOT_FOUND"
    hold = ledger_pb2.HoldTransferRequest(
        source_tenant_id=source,
        sender_email="erin@example.com",
        amount_minor=1000,
        fee_minor=100,
        transfer_id="tr_pool",
    )
    held = await call_ledger(ledger.HoldTransfer, hold)
    assert (await call_ledger(ledger.HoldTransfer, hold)).transaction_id == held.transaction_id  # a retry replays
    with pytest.raises(errors.InvalidRequest) as mismatch:  # more than was held
        await call_ledger(ledger.ReturnTransfer, give_back(5000))
    assert mismatch.value.error_code == "PREREQUISITE_MISMATCH"
    returned = await call_ledger(ledger.ReturnTransfer, give_back(1100))
    assert (await call_ledger(ledger.ReturnTransfer, give_back(1100))).duplicate  # a retry replays, nothing more
    assert returned.transaction_id
    settle = ledger_pb2.SettleTransferRequest(
        source_tenant_id=source,
        destination_tenant_id=source,
        recipient_email="frank@example.com",
        amount_minor=1000,
        source_fee_minor=35,
        destination_fee_minor=35,
        network_fee_minor=30,
        transfer_id="tr_pool",
    )
    with pytest.raises(errors.InvalidRequest) as reused:  # returned already: never settled too
        await call_ledger(ledger.SettleTransfer, settle)
    assert reused.value.error_code == "IDEMPOTENCY_KEY_REUSED"
    assert (await _wallet(ledger, source, "erin@example.com")).balance_minor == 1100
    assert (await _wallet(ledger, source, "frank@example.com")).balance_minor == 0
    await _check_clean(ledger)


def test_a_players_account_built_from_its_parts_is_what_its_code_parses_to() -> None:
    tenant_id = "tn_" + "A" * 26
    for email in ("Zoe@Example.COM", "  bob@example.com "):
        assert chart.player_info(tenant_id, email) == chart.parse(chart.player(tenant_id, email))
