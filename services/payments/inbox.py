"""The inbox of processor events: each verified event is stored raw before anything is done with
it, and marked handled only by the handler registered for its type (handlers.py), in the same
transaction as the change it makes where there is one.

An event whose type has no handler yet stays unhandled: when its handler is deployed,
`Dispatcher.apply_pending()` (run by the recovery loop for every registered type) applies what has
already arrived. A handler that fails leaves the event unhandled too, with its error, for the next
delivery or the recovery loop to retry, at most `ATTEMPTS_MAX` times before an operator looks; an
event a handler refuses as malformed is kept, marked handled with the reason, and answered 400.

An event that comes before the one it follows (a refund or a dispute before the payment's success, a
dispute's closing before its opening) is not an error: its handler says what it waits on
(`Handled.waiting_on`), the event stays unhandled with that key and is left out of the recovery
loop's rounds, and it is applied when the key happens (`wake`): straight after the event that
makes it happen, or by the recovery loop for orders paid another way (`wake_paid`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Collection
from typing import Any

import asyncpg

from services.common import errors
from services.payments.registry import Handled, Registry

log = logging.getLogger("invo.payments.inbox")

ATTEMPTS_MAX = 10
PENDING_BATCH_MAX = 100
NOTE_LEN_MAX = 500
WAKE_DEPTH_MAX = 4  # an applied event wakes others, which may wake others: bounded


@dataclasses.dataclass(frozen=True)
class InboxEvent:
    event_id: str
    type: str
    payload: dict[str, Any]
    received_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Ack:
    duplicate: bool = False
    ignored: bool = False


async def mark_handled(conn: asyncpg.Connection | asyncpg.Pool, event_id: str, note: str) -> bool:
    """Mark an event handled; False if it was already (a concurrent delivery applied it first).
    Inside a handler's transaction this also locks the event until that transaction ends."""
    done = await conn.fetchval(
        "UPDATE processor_inbox SET handled_at = now(), note = $2 WHERE event_id = $1 AND handled_at IS NULL"
        " RETURNING event_id",
        event_id,
        note[:NOTE_LEN_MAX],
    )
    return done is not None


def _event(row: asyncpg.Record) -> InboxEvent:
    payload = row["payload"]
    return InboxEvent(
        event_id=row["event_id"],
        type=row["type"],
        payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
        received_at=row["received_at"],
    )


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, registry: Registry) -> None:
        self.pool = pool
        self.registry = registry

    async def receive(self, event_id: str, event_type: str, payload_json: str, *, deadline: float | None) -> Ack:
        """Store a verified event, then apply it if its type has a handler. A replayed id is a
        duplicate; if that earlier copy is still unhandled and now has a handler, it is applied."""
        try:
            payload = json.loads(payload_json)
        except ValueError as exc:
            raise errors.InvalidRequest("malformed processor event") from exc
        if not isinstance(payload, dict):
            raise errors.InvalidRequest("malformed processor event")
        row = await self.pool.fetchrow(
            "INSERT INTO processor_inbox (event_id, type, payload) VALUES ($1, $2, $3::jsonb)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id, type, payload, received_at",
            event_id,
            event_type,
            payload_json,
        )
        duplicate = row is None
        if duplicate:
            row = await self.pool.fetchrow(
                "SELECT event_id, type, payload, received_at FROM processor_inbox"
                " WHERE event_id = $1 AND handled_at IS NULL",
                event_id,
            )
            if row is None:
                return Ack(duplicate=True)
        event = _event(row)
        handled = await self.apply(event, deadline=deadline)
        return Ack(duplicate=duplicate, ignored=handled is None or handled.ignored)

    async def apply(self, event: InboxEvent, *, deadline: float | None, depth: int = 0) -> Handled | None:
        """Apply one stored event with its type's handler; None when there is none (it stays)."""
        handler = self.registry.get(event.type)
        if handler is None:
            return None
        try:
            handled = await handler(event.event_id, event.payload, deadline)
        except errors.InvalidRequest as exc:
            # The event itself is wrong (it will be as wrong next time): kept, marked, refused.
            await mark_handled(self.pool, event.event_id, f"refused: {exc.message}")
            raise
        except Exception as exc:
            # Left unhandled, with why, for the next delivery or the recovery loop.
            await self.pool.execute(
                "UPDATE processor_inbox SET attempts = attempts + 1, last_error = $2"
                " WHERE event_id = $1 AND handled_at IS NULL",
                event.event_id,
                f"{type(exc).__name__}: {exc}"[:NOTE_LEN_MAX],
            )
            raise
        if handled.waiting_on:
            await self.pool.execute(
                "UPDATE processor_inbox SET waiting_on = $2, note = $3 WHERE event_id = $1 AND handled_at IS NULL",
                event.event_id,
                handled.waiting_on[:NOTE_LEN_MAX],
                handled.note[:NOTE_LEN_MAX],
            )
            return handled
        # A handler that changed something marked the event in its own transaction; this marks
        # the rest (ignored, already settled) unless the handler says it did.
        if not handled.marked:
            await mark_handled(self.pool, event.event_id, handled.note)
        if depth < WAKE_DEPTH_MAX:
            for key in handled.unblocks:
                await self.wake(key, deadline=deadline, depth=depth + 1)
        return handled

    async def wake(self, key: str, *, deadline: float | None = None, depth: int = 0) -> int:
        """Apply the events waiting on `key`, in the order they arrived; returns how many were
        handled. One that fails stays waiting on it, for the next wake or the recovery loop."""
        rows = await self.pool.fetch(
            "SELECT event_id, type, payload, received_at FROM processor_inbox"
            " WHERE handled_at IS NULL AND waiting_on = $1 ORDER BY received_at, event_id LIMIT $2",
            key,
            PENDING_BATCH_MAX,
        )
        applied = 0
        for row in rows:
            event = _event(row)
            try:
                handled = await self.apply(event, deadline=deadline, depth=depth)
            except Exception as exc:
                log.warning("waiting processor event %s not applied: %s: %s", event.event_id, type(exc).__name__, exc)
                continue
            if handled is not None and not handled.waiting_on:
                applied += 1
        return applied

    async def wake_paid(self, *, limit: int = PENDING_BATCH_MAX) -> int:
        """Wake the events waiting on an order's payment that has been paid meanwhile by a path
        other than its webhook (our own call's answer, confirm-payment, the recovery loop)."""
        keys = await self.pool.fetch(
            "SELECT DISTINCT i.waiting_on FROM processor_inbox i"
            " JOIN orders o ON i.waiting_on = 'paid:' || o.payment_intent_id"
            " WHERE i.handled_at IS NULL AND i.waiting_on LIKE 'paid:%'"
            " AND o.status IN ('completed', 'refunded', 'disputed_lost') AND o.review_reason IS NULL LIMIT $1",
            limit,
        )
        applied = 0
        for k in keys:
            applied += await self.wake(k["waiting_on"])
        return applied

    async def apply_pending(self, types: Collection[str] | None = None, *, limit: int = PENDING_BATCH_MAX) -> int:
        """Apply unhandled events of the given types (default: every type with a handler), oldest
        first; returns how many were handled. A failing event is logged and left for next time."""
        wanted = sorted(self.registry.types() if types is None else set(types) & set(self.registry.types()))
        if not wanted:
            return 0
        rows = await self.pool.fetch(
            "SELECT event_id, type, payload, received_at FROM processor_inbox"
            " WHERE handled_at IS NULL AND waiting_on IS NULL AND type = ANY($1::text[]) AND attempts < $2"
            " ORDER BY received_at LIMIT $3",
            wanted,
            ATTEMPTS_MAX,
            min(limit, PENDING_BATCH_MAX),
        )
        applied = 0
        for row in rows:
            event = _event(row)
            try:
                if await self.apply(event, deadline=None) is not None:
                    applied += 1
            except Exception as exc:  # one event's failure (a handler's bug too) must not hold up the rest
                log.warning(
                    "processor event %s (%s) not applied: %s: %s", event.event_id, event.type, type(exc).__name__, exc
                )
        return applied
