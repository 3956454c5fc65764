"""Domain writes: each request of another service becomes one engine `Op` whose postings the
ledger builds from its chart. No caller names an account.

The idempotency hash of a domain write is that of the postings it builds (with its kind and
metadata), the same as the generic `Transfer` would store: a retry that builds the same postings
replays, anything else with the same key is `IDEMPOTENCY_KEY_REUSED`.
"""

from __future__ import annotations

from typing import Any

from invo.v1 import ledger_pb2

from services.common import errors, money
from services.common.crypto import request_hash
from services.common.logs import request_id_var
from services.ledger import chart, validate
from services.ledger.apply import Op


def transfer_hash(
    kind: str, postings: list[tuple[str, int]], metadata: dict[str, Any], allow_debt: frozenset[str]
) -> bytes:
    return request_hash(
        {"op": "transfer", "kind": kind, "postings": postings, "metadata": metadata, "allow_debt": sorted(allow_debt)}
    )


def _merged(postings: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """One posting per account (a split whose two tenants are one), zero postings dropped."""
    sums: dict[str, int] = {}
    for code, amount in postings:
        sums[code] = sums.get(code, 0) + amount
    return [(code, amount) for code, amount in sums.items() if amount != 0]


def _event_builder(event: tuple[str, dict[str, Any]] | None) -> Any:
    return (lambda _result: event) if event else None


def posting_op(
    *,
    tenant_id: str,
    idem: ledger_pb2.Idempotency,
    kind: str,
    postings: list[tuple[str, int]],
    metadata: dict[str, Any],
    allow_debt: frozenset[str] = frozenset(),
    event: tuple[str, dict[str, Any]] | None = None,
) -> Op:
    scope, key = validate.scoped_key(tenant_id, idem)
    postings = _merged(postings)
    return Op(
        kind="transfer",
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=transfer_hash(kind, postings, metadata, allow_debt),
        txn_kind=kind,
        postings=postings,
        metadata=metadata,
        allow_debt=allow_debt,
        event=_event_builder(event),
        request_id=request_id_var.get(),
    )


def credit_purchase(r: ledger_pb2.CreditPurchaseRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    player = chart.player(tenant_id, r.player_email)
    amount = validate.amount(r.amount_minor)
    metadata = {"order_id": validate.reference(r.order_id, "order_id"), "payment_intent_id": r.payment_intent_id}
    op = posting_op(
        tenant_id=tenant_id,
        idem=r.idempotency,
        kind="currency_purchase",
        postings=[(chart.WORLD_PROCESSOR, -amount), (player, amount)],
        metadata=metadata,
    )
    return op, player


CLAWBACK_KINDS = {"refund": "clawback_refund", "dispute_lost": "clawback_dispute"}
DISPUTE_HOLD = "dispute_hold"


def _hold_id(value: str) -> str:
    if not validate.TXN_ID_RE.match(value):
        raise errors.NotFound("No such hold.", error_code="HOLD_NOT_FOUND")
    return value


def claw_back(r: ledger_pb2.ClawBackRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    player = chart.player(tenant_id, r.player_email)
    amount = validate.amount(r.amount_minor)
    kind = CLAWBACK_KINDS.get(r.reason)
    if kind is None:
        raise errors.InvalidRequest(f"reason must be one of {sorted(CLAWBACK_KINDS)}")
    metadata: dict[str, Any] = {"order_id": validate.reference(r.order_id, "order_id"), "reason": r.reason}
    if r.release_hold_id:
        # In the metadata, so in the idempotency hash too (and only when set: a clawback without
        # one hashes as it always did, so its retries still replay).
        metadata["release_hold_id"] = _hold_id(r.release_hold_id)
    op = posting_op(
        tenant_id=tenant_id,
        idem=r.idempotency,
        kind=kind,
        # The currency goes back whatever the wallet holds: what was spent becomes a debt.
        postings=[(player, -amount), (chart.WORLD_PROCESSOR, amount)],
        metadata=metadata,
        allow_debt=frozenset({player}),
        event=validate.outbox_event(r.event),
    )
    if r.release_hold_id:
        # The dispute's freeze is voided in the same transaction, before the clawback applies.
        op.hold_id, op.hold_kind = r.release_hold_id, DISPUTE_HOLD
    return op, player


def freeze_currency(r: ledger_pb2.FreezeCurrencyRequest) -> tuple[Op, str]:
    """A dispute's hold of the player's currency: at most amount_minor, clamped by the engine to
    what is available as it applies the write, and never expiring (a dispute lasts months)."""
    tenant_id = validate.tenant(r.tenant_id)
    scope, key = validate.scoped_key(tenant_id, r.idempotency)
    player = chart.player(tenant_id, r.player_email)
    amount = validate.amount(r.amount_minor)
    postings = [(player, -amount), (chart.WORLD_PROCESSOR, amount)]
    metadata = {
        "order_id": validate.reference(r.order_id, "order_id"),
        "dispute_id": validate.reference(r.dispute_id, "dispute_id"),
        "requested_minor": amount,
    }
    op = Op(
        kind="freeze",
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=request_hash({"op": "freeze", "postings": postings, "metadata": metadata}),
        txn_kind=DISPUTE_HOLD,
        postings=postings,
        metadata=metadata,
        request_id=request_id_var.get(),
    )
    return op, player


def release_freeze(r: ledger_pb2.ReleaseFreezeRequest) -> tuple[Op, str]:
    """A dispute won: its hold voided; one no longer pending (released, or taken by the clawback)
    answers its status."""
    tenant_id = validate.tenant(r.tenant_id)
    scope, key = validate.scoped_key(tenant_id, r.idempotency)
    hold_id = _hold_id(r.hold_id)
    op = Op(
        kind="void",
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=request_hash({"op": "release_freeze", "hold_id": hold_id}),
        hold_id=hold_id,
        hold_kind=DISPUTE_HOLD,
        quiet=True,
        request_id=request_id_var.get(),
    )
    return op, hold_id


def adjust_balance(r: ledger_pb2.AdjustBalanceRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    player = chart.player(tenant_id, r.player_email)
    amount = validate.amount(abs(r.amount_minor))
    signed = amount if r.amount_minor > 0 else -amount
    operator_id = validate.reference(r.operator_id, "operator_id")
    op = posting_op(
        tenant_id=tenant_id,
        idem=r.idempotency,
        kind="adjustment_credit" if signed > 0 else "adjustment_debit",
        postings=[(player, signed), (chart.WORLD_ADJUSTMENTS, -signed)],
        # The audit trail: who and why (the engine adds the request id).
        metadata={"reason": validate.reason(r.reason), "operator_id": operator_id},
        event=validate.outbox_event(r.event),
    )
    return op, player


TRANSFERS_NAMESPACE = "transfers"


def _transfer_keys(transfer_id: str) -> tuple[ledger_pb2.Idempotency, ledger_pb2.Idempotency]:
    """(hold, release) keys of a transfer: settling and returning share the release key, so at
    most one of them is ever applied."""
    transfer_id = validate.reference(transfer_id, "transfer_id")
    return (
        ledger_pb2.Idempotency(namespace=TRANSFERS_NAMESPACE, key=f"transfer:{transfer_id}:hold"),
        ledger_pb2.Idempotency(namespace=TRANSFERS_NAMESPACE, key=f"transfer:{transfer_id}:release"),
    )


def _releasing(op: Op, tenant_id: str, hold_key: ledger_pb2.Idempotency, check: Any) -> Op:
    op.requires = validate.scoped_key(tenant_id, hold_key)
    op.requires_check = check
    return op


def hold_transfer(r: ledger_pb2.HoldTransferRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.source_tenant_id)
    sender = chart.player(tenant_id, r.sender_email)
    amount = validate.amount(r.amount_minor)
    fee = money.fee_of(amount, bps=money.TRANSFER_FEE_BPS)
    if r.fee_minor != fee:
        raise errors.InvalidRequest("fee_minor must be 10% of amount_minor, rounded down")
    hold_key, _ = _transfer_keys(r.transfer_id)
    op = posting_op(
        tenant_id=tenant_id,
        idem=hold_key,
        kind="transfer_hold",
        postings=[(sender, -(amount + fee)), (chart.TRANSFERS_HELD, amount + fee)],
        metadata={"transfer_id": r.transfer_id, "amount": amount, "fee": fee},
        event=validate.outbox_event(r.event),
    )
    # Stored with the hold's result, so that its release can be checked against it.
    op.extra = {"held_minor": amount + fee, "amount_minor": amount, "sender": sender}
    return op, sender


def settle_transfer(r: ledger_pb2.SettleTransferRequest) -> tuple[Op, str]:
    source = validate.tenant(r.source_tenant_id)
    destination = validate.tenant(r.destination_tenant_id)
    recipient = chart.player(destination, r.recipient_email)
    amount = validate.amount(r.amount_minor)
    shares = [
        validate.share(r.source_fee_minor, "source_fee_minor"),
        validate.share(r.destination_fee_minor, "destination_fee_minor"),
        validate.share(r.network_fee_minor, "network_fee_minor"),
    ]
    fee = money.fee_of(amount, bps=money.TRANSFER_FEE_BPS)
    if sum(shares) != fee or shares[1] != money.fee_of(amount, bps=money.TRANSFER_DESTINATION_BPS):
        raise errors.InvalidRequest("the fee shares must add up to the held fee, 3.5% to the destination")
    if shares[0] > money.fee_of(amount, bps=money.TRANSFER_FEE_BPS - money.TRANSFER_DESTINATION_BPS):
        raise errors.InvalidRequest("the source's share is at most 6.5%")
    hold_key, release_key = _transfer_keys(r.transfer_id)
    op = posting_op(
        tenant_id=source,
        idem=release_key,
        kind="transfer_settle",
        postings=[
            (chart.TRANSFERS_HELD, -(amount + fee)),
            (recipient, amount),
            (chart.revenue(source), shares[0]),
            (chart.revenue(destination), shares[1]),
            (chart.NETWORK_FEES, shares[2]),
        ],
        metadata={"transfer_id": r.transfer_id, "destination_tenant_id": destination},
        event=validate.outbox_event(r.event),
    )

    def fits(hold: dict[str, Any]) -> str | None:
        if hold.get("amount_minor") != amount or hold.get("held_minor") != amount + fee:
            return "the settlement's amount is not the transfer's as held"
        return None

    return _releasing(op, source, hold_key, fits), recipient


def return_transfer(r: ledger_pb2.ReturnTransferRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.source_tenant_id)
    sender = chart.player(tenant_id, r.sender_email)
    amount = validate.amount(r.amount_minor)
    hold_key, release_key = _transfer_keys(r.transfer_id)
    op = posting_op(
        tenant_id=tenant_id,
        idem=release_key,
        kind="transfer_return",
        postings=[(chart.TRANSFERS_HELD, -amount), (sender, amount)],
        metadata={"transfer_id": r.transfer_id},
        event=validate.outbox_event(r.event),
    )

    def fits(hold: dict[str, Any]) -> str | None:
        if hold.get("held_minor") != amount or hold.get("sender") != sender:
            return "a return gives back exactly what was held, to its sender"
        return None

    return _releasing(op, tenant_id, hold_key, fits), sender


def purchase_item(request: ledger_pb2.PurchaseItemRequest) -> Op:
    """An item purchase: the player pays price x quantity, the network keeps its fee (rounded
    down), the partner earns the rest."""
    tenant_id = validate.tenant(request.tenant_id)
    scope, key = validate.scoped_key(tenant_id, request.idempotency)
    player = chart.player(tenant_id, request.player_email)
    email = player.split(":", 2)[2]
    for field, value in (("item_id", request.item_id), ("item_name", request.item_name)):
        if not value.strip() or len(value) > 255:
            raise errors.InvalidRequest(
                f"{field} must be 1 to 255 characters.", error_code="INVALID_PARAMETER", extra={"param": field}
            )
    quantity = request.quantity or 1
    if not 1 <= quantity <= validate.QUANTITY_MAX:
        raise errors.InvalidRequest(
            f"quantity must be from 1 to {validate.QUANTITY_MAX}.",
            error_code="INVALID_PARAMETER",
            extra={"param": "quantity"},
        )
    if not 0 < request.price_minor <= validate.AMOUNT_MAX // validate.QUANTITY_MAX:
        raise errors.InvalidRequest(
            "price must be greater than zero.", error_code="INVALID_PARAMETER", extra={"param": "price"}
        )
    if not request.HasField("network_fee_bps"):
        raise errors.InvalidRequest("network_fee_bps is required: the tenant's fee, never a silent zero")
    if not 0 <= request.network_fee_bps <= money.BPS_WHOLE:
        raise errors.InvalidRequest("network_fee_bps out of range")
    metadata = validate.metadata(request.metadata_json)
    price = request.price_minor
    total = price * quantity
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
            "price": price,
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
            "price": money.format_units(price),
            "total": money.format_units(total),
            "partner_amount": money.format_units(partner),
            "network_fee": money.format_units(fee),
            "new_balance": money.format_units(result["balances"][player]["balance"]),
            "currency_name": currency_name,
            "metadata": metadata,
        }

    return Op(
        kind="transfer",
        tenant_id=tenant_id,
        scope=scope,
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
