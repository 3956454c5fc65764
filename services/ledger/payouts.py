"""A partner payout's domain writes, keyed by its payout_id (as a transfer's are by its transfer_id):

- `hold_payout`: a hold (kind `payout_hold`, never expiring) of the owed revenue towards
  `world:payouts`, refused (INSUFFICIENT_BALANCE) beyond the revenue's available balance as the
  engine applies it, so concurrent holds never together exceed what is owed;
- `settle_payout` posts that hold, `release_payout` voids it: they share one release key, so only
  one of them ever applies (PREREQUISITE_NOT_FOUND without the hold);
- `return_payout`, after a settlement only: the settled amount from `world:payouts` back to the
  revenue (kind `payout_return`), once.

The caller names neither the hold nor the amount of a release or return: the engine takes them
from the stored result of the write each requires.
"""

from __future__ import annotations

from typing import Any

from invo.v1 import ledger_pb2

from services.common.crypto import request_hash
from services.common.logs import request_id_var
from services.ledger import chart, validate
from services.ledger.apply import Op

PAYOUTS_NAMESPACE = "payouts"
PAYOUT_HOLD = "payout_hold"
PAYOUT_RETURN = "payout_return"


def _keys(tenant_id: str, payout_id: str) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
    """(hold, release, return) scoped keys of a payout: settling and releasing share the release
    key, so at most one of them is ever applied."""
    payout_id = validate.reference(payout_id, "payout_id")
    hold, release, back = (
        validate.scoped_key(
            tenant_id, ledger_pb2.Idempotency(namespace=PAYOUTS_NAMESPACE, key=f"payout:{payout_id}:{step}")
        )
        for step in ("hold", "release", "return")
    )
    return hold, release, back


def hold_payout(r: ledger_pb2.HoldPayoutRequest) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    revenue = chart.revenue(tenant_id)
    amount = validate.amount(r.amount_minor)
    (scope, key), _, _ = _keys(tenant_id, r.payout_id)
    postings = [(revenue, -amount), (chart.WORLD_PAYOUTS, amount)]
    metadata = {"payout_id": r.payout_id}
    op = Op(
        kind="hold",  # no expires_in_ms: the expiry loop never voids it
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=request_hash({"op": PAYOUT_HOLD, "postings": postings, "metadata": metadata}),
        txn_kind=PAYOUT_HOLD,
        postings=postings,
        metadata=metadata,
        request_id=request_id_var.get(),
    )
    return op, revenue


def _release(r: ledger_pb2.PayoutRef, kind: str) -> tuple[Op, str]:
    """A "post" (settle) or "void" (release) of the payout's hold, under its release key."""
    tenant_id = validate.tenant(r.tenant_id)
    hold, (scope, key), _ = _keys(tenant_id, r.payout_id)
    op = Op(
        kind=kind,
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=request_hash({"op": f"payout_{kind}", "payout_id": r.payout_id}),
        hold_kind=PAYOUT_HOLD,
        requires=hold,
        hold_of_required=True,
        request_id=request_id_var.get(),
    )
    return op, chart.revenue(tenant_id)


def settle_payout(r: ledger_pb2.PayoutRef) -> tuple[Op, str]:
    return _release(r, "post")


def release_payout(r: ledger_pb2.PayoutRef) -> tuple[Op, str]:
    return _release(r, "void")


def return_payout(r: ledger_pb2.PayoutRef) -> tuple[Op, str]:
    tenant_id = validate.tenant(r.tenant_id)
    revenue = chart.revenue(tenant_id)
    _, release, (scope, key) = _keys(tenant_id, r.payout_id)

    def settled(result: dict[str, Any]) -> str | None:
        if result.get("status") != "posted":
            return "the payout's hold was voided, not posted: there is nothing to return"
        return None

    def postings(result: dict[str, Any]) -> list[tuple[str, int]]:
        amount = int(result["moved_minor"])
        return [(chart.WORLD_PAYOUTS, -amount), (revenue, amount)]

    op = Op(
        kind="transfer",
        tenant_id=tenant_id,
        scope=scope,
        key=key,
        request_hash=request_hash({"op": PAYOUT_RETURN, "payout_id": r.payout_id}),
        txn_kind=PAYOUT_RETURN,
        postings=[(chart.WORLD_PAYOUTS, 0), (revenue, 0)],  # the amounts: what the settlement posted
        metadata={"payout_id": r.payout_id},
        requires=release,
        requires_check=settled,
        postings_of_required=postings,
        request_id=request_id_var.get(),
    )
    return op, revenue
