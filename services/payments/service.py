"""PaymentsService over gRPC: it translates protobuf to the payments modules and back, and
nothing else.

- orders.py: the order store, its lifecycle and audit trail, the processing lease;
- limits.py: spending caps, velocity and declines;
- purchases.py: a purchase, its replay, confirm-payment;
- settlement.py: settling an order from the processor's word, and the ledger client;
- inbox.py, registry.py, handlers.py: processor events stored raw, then applied by type;
- recovery.py: the loop that drives the orders and events nobody else will.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from invo.v1 import ledger_pb2_grpc, payments_pb2, payments_pb2_grpc

from services.common import errors, grpcutil
from services.common.config import Settings
from services.common.grpcutil import GrpcService
from services.common.players import normalize_email
from services.payments import limits
from services.payments.handlers import PaymentIntentHandlers
from services.payments.inbox import Dispatcher
from services.payments.orders import PAID, OrderStore
from services.payments.processor import Processor
from services.payments.purchases import Answer, PurchaseRequest, Purchases
from services.payments.recovery import Recovery
from services.payments.registry import Registry
from services.payments.settlement import LedgerClient, Settlement

_ts = grpcutil.timestamp


class CardDeclined(errors.PaymentRequired):
    default_error = "card_declined"
    default_error_code = "CARD_DECLINED"


def order_message(row: asyncpg.Record, history: list[asyncpg.Record] | None = None) -> payments_pb2.Order:
    msg = payments_pb2.Order(
        order_id=row["order_id"],
        tenant_id=row["tenant_id"],
        purchase_reference=row["purchase_reference"],
        status=row["status"],
        player_email=row["player_email"],
        identity_id=row["identity_id"],
        usd_cents=row["usd_cents"],
        currency_amount_minor=row["currency_amount"],
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
        msg.new_balance_minor = row["new_balance"]
    for r in history or ():
        msg.history.append(
            payments_pb2.OrderTransition(
                from_status=r["from_status"],
                to_status=r["to_status"],
                source=r["source"],
                reason=r["reason"],
                at=_ts(r["created_at"]),
            )
        )
    return msg


def outcome_message(answer: Answer) -> payments_pb2.PurchaseOutcome:
    """The answer for an order in its current state (an error for one that did not go through)."""
    row, duplicate = answer.order, answer.duplicate
    order = order_message(row)
    status = row["status"]
    if status in PAID:
        out = payments_pb2.PurchaseOutcome(
            status="success", duplicate=duplicate, already_processed=answer.already_processed, order=order
        )
        if row["new_balance"] is not None:
            out.new_balance_minor = row["new_balance"]
        return out
    extra = {"order_id": row["order_id"], "duplicate": duplicate}
    if row["review_reason"]:
        # Not a new public status: the order stays unsettled while an operator looks at a charge
        # that does not match it; nothing was credited, and retrying will not change that.
        raise errors.Conflict(
            "The processor's charge does not match this order; nothing was credited and the order is held for "
            "review by an operator.",
            error="payment_under_review",
            error_code="PAYMENT_UNDER_REVIEW",
            extra=extra,
        )
    if status == "requires_action":
        return payments_pb2.PurchaseOutcome(
            status="requires_action", duplicate=duplicate, order=order, client_secret=row["client_secret"] or ""
        )
    if status == "pending_payment":
        return payments_pb2.PurchaseOutcome(status="pending", duplicate=duplicate, order=order)
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
        # Orders refused this way before voiding existed (0003) still answer as they did.
        raise errors.InvalidRequest(
            row["failure_message"] or "The payment method was refused.",
            error_code="INVALID_PAYMENT_METHOD",
            extra=extra,
        )
    raise CardDeclined(
        row["failure_message"] or "Your card was declined.",
        extra={**extra, "decline_code": row["decline_code"] or "generic_decline"},
    )


def limits_of(tenant: payments_pb2.TenantContext) -> limits.Limits:
    ctx: Any = tenant
    return limits.Limits(
        tenant_id=tenant.tenant_id,
        environment=tenant.environment,
        caps_usd_cents={
            period: getattr(ctx, f"{period}_cap_usd_cents")
            for period in limits.PERIODS
            if ctx.HasField(f"{period}_cap_usd_cents")
        },
    )


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, purchases: Purchases, dispatcher: Dispatcher) -> None:
        self.purchases = purchases
        self.dispatcher = dispatcher

    async def PurchaseCurrency(self, request: payments_pb2.PurchaseCurrencyRequest, context: Any) -> Any:
        answer = await self.purchases.purchase(
            PurchaseRequest(
                limits=limits_of(request.tenant),
                currency_name=request.tenant.currency_name,
                player_email=normalize_email(request.player_email),
                usd_cents=request.usd_cents,
                payment_method_id=request.payment_method_id,
                purchase_reference=request.purchase_reference,
                metadata_json=request.metadata_json,
            ),
            deadline=grpcutil.deadline_of(context),
        )
        return outcome_message(answer)

    async def ConfirmPayment(self, request: payments_pb2.ConfirmPaymentRequest, context: Any) -> Any:
        answer = await self.purchases.confirm(
            request.tenant.tenant_id,
            request.order_id,
            request.payment_intent_id,
            deadline=grpcutil.deadline_of(context),
        )
        return outcome_message(answer)

    async def GetOrder(self, request: payments_pb2.GetOrderRequest, context: Any) -> Any:
        row = await self.purchases.order(request.tenant_id, request.order_id)
        return order_message(row, await self.purchases.store.history(row["order_id"]))

    async def HandleProcessorEvent(self, request: payments_pb2.ProcessorEvent, context: Any) -> Any:
        ack = await self.dispatcher.receive(
            request.event_id, request.type, request.payload_json, deadline=grpcutil.deadline_of(context)
        )
        return payments_pb2.ProcessorEventAck(duplicate=ack.duplicate, ignored=ack.ignored)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    # identity_id is a pseudonym that must not be derivable from any other secret: no fallback.
    settings.require("processor_secret_key", "identity_key")
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
    ledger = LedgerClient(ledger_pb2_grpc.LedgerServiceStub(ledger_channel), timeout_cap_s=settings.rpc_timeout_s)
    # The lease outlasts one processor call with a margin: a live worker never loses its order.
    # A drive makes up to three processor calls (create, confirm, or a retrieve) and a ledger call:
    # the lease outlasts them all, so no second worker drives an order while the first still is.
    store = OrderStore(pool, lease_s=settings.processor_timeout_s * 3 + settings.rpc_timeout_s + 5)
    settlement = Settlement(store, ledger)
    purchases = Purchases(store, settlement, processor, settings, identity_key=settings.identity_key)
    registry = Registry()
    PaymentIntentHandlers(store, settlement).register(registry)
    dispatcher = Dispatcher(pool, registry)
    recovery = Recovery(
        store=store,
        purchases=purchases,
        settlement=settlement,
        processor=processor,
        dispatcher=dispatcher,
        requires_action_timeout_s=settings.requires_action_timeout_s,
    )
    svc.background(recovery.run(), "order-recovery")
    svc.add(
        payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
        PaymentsServicer(purchases, dispatcher),
        payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
    )
