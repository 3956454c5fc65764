"""PaymentsService over gRPC: it translates protobuf to the payments modules and back, and
nothing else.

- orders.py: the order store, its lifecycle and audit trail, the processing lease;
- limits.py: spending caps, velocity and declines;
- purchases.py: a purchase, its replay, confirm-payment;
- settlement.py: settling an order from the processor's word, and the ledger client;
- inbox.py, registry.py, handlers.py: processor events stored raw, then applied by type;
- recovery.py: the loop that drives the orders and events nobody else will;
- checkout.py, checkout_tokens.py, saved_cards.py: hosted checkout sessions, their tokens, and the
  players' saved cards;
- refunds.py, disputes.py, fraud_warnings.py, after_sale.py: after the sale (their events' handlers
  in after_sale.py); ledger_client.py: the ledger's domain writes as payments asks for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2_grpc, payments_pb2, payments_pb2_grpc, tenants_pb2_grpc

from services.common import errors, grpcutil, players
from services.common.config import Settings
from services.common.grpcserver import GrpcService
from services.common.players import normalize_email
from services.payments import after_sale_lists, limits
from services.payments.after_sale import AfterSaleHandlers
from services.payments.after_sale_messages import dispute_message, refund_message, warning_message
from services.payments.checkout import Checkout, Session, View
from services.payments.checkout_tokens import CheckoutKeys
from services.payments.disputes import Disputes
from services.payments.fraud_warnings import FraudWarnings
from services.payments.handlers import PaymentIntentHandlers
from services.payments.inbox import Dispatcher
from services.payments.ledger_client import LedgerClient
from services.payments.orders import LIFECYCLE, PAID, OrderStore
from services.payments.processor import Processor
from services.payments.purchases import Answer, PurchaseRequest, Purchases
from services.payments.recovery import Recovery
from services.payments.refunds import Refunds
from services.payments.registry import Registry
from services.payments.saved_cards import SavedCards
from services.payments.settlement import Settlement

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
    msg.charge_id = row["charge_id"] or ""
    msg.usd_refunded_cents = row["usd_refunded"]
    msg.currency_refunded_minor = row["currency_refunded"]
    msg.currency_clawed_minor = row["currency_clawed"]
    msg.debt_repaid_minor = row["debt_repaid"]
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


def session_message(s: Session, token: str = "") -> payments_pb2.CheckoutSession:
    row = s.row
    msg = payments_pb2.CheckoutSession(
        session_id=row["session_id"],
        tenant_id=row["tenant_id"],
        status=s.status,
        token=token,
        expires_at=_ts(row["expires_at"]),
        expires_in_seconds=max(0, round(row["expires_at"].timestamp() - row["created_at"].timestamp())),
        player_email=row["player_email"],
        usd_cents=row["usd_cents"],
        success_url=row["success_url"],
        cancel_url=row["cancel_url"],
        metadata_json=row["metadata_json"],
        created_at=_ts(row["created_at"]),
    )
    if s.status == "completed" and s.order is not None:
        msg.order_id = s.order["order_id"]
        msg.transaction_id = s.order["transaction_id"] or ""
        if s.order["completed_at"] is not None:
            msg.completed_at.FromDatetime(s.order["completed_at"])
    return msg


def view_message(v: View) -> payments_pb2.CheckoutView:
    s = v.session
    msg = payments_pb2.CheckoutView(session=session_message(s))
    for c in v.cards:
        msg.saved_cards.append(
            payments_pb2.SavedCard(id=c.id, brand=c.brand, last4=c.last4, exp_month=c.exp_month, exp_year=c.exp_year)
        )
    if s.order is not None:
        msg.order.CopyFrom(order_message(s.order))
        if s.order["status"] == "requires_action":
            msg.client_secret = s.order["client_secret"] or ""
    return msg


def payment_message(answer: Answer, s: Session) -> payments_pb2.CheckoutPayment:
    return payments_pb2.CheckoutPayment(outcome=outcome_message(answer), session=session_message(s))


@dataclasses.dataclass(frozen=True)
class AfterSale:
    refunds: Refunds
    disputes: Disputes
    warnings: FraudWarnings

    async def full_order(self, order_id: str) -> payments_pb2.Order:
        """The order with its history, refunds, disputes and fraud warnings, read as of one
        snapshot: a refund committing meanwhile is either wholly in the answer or not at all."""
        async with self.refunds.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await self.refunds.store.current(conn, order_id)
            msg = order_message(row, await LIFECYCLE.history(conn, order_id))
            msg.refunds.extend(refund_message(r) for r in await self.refunds.of_order(order_id, conn))
            msg.disputes.extend(dispute_message(d) for d in await self.disputes.of_order(order_id, conn))
            msg.fraud_warnings.extend(warning_message(w) for w in await self.warnings.of_order(order_id, conn))
        return msg


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, purchases: Purchases, dispatcher: Dispatcher, checkout: Checkout, after: AfterSale) -> None:
        self.purchases = purchases
        self.dispatcher = dispatcher
        self.checkout = checkout
        self.after = after

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
        row = await self.purchases.order(None if request.any_tenant else request.tenant_id, request.order_id)
        return await self.after.full_order(row["order_id"])

    async def ListPlayerOrders(self, request: payments_pb2.ListPlayerOrdersRequest, context: Any) -> Any:
        limit = request.limit or 20
        if not 1 <= limit <= 100:
            raise errors.InvalidRequest("limit must be from 1 to 100", error_code="INVALID_PARAMETER")
        email = players.normalize_email(request.player_email)
        rows = await self.purchases.store.of_player(request.tenant_id, email, limit)
        return payments_pb2.ListPlayerOrdersResponse(orders=[order_message(r) for r in rows])

    async def ListAfterSale(self, request: payments_pb2.ListAfterSaleRequest, context: Any) -> Any:
        return await after_sale_lists.list_after_sale(self.purchases.pool, request)

    async def RefundOrder(self, request: payments_pb2.RefundOrderRequest, context: Any) -> Any:
        row = await self.purchases.order(None, request.order_id)  # an operator's: any tenant's order
        refund, duplicate = await self.after.refunds.request(
            row["order_id"],
            usd_cents=request.usd_cents if request.HasField("usd_cents") else None,
            reason=request.reason or "requested_by_customer",
            key=request.idempotency_key,
            operator_id=request.operator_id,
            deadline=grpcutil.deadline_of(context),
        )
        return payments_pb2.RefundOutcome(
            refund=refund_message(refund), order=await self.after.full_order(row["order_id"]), duplicate=duplicate
        )

    async def HandleProcessorEvent(self, request: payments_pb2.ProcessorEvent, context: Any) -> Any:
        ack = await self.dispatcher.receive(
            request.event_id, request.type, request.payload_json, deadline=grpcutil.deadline_of(context)
        )
        return payments_pb2.ProcessorEventAck(duplicate=ack.duplicate, ignored=ack.ignored)

    # -- hosted checkout ------------------------------------------------------------------

    async def CreateCheckoutSession(self, request: payments_pb2.CreateCheckoutSessionRequest, context: Any) -> Any:
        row, token = await self.checkout.create(
            limits_of(request.tenant),
            player_email=normalize_email(request.player_email),
            usd_cents=request.usd_cents,
            success_url=request.success_url,
            cancel_url=request.cancel_url,
            metadata_json=request.metadata_json,
        )
        return session_message(Session(row, None, "open"), token)

    async def GetCheckoutSession(self, request: payments_pb2.GetCheckoutSessionRequest, context: Any) -> Any:
        return session_message(await self.checkout.get(request.tenant_id, request.session_id))

    async def OpenCheckout(self, request: payments_pb2.CheckoutTokenRequest, context: Any) -> Any:
        return view_message(await self.checkout.view(request.token, request.tenant.tenant_id))

    async def PayCheckout(self, request: payments_pb2.PayCheckoutRequest, context: Any) -> Any:
        answer, s = await self.checkout.pay(
            request.token,
            limits_of(request.tenant),
            currency_name=request.tenant.currency_name,
            payment_method_id=request.payment_method_id,
            save_card=request.save_card,
            deadline=grpcutil.deadline_of(context),
        )
        return payment_message(answer, s)

    async def ConfirmCheckout(self, request: payments_pb2.CheckoutTokenRequest, context: Any) -> Any:
        answer, s = await self.checkout.confirm(
            request.token, request.tenant.tenant_id, deadline=grpcutil.deadline_of(context)
        )
        return payment_message(answer, s)

    async def CancelCheckout(self, request: payments_pb2.CheckoutTokenRequest, context: Any) -> Any:
        return session_message(await self.checkout.cancel(request.token, request.tenant.tenant_id))

    async def RemoveSavedCard(self, request: payments_pb2.RemoveSavedCardRequest, context: Any) -> Any:
        return view_message(await self.checkout.remove_card(request.token, request.tenant.tenant_id, request.card_id))


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    # identity_id is a pseudonym that must not be derivable from any other secret: no fallback.
    settings.require("processor_secret_key", "identity_key", "checkout_keys")
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
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    disputes = Disputes(store, ledger)
    refunds = Refunds(
        store, ledger, processor, disputes, lease_s=settings.processor_timeout_s * 2 + settings.rpc_timeout_s + 5
    )
    after = AfterSale(
        refunds,
        disputes,
        FraudWarnings(
            store, refunds, tenants_pb2_grpc.TenantsServiceStub(tenants_channel), timeout_cap_s=settings.rpc_timeout_s
        ),
    )
    registry = Registry()
    PaymentIntentHandlers(store, settlement).register(registry)
    AfterSaleHandlers(store, after.refunds, after.disputes, after.warnings).register(registry)
    dispatcher = Dispatcher(pool, registry)
    recovery = Recovery(
        store=store,
        purchases=purchases,
        settlement=settlement,
        processor=processor,
        dispatcher=dispatcher,
        refunds=refunds,
        requires_action_timeout_s=settings.requires_action_timeout_s,
    )
    svc.background(recovery.run(), "order-recovery")
    checkout = Checkout(
        purchases,
        SavedCards(pool, processor),
        CheckoutKeys(settings.checkout_keys),
        settings,
        ttl_s=settings.checkout_session_ttl_s,
    )
    svc.add(
        payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
        PaymentsServicer(purchases, dispatcher, checkout, after),
        payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
    )
