"""Disputes: a chargeback (or an inquiry that may become one) freezes the disputed currency while the
bank decides; won (or an inquiry closed without a chargeback) releases it; lost claws it back.

A dispute's row moves opening -> open -> closing -> closed. Each step fixes its amounts in one
payments transaction (the order's row locked) before the ledger is asked, and the ledger's write is
keyed by the dispute (`dispute:<id>:freeze`, `:release`, `:clawback`), so a retry after a crash asks
for the same write and gets its first result. The event is marked handled, and `purchase.disputed`
written to the outbox, in the transaction that ends the step.

- The freeze is a hold of the disputed currency (its USD share of the order's currency, less what
  refunds and clawbacks have already taken), at most what the player still has: the ledger decides
  how much inside its batch, so a spend racing the freeze cannot overdraw.
- Lost: one ledger write voids the freeze and takes the whole disputed currency back; what the player
  spent meanwhile becomes a debt. The order becomes `disputed_lost`.
- A closing seen before its opening waits (`opened:<id>`) and is applied right after the opening.
"""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg

from services.common import events, money
from services.payments import inbox
from services.payments.ledger_client import Credit, LedgerClient
from services.payments.orders import OrderStore, event_refs
from services.payments.registry import Handled

DISPUTE_COLUMNS = (
    "dispute_id, order_id, tenant_id, charge_id, reason, usd_cents, inquiry, status, phase, outcome, freeze_minor,"
    " frozen_minor, hold_id, claw_minor, transaction_id, new_balance, created_at, closed_at"
)
OUTCOMES = {"won": "won", "lost": "lost", "warning_closed": "warning_closed"}


def unreturned(order: asyncpg.Record) -> int:
    """The order's currency not yet taken back by refunds or a lost dispute."""
    return int(order["currency_amount"] - order["currency_refunded"] - order["currency_clawed"])


def disputed_currency(order: asyncpg.Record, usd_cents: int) -> int:
    share = money.pro_rata(order["currency_amount"], part=min(usd_cents, order["usd_cents"]), whole=order["usd_cents"])
    return min(share, unreturned(order))


def _base(order: asyncpg.Record, d: asyncpg.Record) -> dict[str, Any]:
    return {
        **event_refs(order, d["charge_id"]),
        "dispute_id": d["dispute_id"],
        "reason": d["reason"],
        "usd_amount": money.format_usd(d["usd_cents"]),
        "inquiry": d["inquiry"],
    }


def opened_event(order: asyncpg.Record, d: asyncpg.Record) -> dict[str, Any]:
    return {**_base(order, d), "dispute_status": d["status"], "currency_frozen": money.format_units(d["frozen_minor"])}


def closed_event(order: asyncpg.Record, d: asyncpg.Record) -> dict[str, Any]:
    lost = d["outcome"] == "lost"
    return {
        **_base(order, d),
        "dispute_status": d["outcome"],
        "currency_debited": money.format_units(d["claw_minor"] or 0),
        "currency_released": money.format_units(0 if lost else d["frozen_minor"]),
        "new_balance": money.format_units(d["new_balance"] or 0),
        "order_status": order["status"],
    }


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


class Disputes:
    def __init__(self, store: OrderStore, ledger: LedgerClient) -> None:
        self.store = store
        self.ledger = ledger
        self.pool = store.pool

    async def of_order(self, order_id: str, db: asyncpg.Connection | None = None) -> list[asyncpg.Record]:
        return list(
            await (db or self.pool).fetch(
                # One still opening is not announced yet: it shows once its freeze is in place.
                f"SELECT {DISPUTE_COLUMNS} FROM disputes WHERE order_id = $1 AND phase <> 'opening'"
                f" ORDER BY created_at, dispute_id",
                order_id,
            )
        )

    async def _locked(self, conn: asyncpg.Connection, dispute_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {DISPUTE_COLUMNS} FROM disputes WHERE dispute_id = $1 FOR UPDATE", dispute_id
        )

    async def opened(
        self, order: asyncpg.Record, dispute: dict[str, Any], *, event_id: str, deadline: float | None
    ) -> Handled:
        dispute_id = str(dispute["id"])
        status = str(dispute.get("status") or "needs_response")
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order["order_id"])
            row = await self._locked(conn, dispute_id)
            if row is None:
                usd = min(_int(dispute.get("amount"), order["usd_cents"]), order["usd_cents"])
                row = await conn.fetchrow(
                    f"INSERT INTO disputes (dispute_id, order_id, tenant_id, charge_id, reason, usd_cents, inquiry,"
                    f" status, phase, freeze_minor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'opening', $9)"
                    f" RETURNING {DISPUTE_COLUMNS}",
                    dispute_id,
                    order["order_id"],
                    order["tenant_id"],
                    dispute.get("charge") if isinstance(dispute.get("charge"), str) else None,
                    str(dispute.get("reason") or "general")[:100],
                    usd,
                    status.startswith("warning_"),
                    status[:50],
                    disputed_currency(order, usd),
                )
            elif row["phase"] != "opening":
                return Handled("the dispute is recorded already", ignored=True, unblocks=(f"opened:{dispute_id}",))
        held: Credit | None = None
        if row["freeze_minor"] > 0:
            held = await self.ledger.freeze(
                order, row["freeze_minor"], key=f"dispute:{dispute_id}:freeze", dispute_id=dispute_id, deadline=deadline
            )
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order["order_id"])
            row = await self._locked(conn, dispute_id)
            if row is None or row["phase"] != "opening" or not await inbox.mark_handled(conn, event_id, "applied"):
                return Handled("the dispute is recorded already", ignored=True, unblocks=(f"opened:{dispute_id}",))
            frozen = held.amount_minor if held is not None and held.status == "pending" else 0
            row = await conn.fetchrow(
                f"UPDATE disputes SET phase = 'open', hold_id = $2, frozen_minor = $3 WHERE dispute_id = $1"
                f" RETURNING {DISPUTE_COLUMNS}",
                dispute_id,
                held.transaction_id if held is not None and frozen else None,
                frozen,
            )
            if row["charge_id"] and not order["charge_id"]:
                await conn.execute(
                    "UPDATE orders SET charge_id = $2 WHERE order_id = $1", order["order_id"], row["charge_id"]
                )
            await events.emit(
                conn, tenant_id=order["tenant_id"], event_type="purchase.disputed", data=opened_event(order, row)
            )
        return Handled("applied", unblocks=(f"opened:{dispute_id}",))

    async def refreeze(self, dispute_id: str, *, key: str, deadline: float | None) -> None:
        """After a refund of an order under an open dispute voided its freeze (refunds.py): freeze
        again what is still disputed, at most what the player has. A dispute that closed meanwhile
        gets no new freeze."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {DISPUTE_COLUMNS} FROM disputes WHERE dispute_id = $1", dispute_id)
            order = await self.store.find(row["order_id"], conn) if row is not None else None
        if row is None or order is None or row["phase"] != "open" or row["hold_id"]:
            return
        amount = disputed_currency(order, row["usd_cents"])
        held = (
            await self.ledger.freeze(order, amount, key=f"{key}:refreeze", dispute_id=dispute_id, deadline=deadline)
            if amount > 0
            else None
        )
        frozen = held.amount_minor if held is not None and held.status == "pending" else 0
        async with self.pool.acquire() as conn, conn.transaction():
            await self.store.locked(conn, order["order_id"])
            current = await self._locked(conn, dispute_id)
            if current is not None and current["phase"] == "open" and not current["hold_id"]:
                await conn.execute(
                    "UPDATE disputes SET hold_id = $2, frozen_minor = $3 WHERE dispute_id = $1",
                    dispute_id,
                    held.transaction_id if held is not None and frozen else None,
                    frozen,
                )
                return
        if held is not None and frozen:  # closed meanwhile, without this freeze: give it back
            await self.ledger.release(order["tenant_id"], held.transaction_id, key=f"{key}:unfreeze", deadline=deadline)

    async def closed(
        self, order: asyncpg.Record, dispute: dict[str, Any], *, event_id: str, deadline: float | None
    ) -> Handled:
        dispute_id = str(dispute["id"])
        status = str(dispute.get("status") or "")
        outcome = OUTCOMES.get(status)
        if outcome is None:
            return Handled(f"ignored: a dispute closed as {status[:40]!r}", ignored=True)
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order["order_id"])
            row = await self._locked(conn, dispute_id)
            if row is None or row["phase"] == "opening":
                return Handled("waiting for the dispute's opening", waiting_on=f"opened:{dispute_id}")
            if row["phase"] == "closed":
                return Handled("the dispute is closed already", ignored=True)
            if row["phase"] == "open":
                claw = disputed_currency(order, row["usd_cents"]) if outcome == "lost" else 0
                row = await conn.fetchrow(
                    f"UPDATE disputes SET phase = 'closing', outcome = $2, claw_minor = $3, status = $4"
                    f" WHERE dispute_id = $1 RETURNING {DISPUTE_COLUMNS}",
                    dispute_id,
                    outcome,
                    claw,
                    status,
                )
                await conn.execute(
                    "UPDATE orders SET currency_clawed = currency_clawed + $2, updated_at = now() WHERE order_id = $1",
                    order["order_id"],
                    claw,
                )
        done: Credit | None = None
        if row["claw_minor"]:
            done = await self.ledger.claw_back(
                order,
                row["claw_minor"],
                key=f"dispute:{dispute_id}:clawback",
                reason="dispute_lost",
                release_hold_id=row["hold_id"] or "",
                deadline=deadline,
            )
        elif row["hold_id"]:
            done = await self.ledger.release(
                order["tenant_id"], row["hold_id"], key=f"dispute:{dispute_id}:release", deadline=deadline
            )
        balance = done.balance_minor if done is not None else None
        if balance is None:
            balance = await self.ledger.balance(order, deadline=deadline)
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order["order_id"])
            row = await self._locked(conn, dispute_id)
            if row is None or row["phase"] != "closing" or not await inbox.mark_handled(conn, event_id, "applied"):
                return Handled("the dispute is closed already", ignored=True)
            row = await conn.fetchrow(
                f"UPDATE disputes SET phase = 'closed', transaction_id = $2, new_balance = $3, closed_at = $4"
                f" WHERE dispute_id = $1 RETURNING {DISPUTE_COLUMNS}",
                dispute_id,
                done.transaction_id if done is not None and row["claw_minor"] else None,
                balance,
                datetime.datetime.now(datetime.UTC),
            )
            if outcome == "lost" and order["status"] == "completed":
                moved = await self.store.move(
                    conn,
                    order["order_id"],
                    "disputed_lost",
                    source="webhook",
                    reason="chargeback lost; currency clawed back",
                )
                order = moved or order
            await events.emit(
                conn, tenant_id=order["tenant_id"], event_type="purchase.disputed", data=closed_event(order, row)
            )
        return Handled("applied")
