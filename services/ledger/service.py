"""LedgerService over gRPC: validation and translation to engine ops; reads straight from SQL."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from services.common import errors, grpcutil, money
from services.common.config import Settings
from services.common.crypto import request_hash
from services.common.grpcutil import GrpcService
from services.common.logs import request_id_var
from services.ledger import chart
from services.ledger.engine import Engine, Op

log = logging.getLogger("invo.ledger")

TENANT_ID_RE = re.compile(r"^tn_[0-9A-Z]{26}$")
TXN_ID_RE = re.compile(r"^txn_[0-9A-Z]{26}$")
KEY_LEN_MAX = 255
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_:.-]{0,39}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
POSTINGS_MAX = 16
AMOUNT_MAX = 10**15  # minor units: ten trillion units, far above any real movement
QUANTITY_MAX = 1000
METADATA_BYTES_MAX = 8192
HOLD_EXPIRY_MS_MAX = 30 * 86400 * 1000
BALANCES_MAX = 1000
ENTRIES_LIMIT_MAX = 1000
EXPORT_CHUNK_MAX = 5000
EXPIRY_INTERVAL_S = 1.0
EXPIRY_BATCH = 500
PROBLEMS_MAX = 100


_ts = grpcutil.timestamp


def _ts_iso(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)
    return ts


def _tenant(tenant_id: str) -> str:
    if not TENANT_ID_RE.match(tenant_id):
        raise errors.InvalidRequest("tenant_id is not a tenant id", error_code="INVALID_TENANT_ID")
    return tenant_id


def _idempotency(idem: ledger_pb2.Idempotency) -> tuple[str, str]:
    if not NAMESPACE_RE.match(idem.namespace):
        raise errors.InvalidRequest("idempotency namespace is malformed")
    if not idem.key or len(idem.key) > KEY_LEN_MAX:
        raise errors.InvalidRequest(
            f"idempotency_key must be 1 to {KEY_LEN_MAX} characters.",
            error_code="INVALID_IDEMPOTENCY_KEY",
            extra={"param": "idempotency_key"},
        )
    return idem.namespace, idem.key


def _metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    if len(text.encode()) > METADATA_BYTES_MAX:
        raise errors.InvalidRequest(f"metadata must be at most {METADATA_BYTES_MAX} bytes as JSON.")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.InvalidRequest("metadata must be a JSON object.") from exc
    if not isinstance(value, dict):
        raise errors.InvalidRequest("metadata must be a JSON object.")
    return value


def _postings(postings: Any) -> list[tuple[str, int]]:
    if not 2 <= len(postings) <= POSTINGS_MAX:
        raise errors.InvalidRequest(f"a transaction has 2 to {POSTINGS_MAX} postings")
    out: list[tuple[str, int]] = []
    for p in postings:
        chart.parse(p.account)
        if p.amount == 0 or abs(p.amount) > AMOUNT_MAX:
            raise errors.InvalidRequest("a posting moves a non-zero amount within bounds")
        out.append((p.account, p.amount))
    if len({c for c, _ in out}) != len(out):
        raise errors.InvalidRequest("an account appears at most once in a transaction")
    if sum(a for _, a in out) != 0:
        raise errors.InvalidRequest("postings must sum to zero", error_code="UNBALANCED_TRANSACTION")
    return out


def _kind(kind: str) -> str:
    if not KIND_RE.match(kind):
        raise errors.InvalidRequest("kind must be a short snake_case word")
    return kind


def _postings_request(request: Any) -> tuple[str, str, str, list[tuple[str, int]], dict[str, Any], str]:
    """What a Transfer and a CreateHold share, checked: (tenant_id, idempotency scope, key,
    postings, metadata, kind)."""
    tenant_id = _tenant(request.tenant_id)
    namespace, key = _idempotency(request.idempotency)
    postings = _postings(request.postings)
    return tenant_id, f"{tenant_id}:{namespace}", key, postings, _metadata(request.metadata_json), _kind(request.kind)


def _event(event_type: str, data_json: str) -> tuple[str, dict[str, Any]] | None:
    if not event_type:
        return None
    if not EVENT_TYPE_RE.match(event_type):
        raise errors.InvalidRequest("event_type is malformed")
    return event_type, _metadata(data_json)


def _balance_message(account: str, snap: dict[str, int]) -> ledger_pb2.AccountBalance:
    return ledger_pb2.AccountBalance(
        account=account, balance=snap["balance"], pending=snap["pending"], available=snap["available"]
    )


def _result_message(result: dict[str, Any]) -> ledger_pb2.TransactionResult:
    return ledger_pb2.TransactionResult(
        transaction_id=result["transaction_id"],
        duplicate=bool(result.get("duplicate")),
        status=result["status"],
        # Sorted: a replay read back from jsonb must list the accounts as the first answer did.
        balances=[_balance_message(code, snap) for code, snap in sorted(result.get("balances", {}).items())],
        created_at=_ts_iso(result["created_at"]) if "created_at" in result else None,
    )


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, engine: Engine) -> None:
        self.pool = pool
        self.engine = engine

    # -- writes ---------------------------------------------------------------------------

    async def PurchaseItem(self, request: ledger_pb2.PurchaseItemRequest, context: Any) -> Any:
        tenant_id = _tenant(request.tenant_id)
        scope_ns, key = _idempotency(request.idempotency)
        player = chart.player(tenant_id, request.player_email)
        email = player.split(":", 2)[2]
        for field, value in (("item_id", request.item_id), ("item_name", request.item_name)):
            if not value.strip() or len(value) > 255:
                raise errors.InvalidRequest(
                    f"{field} must be 1 to 255 characters.", error_code="INVALID_PARAMETER", extra={"param": field}
                )
        quantity = request.quantity or 1
        if not 1 <= quantity <= QUANTITY_MAX:
            raise errors.InvalidRequest(
                f"quantity must be from 1 to {QUANTITY_MAX}.",
                error_code="INVALID_PARAMETER",
                extra={"param": "quantity"},
            )
        if not 0 < request.price <= AMOUNT_MAX // QUANTITY_MAX:
            raise errors.InvalidRequest(
                "price must be greater than zero.", error_code="INVALID_PARAMETER", extra={"param": "price"}
            )
        if not 0 <= request.network_fee_bps <= money.BPS_WHOLE:
            raise errors.InvalidRequest("network_fee_bps out of range")
        metadata = _metadata(request.metadata_json)
        total = request.price * quantity
        partner, fee = money.split_item_purchase(total, network_fee_bps=request.network_fee_bps)
        postings = [(player, -total)]
        if partner:
            postings.append((chart.revenue(tenant_id), partner))
        if fee:
            postings.append((chart.NETWORK_FEES, fee))
        digest = request_hash(
            {
                "op": "purchase_item",
                "player": email,
                "item_id": request.item_id,
                "item_name": request.item_name,
                "price": request.price,
                "quantity": quantity,
                "metadata": metadata,
            }
        )
        currency_name = request.currency_name

        def event(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return "item.purchased", {
                "transaction_id": result["transaction_id"],
                "player_email": email,
                "item_id": request.item_id,
                "item_name": request.item_name,
                "quantity": quantity,
                "price": money.format_units(request.price),
                "total": money.format_units(total),
                "partner_amount": money.format_units(partner),
                "network_fee": money.format_units(fee),
                "new_balance": money.format_units(result["balances"][player]["balance"]),
                "currency_name": currency_name,
                "metadata": metadata,
            }

        result = await self.engine.submit(
            Op(
                kind="transfer",
                tenant_id=tenant_id,
                scope=f"{tenant_id}:{scope_ns}",
                key=key,
                request_hash=digest,
                txn_kind="item_purchase",
                postings=postings,
                metadata={
                    "item_id": request.item_id,
                    "item_name": request.item_name,
                    "quantity": quantity,
                    **({"metadata": metadata} if metadata else {}),
                },
                extra={"total": total, "partner_amount": partner, "network_fee": fee, "player": player},
                event=event,
                request_id=request.request_id or request_id_var.get(),
            )
        )
        return ledger_pb2.PurchaseItemResponse(
            transaction_id=result["transaction_id"],
            new_balance=result["balances"][result["player"]]["balance"],
            total=result["total"],
            partner_amount=result["partner_amount"],
            network_fee=result["network_fee"],
            duplicate=bool(result["duplicate"]),
            created_at=_ts_iso(result["created_at"]),
        )

    async def PurchaseItems(self, request: ledger_pb2.PurchaseItemsRequest, context: Any) -> Any:
        if len(request.items) > BALANCES_MAX:
            raise errors.InvalidRequest(f"at most {BALANCES_MAX} purchases at once")

        async def one(item: ledger_pb2.PurchaseItemRequest) -> ledger_pb2.PurchaseItemResult:
            try:
                return ledger_pb2.PurchaseItemResult(ok=await self.PurchaseItem(item, context))
            except errors.InvoError as exc:
                return ledger_pb2.PurchaseItemResult(
                    error=ledger_pb2.ItemError(
                        grpc_code=errors.code_number(exc.grpc_code),
                        message=exc.message,
                        metadata=[ledger_pb2.MetadataEntry(key=k, value=v) for k, v in errors.to_grpc_metadata(exc)],
                    )
                )

        # Every item goes to the engine at once, so they share its next batches.
        results = await asyncio.gather(*(one(item) for item in request.items))
        return ledger_pb2.PurchaseItemsResponse(results=results)

    async def Transfer(self, request: ledger_pb2.TransferRequest, context: Any) -> Any:
        tenant_id, scope, key, postings, metadata, kind = _postings_request(request)
        allow_debt = frozenset(request.allow_debt)
        codes = {c for c, _ in postings}
        if not allow_debt <= codes or any(chart.parse(c).kind != "player" for c in allow_debt):
            raise errors.InvalidRequest("allow_debt names only player accounts of this transaction")
        event = _event(request.event_type, request.event_data_json)
        digest = request_hash(
            {
                "op": "transfer",
                "kind": kind,
                "postings": postings,
                "metadata": metadata,
                "allow_debt": sorted(allow_debt),
            }
        )
        result = await self.engine.submit(
            Op(
                kind="transfer",
                tenant_id=tenant_id,
                scope=scope,
                key=key,
                request_hash=digest,
                txn_kind=kind,
                postings=postings,
                metadata=metadata,
                allow_debt=allow_debt,
                event=(lambda _r: event) if event else None,
            )
        )
        return _result_message(result)

    async def CreateHold(self, request: ledger_pb2.CreateHoldRequest, context: Any) -> Any:
        tenant_id, scope, key, postings, metadata, kind = _postings_request(request)
        if not 1 <= request.expires_in_ms <= HOLD_EXPIRY_MS_MAX:
            raise errors.InvalidRequest("expires_in_ms must be from 1 ms to 30 days")
        digest = request_hash(
            {"op": "hold", "kind": kind, "postings": postings, "metadata": metadata, "expires": request.expires_in_ms}
        )
        result = await self.engine.submit(
            Op(
                kind="hold",
                tenant_id=tenant_id,
                scope=scope,
                key=key,
                request_hash=digest,
                txn_kind=kind,
                postings=postings,
                metadata=metadata,
                expires_in_ms=request.expires_in_ms,
            )
        )
        return _result_message(result)

    async def _resolve(self, request: ledger_pb2.ResolveHoldRequest, kind: str) -> Any:
        tenant_id = _tenant(request.tenant_id)
        scope_ns, key = _idempotency(request.idempotency)
        if not TXN_ID_RE.match(request.hold_id):
            raise errors.NotFound("No such hold.", error_code="HOLD_NOT_FOUND")
        event = _event(request.event_type, request.event_data_json)
        result = await self.engine.submit(
            Op(
                kind=kind,
                tenant_id=tenant_id,
                scope=f"{tenant_id}:{scope_ns}",
                key=key,
                request_hash=request_hash({"op": kind, "hold_id": request.hold_id}),
                hold_id=request.hold_id,
                event=(lambda _r: event) if event else None,
            )
        )
        return _result_message(result)

    async def PostHold(self, request: ledger_pb2.ResolveHoldRequest, context: Any) -> Any:
        return await self._resolve(request, "post")

    async def VoidHold(self, request: ledger_pb2.ResolveHoldRequest, context: Any) -> Any:
        return await self._resolve(request, "void")

    async def expire_holds(self, limit: int) -> int:
        rows = await self.pool.fetch(
            "SELECT id, tenant_id FROM transactions WHERE status = 'pending' AND expires_at <= now()"
            " ORDER BY expires_at LIMIT $1",
            limit,
        )
        results = await asyncio.gather(
            *(
                self.engine.submit(
                    Op(
                        kind="void",
                        tenant_id=r["tenant_id"],
                        scope="system:expiry",
                        key=r["id"],
                        request_hash=request_hash({"op": "expire", "hold_id": r["id"]}),
                        hold_id=r["id"],
                        quiet=True,
                    )
                )
                for r in rows
            )
        )
        return sum(1 for r in results if r["status"] == "voided" and not r["duplicate"] and r.get("balances"))

    async def ExpireHolds(self, request: ledger_pb2.ExpireHoldsRequest, context: Any) -> Any:
        limit = request.limit or EXPIRY_BATCH
        if not 1 <= limit <= EXPIRY_BATCH:
            raise errors.InvalidRequest(f"limit must be from 1 to {EXPIRY_BATCH}")
        return ledger_pb2.ExpireHoldsResponse(voided=await self.expire_holds(limit))

    async def run_expiry(self) -> None:
        while True:
            try:
                voided = await self.expire_holds(EXPIRY_BATCH)
                if voided:
                    log.info("expired %d holds", voided)
            except (asyncpg.PostgresError, OSError, errors.InvoError) as exc:
                log.warning("hold expiry round failed: %s", exc)
            await asyncio.sleep(EXPIRY_INTERVAL_S)

    # -- reads ----------------------------------------------------------------------------

    async def GetBalances(self, request: ledger_pb2.GetBalancesRequest, context: Any) -> Any:
        codes = list(request.accounts)
        if len(codes) > BALANCES_MAX:
            raise errors.InvalidRequest(f"at most {BALANCES_MAX} accounts at once")
        for code in codes:
            chart.parse(code)
        rows = await self.pool.fetch(
            "SELECT code, credits_posted - debits_posted AS balance, debits_pending FROM accounts"
            " WHERE code = ANY($1::text[])",
            codes,
        )
        found = {r["code"]: (r["balance"], r["debits_pending"]) for r in rows}
        out = []
        for code in codes:
            balance, pending = found.get(code, (0, 0))
            out.append(
                ledger_pb2.AccountBalance(account=code, balance=balance, pending=pending, available=balance - pending)
            )
        return ledger_pb2.GetBalancesResponse(balances=out)

    async def GetTransaction(self, request: ledger_pb2.GetTransactionRequest, context: Any) -> Any:
        row = await self.pool.fetchrow(
            "SELECT id, tenant_id, kind, status, postings, metadata, created_at, expires_at"
            " FROM transactions WHERE id = $1 AND tenant_id = $2",
            request.transaction_id,
            request.tenant_id,
        )
        if row is None:
            raise errors.NotFound("No such transaction.", error_code="TRANSACTION_NOT_FOUND")
        return ledger_pb2.Transaction(
            transaction_id=row["id"],
            tenant_id=row["tenant_id"],
            kind=row["kind"],
            status=row["status"],
            postings=[
                ledger_pb2.Posting(account=p["account"], amount=p["amount"]) for p in json.loads(row["postings"])
            ],
            metadata_json=row["metadata"],
            created_at=_ts(row["created_at"]),
            expires_at=_ts(row["expires_at"]),
        )

    async def ListEntries(self, request: ledger_pb2.ListEntriesRequest, context: Any) -> Any:
        tenant_id = _tenant(request.tenant_id)
        limit = request.limit or 100
        if not 1 <= limit <= ENTRIES_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {ENTRIES_LIMIT_MAX}")
        if request.account:
            chart.parse(request.account)
            rows = await self.pool.fetch(
                "SELECT e.id, e.txn_id, a.code, e.amount, e.balance_after, t.kind, e.created_at"
                " FROM entries e JOIN accounts a ON a.id = e.account_id JOIN transactions t ON t.id = e.txn_id"
                " WHERE a.code = $1 AND e.tenant_id = $2 AND e.id > $3 ORDER BY e.id LIMIT $4",
                request.account,
                tenant_id,
                request.after_entry_id,
                limit + 1,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT e.id, e.txn_id, a.code, e.amount, e.balance_after, t.kind, e.created_at"
                " FROM entries e JOIN accounts a ON a.id = e.account_id JOIN transactions t ON t.id = e.txn_id"
                " WHERE e.tenant_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
                tenant_id,
                request.after_entry_id,
                limit + 1,
            )
        return ledger_pb2.ListEntriesResponse(
            entries=[
                ledger_pb2.Entry(
                    entry_id=r["id"],
                    transaction_id=r["txn_id"],
                    account=r["code"],
                    amount=r["amount"],
                    balance_after=r["balance_after"],
                    kind=r["kind"],
                    created_at=_ts(r["created_at"]),
                )
                for r in rows[:limit]
            ],
            has_more=len(rows) > limit,
        )

    async def ExportBalances(
        self, request: ledger_pb2.ExportBalancesRequest, context: Any
    ) -> AsyncIterator[ledger_pb2.ExportBalancesChunk]:
        tenant_id = _tenant(request.tenant_id)
        chunk_size = request.chunk_size or 1000
        if not 1 <= chunk_size <= EXPORT_CHUNK_MAX:
            raise errors.InvalidRequest(f"chunk_size must be from 1 to {EXPORT_CHUNK_MAX}")
        count = 0
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # One snapshot for the whole export: every row is as of this instant.
            snapshot_at = await conn.fetchval("SELECT now()")
            cursor = await conn.cursor(
                "SELECT player_email, credits_posted - debits_posted AS balance, debits_pending"
                " FROM accounts WHERE kind = 'player' AND tenant_id = $1 ORDER BY player_email",
                tenant_id,
            )
            while True:
                rows = await cursor.fetch(chunk_size)
                if not rows:
                    break
                count += len(rows)
                yield ledger_pb2.ExportBalancesChunk(
                    balances=[
                        ledger_pb2.AccountBalance(
                            account=r["player_email"],
                            balance=r["balance"],
                            pending=r["debits_pending"],
                            available=r["balance"] - r["debits_pending"],
                        )
                        for r in rows
                    ]
                )
        yield ledger_pb2.ExportBalancesChunk(last=True, count=count, snapshot_at=_ts(snapshot_at))

    async def GetRevenue(self, request: ledger_pb2.GetRevenueRequest, context: Any) -> Any:
        row = await self.pool.fetchrow(
            "SELECT credits_posted, debits_posted FROM accounts WHERE code = $1",
            chart.revenue(_tenant(request.tenant_id)),
        )
        credits, debits = (row["credits_posted"], row["debits_posted"]) if row else (0, 0)
        return ledger_pb2.Revenue(owed=credits - debits, paid_out=debits, lifetime=credits)

    async def Check(self, request: ledger_pb2.CheckRequest, context: Any) -> Any:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # Checks read the whole ledger: they get a longer statement timeout than requests.
            await conn.execute("SET LOCAL statement_timeout = '120s'")
            total, accounts = await conn.fetchrow(
                "SELECT COALESCE(sum(credits_posted - debits_posted), 0)::bigint, count(*) FROM accounts"
            )
            negative = await conn.fetch(
                "SELECT code, credits_posted - debits_posted AS balance, debits_pending FROM accounts"
                " WHERE constrained AND kind <> 'player' AND credits_posted - debits_posted - debits_pending < 0"
                " ORDER BY id LIMIT $1",
                PROBLEMS_MAX,
            )
            debts = await conn.fetchval(
                "SELECT count(*) FROM accounts WHERE kind = 'player' AND credits_posted < debits_posted"
            )
            unbalanced = await conn.fetch(
                "SELECT txn_id FROM entries GROUP BY txn_id HAVING sum(amount) <> 0 LIMIT $1", PROBLEMS_MAX
            )
            drifted = await conn.fetch(
                "SELECT a.code FROM accounts a LEFT JOIN ("
                "  SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id"
                ") e ON e.account_id = a.id"
                " WHERE a.credits_posted - a.debits_posted <> COALESCE(e.total, 0)"
                " UNION ALL "
                "SELECT a.code FROM accounts a LEFT JOIN ("
                "  SELECT p->>'account' AS code,"
                "         sum(CASE WHEN (p->>'amount')::bigint < 0 THEN -(p->>'amount')::bigint ELSE 0 END) AS d,"
                "         sum(CASE WHEN (p->>'amount')::bigint > 0 THEN (p->>'amount')::bigint ELSE 0 END) AS c"
                "  FROM transactions t, jsonb_array_elements(t.postings) p WHERE t.status = 'pending' GROUP BY 1"
                ") h ON h.code = a.code"
                " WHERE a.debits_pending <> COALESCE(h.d, 0) OR a.credits_pending <> COALESCE(h.c, 0)"
                " LIMIT $1",
                PROBLEMS_MAX,
            )
            transactions = await conn.fetchval("SELECT count(*) FROM transactions")
        return ledger_pb2.CheckResponse(
            ok=total == 0 and not negative and not unbalanced and not drifted,
            total_balance=total,
            negative_accounts=[
                ledger_pb2.AccountBalance(
                    account=r["code"],
                    balance=r["balance"],
                    pending=r["debits_pending"],
                    available=r["balance"] - r["debits_pending"],
                )
                for r in negative
            ],
            unbalanced_transactions=[r["txn_id"] for r in unbalanced],
            drifted_accounts=[r["code"] for r in drifted],
            player_debts=debts,
            accounts=accounts,
            transactions=transactions,
        )


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    engine = Engine(pool)
    servicer = LedgerServicer(pool, engine)
    svc.background(engine.run(), "ledger-writer")
    svc.on_shutdown(engine.close)  # before the pool closes: batches in flight finish
    svc.background(servicer.run_expiry(), "hold-expiry")
    svc.add(
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
        servicer,
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    )
