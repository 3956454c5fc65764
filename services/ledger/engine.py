"""The ledger's write path: group commit.

Every write (a transfer, a hold, posting or voiding a hold) is an `Op`. Ops queue up while the
previous batch commits; the writer takes everything queued (up to `batch_max`) and applies it in
ONE database transaction:

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
import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from services.common import errors, grpcutil, idempotency, ids
from services.common.logs import request_id_var
from services.ledger import chart
from services.ledger.reads_sql import ACCOUNTS_CTE, ACCOUNTS_SQL, IDEMPOTENCY_SELECT, IDEMPOTENCY_SQL, account_args
from services.ledger.writes import Batch, write_batch

log = logging.getLogger("invo.ledger.engine")

# Arbitrary constant naming the ledger's single write lock.
LEDGER_WRITE_LOCK = 0x1ED6E2
BATCH_RETRIES_MAX = 3


class InsufficientBalance(errors.PaymentRequired):
    default_error = "insufficient_balance"
    default_error_code = "INSUFFICIENT_BALANCE"


EventBuilder = Callable[[dict[str, Any]], tuple[str, dict[str, Any]] | None]


@dataclasses.dataclass
class Op:
    """One write. `kind` is "transfer", "hold", "post" or "void"."""

    kind: str
    tenant_id: str
    scope: str
    key: str
    request_hash: bytes
    txn_kind: str = ""
    postings: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    hold_id: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_debt: frozenset[str] = frozenset()
    expires_in_ms: int = 0
    # Stored with the result (and so answered again on a replay): e.g. a purchase's split.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Builds the outbox event from the result, inside the same database transaction.
    event: EventBuilder | None = None
    # A background expiry: a hold that is no longer pending is skipped, not an error.
    quiet: bool = False
    # Another write this one depends on, by its idempotency (scope, key): it must have been applied
    # (in an earlier batch or earlier in this one), and `requires_check` (given its stored result)
    # answers None or why this op does not fit it. A transfer's release requires its hold.
    requires: tuple[str, str] | None = None
    requires_check: Callable[[dict[str, Any]], str | None] | None = None
    # The request that asked for it, recorded with the transaction.
    request_id: str = dataclasses.field(default_factory=request_id_var.get)


@dataclasses.dataclass
class AccountState:
    id: int
    info: chart.AccountInfo
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    dirty: bool = False

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        return self.balance - self.debits_pending

    def snapshot(self) -> dict[str, int]:
        return {"balance": self.balance, "pending": self.debits_pending, "available": self.available}


@dataclasses.dataclass
class HoldState:
    id: str
    tenant_id: str
    status: str
    postings: list[tuple[str, int]]
    expires_at: datetime.datetime | None


def _nets(postings: list[tuple[str, int]]) -> dict[str, int]:
    nets: dict[str, int] = {}
    for code, amount in postings:
        nets[code] = nets.get(code, 0) + amount
    return {code: n for code, n in nets.items() if n != 0}


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
                self._check_requirement(op, seen)
                result = self._apply_op(op, b)
            except errors.InvoError as exc:
                seen[(op.scope, op.key)] = (op.request_hash, None)
                outcomes.append(exc)
                continue
            seen[(op.scope, op.key)] = (op.request_hash, result)
            b.idem_rows.append((op.scope, op.key, op.request_hash, result["transaction_id"], json.dumps(result)))
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
    def _check_requirement(op: Op, seen: dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]]) -> None:
        if op.requires is None:
            return
        found = seen.get(op.requires)
        if found is None or found[1] is None:
            raise errors.NotFound(
                "The write this one depends on was never applied.", error_code="PREREQUISITE_NOT_FOUND"
            )
        problem = op.requires_check(found[1]) if op.requires_check is not None else None
        if problem is not None:
            raise errors.InvalidRequest(problem, error_code="PREREQUISITE_MISMATCH")

    async def _load(
        self, conn: asyncpg.Connection, ops: list[Op], b: Batch
    ) -> dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]]:
        """Stored idempotency results, and the accounts (and holds) the ops touch into `b`. Without
        holds (a purchase, a transfer) that is one round trip; posting or voiding a hold takes
        three, since the hold's postings name the accounts to read."""
        required = [op.requires for op in ops if op.requires is not None]
        keys = ([op.scope for op in ops] + [r[0] for r in required], [op.key for op in ops] + [r[1] for r in required])
        if any(op.kind in ("post", "void") for op in ops):
            rows = await conn.fetch(IDEMPOTENCY_SQL, *keys)
            await self._load_holds(conn, ops, b)
            codes, infos = self._codes(ops, b)
            if codes:
                rows += await conn.fetch(ACCOUNTS_SQL, *account_args(codes, infos))
        else:
            codes, infos = self._codes(ops, b)
            rows = await conn.fetch(
                f"WITH {ACCOUNTS_CTE} SELECT * FROM accounts_read UNION ALL {IDEMPOTENCY_SELECT.format(6, 7)}",
                *account_args(codes, infos),
                *keys,
            )
        stored: dict[tuple[str, str], tuple[bytes, dict[str, Any] | None]] = {}
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
            else:
                stored[(r["scope"], r["key"])] = (bytes(r["request_hash"]), json.loads(r["result"]))
        return stored

    async def _load_holds(self, conn: asyncpg.Connection, ops: list[Op], b: Batch) -> None:
        wanted = sorted({op.hold_id for op in ops if op.kind in ("post", "void")})
        rows = await conn.fetch(
            "SELECT id, tenant_id, status, postings, expires_at FROM transactions WHERE id = ANY($1::text[])",
            wanted,
        )
        for r in rows:
            postings = [(p["account"], int(p["amount"])) for p in json.loads(r["postings"])]
            b.holds[r["id"]] = HoldState(r["id"], r["tenant_id"], r["status"], postings, r["expires_at"])

    @staticmethod
    def _codes(ops: list[Op], b: Batch) -> tuple[list[str], dict[str, chart.AccountInfo]]:
        codes: set[str] = set()
        for op in ops:
            codes.update(code for code, _ in op.postings)
            hold = b.holds.get(op.hold_id)
            if hold is not None:
                codes.update(code for code, _ in hold.postings)
        return sorted(codes), {code: chart.parse(code) for code in codes}

    def _check_debits(self, op: Op, nets: dict[str, int], b: Batch, *, releasing: dict[str, int]) -> None:
        """Every constrained account debited keeps available >= 0, unless the op may leave a debt.
        `releasing` is what this op takes off an account's pending debits (posting a hold)."""
        for code, net in nets.items():
            acct = b.accounts[code]
            if net >= 0 or not acct.info.constrained or code in op.allow_debt:
                continue
            if acct.available + releasing.get(code, 0) + net < 0:
                if acct.info.kind == "player":
                    message = (
                        "The player's wallet carries a debt; no spending until it is repaid."
                        if acct.balance < 0
                        else "The player's balance is too low for this purchase."
                    )
                else:
                    message = f"Insufficient funds in {acct.info.kind} account."
                raise InsufficientBalance(message)

    def _post(self, txn_id: str, tenant_id: str, nets: dict[str, int], b: Batch) -> None:
        for code in sorted(nets):
            acct = b.accounts[code]
            net = nets[code]
            if net < 0:
                acct.debits_posted -= net
            else:
                acct.credits_posted += net
            acct.dirty = True
            # Tagged with the account's tenant: both sides of a movement between tenants see it.
            b.entry_rows.append((txn_id, chart.entry_tenant(acct.info, tenant_id), acct.id, net, acct.balance))

    def _apply_op(self, op: Op, b: Batch) -> dict[str, Any]:
        if op.kind in ("transfer", "hold"):
            nets = _nets(op.postings)
            if sum(nets.values()) != 0 or not nets:
                raise errors.InvalidRequest("postings must sum to zero and move something")
            self._check_debits(op, nets, b, releasing={})
            txn_id = ids.new_id("txn")
            status = "posted" if op.kind == "transfer" else "pending"
            expires_at = None
            if op.kind == "transfer":
                self._post(txn_id, op.tenant_id, nets, b)
            else:
                for code, net in nets.items():
                    acct = b.accounts[code]
                    if net < 0:
                        acct.debits_pending -= net
                    else:
                        acct.credits_pending += net
                    acct.dirty = True
                expires_at = b.now + datetime.timedelta(milliseconds=op.expires_in_ms)
            postings_json = json.dumps([{"account": c, "amount": a} for c, a in op.postings])
            # The request id joins the stored metadata for the audit trail; it is not part of the
            # idempotency hash, so a retry (a new request id) still replays.
            stored = {**op.metadata, "request_id": op.request_id} if op.request_id else op.metadata
            b.txn_rows.append(
                (txn_id, op.tenant_id, op.txn_kind, status, postings_json, json.dumps(stored), expires_at)
            )
            touched = nets
        else:
            hold = b.holds.get(op.hold_id)
            if hold is None or hold.tenant_id != op.tenant_id:
                raise errors.NotFound("No such hold.", error_code="HOLD_NOT_FOUND")
            if hold.status != "pending":
                if op.quiet:
                    return {"transaction_id": hold.id, "status": hold.status, "balances": {}, **op.extra}
                raise errors.Conflict(f"The hold is already {hold.status}.", error_code="HOLD_NOT_PENDING")
            nets = _nets(hold.postings)
            if op.kind == "post":
                if hold.expires_at is not None and hold.expires_at <= b.now:
                    raise errors.Conflict("The hold has expired.", error_code="HOLD_EXPIRED")
                releasing = {code: -net for code, net in nets.items() if net < 0}
                self._check_debits(op, nets, b, releasing=releasing)
            for code, net in nets.items():
                acct = b.accounts[code]
                if net < 0:
                    acct.debits_pending += net
                else:
                    acct.credits_pending -= net
                acct.dirty = True
            if op.kind == "post":
                self._post(hold.id, hold.tenant_id, nets, b)
            hold.status = "posted" if op.kind == "post" else "voided"
            b.txn_status_updates.append((hold.id, hold.status))
            txn_id = hold.id
            status = hold.status
            touched = nets
        return {
            "transaction_id": txn_id,
            "status": status,
            "created_at": b.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "balances": {code: b.accounts[code].snapshot() for code in sorted(touched)},
            **op.extra,
        }
