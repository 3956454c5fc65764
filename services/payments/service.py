"""PaymentsService: currency purchases through the card processor, crediting the ledger once.

Crediting happens exactly once whichever arrives first: the processor's answer to our own call,
confirm-payment, or the processor's webhook. Every path ends in `_complete()`:

1. the ledger credit (world:processor -> player) with the idempotency key `order:<order_id>`, so a
   second caller gets the first credit back instead of a second one;
2. one payments transaction that moves the order to `completed` only if it is still unsettled,
   records the transition and writes `purchase.completed` to the outbox.

A crash between the two leaves an unsettled order whose lease runs out; the recovery loop asks the
processor again (same idempotency key: the same PaymentIntent) and completes it.

Caps: a purchase locks the player's row, sums completed and in-flight orders over the hour, day and
month, and inserts its own order while still holding the lock, so concurrent purchases can never
together exceed a cap. Declined, abandoned and refused purchases leave the caps untouched.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import re
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2, ledger_pb2_grpc, payments_pb2, payments_pb2_grpc

from services.common import errors, events, grpcutil, ids, money
from services.common.config import Settings
from services.common.crypto import request_hash
from services.common.grpcutil import GrpcService
from services.common.players import normalize_email
from services.payments.processor import Outcome, Processor, ProcessorUnavailable

log = logging.getLogger("invo.payments")

REFERENCE_LEN_MAX = 255
ORDER_ID_RE = re.compile(r"^ord_[0-9A-Z]{26}$")
PAYMENT_METHOD_RE = re.compile(r"^[A-Za-z0-9_]{3,255}$")
METADATA_BYTES_MAX = 8192
UNSETTLED = ("pending_payment", "requires_action")
# Which transitions the lifecycle allows (the seed's "Order status lifecycle").
TRANSITIONS = {
    "pending_payment": {"requires_action", "completed", "failed", "cancelled"},
    "requires_action": {"completed", "failed", "cancelled"},
    "completed": {"refunded", "disputed_lost"},
    # After a failed 3-D Secure or a decline the PaymentIntent is requires_payment_method, and the
    # cardholder may confirm it again: if the processor then reports it succeeded, it completes.
    "failed": {"completed"},
    "cancelled": set(),
    "refunded": set(),
    "disputed_lost": set(),
}
RECOVERY_INTERVAL_S = 2.0
RECOVERY_BATCH = 50


class CardDeclined(errors.PaymentRequired):
    default_error = "card_declined"
    default_error_code = "CARD_DECLINED"


class SpendingLimitExceeded(errors.RateLimited):
    default_error = "spending_limit_exceeded"
    default_error_code = "SPENDING_LIMIT_EXCEEDED"


class VelocityLimitExceeded(errors.RateLimited):
    default_error = "velocity_limit_exceeded"
    default_error_code = "VELOCITY_LIMIT_EXCEEDED"


_ts = grpcutil.timestamp


def identity_id(key: str, email: str) -> str:
    """A stable pseudonym of the person behind an email, the same in every tenant; never the email."""
    return hmac.new(key.encode(), email.encode(), hashlib.sha256).hexdigest()[:32]


async def _first_sight(conn: asyncpg.Connection, processor_event: tuple[str, str]) -> bool:
    """Record a processor event (id, type); False if it was recorded before (a replay)."""
    inserted = await conn.fetchval(
        "INSERT INTO processor_events (event_id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING event_id",
        *processor_event,
    )
    return inserted is not None


_ORDER_COLUMNS = (
    "order_id, tenant_id, purchase_reference, request_hash, environment, player_email, identity_id, usd_cents,"
    " currency_amount, currency_name, payment_method_id, payment_intent_id, client_secret, status, failure_code,"
    " failure_message, decline_code, transaction_id, new_balance, metadata, processing_until, created_at,"
    " updated_at, completed_at"
)


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, pool: asyncpg.Pool, settings: Settings, processor: Processor, ledger: Any) -> None:
        self.pool = pool
        self.settings = settings
        self.processor = processor
        self.ledger = ledger
        self.identity_key = settings.identity_key or settings.key_pepper
        self.lease = datetime.timedelta(seconds=settings.processor_timeout_s * 2 + 5)

    # -- helpers --------------------------------------------------------------------------

    async def _order_message(self, row: asyncpg.Record, *, history: bool = False) -> payments_pb2.Order:
        msg = payments_pb2.Order(
            order_id=row["order_id"],
            tenant_id=row["tenant_id"],
            purchase_reference=row["purchase_reference"],
            status=row["status"],
            player_email=row["player_email"],
            identity_id=row["identity_id"],
            usd_cents=row["usd_cents"],
            currency_amount=row["currency_amount"],
            currency_name=row["currency_name"],
            payment_intent_id=row["payment_intent_id"] or "",
            transaction_id=row["transaction_id"] or "",
            failure_code=row["failure_code"] or "",
            failure_message=row["failure_message"] or "",
            decline_code=row["decline_code"] or "",
            metadata_json=row["metadata"],
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
            completed_at=_ts(row["completed_at"]),
        )
        if row["new_balance"] is not None:
            msg.new_balance = row["new_balance"]
        if history:
            rows = await self.pool.fetch(
                "SELECT from_status, to_status, source, reason, created_at FROM order_transitions"
                " WHERE order_id = $1 ORDER BY id",
                row["order_id"],
            )
            msg.history.extend(
                payments_pb2.OrderTransition(
                    from_status=r["from_status"],
                    to_status=r["to_status"],
                    source=r["source"],
                    reason=r["reason"],
                    at=_ts(r["created_at"]),
                )
                for r in rows
            )
        return msg

    async def _get(self, order_id: str) -> asyncpg.Record:
        row = await self.pool.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1", order_id)
        if row is None:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return row

    async def _transition(
        self,
        conn: asyncpg.Connection,
        order_id: str,
        to_status: str,
        *,
        source: str,
        reason: str = "",
        sets: dict[str, Any] | None = None,
    ) -> asyncpg.Record | None:
        """Move an order to `to_status` if the lifecycle allows it from its current status; None if not."""
        current = await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1 FOR UPDATE", order_id)
        if current is None or to_status not in TRANSITIONS[current["status"]]:
            return None
        sets = dict(sets or {})
        sets["status"] = to_status
        assignments = ", ".join(f"{col} = ${i}" for i, col in enumerate(sets, start=2))
        row = await conn.fetchrow(
            f"UPDATE orders SET {assignments}, updated_at = now() WHERE order_id = $1 RETURNING {_ORDER_COLUMNS}",
            order_id,
            *sets.values(),
        )
        await conn.execute(
            "INSERT INTO order_transitions (order_id, from_status, to_status, source, reason)"
            " VALUES ($1, $2, $3, $4, $5)",
            order_id,
            current["status"],
            to_status,
            source,
            reason[:500],
        )
        return row

    def _completed_event(self, row: asyncpg.Record) -> dict[str, Any]:
        return {
            "transaction_id": row["transaction_id"],
            "order_id": row["order_id"],
            "player_email": row["player_email"],
            "identity_id": row["identity_id"],
            "usd_amount": money.format_usd(row["usd_cents"]),
            "currency_amount": money.format_units(row["currency_amount"]),
            "currency_name": row["currency_name"],
            "metadata": json.loads(row["metadata"]),
        }

    def _failed_event(self, row: asyncpg.Record) -> dict[str, Any]:
        # The seed's failure codes are "card_declined" and "payment_canceled"; the processor's own
        # reason (a failed 3-D Secure, say) is in failure_message and in the order's history.
        code = "payment_canceled" if row["status"] == "cancelled" else "card_declined"
        return {
            "payment_intent_id": row["payment_intent_id"],
            "order_id": row["order_id"],
            "player_email": row["player_email"],
            "usd_amount": money.format_usd(row["usd_cents"]),
            "failure_code": code,
            "failure_message": row["failure_message"],
        }

    # -- settling an order ----------------------------------------------------------------

    async def _complete(
        self,
        row: asyncpg.Record,
        payment_intent_id: str,
        *,
        source: str,
        processor_event: tuple[str, str] | None = None,
    ) -> tuple[asyncpg.Record, bool]:
        """Credit the player once and mark the order completed (called only when the processor
        reports this order's PaymentIntent succeeded). Returns (order, already_processed)."""
        if row["status"] not in (*UNSETTLED, "failed"):
            if processor_event is not None:
                await self._record_event_only(processor_event)
            return row, True
        credit = row["currency_amount"]
        player = f"player:{row['tenant_id']}:{row['player_email']}"
        result: ledger_pb2.TransactionResult = await grpcutil.call(
            self.ledger.Transfer,
            ledger_pb2.TransferRequest(
                tenant_id=row["tenant_id"],
                kind="currency_purchase",
                postings=[
                    ledger_pb2.Posting(account="world:processor", amount=-credit),
                    ledger_pb2.Posting(account=player, amount=credit),
                ],
                idempotency=ledger_pb2.Idempotency(namespace="payments", key=f"order:{row['order_id']}"),
                metadata_json=json.dumps({"order_id": row["order_id"], "payment_intent_id": payment_intent_id}),
            ),
            timeout_s=self.settings.rpc_timeout_s,
        )
        balance = next((b.balance for b in result.balances if b.account == player), None)
        async with self.pool.acquire() as conn, conn.transaction():
            if processor_event is not None and not await _first_sight(conn, processor_event):
                return await self._get(row["order_id"]), True
            done = await self._transition(
                conn,
                row["order_id"],
                "completed",
                source=source,
                reason="charge succeeded; currency credited",
                sets={
                    "transaction_id": result.transaction_id,
                    "new_balance": balance,
                    "payment_intent_id": payment_intent_id or row["payment_intent_id"],
                    "completed_at": datetime.datetime.now(datetime.UTC),
                    "processing_until": None,
                },
            )
            if done is None:
                current = await conn.fetchrow(
                    f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1", row["order_id"]
                )
                return current, True
            await events.emit(
                conn, tenant_id=done["tenant_id"], event_type="purchase.completed", data=self._completed_event(done)
            )
        return done, False

    async def _fail(
        self,
        row: asyncpg.Record,
        outcome: Outcome,
        *,
        to_status: str,
        source: str,
        processor_event: tuple[str, str] | None = None,
    ) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            if processor_event is not None and not await _first_sight(conn, processor_event):
                return await self._get(row["order_id"])
            failure_code = outcome.failure_code or ("payment_canceled" if to_status == "cancelled" else "card_declined")
            done = await self._transition(
                conn,
                row["order_id"],
                to_status,
                source=source,
                reason=outcome.failure_message or failure_code,
                sets={
                    "failure_code": failure_code,
                    "failure_message": outcome.failure_message or "The payment did not go through.",
                    "decline_code": outcome.decline_code or None,
                    "payment_intent_id": outcome.payment_intent_id or row["payment_intent_id"],
                    "processing_until": None,
                },
            )
            if done is None:
                return await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1", row["order_id"])
            await events.emit(
                conn, tenant_id=done["tenant_id"], event_type="purchase.failed", data=self._failed_event(done)
            )
            return done

    async def _record_event_only(self, processor_event: tuple[str, str]) -> None:
        async with self.pool.acquire() as conn:
            await _first_sight(conn, processor_event)

    async def _requires_action(self, row: asyncpg.Record, outcome: Outcome, *, source: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await self._transition(
                conn,
                row["order_id"],
                "requires_action",
                source=source,
                reason="3-D Secure challenge required",
                sets={
                    "payment_intent_id": outcome.payment_intent_id,
                    "client_secret": outcome.client_secret,
                    "processing_until": None,
                },
            )
            if done is None:
                return await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1", row["order_id"])
            return done

    async def _apply_outcome(
        self, row: asyncpg.Record, outcome: Outcome, *, source: str
    ) -> payments_pb2.PurchaseOutcome:
        if outcome.status == "succeeded":
            done, already = await self._complete(row, outcome.payment_intent_id, source=source)
            return await self._outcome(done, already_processed=already)
        if outcome.status == "requires_action":
            done = await self._requires_action(row, outcome, source=source)
            return await self._outcome(done)
        if outcome.status in ("declined", "requires_payment_method"):
            done = await self._fail(row, outcome, to_status="failed", source=source)
            return await self._outcome(done)
        if outcome.status == "canceled":
            done = await self._fail(row, outcome, to_status="cancelled", source=source)
            return await self._outcome(done)
        # processing / requires_confirmation: the processor has not decided; the order stays in flight.
        return await self._outcome(await self._get(row["order_id"]))

    async def _outcome(self, row: asyncpg.Record, *, duplicate: bool = False, already_processed: bool = False) -> Any:
        """The answer for an order in its current state (an error for a failed one)."""
        order = await self._order_message(row)
        status = row["status"]
        if status in ("completed", "refunded", "disputed_lost"):
            out = payments_pb2.PurchaseOutcome(
                status="success", duplicate=duplicate, already_processed=already_processed, order=order
            )
            if row["new_balance"] is not None:
                out.new_balance = row["new_balance"]
            return out
        if status == "requires_action":
            return payments_pb2.PurchaseOutcome(
                status="requires_action", duplicate=duplicate, order=order, client_secret=row["client_secret"] or ""
            )
        if status == "pending_payment":
            return payments_pb2.PurchaseOutcome(status="pending", duplicate=duplicate, order=order)
        extra = {"order_id": row["order_id"], "duplicate": duplicate}
        if status == "cancelled":
            raise CardDeclined(
                "The payment was canceled; nothing was charged.",
                error="payment_canceled",
                error_code="PAYMENT_CANCELED",
                extra=extra,
            )
        if row["failure_code"] == "payment_intent_authentication_failure":
            raise CardDeclined(
                row["failure_message"] or "3-D Secure authentication failed.",
                error="authentication_failed",
                error_code="AUTHENTICATION_FAILED",
                extra=extra,
            )
        if row["failure_code"] == "invalid_payment_method":
            raise errors.InvalidRequest(
                row["failure_message"] or "The payment method was refused.",
                error_code="INVALID_PAYMENT_METHOD",
                extra=extra,
            )
        raise CardDeclined(
            row["failure_message"] or "Your card was declined.",
            extra={**extra, "decline_code": row["decline_code"] or "generic_decline"},
        )

    # -- limits ---------------------------------------------------------------------------

    def _caps(self, tenant: payments_pb2.TenantContext) -> dict[str, int]:
        """Each period's cap in USD cents: the tenant's override, else its environment's default."""
        env = "production" if tenant.environment == "production" else "sandbox"
        ctx: Any = tenant
        return {
            period: getattr(ctx, f"{period}_cap_usd_cents")
            if ctx.HasField(f"{period}_cap_usd_cents")
            else getattr(self.settings, f"caps_{env}_{period}_usd_cents")
            for period in ("hourly", "daily", "monthly")
        }

    async def _check_limits(
        self, conn: asyncpg.Connection, tenant: payments_pb2.TenantContext, email: str, usd_cents: int
    ) -> None:
        s = self.settings
        stats = await conn.fetchrow(
            "SELECT"
            " count(*) FILTER (WHERE created_at > now() - interval '1 minute') AS attempts,"
            " count(*) FILTER (WHERE status = 'failed' AND decline_code IS NOT NULL"
            "   AND updated_at > now() - make_interval(secs => $3)) AS declines,"
            " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
            "   AND created_at > now() - interval '1 hour'), 0) AS hourly,"
            " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
            "   AND created_at > now() - interval '1 day'), 0) AS daily,"
            " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
            "   AND created_at > now() - interval '30 days'), 0) AS monthly"
            " FROM orders WHERE tenant_id = $1 AND player_email = $2 AND created_at > now() - interval '30 days'",
            tenant.tenant_id,
            email,
            float(s.decline_cooldown_s),
        )
        if stats["attempts"] >= s.purchase_attempts_per_minute_max:
            raise VelocityLimitExceeded(
                f"Too many purchase attempts for this player: at most {s.purchase_attempts_per_minute_max} a minute.",
                retry_after_s=60,
            )
        if stats["declines"] >= s.declines_max:
            raise VelocityLimitExceeded(
                f"Too many declined cards for this player; purchases resume after a cool-down of "
                f"{s.decline_cooldown_s // 60} minutes.",
                error_code="TOO_MANY_DECLINES",
                retry_after_s=s.decline_cooldown_s,
            )
        for period, cap in self._caps(tenant).items():
            if stats[period] + usd_cents > cap:
                left = max(0, cap - stats[period])
                raise SpendingLimitExceeded(
                    f"This purchase would exceed the player's {period} spending limit of "
                    f"${money.format_usd(cap)} (${money.format_usd(left)} left).",
                    extra={"limit": period},
                )

    # -- RPCs -----------------------------------------------------------------------------

    async def PurchaseCurrency(self, request: payments_pb2.PurchaseCurrencyRequest, context: Any) -> Any:
        tenant = request.tenant
        email = normalize_email(request.player_email)
        reference = request.purchase_reference
        if not reference:
            raise errors.InvalidRequest(
                "purchase_reference is required: generate one per purchase attempt and resend it on every retry.",
                error_code="MISSING_PURCHASE_REFERENCE",
                extra={"param": "purchase_reference"},
            )
        if len(reference) > REFERENCE_LEN_MAX:
            raise errors.InvalidRequest(
                f"purchase_reference must be at most {REFERENCE_LEN_MAX} characters.",
                error_code="INVALID_PURCHASE_REFERENCE",
                extra={"param": "purchase_reference"},
            )
        s = self.settings
        if not s.purchase_min_usd_cents <= request.usd_cents <= s.purchase_max_usd_cents:
            raise errors.InvalidRequest(
                f"usd_amount must be from {money.format_usd(s.purchase_min_usd_cents)} to "
                f"{money.format_usd(s.purchase_max_usd_cents)}.",
                error_code="INVALID_AMOUNT",
                extra={"param": "usd_amount"},
            )
        if not PAYMENT_METHOD_RE.match(request.payment_method_id):
            raise errors.InvalidRequest(
                "payment_method_id is required.",
                error_code="INVALID_PAYMENT_METHOD",
                extra={"param": "payment_method_id"},
            )
        metadata = json.loads(request.metadata_json) if request.metadata_json else {}
        digest = request_hash(
            {"email": email, "usd_cents": request.usd_cents, "pm": request.payment_method_id, "metadata": metadata}
        )
        order_id = ids.new_id("ord")
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetchrow(
                f"SELECT {_ORDER_COLUMNS} FROM orders WHERE tenant_id = $1 AND purchase_reference = $2",
                tenant.tenant_id,
                reference,
            )
            if existing is None:
                # The player's lock: caps are checked and this order reserved atomically.
                await conn.execute(
                    "INSERT INTO player_locks (tenant_id, player_email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    tenant.tenant_id,
                    email,
                )
                await conn.execute(
                    "SELECT 1 FROM player_locks WHERE tenant_id = $1 AND player_email = $2 FOR UPDATE",
                    tenant.tenant_id,
                    email,
                )
                # A reference taken while we waited for the lock is a replay after all.
                existing = await conn.fetchrow(
                    f"SELECT {_ORDER_COLUMNS} FROM orders WHERE tenant_id = $1 AND purchase_reference = $2",
                    tenant.tenant_id,
                    reference,
                )
            if existing is None:
                await self._check_limits(conn, tenant, email, request.usd_cents)
                # An open breaker refuses before anything is recorded: the cap stays untouched.
                self.processor.breaker.check()
                row = await conn.fetchrow(
                    f"INSERT INTO orders (order_id, tenant_id, purchase_reference, request_hash, environment,"
                    f" player_email, identity_id, usd_cents, currency_amount, currency_name, payment_method_id,"
                    f" status, metadata, processing_until)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending_payment', $12::jsonb, $13)"
                    # The same reference sent at once for another player holds another player's
                    # lock: the unique key decides, and the loser answers as a replay.
                    f" ON CONFLICT (tenant_id, purchase_reference) DO NOTHING"
                    f" RETURNING {_ORDER_COLUMNS}",
                    order_id,
                    tenant.tenant_id,
                    reference,
                    digest,
                    tenant.environment,
                    email,
                    identity_id(self.identity_key, email),
                    request.usd_cents,
                    request.usd_cents * money.MINOR_PER_CENT,
                    tenant.currency_name,
                    request.payment_method_id,
                    json.dumps(metadata),
                    datetime.datetime.now(datetime.UTC) + self.lease,
                )
                if row is None:
                    existing = await conn.fetchrow(
                        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE tenant_id = $1 AND purchase_reference = $2",
                        tenant.tenant_id,
                        reference,
                    )
                else:
                    await conn.execute(
                        "INSERT INTO order_transitions (order_id, from_status, to_status, source, reason)"
                        " VALUES ($1, '', 'pending_payment', 'api', 'order created')",
                        order_id,
                    )
        if existing is not None:
            return await self._replay(existing, digest)
        return await self._drive(row, source="api")

    async def _replay(self, row: asyncpg.Record, digest: bytes) -> Any:
        if bytes(row["request_hash"]) != digest:
            raise errors.InvalidRequest(
                "This purchase_reference was already used for a different purchase.",
                error="idempotency_error",
                error_code="IDEMPOTENCY_KEY_REUSED",
                extra={"param": "purchase_reference"},
            )
        if row["status"] == "pending_payment":
            lease = row["processing_until"]
            if lease is not None and lease > datetime.datetime.now(datetime.UTC):
                return await self._outcome(row, duplicate=True)
            # The first attempt died (or its processor call failed): take it over and drive it
            # again. The processor's idempotency key makes this the same charge, never a second.
            claimed = await self.pool.fetchrow(
                f"UPDATE orders SET processing_until = $2 WHERE order_id = $1 AND status = 'pending_payment'"
                f" AND (processing_until IS NULL OR processing_until <= now()) RETURNING {_ORDER_COLUMNS}",
                row["order_id"],
                datetime.datetime.now(datetime.UTC) + self.lease,
            )
            if claimed is None:
                return await self._outcome(await self._get(row["order_id"]), duplicate=True)
            result = await self._drive(claimed, source="api")
            result.duplicate = True
            return result
        return await self._outcome(row, duplicate=True)

    async def _drive(self, row: asyncpg.Record, *, source: str) -> Any:
        """Ask the processor to charge the order, then settle it from the answer."""
        try:
            outcome = await self.processor.charge(
                order_id=row["order_id"],
                usd_cents=row["usd_cents"],
                payment_method_id=row["payment_method_id"],
                metadata={"tenant_id": row["tenant_id"], "purchase_reference": row["purchase_reference"][:450]},
            )
        except ProcessorUnavailable:
            # Unknown outcome: release the lease so a retry (or the recovery loop) asks again.
            await self.pool.execute("UPDATE orders SET processing_until = NULL WHERE order_id = $1", row["order_id"])
            raise
        except errors.InvalidRequest as exc:
            await self._fail(
                row,
                Outcome(status="declined", failure_code="invalid_payment_method", failure_message=exc.message),
                to_status="failed",
                source=source,
            )
            raise
        return await self._apply_outcome(row, outcome, source=source)

    async def ConfirmPayment(self, request: payments_pb2.ConfirmPaymentRequest, context: Any) -> Any:
        if not ORDER_ID_RE.match(request.order_id):
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        row = await self._get(request.order_id)
        if row["tenant_id"] != request.tenant.tenant_id:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        if (
            request.payment_intent_id
            and row["payment_intent_id"]
            and request.payment_intent_id != row["payment_intent_id"]
        ):
            raise errors.InvalidRequest(
                "payment_intent_id does not belong to this order.",
                error_code="PAYMENT_INTENT_MISMATCH",
                extra={"param": "payment_intent_id"},
            )
        if row["status"] in ("completed", "refunded", "disputed_lost"):
            return await self._outcome(row, already_processed=True)
        if not row["payment_intent_id"]:
            return await self._outcome(row)
        outcome = await self.processor.retrieve(row["payment_intent_id"])
        if outcome.status == "requires_action":
            raise errors.Conflict(
                "The cardholder has not completed 3-D Secure yet.", error_code="PAYMENT_REQUIRES_ACTION"
            )
        return await self._apply_outcome(row, outcome, source="confirm")

    async def GetOrder(self, request: payments_pb2.GetOrderRequest, context: Any) -> Any:
        if not ORDER_ID_RE.match(request.order_id):
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        row = await self._get(request.order_id)
        if row["tenant_id"] != request.tenant_id:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return await self._order_message(row, history=True)

    async def HandleProcessorEvent(self, request: payments_pb2.ProcessorEvent, context: Any) -> Any:
        seen = await self.pool.fetchval("SELECT 1 FROM processor_events WHERE event_id = $1", request.event_id)
        if seen:
            return payments_pb2.ProcessorEventAck(duplicate=True)
        try:
            event = json.loads(request.payload_json)
            obj = event["data"]["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.InvalidRequest("malformed processor event") from exc
        if request.type not in ("payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"):
            # Refunds, disputes and fraud warnings arrive with their own issue; acknowledge them.
            await self._record_event_only((request.event_id, request.type))
            return payments_pb2.ProcessorEventAck(ignored=True)
        order_id = (obj.get("metadata") or {}).get("order_id", "")
        row = None
        if ORDER_ID_RE.match(order_id):
            row = await self.pool.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1", order_id)
        if row is None or (row["payment_intent_id"] and row["payment_intent_id"] != obj.get("id")):
            log.warning("processor event %s names no order of ours", request.event_id)
            await self._record_event_only((request.event_id, request.type))
            return payments_pb2.ProcessorEventAck(ignored=True)
        key = (request.event_id, request.type)
        if request.type == "payment_intent.succeeded":
            await self._complete(row, obj["id"], source="webhook", processor_event=key)
        elif request.type == "payment_intent.payment_failed":
            err = obj.get("last_payment_error") or {}
            outcome = Outcome(
                status="declined",
                payment_intent_id=obj["id"],
                failure_code=err.get("code") or "card_declined",
                failure_message=err.get("message") or "",
                decline_code=err.get("decline_code") or "",
            )
            await self._fail(row, outcome, to_status="failed", source="webhook", processor_event=key)
        else:
            outcome = Outcome(
                status="canceled",
                payment_intent_id=obj["id"],
                failure_code="payment_canceled",
                failure_message="The payment was canceled.",
            )
            await self._fail(row, outcome, to_status="cancelled", source="webhook", processor_event=key)
        return payments_pb2.ProcessorEventAck()

    # -- recovery -------------------------------------------------------------------------

    async def recover_once(self) -> int:
        """Drive unsettled orders whose lease ran out (a crash, a lost processor answer)."""
        rows = await self.pool.fetch(
            f"UPDATE orders SET processing_until = now() + make_interval(secs => $1)"
            f" WHERE order_id IN (SELECT order_id FROM orders WHERE status = 'pending_payment'"
            f"   AND (processing_until IS NULL OR processing_until <= now()) ORDER BY created_at LIMIT $2"
            f"   FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_ORDER_COLUMNS}",
            self.lease.total_seconds(),
            RECOVERY_BATCH,
        )
        for row in rows:
            try:
                await self._drive(row, source="recovery")
            except errors.InvoError as exc:
                log.warning("recovery of %s: %s", row["order_id"], exc.error_code)
        return len(rows)

    async def run_recovery(self) -> None:
        while True:
            try:
                await self.recover_once()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("recovery round failed: %s", exc)
            await asyncio.sleep(RECOVERY_INTERVAL_S)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("processor_secret_key")
    processor = Processor(
        api_key=settings.processor_secret_key,
        api_base=settings.processor_api_base,
        timeout_s=settings.processor_timeout_s,
        failures_max=settings.breaker_failures_max,
        cooldown_s=settings.breaker_cooldown_s,
    )
    svc.on_shutdown(processor.close)
    ledger_channel = grpcutil.channel(settings.ledger_addr)
    svc.on_shutdown(ledger_channel.close)
    servicer = PaymentsServicer(pool, settings, processor, ledger_pb2_grpc.LedgerServiceStub(ledger_channel))
    svc.background(servicer.run_recovery(), "order-recovery")
    svc.add(
        payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
        servicer,
        payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
    )
