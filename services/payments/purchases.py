"""Currency purchases: a new order under the player's caps, the processor's charge, a replay of a
purchase_reference, and confirm-payment after 3-D Secure. Settling is settlement.py's.

A card is never charged twice for one reference: an order has at most one PaymentIntent that is
ever confirmed. It is created unconfirmed and its id stored before it is confirmed; every later
attempt (a retry, the recovery loop) drives the stored one. Whichever of our call, confirm-payment
or the processor's webhook arrives first settles the order.
An open breaker refuses before anything is recorded, so the cap stays untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import re

import asyncpg

from services.common import errors, idempotency, ids, money
from services.common import limits as shared_limits
from services.common.config import Settings
from services.payments import limits
from services.payments.orders import ORDER_ID_RE, PAID, NewOrder, OrderStore
from services.payments.processor import KeyConflict, Outcome, Processor
from services.payments.settlement import Settlement

REFERENCE_LEN_MAX = shared_limits.PURCHASE_REFERENCE_LEN_MAX
PAYMENT_METHOD_RE = re.compile(r"^[A-Za-z0-9_]{3,255}$")
METADATA_BYTES_MAX = shared_limits.METADATA_BYTES_MAX  # the gateway's declaration applies the same one


def identity_id(key: str, email: str) -> str:
    """A stable pseudonym of the person behind an email, the same in every tenant; never the email."""
    return hmac.new(key.encode(), email.encode(), hashlib.sha256).hexdigest()[:32]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PurchaseRequest:
    limits: limits.Limits
    currency_name: str
    player_email: str  # normalised
    usd_cents: int
    payment_method_id: str
    purchase_reference: str
    metadata_json: str
    # Hosted checkout: the player's processor Customer, and whether the card is saved to it.
    customer_id: str = ""
    save_card: bool = False


@dataclasses.dataclass(frozen=True)
class Answer:
    """An order as the caller should hear of it."""

    order: asyncpg.Record
    duplicate: bool = False
    already_processed: bool = False


def _invalid_metadata(message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": "metadata"})


def validate(req: PurchaseRequest, settings: Settings) -> str:
    """Refuse a request that must not become an order; returns its metadata as canonical JSON."""
    reference = req.purchase_reference
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
    check_amount(req.usd_cents, settings)
    if not PAYMENT_METHOD_RE.match(req.payment_method_id):
        raise errors.InvalidRequest(
            "payment_method_id is required.",
            error_code="INVALID_PAYMENT_METHOD",
            extra={"param": "payment_method_id"},
        )
    return canonical_metadata(req.metadata_json)


def check_amount(usd_cents: int, settings: Settings) -> None:
    """The purchase range, for a direct purchase and a checkout session alike."""
    s = settings
    if not s.purchase_min_usd_cents <= usd_cents <= s.purchase_max_usd_cents:
        raise errors.InvalidRequest(
            f"usd_amount must be from {money.format_usd(s.purchase_min_usd_cents)} to "
            f"{money.format_usd(s.purchase_max_usd_cents)}.",
            error_code="INVALID_AMOUNT",
            extra={"param": "usd_amount"},
        )


def canonical_metadata(metadata_json: str) -> str:
    """The metadata as one canonical JSON text, or a 400 for anything but an object within bounds."""
    if len(metadata_json.encode()) > METADATA_BYTES_MAX:
        raise _invalid_metadata(f"metadata must be at most {METADATA_BYTES_MAX} bytes as JSON.")
    try:
        metadata = json.loads(metadata_json) if metadata_json else {}
    except ValueError as exc:
        raise _invalid_metadata("metadata must be a JSON object.") from exc
    if not isinstance(metadata, dict):
        raise _invalid_metadata("metadata must be a JSON object.")
    return json.dumps(metadata)


class Purchases:
    def __init__(
        self, store: OrderStore, settlement: Settlement, processor: Processor, settings: Settings, *, identity_key: str
    ) -> None:
        if not identity_key:
            raise ValueError("identity_key is required")
        self.store = store
        self.settlement = settlement
        self.processor = processor
        self.settings = settings
        self.identity_key = identity_key
        self.pool = store.pool

    async def purchase(self, req: PurchaseRequest, *, deadline: float | None) -> Answer:
        metadata_json = validate(req, self.settings)
        email = req.player_email
        tenant_id = req.limits.tenant_id
        request: dict[str, object] = {
            "email": email,
            "usd_cents": req.usd_cents,
            "pm": req.payment_method_id,
            "metadata": json.loads(metadata_json),
        }
        if req.customer_id:  # only then: a direct purchase's fingerprint stays what it always was
            request.update(customer=req.customer_id, save_card=req.save_card)
        digest = idempotency.fingerprint(request)
        async with self.pool.acquire() as conn, conn.transaction():
            # The player's lock first (a replay waits for it too, only as long as another of the
            # player's reservations takes): caps are checked and this order reserved atomically,
            # and a reference taken while we waited is seen as a replay.
            await limits.lock_player(conn, tenant_id, email)
            existing = await self.store.by_reference(conn, tenant_id, req.purchase_reference)
            if existing is None:
                await limits.check(conn, self.settings, req.limits, email, req.usd_cents)
                self.processor.breaker.check()
                row = await self.store.insert(
                    conn,
                    NewOrder(
                        order_id=ids.new_id("ord"),
                        tenant_id=tenant_id,
                        purchase_reference=req.purchase_reference,
                        request_hash=digest,
                        environment=req.limits.environment,
                        player_email=email,
                        identity_id=identity_id(self.identity_key, email),
                        usd_cents=req.usd_cents,
                        currency_amount_minor=req.usd_cents * money.MINOR_PER_CENT,
                        currency_name=req.currency_name,
                        payment_method_id=req.payment_method_id,
                        metadata_json=metadata_json,
                        customer_id=req.customer_id,
                        save_card=req.save_card,
                    ),
                )
                if row is None:
                    # The same reference sent at once for another player holds another player's lock.
                    existing = await self.store.by_reference(conn, tenant_id, req.purchase_reference)
        if existing is not None:
            return await self._replay(existing, digest, deadline=deadline)
        return await self.drive(row, source="api", deadline=deadline)

    async def _replay(self, row: asyncpg.Record, digest: bytes, *, deadline: float | None) -> Answer:
        idempotency.check_replay(row["request_hash"], digest, key=row["purchase_reference"], param="purchase_reference")
        if row["status"] == "pending_payment" and not row["review_reason"]:
            # If the first attempt died (or its processor call failed), take it over and drive it
            # again. The processor's idempotency key makes this the same charge, never a second.
            claimed = await self.store.claim_pending(row["order_id"])
            if claimed is None:
                return Answer(await self.store.get(row["order_id"]), duplicate=True)
            answer = await self.drive(claimed, source="api", deadline=deadline)
            return dataclasses.replace(answer, duplicate=True)
        return Answer(row, duplicate=True)

    async def drive(self, row: asyncpg.Record, *, source: str, deadline: float | None) -> Answer:
        """Drive the order's one PaymentIntent (holding the order's lease), then settle the order
        from the processor's answer. An order without a PaymentIntent gets one, unconfirmed, whose
        id is stored before it is confirmed; an order with one never gets another: its stored
        intent is looked up and confirmed if nobody has yet."""
        try:
            outcome = await self._charge(row)
        except errors.InvalidRequest as exc:
            # The processor refused the request itself (an unknown payment method): no PaymentIntent
            # exists and nothing was charged. The answer is a 400 like any bad input, so there is
            # no order for the partner to hear of: it is voided, and no purchase.failed is sent.
            await self.store.void(row["order_id"], source=source, reason=exc.message)
            raise
        except errors.NotFound:
            # The processor does not know the intent we stored (a processor that lost its state, or
            # the wrong account): never make another, which could charge the card twice.
            why = f"the processor does not know the order's PaymentIntent {row['payment_intent_id']}"
            return Answer(await self.settlement.hold(row, why))
        except KeyConflict:
            why = "the processor refused the order's idempotency key (used before with other parameters)"
            return Answer(await self.settlement.hold(row, why))
        except BaseException:
            # Unknown outcome (the processor or the database away, the caller gone).
            await self._after_failure(row, source)
            raise
        try:
            done, already = await self.settlement.apply(row, outcome, source=source, deadline=deadline)
        except BaseException:
            # The charge is decided but not settled (the ledger or our database away): the next
            # attempt finds the intent's state at the processor and settles from it.
            await self._after_failure(row, source)
            raise
        return Answer(done, already_processed=already)

    async def _after_failure(self, row: asyncpg.Record, source: str) -> None:
        """A client's attempt releases the lease, so that its retry drives the order at once. The
        recovery loop keeps it until it runs out: an order that fails every time must not be the
        first one claimed in every round, ahead of all the others."""
        if source == "recovery":
            return
        with contextlib.suppress(Exception):
            await self.store.release(row["order_id"])

    async def _charge(self, row: asyncpg.Record) -> Outcome:
        intent_id = row["payment_intent_id"]
        if intent_id:
            outcome = await self.processor.retrieve(intent_id)
        else:
            outcome = await self.processor.create_intent(
                order_id=row["order_id"],
                usd_cents=row["usd_cents"],
                payment_method_id=row["payment_method_id"],
                metadata={"tenant_id": row["tenant_id"], "purchase_reference": row["purchase_reference"][:450]},
                customer_id=row["processor_customer_id"] or "",
                save_card=row["save_card"],
            )
            intent_id = await self.store.set_intent(row["order_id"], outcome.payment_intent_id)
            if intent_id != outcome.payment_intent_id:
                # Another intent was stored first (a worker whose lease ran out): that one is the order's.
                outcome = await self.processor.retrieve(intent_id)
        if outcome.status == "requires_confirmation":
            outcome = await self.processor.confirm(order_id=row["order_id"], payment_intent_id=intent_id)
        return outcome

    async def confirm(self, tenant_id: str, order_id: str, payment_intent_id: str, *, deadline: float | None) -> Answer:
        """confirm-payment after 3-D Secure: ask the processor, settle from its answer."""
        if not ORDER_ID_RE.match(order_id):
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        row = await self.store.get(order_id)
        if row["tenant_id"] != tenant_id:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        if payment_intent_id and row["payment_intent_id"] and payment_intent_id != row["payment_intent_id"]:
            raise errors.InvalidRequest(
                "payment_intent_id does not belong to this order.",
                error_code="PAYMENT_INTENT_MISMATCH",
                extra={"param": "payment_intent_id"},
            )
        if row["status"] in PAID:
            return Answer(row, already_processed=True)
        if not row["payment_intent_id"] or row["review_reason"]:
            return Answer(row)
        outcome = await self.processor.retrieve(row["payment_intent_id"])
        if outcome.status == "requires_action":
            raise errors.Conflict(
                "The cardholder has not completed 3-D Secure yet.", error_code="PAYMENT_REQUIRES_ACTION"
            )
        done, already = await self.settlement.apply(row, outcome, source="confirm", deadline=deadline)
        return Answer(done, already_processed=already)

    async def order(self, tenant_id: str | None, order_id: str) -> asyncpg.Record:
        """The tenant's order (None: an operator's read, any tenant's)."""
        if not ORDER_ID_RE.match(order_id):
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        row = await self.store.get(order_id)
        if tenant_id is not None and row["tenant_id"] != tenant_id:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return row
