"""Attempt outcomes, group-committed: the attempts that finish together are recorded together."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from typing import NoReturn

import asyncpg

from services.common import loops

log = logging.getLogger("invo.webhooks")

OUTCOMES_BATCH_MAX = 500


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One attempt's result and what it makes of its delivery."""

    delivery_id: str
    attempt: int
    started_at: datetime.datetime
    status_code: int | None
    latency_ms: int
    response_body: str
    error: str
    status: str  # pending, delivered or failed
    cycle_attempts: int
    next_attempt_at: datetime.datetime | None


class OutcomeWriter:
    """Group commit for attempt outcomes: what finished while the previous batch was written goes
    in the next one, as one statement (one round trip, one commit). `write` returns once its
    outcome is committed, so a sender frees its slot only after the attempt is on record; if the
    write fails the delivery keeps its lease and is tried again when the lease runs out.

    An outcome applies only to the attempt it reports (the delivery's attempt count must be one
    less): written twice (a retry after a write whose answer was lost) or late (another sender
    has attempted since), it changes nothing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()

    async def write(self, outcome: Outcome) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, fut))
        self._ready.set()
        await fut

    async def write_round(self) -> float:
        """One round of the background loop: wait for outcomes, write the next batch."""
        await self._ready.wait()
        await self._write_next()
        return 0.0  # whatever queued meanwhile goes in the next batch at once

    async def run(self) -> NoReturn:
        await loops.supervised("webhook-outcomes", self.write_round, interval_s=0.0, log=log)

    async def flush(self) -> None:
        """Writes whatever is queued (at shutdown, once `run` is cancelled): attempts that reached
        a partner are on record, not sent again when their lease runs out."""
        while self._queue:
            await self._write_next()

    async def _write_next(self) -> None:
        batch, self._queue = self._queue[:OUTCOMES_BATCH_MAX], self._queue[OUTCOMES_BATCH_MAX:]
        if not self._queue:
            self._ready.clear()
        if not batch:
            return
        try:
            await self._write([o for o, _ in batch])
        except Exception as exc:  # the writer must outlive any one batch
            log.warning("could not record %d attempts together: %r", len(batch), exc)
            # One by one, so that one bad outcome cannot keep the others off the record.
            for item in batch if len(batch) > 1 else []:
                await self._write_alone(*item)
            if len(batch) == 1 and not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _write_alone(self, outcome: Outcome, fut: asyncio.Future[None]) -> None:
        try:
            await self._write([outcome])
        except Exception as exc:
            log.warning("could not record the attempt of %s: %r", outcome.delivery_id, exc)
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(None)

    async def _write(self, batch: list[Outcome]) -> None:
        await self.pool.execute(
            "WITH o AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::timestamptz[], $4::integer[],"
            "   $5::integer[], $6::text[], $7::text[], $8::text[], $9::integer[], $10::timestamptz[])"
            "   AS o(delivery_id, attempt, started_at, status_code, latency_ms, response_body, error, status,"
            "        cycle_attempts, next_attempt_at)),"
            " u AS (UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1,"
            "   cycle_attempts = o.cycle_attempts, next_attempt_at = o.next_attempt_at, lease_until = NULL,"
            "   updated_at = now(), delivered_at = CASE WHEN o.status = 'delivered' THEN now() ELSE d.delivered_at END"
            "   FROM o WHERE d.delivery_id = o.delivery_id AND d.attempts = o.attempt - 1 RETURNING d.delivery_id)"
            " INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,"
            "   response_body, error)"
            " SELECT o.delivery_id, o.attempt, o.started_at, o.status_code, o.latency_ms, o.response_body, o.error"
            " FROM o JOIN u ON u.delivery_id = o.delivery_id",
            [o.delivery_id for o in batch],
            [o.attempt for o in batch],
            [o.started_at for o in batch],
            [o.status_code for o in batch],
            [o.latency_ms for o in batch],
            # PostgreSQL text cannot hold NUL, and a partner's answer might.
            [o.response_body.replace("\x00", "\ufffd") for o in batch],
            [o.error.replace("\x00", "\ufffd") for o in batch],
            [o.status for o in batch],
            [o.cycle_attempts for o in batch],
            [o.next_attempt_at for o in batch],
        )
