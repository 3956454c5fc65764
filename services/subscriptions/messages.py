"""Subscriptions as the API answers them (protobuf) and as webhooks carry them (event data)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import asyncpg
from invo.v1 import subscriptions_pb2

from services.common import events, grpcutil, money

CREATED = "subscription.created"
RENEWED = "subscription.renewed"
PAST_DUE = "subscription.past_due"
CANCELLED = "subscription.cancelled"


def charge_message(c: asyncpg.Record) -> subscriptions_pb2.Charge:
    return subscriptions_pb2.Charge(
        period=c["period"],
        transaction_id=c["transaction_id"],
        total_minor=c["total_minor"],
        partner_amount_minor=c["partner_amount_minor"],
        network_fee_minor=c["network_fee_minor"],
        new_balance_minor=c["new_balance_minor"],
        period_start=grpcutil.timestamp(c["period_start"]),
        period_end=grpcutil.timestamp(c["period_end"]),
        charged_at=grpcutil.timestamp(c["charged_at"]),
    )


def subscription_message(row: asyncpg.Record, charge: asyncpg.Record | None) -> subscriptions_pb2.Subscription:
    return subscriptions_pb2.Subscription(
        subscription_id=row["subscription_id"],
        tenant_id=row["tenant_id"],
        player_email=row["player_email"],
        plan_id=row["plan_id"],
        plan_name=row["plan_name"],
        price_minor=row["price_minor"],
        interval=row["interval"],
        interval_count=row["interval_count"],
        status=row["status"],
        current_period_start=grpcutil.timestamp(row["current_period_start"]),
        current_period_end=grpcutil.timestamp(row["current_period_end"]),
        trial_end=grpcutil.timestamp(row["trial_end"]),
        cancel_at_period_end=row["cancel_at_period_end"],
        cancellation_reason=row["cancellation_reason"] or "",
        cancelled_at=grpcutil.timestamp(row["cancelled_at"]),
        periods_paid=row["periods_paid"],
        failed_attempts=row["failed_attempts"],
        next_attempt_at=grpcutil.timestamp(row["next_attempt_at"]),
        metadata_json=row["metadata_json"],
        created_at=grpcutil.timestamp(row["created_at"]),
        updated_at=grpcutil.timestamp(row["updated_at"]),
        last_charge=charge_message(charge) if charge is not None else None,
        refund=subscriptions_pb2.ProratedRefund(
            period=row["refund_period"],
            amount_minor=row["refund_partner_minor"] + row["refund_fee_minor"],
            partner_minor=row["refund_partner_minor"],
            fee_minor=row["refund_fee_minor"],
            transaction_id=row["refund_transaction_id"],
        )
        if row["refund_transaction_id"]
        else None,
    )


def refund_data(row: asyncpg.Record) -> dict[str, Any] | None:
    """A prorated cancel's refund (the unused part of the last paid period), or None."""
    if not row["refund_transaction_id"]:
        return None
    return {
        "period": row["refund_period"],
        "amount": money.format_units(row["refund_partner_minor"] + row["refund_fee_minor"]),
        "partner_amount": money.format_units(row["refund_partner_minor"]),
        "network_fee": money.format_units(row["refund_fee_minor"]),
        "transaction_id": row["refund_transaction_id"],
    }


def event_data(
    row: asyncpg.Record,
    charge: Any = None,
    *,
    period: int | None = None,
    dates: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> dict[str, Any]:
    """A subscription event's data: the subscription as it now is, the period the event is about
    (its number and dates) and, for a charge, the amounts of its split and the new balance."""
    data: dict[str, Any] = {
        "subscription_id": row["subscription_id"],
        "player_email": row["player_email"],
        "plan_id": row["plan_id"],
        "plan_name": row["plan_name"],
        "price": money.format_units(row["price_minor"]),
        "interval": row["interval"],
        "interval_count": row["interval_count"],
        "status": row["status"],
        "period": {
            "number": row["periods_paid"] if period is None else period,
            "start": events.iso(dates[0] if dates else row["current_period_start"]),
            "end": events.iso(dates[1] if dates else row["current_period_end"]),
        },
        "cancel_at_period_end": row["cancel_at_period_end"],
        "cancellation_reason": row["cancellation_reason"],
        "failed_attempts": row["failed_attempts"],
        "next_attempt_at": events.iso(row["next_attempt_at"]),
        "transaction_id": None,
        "total": None,
        "partner_amount": None,
        "network_fee": None,
        "new_balance": None,
        "metadata": json.loads(row["metadata_json"]),
        "refund": refund_data(row),
    }
    if charge is not None:
        data.update(
            transaction_id=charge.transaction_id,
            total=money.format_units(charge.total_minor),
            partner_amount=money.format_units(charge.partner_amount_minor),
            network_fee=money.format_units(charge.network_fee_minor),
            new_balance=money.format_units(charge.new_balance_minor),
        )
    return data
