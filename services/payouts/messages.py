"""A payout as the API answers it and as `payout.status_changed` announces it: the account number
never, its last four digits always."""

from __future__ import annotations

from typing import Any

import asyncpg
from invo.v1 import payouts_pb2

from services.common import events, grpcutil, money

_ts = grpcutil.timestamp
STATUS_CHANGED = "payout.status_changed"


def payout_message(
    row: asyncpg.Record, *, approvals: list[asyncpg.Record] | None = None, history: list[asyncpg.Record] | None = None
) -> payouts_pb2.Payout:
    msg = payouts_pb2.Payout(
        payout_id=row["payout_id"],
        tenant_id=row["tenant_id"],
        status=row["status"],
        usd_cents=row["usd_cents"],
        contact_email=row["contact_email"],
        account_holder_name=row["account_holder_name"],
        routing_number=row["routing_number"],
        account_type=row["account_type"],
        account_last4=row["account_last4"],
        approvals_required=row["approvals_required"],
        requested_by=row["requested_by"],
        reason=row["reason"] or "",
        return_code=row["return_code"] or "",
        return_reason=row["return_reason"] or "",
        provider_order_id=row["provider_order_id"] or "",
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
    )
    for field in ("approved_at", "completed_at", "ended_at"):
        if row[field] is not None:
            getattr(msg, field).CopyFrom(_ts(row[field]))
    for a in approvals or ():
        msg.approvals.append(payouts_pb2.Approval(operator_id=a["operator_id"], at=_ts(a["created_at"])))
    for h in history or ():
        msg.history.append(
            payouts_pb2.PayoutTransition(
                # `creating` is the service's own (the hold being placed): a payout begins requested.
                from_status="" if h["from_status"] == "creating" else h["from_status"],
                to_status=h["to_status"],
                source=h["source"],
                reason=h["reason"],
                at=_ts(h["created_at"]),
            )
        )
    return msg


def status_changed(row: asyncpg.Record, from_status: str) -> dict[str, Any]:
    """The seed's `payout.status_changed`: from, to, the amount, the last four digits, why."""
    return {
        "payout_id": row["payout_id"],
        "from": None if from_status in ("", "creating") else from_status,
        "to": row["status"],
        "usd_amount": money.format_usd(row["usd_cents"]),
        "account_last4": row["account_last4"],
        "account_type": row["account_type"],
        "reason": row["reason"],
        "return_code": row["return_code"],
        "return_reason": row["return_reason"],
        "contact_email": row["contact_email"],
        "changed_at": row["updated_at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def announce(conn: asyncpg.Connection, row: asyncpg.Record, from_status: str) -> None:
    """Write the event of a move in the move's own transaction."""
    await events.emit(
        conn, tenant_id=row["tenant_id"], event_type=STATUS_CHANGED, data=status_changed(row, from_status)
    )
