"""The two records outside the ledger: the processor's charges and the partners' webhooks.

Charges (the processor's PaymentIntents of our tenants, by `metadata.order_id`): no charge
without its order, none twice, no order with a second PaymentIntent, every acknowledged currency
purchase charged once for its amount, and no charge of a purchase the client was told failed.

Webhooks: every event an answer promised (`Op.events`) arrived, validly signed, within the bound;
none announced twice under two event ids (`doubled`); no event of money moving that no answer
explains (`phantom`). A second delivery of one event id is a `duplicate`: counted, not a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from faults.client import Stats
from faults.flows import ORDER, World
from faults.model import ACKED, MONEY_EVENTS
from faults.receivers import Receivers

WEBHOOK_POLL_S = 0.2
FINDINGS_LISTED_MAX = 50  # per kind in the result file; the counts are always whole

New = Callable[[str, str], bool]


def session_of(purchase_reference: str) -> str:
    """The checkout session a payment attempt's reference names ("checkout:<session_id>:<attempt>"), or ""."""
    kind, _, rest = purchase_reference.partition(":")
    return rest.partition(":")[0] if kind == "checkout" else ""


def _listed(items: list[Any]) -> list[Any]:
    return items[:FINDINGS_LISTED_MAX]


class Evidence:
    def __init__(self, world: World, receivers: Receivers, stats: Stats) -> None:
        self.world = world
        self.receivers = receivers
        self.stats = stats
        self.deliveries_seen = 0
        self.intents: list[dict[str, Any]] = []  # the processor's record as last read, for the sessions' check
        self.bad_seen = 0

    async def charges(self, deadline: float, processor_restarted_at: float, new: New) -> dict[str, Any]:
        w = self.world
        try:
            intents = await w.processor.payment_intents(deadline=deadline, stats=self.stats)
        except RuntimeError as exc:
            return {"violations": 1, "error": str(exc)}
        self.intents = intents
        ours = {t.tenant_id: t for t in w.tenants}
        by_order: dict[str, list[dict[str, Any]]] = {}
        for pi in intents:
            meta = pi.get("metadata") or {}
            if meta.get("tenant_id") in ours and meta.get("order_id"):
                by_order.setdefault(str(meta["order_id"]), []).append(pi)
        orders = w.model.by_order()
        references = {op.key: op for op in w.model.ops}
        sessions = w.model.by_session()  # a checkout attempt's reference is checkout:<session_id>:<attempt>
        double: list[dict[str, Any]] = []
        several: list[dict[str, Any]] = []
        orphan: list[dict[str, Any]] = []
        unacked: list[dict[str, Any]] = []
        wrong_amount: list[dict[str, Any]] = []
        uncharged: list[dict[str, Any]] = []
        forgotten: list[dict[str, Any]] = []
        for order_id, pis in by_order.items():
            succeeded = [pi for pi in pis if pi.get("status") == "succeeded"]
            ids = [pi["id"] for pi in pis]
            if len(succeeded) > 1 and new("double_charge", order_id):
                double.append({"order_id": order_id, "payment_intents": [pi["id"] for pi in succeeded]})
            if len(pis) > 1 and new("several_intents", order_id):
                several.append(
                    {"order_id": order_id, "payment_intents": ids, "statuses": [p.get("status") for p in pis]}
                )
            if not succeeded:
                continue
            reference = str(succeeded[0]["metadata"].get("purchase_reference"))
            op = orders.get(order_id) or references.get(reference) or sessions.get(session_of(reference))
            if op is None:
                tenant = ours[str(succeeded[0]["metadata"]["tenant_id"])]
                answer = await w.gateway.until_definite(
                    "GET", ORDER, key=tenant.sdk_key, params={"order_id": order_id}, deadline=deadline, stats=self.stats
                )
                if new("orphan_charge", order_id):
                    orphan.append({"order_id": order_id, "payment_intents": ids, "order": answer.status})
            elif op.outcome != ACKED:
                if new("charged_unacked", order_id):
                    unacked.append({**op.summary(), "payment_intents": ids})
            elif any(pi.get("amount") != op.delta_minor // 10 for pi in succeeded) and new("amount", order_id):
                wrong_amount.append({**op.summary(), "amounts": [pi.get("amount") for pi in succeeded]})
        for op in w.model.acked():
            if not op.order_id or (
                op.order_id in by_order and any(pi.get("status") == "succeeded" for pi in by_order[op.order_id])
            ):
                continue
            # The processor's record before its last restart may be gone: that is its own finding.
            target = uncharged if op.acked_at > processor_restarted_at else forgotten
            if new("uncharged" if target is uncharged else "forgotten", op.order_id):
                target.append(op.summary())
        violations = len(double) + len(several) + len(orphan) + len(unacked) + len(wrong_amount) + len(uncharged)
        return {
            "violations": violations,
            "source": w.processor.source,
            "payment_intents": sum(len(v) for v in by_order.values()),
            "double_charges": _listed(double),
            "orders_with_several_intents": _listed(several),
            "charges_without_order": _listed(orphan),
            "charged_but_not_acknowledged": _listed(unacked),
            "wrong_amount": _listed(wrong_amount),
            "acknowledged_but_not_charged": _listed(uncharged),
            "forgotten_by_processor_restart": len(forgotten),
            "doubled": len(double),
        }

    async def webhooks(self, bound_s: float, new: New) -> dict[str, Any]:
        """Wait (at most `bound_s`) until every promised event arrived, then report."""
        model, rec = self.world.model, self.receivers
        expected = model.expected_events()
        started = time.monotonic()
        while True:
            got = rec.by_key()
            missing = [k for k in expected if k not in got]
            if not missing or time.monotonic() - started > bound_s:
                break
            await asyncio.sleep(WEBHOOK_POLL_S)  # waiting on the condition above, bounded by bound_s
        waited_s = time.monotonic() - started
        allowed = model.allowed_events()
        doubled, phantom, lags = [], [], []
        for k, received in got.items():
            if len({r.event_id for r in received}) > 1 and new("doubled_event", "|".join(map(str, k))):
                doubled.append(
                    {"tenant": k[0], "event_type": k[1], "key": k[2], "event_ids": [r.event_id for r in received]}
                )
            if k in expected:
                op = expected[k]
                # A move the ACH provider made later is no measure of this answer's delivery.
                if (k[1], k[2]) not in op.late_events and new("lag", "|".join(map(str, k))):
                    lags.append(min(r.first_at for r in received) - op.acked_at)
            elif k[1] in MONEY_EVENTS and k not in allowed and new("phantom", "|".join(map(str, k))):
                phantom.append({"tenant": k[0], "event_type": k[1], "key": k[2]})
        missing_new = [
            {"tenant": k[0], "event_type": k[1], "key": k[2], "op": expected[k].op_id}
            for k in missing
            if new("missing", "|".join(map(str, k)))
        ]
        deliveries = sum(r.deliveries for r in rec.events.values())
        duplicates_total = deliveries - len(rec.events)
        duplicates = duplicates_total - self.deliveries_seen
        self.deliveries_seen = duplicates_total
        bad_total = rec.bad_signatures + rec.wrong_tenant + rec.malformed
        bad, self.bad_seen = bad_total - self.bad_seen, bad_total
        return {
            "violations": len(missing_new) + len(doubled) + len(phantom) + bad,
            "expected": len(expected),
            "received": len(rec.events),
            "missing": len(missing_new),
            "missing_listed": _listed(missing_new),
            "duplicates": duplicates,
            "doubled": len(doubled),
            "doubled_listed": _listed(doubled),
            "phantom": _listed(phantom),
            "bad_signatures_or_tenant": bad,
            "waited_s": round(waited_s, 2),
            "lag_s_max": round(max(lags), 2) if lags else None,
        }
