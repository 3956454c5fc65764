"""The ledger's write path: group commit.

Every write (a transfer, a hold, a dispute's freeze, posting or voiding a hold) is an `Op`, applied
in memory by `apply.py`. Ops queue up while the previous batch commits; the writer takes everything
queued (up to `batch_max`) and applies it in ONE database transaction:

1. `pg_advisory_xact_lock(LEDGER_WRITE_LOCK)`: batches (from every ledger replica) are applied one
   at a time, so the checks below see committed state only and entry ids commit in order.
2. Idempotency keys are looked up; replays answer the stored result, a reused key with another
   request is refused.
3. The accounts involved are read (created if new) and each op is checked and applied in memory,
   in arrival order: a failing op (insufficient funds, say) changes nothing and does not stop the
   others.
4. Transactions, entries, idempotency records, account totals and outbox events are written with
   one multi-row statement each, and the batch commits: one fsync for the whole batch, and a hot
   account (a tenant's revenue, the network's fees) is written once per batch however many
   purchases credit it.

If a batch fails as a whole for an unexpected reason, its ops are retried one by one, so one bad op
cannot fail the others. Transient database errors are retried a bounded number of times.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg

from services.common import errors, grpcutil, idempotency, metrics
from services.ledger import chart
from services.ledger.apply import AccountState, HoldState, Op, apply_op
from services.ledger.reads_sql import ACCOUNTS_CTE, ACCOUNTS_SQL, IDEMPOTENCY_SELECT, IDEMPOTENCY_SQL, account_args
from services.ledger.writes import Batch, write_batch

log = logging.getLogger("invo.ledger.engine")

# Arbitrary constant naming the ledger's single write lock.
LEDGER_WRITE_LOCK = 0x1ED6E2
BATCH_RETRIES_MAX = 3


class Engine:
    def __init__(self, pool: asyncpg.Pool, *, batch_max: int = 256, queue_max: int = 10_000) -> None:
        self.pool = pool
        self.batch_max = batch_max
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[dict[str, Any]]]] = asyncio.Queue(queue_max)
        self._tasks: set[asyncio.Task[None]] = set()
        # Batch-size statistics, for the README's measurements and the benchmark.
        self.batches = 0
        self.ops = 0

    async def submit(self, op: Op) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((op, fut))
        except asyncio.QueueFull:
            raise errors.Unavailable("The ledger is overloaded; retry with the same idempotency key.") from None
        # shield: a caller that gives up (deadline) does not cancel a write already queued.
        return await asyncio.shield(fut)

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            writing = asyncio.Event()
            metrics.LEDGER_BATCH_OPS.observe(len(batch))
            task = asyncio.ensure_future(self._run_batch(batch, writing))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Pipelining: the next batch opens its transaction and queues for the write lock while
            # this one writes and commits, so it starts reading the moment this one commits.
            # The lock still applies batches one at a time, each seeing the last one's commit.
            wait_writing = asyncio.ensure_future(writing.wait())
            try:
                await asyncio.wait((task, wait_writing), return_when=asyncio.FIRST_COMPLETED)
            finally:
                wait_writing.cancel()

    async def close(self) -> None:
        """Waits for the batches in flight (their callers are owed an answer)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run_batch(
        self, batch: list[tuple[Op, asyncio.Future[dict[str, Any]]]], writing: asyncio.Event | None = None
    ) -> None:
        ops = [op for op, _ in batch]
        try:
            outcomes = await self._apply_with_retries(ops, writing)
        except errors.InvoError as exc:
            if len(batch) == 1:
                outcomes = [exc]
            else:
                for item in batch:
                    await self._run_batch([item])
                return
        except Exception as exc:
            if grpcutil.dependency_away(exc):
                # The statement timeout (the write lock or the database stalled) or a connection
                # lost: not one bad op, and retrying the ops one by one would meet it again for
                # each. Whether a commit in flight landed is unknown: the caller's retry with the
                # same idempotency key gets its result, or applies it now.
                log.warning(
                    "ledger batch of %d: the database timed out or went away (%s)", len(batch), type(exc).__name__
                )
                outcomes = [
                    errors.Unavailable("The ledger is busy; retry with the same idempotency key.", retry_after_s=1)
                    for _ in batch
                ]
            elif len(batch) == 1:
                log.exception("ledger op failed")
                outcomes = [errors.Internal("The ledger could not apply this request.")]
            else:
                # Isolate whatever made the whole batch fail: every op again, alone.
                log.exception("ledger batch of %d failed; retrying its ops one by one", len(batch))
                for item in batch:
                    await self._run_batch([item])
                return
        self.batches += 1
        self.ops += len(batch)
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def _apply_with_retries(
        self, ops: list[Op], writing: asyncio.Event | None = None
    ) -> list[dict[str, Any] | errors.InvoError]:
        for attempt in range(BATCH_RETRIES_MAX):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await self._apply(conn, ops, writing)
            except (
                asyncpg.SerializationError,
                asyncpg.DeadlockDetectedError,
                asyncpg.UniqueViolationError,
                asyncpg.ConnectionDoesNotExistError,
                asyncpg.CannotConnectNowError,
                OSError,
            ) as exc:
                if attempt == BATCH_RETRIES_MAX - 1:
                    raise
                log.warning("ledger batch attempt %d failed (%s); retrying", attempt + 1, type(exc).__name__)
                await asyncio.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    # -- one batch, inside one database transaction ------------------------------------------

    async def _apply(
        self, conn: asyncpg.Connection, ops: list[Op], writing: asyncio.Event | None = None
    ) -> list[dict[str, Any] | errors.InvoError]:
        # The time the lock was granted, not the transaction's start (now()): with batches
        # pipelined, a transaction may begin well before its turn.
        now = await conn.fetchval("SELECT clock_timestamp() FROM pg_advisory_xact_lock($1)", LEDGER_WRITE_LOCK)
        b = Batch(now)
        stored = await self._load(conn, ops, b)

        outcomes: list[dict[str, Any] | errors.InvoError] = []
        seen: dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]] = dict(stored)
        for op in ops:
            prior = seen.get((op.scope, op.key))
            if prior is not None and (prior[1] is not None or prior[0] != op.request_hash):
                if prior[0] != op.request_hash:
                    outcomes.append(idempotency.refuse(op.key))
                    continue
                outcomes.append({**(prior[1] or {}), "duplicate": True})
                continue
            try:
                self._meet_requirement(op, seen)
                result = apply_op(op, b)
            except errors.InvoError as exc:
                seen[(op.scope, op.key)] = (op.request_hash, None)
                outcomes.append(exc)
                continue
            seen[(op.scope, op.key)] = (op.request_hash, result)
            # A freeze that held nothing has no transaction: its record carries none.
            txn_id = result["transaction_id"] or None
            b.idem_rows.append((op.scope, op.key, op.request_hash, txn_id, json.dumps(result)))
            if op.event is not None:
                built = op.event(result)
                if built is not None:
                    b.events.append((op.tenant_id, built[0], built[1]))
            outcomes.append({**result, "duplicate": False})
        if writing is not None:
            writing.set()
        await write_batch(conn, b)
        return outcomes

    @staticmethod
    def _meet_requirement(op: Op, seen: dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]]) -> None:
        """The write `op` requires was applied (stored, or earlier in this batch) and fits it; a
        payout's settlement or release then knows its hold, a payout's return its postings."""
        if op.requires is None:
            return
        found = seen.get(op.requires)
        if found is None or found[1] is None:
            raise errors.NotFound(
                "The write this one depends on was never applied.", error_code="PREREQUISITE_NOT_FOUND"
            )
        required = found[1]
        problem = op.requires_check(required) if op.requires_check is not None else None
        if problem is not None:
            raise errors.InvalidRequest(problem, error_code="PREREQUISITE_MISMATCH")
        if op.hold_of_required:
            op.hold_id = required["transaction_id"]
        if op.postings_of_required is not None:
            op.postings = op.postings_of_required(required)

    async def _load(
        self, conn: asyncpg.Connection, ops: list[Op], b: Batch
    ) -> dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]]:
        """Stored idempotency results, and the accounts (and holds) the ops touch into `b`. Without
        holds (a purchase, a transfer) that is one round trip; an op that names a hold (posting or
        voiding it, a clawback releasing a dispute's, a payout's release: its hold is the result
        stored under the payout's hold key) takes three, since the hold's postings name the
        accounts to read."""
        required = [op.requires for op in ops if op.requires is not None]
        keys = ([op.scope for op in ops] + [r[0] for r in required], [op.key for op in ops] + [r[1] for r in required])
        if any(op.hold_id or op.hold_of_required for op in ops):
            rows = await conn.fetch(IDEMPOTENCY_SQL, *keys)
            stored = self._stored(rows)
            for op in ops:
                if op.hold_of_required:
                    # Always from what is stored now: an earlier attempt of this batch may have set
                    # the id of a hold it made and never committed.
                    found = stored.get(op.requires) if op.requires else None
                    op.hold_id = found[1]["transaction_id"] if found and found[1] else ""
            await self._load_holds(conn, ops, b)
            codes, infos = self._codes(ops, b)
            if codes:
                rows = await conn.fetch(ACCOUNTS_SQL, *account_args(codes, infos))
        else:
            codes, infos = self._codes(ops, b)
            rows = await conn.fetch(
                f"WITH {ACCOUNTS_CTE} SELECT * FROM accounts_read UNION ALL {IDEMPOTENCY_SELECT.format(6, 7)}",
                *account_args(codes, infos),
                *keys,
            )
            stored = self._stored(rows)
        for r in rows:
            if r["code"] is not None:
                b.accounts[r["code"]] = AccountState(
                    r["id"],
                    infos[r["code"]],
                    r["debits_posted"],
                    r["credits_posted"],
                    r["debits_pending"],
                    r["credits_pending"],
                )
        return stored

    @staticmethod
    def _stored(rows: list[Any]) -> dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]]:
        """The stored idempotency results among `rows` (account rows have no scope)."""
        return {
            (r["scope"], r["key"]): (bytes(r["request_hash"]), json.loads(r["result"]))
            for r in rows
            if r["code"] is None
        }

    async def _load_holds(self, conn: asyncpg.Connection, ops: list[Op], b: Batch) -> None:
        wanted = sorted({op.hold_id for op in ops if op.hold_id})
        rows = await conn.fetch(
            "SELECT id, tenant_id, kind, status, postings, expires_at FROM transactions WHERE id = ANY($1::text[])",
            wanted,
        )
        for r in rows:
            postings = [(p["account"], int(p["amount"])) for p in json.loads(r["postings"])]
            b.holds[r["id"]] = HoldState(r["id"], r["tenant_id"], r["kind"], r["status"], postings, r["expires_at"])

    @staticmethod
    def _codes(ops: list[Op], b: Batch) -> tuple[list[str], dict[str, chart.AccountInfo]]:
        codes: set[str] = set()
        for op in ops:
            codes.update(code for code, _ in op.postings)
            hold = b.holds.get(op.hold_id)
            if hold is not None:
                codes.update(code for code, _ in hold.postings)
        return sorted(codes), {code: chart.parse(code) for code in codes}
