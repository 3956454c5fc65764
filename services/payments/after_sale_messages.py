"""Protobuf renderings of refunds, disputes and fraud warnings (service.py's order_message adds them)."""

from __future__ import annotations

import asyncpg
from invo.v1 import payments_pb2

from services.common import grpcutil

_ts = grpcutil.timestamp


def refund_message(r: asyncpg.Record) -> payments_pb2.Refund:
    # A refund being applied is, for everyone outside, still pending.
    status = "pending" if r["status"] == "applying" else r["status"]
    msg = payments_pb2.Refund(
        refund_id=r["refund_id"],
        order_id=r["order_id"],
        status=status,
        usd_cents=r["usd_cents"],
        currency_minor=r["currency_minor"] or 0,
        reason=r["reason"],
        source=r["source"],
        processor_refund_id=r["processor_refund_id"] or "",
        transaction_id=r["transaction_id"] or "",
        operator_id=r["operator_id"] or "",
        failure_message=r["failure_message"] or "",
        created_at=_ts(r["created_at"]),
    )
    if r["new_balance"] is not None and status == "succeeded":
        msg.new_balance_minor = r["new_balance"]
    if r["applied_at"] is not None:
        msg.applied_at.FromDatetime(r["applied_at"])
    return msg


def dispute_message(d: asyncpg.Record) -> payments_pb2.Dispute:
    msg = payments_pb2.Dispute(
        dispute_id=d["dispute_id"],
        status=d["status"],
        outcome=(d["outcome"] or "") if d["phase"] == "closed" else "",
        reason=d["reason"],
        usd_cents=d["usd_cents"],
        inquiry=d["inquiry"],
        frozen_minor=d["frozen_minor"],
        clawed_minor=(d["claw_minor"] or 0) if d["phase"] == "closed" else 0,
        created_at=_ts(d["created_at"]),
    )
    if d["closed_at"] is not None:
        msg.closed_at.FromDatetime(d["closed_at"])
    return msg


def warning_message(w: asyncpg.Record) -> payments_pb2.FraudWarning:
    return payments_pb2.FraudWarning(
        warning_id=w["warning_id"],
        fraud_type=w["fraud_type"],
        actionable=w["actionable"],
        recommendation=w["recommendation"],
        refund_id=w["refund_id"] or "",
        created_at=_ts(w["created_at"]),
    )
