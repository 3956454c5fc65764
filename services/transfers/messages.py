"""A transfer as each side sees it: the gRPC message the gateway renders, and the webhook events.

Each tenant sees its own side only: the source its sender (email, phone, the hold, its metadata),
the destination its recipient. Both see the amount and the fee breakdown (the seed: "Read the
actual numbers from fee_breakdown in the API response"). A phone number is always masked.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from invo.v1 import transfers_pb2

from services.common import events, grpcutil, money
from services.transfers import phones
from services.transfers.store import SELF

_ts = grpcutil.timestamp

COMPLETED = "transfer.completed"
CANCELLED = "transfer.cancelled"
EXPIRED = "transfer.expired"


def fee_of(row: asyncpg.Record) -> transfers_pb2.FeeBreakdown:
    return transfers_pb2.FeeBreakdown(
        source_minor=row["source_fee_minor"],
        destination_minor=row["destination_fee_minor"],
        network_minor=row["network_fee_minor"],
        total_minor=row["fee_minor"],
    )


def transfer_message(
    row: asyncpg.Record,
    role: str,
    *,
    attempts_max: int,
    sends_max: int,
    history: list[asyncpg.Record] | None = None,
) -> transfers_pb2.Transfer:
    source = role == "source"
    msg = transfers_pb2.Transfer(
        transfer_id=row["transfer_id"],
        kind=row["kind"],
        status=row["status"],
        role=role,
        source_tenant_id=row["source_tenant_id"],
        destination_tenant_id=row["destination_tenant_id"] or "",
        sender_email=row["sender_email"] if source else "",
        recipient_email=row["recipient_email"] or "",
        sender_phone_masked=phones.mask(row["sender_phone"]) if source else "",
        recipient_phone_masked=phones.mask(row["recipient_phone"]) if source and row["recipient_phone"] else "",
        amount_minor=row["amount_minor"],
        fee=fee_of(row),
        end_reason=row["end_reason"] or "",
        hold_transaction_id=(row["hold_transaction_id"] or "") if source else "",
        release_transaction_id=(row["release_transaction_id"] or "") if source or row["status"] == "completed" else "",
        pin_attempts_remaining=max(0, attempts_max - row["pin_attempts"]),
        pin_sends_remaining=max(0, sends_max - row["pin_sends"]),
        metadata_json=row["metadata"] if source else "",
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
        verify_by=_ts(row["verify_by"]),
    )
    if not source and row["kind"] == SELF and row["status"] != "completed":
        msg.recipient_email = ""  # nobody has claimed it yet
    for field in ("pin_expires_at", "claim_expires_at", "verified_at", "completed_at", "ended_at"):
        if row[field] is not None:
            getattr(msg, field).CopyFrom(_ts(row[field]))
    if source and row["sender_balance_minor"] is not None:
        msg.sender_balance_minor = row["sender_balance_minor"]
    if not source and row["recipient_balance_minor"] is not None:
        msg.recipient_balance_minor = row["recipient_balance_minor"]
    for r in history or ():
        msg.history.append(
            transfers_pb2.TransferTransition(
                # `creating` is the service's own (the hold being placed): a transfer begins waiting for its PIN.
                from_status="" if r["from_status"] == "creating" else r["from_status"],
                to_status=r["to_status"],
                source=r["source"],
                reason=r["reason"],
                at=_ts(r["created_at"]),
            )
        )
    return msg


def event_data(row: asyncpg.Record, role: str) -> dict[str, Any]:
    """The webhook payload of a transfer that ended (completed, cancelled, expired) for one side.

    `fee_total` is the whole fee the sender paid (the seed's name); `fee_share` this tenant's own
    share of it (a cancelled or expired transfer shares nothing: the fee went back too)."""
    source = role == "source"
    completed = row["status"] == "completed"
    share = row["source_fee_minor"] if source else row["destination_fee_minor"]
    # The wallet this event's ledger write changed: the recipient's on completion, the sender's
    # when the hold went back. The other side's wallet did not move, so no balance is claimed.
    balance = None
    if completed and not source:
        balance = row["recipient_balance_minor"]
    elif not completed and source:
        balance = row["sender_balance_minor"]
    return {
        "transfer_id": row["transfer_id"],
        "transfer_type": row["kind"],
        "status": row["status"],
        "role": role,
        "source_tenant_id": row["source_tenant_id"],
        "destination_tenant_id": row["destination_tenant_id"],
        "player_email": row["sender_email"] if source else row["recipient_email"],
        "amount": money.format_units(row["amount_minor"]),
        "fee_total": money.format_units(row["fee_minor"]),
        "fee_share": money.format_units(share if completed else 0),
        "transaction_id": row["release_transaction_id"],
        "new_balance": money.format_units(balance) if balance is not None else None,
        "reason": row["end_reason"],
        "created_at": events.iso(row["created_at"]),
        "ended_at": events.iso(row["ended_at"]),
    }


def event_type(status: str) -> str:
    return {"completed": COMPLETED, "cancelled": CANCELLED, "expired": EXPIRED}[status]


def event_sides(row: asyncpg.Record) -> list[tuple[str, str]]:
    """(tenant_id, role) of every tenant told about a transfer's end: the source always, the
    destination when there is one (a send nobody claimed has none)."""
    sides = [(row["source_tenant_id"], "source")]
    if row["destination_tenant_id"] and row["destination_tenant_id"] != row["source_tenant_id"]:
        sides.append((row["destination_tenant_id"], "destination"))
    return sides
