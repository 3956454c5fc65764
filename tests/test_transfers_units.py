"""The transfer fee split and what each side of a transfer is shown; pure functions, no servers.

- `rules.split` / `money.split_transfer_fee`: the sender pays exactly 10% on top, the shares are
  rounded down and add up to the fee, the network takes the rest; a bad amount is 400
  INVALID_AMOUNT.
- `messages.py`: the answer (`transfer_message`) and the webhook payload (`event_data`) each side
  gets, and who is told (`event_sides`). A dict stands in for the database row.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import errors, limits, money
from services.transfers import messages, phones
from services.transfers.rules import split
from services.transfers.store import COLUMNS

MAX = limits.TRANSFER_AMOUNT_MINOR_MAX
# Amounts a transfer takes: multiples of 0.1 unit (10 minor units), up to the limit.
amounts = st.integers(1, MAX // 10).map(lambda n: n * 10)
source_rates = st.integers(0, limits.TRANSFER_FEE_BPS_MAX)


# -- the fee split ------------------------------------------------------------------------------------


@given(amounts, source_rates)
def test_the_fee_is_a_tenth_and_its_shares_add_up(amount: int, bps: int) -> None:
    s = split(amount, source_bps=bps)
    assert s.fee * 10 == amount  # exactly 10%, never rounded
    assert s.source == amount * bps // 10_000
    assert s.destination == amount * 350 // 10_000  # whatever the source's rate
    assert s.network >= 0
    assert s.network == s.fee - s.source - s.destination
    assert s.source + s.destination + s.network == s.fee
    assert money.split_transfer_fee(amount, source_bps=bps) == (s.fee, s.source, s.destination, s.network)


@given(amounts, source_rates, source_rates)
def test_the_destinations_share_never_depends_on_the_sources_rate(amount: int, a: int, b: int) -> None:
    one, other = split(amount, source_bps=a), split(amount, source_bps=b)
    assert one.fee == other.fee and one.destination == other.destination
    # What one source takes more, the network gets less: the sender pays the same.
    assert one.source + one.network == other.source + other.network


@given(amounts, st.integers(limits.TRANSFER_FEE_BPS_MAX + 1, 10_000))
def test_a_source_rate_over_the_cap_takes_the_cap_and_the_network_never_goes_negative(amount: int, bps: int) -> None:
    s = split(amount, source_bps=bps)
    assert s.source == amount * limits.TRANSFER_FEE_BPS_MAX // 10_000
    assert s.network >= 0 and s.source + s.destination + s.network == s.fee


@pytest.mark.parametrize("bps", [-1, 651, 1000, 10_000])
def test_the_money_split_refuses_a_source_rate_outside_its_range(bps: int) -> None:
    with pytest.raises(ValueError):
        money.split_transfer_fee(1000, source_bps=bps)


def test_the_worked_examples() -> None:
    # 100 units at the default 3.5%: 3.50 + 3.50 + 3 = 10 (the smoke test's fee_breakdown).
    assert dataclasses.astuple(split(10_000, source_bps=350)) == (1000, 350, 350, 300)
    assert money.split_transfer_fee(10_000, source_bps=350) == (1000, 350, 350, 300)
    # 0.1 unit, the smallest amount: a fee of 0.01, both tenants' shares round down to nothing.
    assert dataclasses.astuple(split(10, source_bps=650)) == (1, 0, 0, 1)
    # 6.5%: the source takes the network's 3% too.
    s = split(10_000, source_bps=650)
    assert (s.fee, s.source, s.destination, s.network) == (1000, 650, 350, 0)
    # 0%: the network keeps the source's part.
    s = split(12_340, source_bps=0)
    assert (s.fee, s.source, s.destination, s.network) == (1234, 0, 431, 803)
    assert split(MAX, source_bps=350).fee == MAX // 10


def _assert_invalid_amount(amount: int, bps: int = 350) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        split(amount, source_bps=bps)
    exc = caught.value
    assert exc.http_status == 400
    assert exc.error_code == "INVALID_AMOUNT"
    assert exc.extra == {"param": "amount"}


@given(st.integers(0, MAX * 2).filter(lambda n: n % 10 != 0), source_rates)
def test_an_amount_whose_tenth_is_not_a_minor_unit_is_refused(amount: int, bps: int) -> None:
    _assert_invalid_amount(amount, bps)


@given(st.integers(-(10**12), 0), source_rates)
def test_zero_and_negative_amounts_are_refused(amount: int, bps: int) -> None:
    _assert_invalid_amount(amount, bps)


@given(st.integers(MAX // 10 + 1, MAX).map(lambda n: n * 10), source_rates)
def test_an_amount_over_the_limit_is_refused(amount: int, bps: int) -> None:
    _assert_invalid_amount(amount, bps)


def test_the_limit_itself_and_the_next_amounts() -> None:
    assert split(MAX, source_bps=350).fee == MAX // 10
    _assert_invalid_amount(MAX + 10)
    _assert_invalid_amount(MAX + 1)
    _assert_invalid_amount(9)
    assert split(10, source_bps=350).fee == 1


# -- what each side is shown --------------------------------------------------------------------------

T0 = datetime.datetime(2030, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
SENDER, RECIPIENT = "sender@example.com", "recipient@example.com"
SENDER_PHONE, RECIPIENT_PHONE = "+14155550123", "+12125550199"
SRC, DST = "ten_source", "ten_destination"
METADATA = {"order_ref": "quest-42-secret"}
HOLD, RELEASE = "txn_hold_1", "txn_release_1"


def fake_row(**over: Any) -> dict[str, Any]:
    """A completed self-transfer of 100 units (fee 10: 3.50 / 3.50 / 3), every column set."""
    row: dict[str, Any] = dict.fromkeys(c.strip() for c in COLUMNS.split(","))
    row.update(
        transfer_id="trf_01JD3Q8X4Z6N2R5T7V9W1Y3A5C",
        kind="self_transfer",
        source_tenant_id=SRC,
        environment="sandbox",
        idempotency_key="k1",
        request_hash=b"h",
        sender_email=SENDER,
        sender_phone=SENDER_PHONE,
        recipient_phone=None,
        destination_tenant_id=DST,
        recipient_email=RECIPIENT,
        amount_minor=10_000,
        fee_minor=1000,
        source_fee_minor=350,
        destination_fee_minor=350,
        network_fee_minor=300,
        status="completed",
        pin_attempts=1,
        pin_sends=1,
        verify_by=T0 + datetime.timedelta(minutes=30),
        claim_expires_at=T0 + datetime.timedelta(days=1),
        hold_transaction_id=HOLD,
        release_transaction_id=RELEASE,
        sender_balance_minor=9_000,
        recipient_balance_minor=25_000,
        metadata=json.dumps(METADATA),
        created_at=T0,
        updated_at=T0 + datetime.timedelta(minutes=2),
        verified_at=T0 + datetime.timedelta(minutes=1),
        completed_at=T0 + datetime.timedelta(minutes=2),
        ended_at=T0 + datetime.timedelta(minutes=2),
    )
    unknown = set(over) - set(row)
    assert not unknown, unknown
    row.update(over)
    return row


def returned(final: str, reason: str, **over: Any) -> dict[str, Any]:
    """The same transfer ended by a return to the sender (cancelled or expired)."""
    base: dict[str, Any] = {
        "status": final,
        "return_status": final,
        "end_reason": reason,
        "completed_at": None,
        "recipient_email": None,
        "recipient_balance_minor": None,
        "sender_balance_minor": 20_000,
    }
    return fake_row(**{**base, **over})


def unclaimed_send(**over: Any) -> dict[str, Any]:
    return returned(
        "expired", "claim_expired", kind="send", recipient_phone=RECIPIENT_PHONE, destination_tenant_id=None, **over
    )


def message(row: dict[str, Any], role: str) -> Any:
    return messages.transfer_message(row, role, attempts_max=5, sends_max=3)


def event(row: dict[str, Any], role: str) -> dict[str, Any]:
    return messages.event_data(row, role)


def _text_of(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, dict) else str(value)


SENDERS_OWN = (SENDER, SENDER_PHONE, phones.mask(SENDER_PHONE), "quest-42-secret", HOLD)


@pytest.mark.parametrize("status", ["pending_verification", "claimable", "claiming", "completed"])
def test_the_destinations_answer_hides_the_senders_email_phone_metadata_and_hold(status: str) -> None:
    row = fake_row(status=status, kind="send", recipient_phone=RECIPIENT_PHONE)
    mine = message(row, "destination")
    assert mine.role == "destination"
    assert (mine.sender_email, mine.sender_phone_masked, mine.recipient_phone_masked) == ("", "", "")
    assert (mine.metadata_json, mine.hold_transaction_id) == ("", "")
    assert not mine.HasField("sender_balance_minor")
    rendered = str(mine)
    assert all(secret not in rendered for secret in SENDERS_OWN), rendered
    assert RECIPIENT_PHONE not in rendered
    # Both sides see the amount and the fee breakdown.
    assert mine.amount_minor == 10_000
    fee = mine.fee
    assert (fee.source_minor, fee.destination_minor, fee.network_minor, fee.total_minor) == (350, 350, 300, 1000)
    # The settlement's id only once it is the destination's too.
    assert mine.release_transaction_id == (RELEASE if status == "completed" else "")


def test_the_sources_answer_shows_its_sender_with_the_phones_masked() -> None:
    row = fake_row(kind="send", recipient_phone=RECIPIENT_PHONE)
    mine = message(row, "source")
    assert (mine.sender_email, mine.hold_transaction_id) == (SENDER, HOLD)
    assert json.loads(mine.metadata_json) == METADATA
    assert mine.sender_phone_masked == phones.mask(SENDER_PHONE) != SENDER_PHONE
    assert mine.recipient_phone_masked == phones.mask(RECIPIENT_PHONE)
    assert SENDER_PHONE not in str(mine) and RECIPIENT_PHONE not in str(mine)
    assert mine.sender_balance_minor == 9_000 and not mine.HasField("recipient_balance_minor")
    assert (mine.pin_attempts_remaining, mine.pin_sends_remaining) == (4, 2)
    theirs = message(row, "destination")
    assert theirs.recipient_balance_minor == 25_000 and theirs.recipient_email == RECIPIENT


def test_a_self_transfers_destination_learns_the_recipient_only_once_claimed() -> None:
    assert message(fake_row(status="claimable", recipient_email=RECIPIENT), "destination").recipient_email == ""
    assert message(fake_row(), "destination").recipient_email == RECIPIENT


def test_a_completed_transfers_events_give_each_side_its_own_share_player_and_balance() -> None:
    row = fake_row()
    src, dst = event(row, "source"), event(row, "destination")
    assert (src["role"], dst["role"]) == ("source", "destination")
    assert src["player_email"] == SENDER and dst["player_email"] == RECIPIENT
    assert src["amount"] == dst["amount"] == "100"
    assert src["fee_total"] == dst["fee_total"] == "10"
    assert src["fee_share"] == "3.50" and dst["fee_share"] == "3.50"
    # The settlement moved the recipient's wallet, not the sender's (that moved at the hold).
    assert dst["new_balance"] == "250" and src["new_balance"] is None
    assert src["transaction_id"] == dst["transaction_id"] == RELEASE
    assert src["status"] == "completed" and src["reason"] is None
    assert (src["created_at"], src["ended_at"]) == ("2030-05-01T12:00:00Z", "2030-05-01T12:02:00Z")
    # The destination's payload says nothing of the sender's phone, metadata or hold.
    text = _text_of(dst)
    assert all(secret not in text for secret in SENDERS_OWN), dst
    assert "metadata" not in dst and "hold_transaction_id" not in dst


def test_the_fee_share_is_the_viewers_own() -> None:
    row = fake_row(source_fee_minor=650, destination_fee_minor=350, network_fee_minor=0)
    assert event(row, "source")["fee_share"] == "6.50"
    assert event(row, "destination")["fee_share"] == "3.50"
    row = fake_row(amount_minor=10, fee_minor=1, source_fee_minor=0, destination_fee_minor=0, network_fee_minor=1)
    assert event(row, "source")["fee_share"] == "0" and event(row, "destination")["fee_share"] == "0"
    assert event(row, "source")["fee_total"] == "0.01" and event(row, "source")["amount"] == "0.10"


@pytest.mark.parametrize(
    ("final", "reason"),
    [("cancelled", "cancelled_by_tenant"), ("cancelled", "pin_locked"), ("expired", "verification_expired")],
)
def test_a_returned_transfers_events_share_nothing_and_only_the_sender_has_a_new_balance(
    final: str, reason: str
) -> None:
    row = returned(final, reason)
    src, dst = event(row, "source"), event(row, "destination")
    assert src["fee_share"] == dst["fee_share"] == "0"  # the fee went back with the amount
    assert src["fee_total"] == "10"
    assert src["new_balance"] == "200" and dst["new_balance"] is None
    assert src["status"] == dst["status"] == final
    assert src["reason"] == dst["reason"] == reason
    assert dst["player_email"] is None  # nobody claimed it
    text = _text_of(dst)
    assert all(secret not in text for secret in SENDERS_OWN), dst
    assert messages.event_type(final) == f"transfer.{final}"


def test_event_types() -> None:
    assert messages.event_type("completed") == "transfer.completed"
    with pytest.raises(KeyError):
        messages.event_type("claimable")


def test_who_is_told() -> None:
    # A send nobody claimed has no destination: the source only.
    assert messages.event_sides(unclaimed_send()) == [(SRC, "source")]
    assert event(unclaimed_send(), "source")["transfer_type"] == "send"
    # A self-transfer's destination is told from the start, a send's once claimed there.
    for row in (fake_row(), returned("cancelled", "cancelled_by_tenant"), fake_row(kind="send")):
        assert messages.event_sides(row) == [(SRC, "source"), (DST, "destination")]
