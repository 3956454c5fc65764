"""The operators' lists of disputes and early fraud warnings, newest first (issue 17's console):
the open disputes, or every recent dispute and warning, network-wide or one tenant's."""

from __future__ import annotations

from typing import Any

import asyncpg
from invo.v1 import payments_pb2

from services.common import errors, grpcutil

LIMIT_DEFAULT, LIMIT_MAX = 50, 200


async def list_after_sale(
    pool: asyncpg.Pool, r: payments_pb2.ListAfterSaleRequest
) -> payments_pb2.ListAfterSaleResponse:
    limit = r.limit or LIMIT_DEFAULT
    if not 1 <= limit <= LIMIT_MAX:
        raise errors.InvalidRequest(f"limit must be from 1 to {LIMIT_MAX}", error_code="INVALID_PARAMETER")
    disputes = await pool.fetch(
        "SELECT dispute_id, order_id, tenant_id, status, reason, usd_cents, outcome, created_at FROM disputes"
        " WHERE ($1 = '' OR tenant_id = $1) AND (NOT $2 OR phase <> 'closed') ORDER BY created_at DESC LIMIT $3",
        r.tenant_id,
        r.open_only,
        limit,
    )
    items: list[tuple[Any, payments_pb2.AfterSaleItem]] = [
        (
            d["created_at"],
            payments_pb2.AfterSaleItem(
                kind="dispute",
                id=d["dispute_id"],
                order_id=d["order_id"],
                tenant_id=d["tenant_id"],
                status=d["status"],
                detail=d["reason"],
                usd_cents=d["usd_cents"],
                outcome=d["outcome"] or "",
                created_at=grpcutil.timestamp(d["created_at"]),
            ),
        )
        for d in disputes
    ]
    if not r.open_only:
        warnings = await pool.fetch(
            "SELECT warning_id, order_id, tenant_id, fraud_type, recommendation, created_at FROM fraud_warnings"
            " WHERE ($1 = '' OR tenant_id = $1) ORDER BY created_at DESC LIMIT $2",
            r.tenant_id,
            limit,
        )
        items += [
            (
                w["created_at"],
                payments_pb2.AfterSaleItem(
                    kind="fraud_warning",
                    id=w["warning_id"],
                    order_id=w["order_id"],
                    tenant_id=w["tenant_id"],
                    status=w["recommendation"],
                    detail=w["fraud_type"],
                    created_at=grpcutil.timestamp(w["created_at"]),
                ),
            )
            for w in warnings
        ]
    items.sort(key=lambda pair: pair[0], reverse=True)
    return payments_pb2.ListAfterSaleResponse(items=[item for _, item in items[:limit]])
