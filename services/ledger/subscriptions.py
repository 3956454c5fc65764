"""A subscription's proration refund (services/subscriptions asks for it when a subscription is
cancelled at once with `prorate`): the player credited the unused part of the last paid period,
taken from the partner's revenue and the network's fee in the parts the subscriptions service
computed from that period's charge (each rounded down, so they add up to the refund exactly).
One per (subscription, period): the key is the ledger's, so a retry replays the first result. The
ledger holds it to that charge: the period's purchase (its own key) must have been applied, to
this player, and neither part may exceed what that purchase gave the partner and the network.
"""

from __future__ import annotations

from typing import Any

from invo.v1 import ledger_pb2

from services.common import errors
from services.ledger import chart, domain, validate
from services.ledger.apply import Op

NAMESPACE = "subscriptions"
KIND = "subscription_refund"


def refund_period(r: ledger_pb2.RefundSubscriptionPeriodRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    player = chart.player(tenant_id, r.player_email)
    subscription_id = validate.reference(r.subscription_id, "subscription_id")
    if r.period < 1 or r.partner_minor < 0 or r.fee_minor < 0 or r.partner_minor + r.fee_minor <= 0:
        raise errors.InvalidRequest("a period from 1 and parts that are not negative, not both zero")
    refund = validate.amount(r.partner_minor + r.fee_minor)
    postings = [(player, refund), (chart.revenue(tenant_id), -r.partner_minor), (chart.NETWORK_FEES, -r.fee_minor)]
    op = domain.posting_op(
        tenant_id=tenant_id,
        idem=ledger_pb2.Idempotency(namespace=NAMESPACE, key=f"{subscription_id}:{r.period}:prorate"),
        kind=KIND,
        postings=[(account, amount) for account, amount in postings if amount],
        metadata={"subscription_id": subscription_id, "period": r.period},
    )
    partner, fee = r.partner_minor, r.fee_minor

    def fits(purchase: dict[str, Any]) -> str | None:
        if purchase.get("player") != player:
            return "the period's charge is another player's"
        if partner > int(purchase.get("partner_amount", -1)) or fee > int(purchase.get("network_fee", -1)):
            return "the refund's parts exceed what the period's charge split"
        return None

    op.requires = validate.scoped_key(
        tenant_id, ledger_pb2.Idempotency(namespace=NAMESPACE, key=f"{subscription_id}:{r.period}")
    )
    op.requires_check = fits
    return op, player
