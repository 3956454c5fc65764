"""The end of a transfer: the held money leaves escrow once, to the recipient (a claim) or back to
the sender (a cancel, a locked PIN, an expiry), and both tenants hear of it.

A worker first moves the row to `claiming` or `returning` (with its lease) and commits; then asks
the ledger for the settlement or the return, keyed by the transfer id; then, in one transaction,
moves the row to its final status and writes the events to the outbox. A crash anywhere leaves a
row the sweep (or a claimant's retry) finishes the same way: the ledger answers a repeated write
with its first result, and the final move happens once, so the money and the events are never
doubled.
"""

from __future__ import annotations

import datetime
import logging

import asyncpg

from services.common import errors, events
from services.transfers import messages
from services.transfers.deps import Deps, after, db_now
from services.transfers.store import LIFECYCLE, OPEN

log = logging.getLogger("invo.transfers.releases")


async def finish(d: Deps, row: asyncpg.Record, *, source: str, deadline: float | None) -> asyncpg.Record:
    """Settle or return a row in `claiming` / `returning` whose lease the caller holds."""
    status = row["status"]
    if status not in ("claiming", "returning"):
        return row
    try:
        if status == "claiming":
            written = await d.ledger.settle(row, deadline=deadline)
        else:
            written = await d.ledger.give_back(row, deadline=deadline)
    except Exception:
        # Whoever asks next (a retry, the sweep) goes on at once: the ledger write is keyed.
        await d.store.lease.release(d.pool, row["transfer_id"])
        raise
    final = "completed" if status == "claiming" else row["return_status"]
    async with d.pool.acquire() as conn, conn.transaction():
        now = await db_now(conn)
        sets: dict[str, object] = {
            "release_transaction_id": written.transaction_id,
            "processing_until": None,
            "ended_at": now,
        }
        if final == "completed":
            sets.update(recipient_balance_minor=written.balance_minor, completed_at=now)
        else:
            sets["sender_balance_minor"] = written.balance_minor
        moved = await LIFECYCLE.move(
            conn, row["transfer_id"], final, source=source, reason=row["end_reason"] or "", sets=sets
        )
        if moved is None:  # someone else finished it first: theirs is the answer
            current = await d.store.find(row["transfer_id"], conn)
            if current is None:
                raise errors.Internal("a transfer vanished while it was being finished")
            return current
        for tenant_id, role in messages.event_sides(moved):
            await events.emit(
                conn, tenant_id=tenant_id, event_type=messages.event_type(final), data=messages.event_data(moved, role)
            )
    return moved


def _past_deadline(row: asyncpg.Record, now: datetime.datetime) -> bool:
    if row["status"] == "pending_verification":
        return bool(row["verify_by"] <= now)
    return row["claim_expires_at"] is not None and bool(row["claim_expires_at"] <= now)


async def start_return(
    d: Deps, transfer_id: str, *, final: str, reason: str, source: str, lease_s: float, deadline: float | None
) -> asyncpg.Record | None:
    """End an open transfer (`final` is "cancelled" or "expired") and give the hold back. None if
    it was no longer open (a claim or another end came first). A ledger that failed leaves the
    row `returning` for the sweep; the answer is then that row."""
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.locked(conn, transfer_id)
        if row is None or row["status"] not in OPEN:
            return None
        now = await db_now(conn)
        if final == "expired" and not _past_deadline(row, now):
            return None  # read as due without the lock; under it, not (yet) due
        moved = await LIFECYCLE.move(
            conn,
            transfer_id,
            "returning",
            source=source,
            reason=reason,
            sets={"return_status": final, "end_reason": reason, "processing_until": after(now, lease_s)},
        )
        await d.texts.supersede(conn, transfer_id, "")
    if moved is None:
        return None
    try:
        return await finish(d, moved, source=source, deadline=deadline)
    except Exception as exc:
        code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
        log.warning("return of %s left for the sweep (%s)", transfer_id, code)
        return moved
