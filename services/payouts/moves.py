"""Moving a payout, and the ledger writes its status calls for.

`move` changes the status, appends the audit row and writes `payout.status_changed` to the outbox,
all in the caller's transaction. `catch_up_ledger` then makes the ledger agree with the status:
post the hold of a completed (or returned) payout, void that of a rejected, cancelled or failed
one, credit a returned one back; each write keyed by the payout id, its transaction id recorded
once. The request that moved the row calls it after its commit; the sweep calls it for any row a
crash left behind (`store.LEDGER_DUE`), so a status is never without its ledger write for long, and
never with two.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from services.common import errors
from services.payouts import messages
from services.payouts.deps import Deps
from services.payouts.store import LIFECYCLE, RELEASED, SETTLED

log = logging.getLogger("invo.payouts.moves")


async def move(
    conn: asyncpg.Connection,
    payout_id: str,
    to_status: str,
    *,
    source: str,
    reason: str = "",
    sets: Mapping[str, Any] | None = None,
) -> asyncpg.Record | None:
    """Move and announce; None when the move is not allowed from the current status."""
    before = await conn.fetchval("SELECT status FROM payouts WHERE payout_id = $1 FOR UPDATE", payout_id)
    moved = await LIFECYCLE.move(conn, payout_id, to_status, source=source, reason=reason, sets=sets)
    if moved is not None:
        await messages.announce(conn, moved, str(before or ""))
    return moved


def ledger_steps(row: asyncpg.Record) -> list[str]:
    """The ledger writes the row's status still calls for, in order."""
    steps: list[str] = []
    if row["status"] in RELEASED and row["release_transaction_id"] is None:
        steps.append("release")
    if row["status"] in SETTLED and row["settle_transaction_id"] is None:
        steps.append("settle")
    if row["status"] == "returned" and row["return_transaction_id"] is None:
        steps.append("return")
    return steps


_COLUMN = {"release": "release_transaction_id", "settle": "settle_transaction_id", "return": "return_transaction_id"}


async def catch_up_ledger(d: Deps, row: asyncpg.Record, *, deadline: float | None) -> bool:
    """Apply what `ledger_steps` says; True when nothing is left. A failure leaves the rest to the
    sweep (the writes are keyed: asking again is safe)."""
    tenant_id, payout_id = row["tenant_id"], row["payout_id"]
    calls = {"release": d.ledger.release, "settle": d.ledger.settle, "return": d.ledger.give_back}
    for step in ledger_steps(row):
        try:
            txn = await calls[step](tenant_id, payout_id, deadline=deadline)
        except Exception as exc:
            code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
            log.warning("ledger %s of %s left for the sweep (%s)", step, payout_id, code)
            return False
        column = _COLUMN[step]
        await d.pool.execute(
            f"UPDATE payouts SET {column} = $2 WHERE payout_id = $1 AND {column} IS NULL", payout_id, txn
        )
    return True
