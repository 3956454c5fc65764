"""The recovery loop: it drives every order nobody else will.

Each round, in order:
1. pending orders whose lease ran out (a crash, a lost processor answer) are driven again: the
   PaymentIntent the order stored is looked up and confirmed if nobody has yet (an order never
   gets a second one; one without an intent yet gets it now, unconfirmed, stored, then confirmed);
2. orders whose 3-D Secure challenge has waited longer than INVO_REQUIRES_ACTION_TIMEOUT_S are
   cancelled at the processor and become `cancelled` (purchase.failed, payment_canceled), which
   releases the amount they reserved under the player's caps; if the cardholder finished the
   challenge meanwhile, the PaymentIntent's real state settles the order instead;
3. refunds left pending (the processor did not answer) or applying (a crash before the ledger's
   debit or the event) are finished;
4. events waiting on a payment that has been paid meanwhile by another path are applied, then the
   processor events still unhandled in the inbox whose type has a handler.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any, NoReturn

from services.common import errors, loops
from services.payments.inbox import PENDING_BATCH_MAX, Dispatcher
from services.payments.orders import OrderStore
from services.payments.processor import Processor
from services.payments.purchases import Purchases
from services.payments.refunds import UNFINISHED_BATCH, Refunds
from services.payments.settlement import Settlement

log = logging.getLogger("invo.payments.recovery")

RECOVERY_INTERVAL_S = 2.0
RECOVERY_BATCH = 50
ABANDONED_MESSAGE = "The 3-D Secure challenge was not completed in time; the payment was canceled."


class Recovery:
    def __init__(
        self,
        *,
        store: OrderStore,
        purchases: Purchases,
        settlement: Settlement,
        processor: Processor,
        dispatcher: Dispatcher,
        refunds: Refunds,
        requires_action_timeout_s: float,
    ) -> None:
        self.refunds = refunds
        self.store = store
        self.purchases = purchases
        self.settlement = settlement
        self.processor = processor
        self.dispatcher = dispatcher
        self.requires_action_timeout_s = requires_action_timeout_s

    async def drive_stale(self) -> int:
        """Charge again the pending orders whose lease ran out; returns how many were taken.

        One order is claimed at a time, just before it is driven: a lease taken for a whole batch
        would run out for the batch's last orders while the first ones wait on the processor, and
        a retry or another replica would drive them at the same time."""
        seen: set[str] = set()
        while len(seen) < RECOVERY_BATCH:
            rows = await self.store.claim_stale(1)
            if not rows or rows[0]["order_id"] in seen:
                break  # none left, or one this round already drove came back: the next round
            seen.add(rows[0]["order_id"])
            try:
                await self.purchases.drive(rows[0], source="recovery", deadline=None)
            except Exception as exc:
                # The order keeps its lease until it runs out, so the next round starts with others.
                code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
                log.warning("recovery of %s: %s", rows[0]["order_id"], code)
                break  # a dependency is failing: the others would too; the next round tries again
        return len(seen)

    async def cancel_abandoned(self, *, older_than_s: float | None = None) -> int:
        """Cancel the challenges pending longer than `older_than_s` (default: the setting)."""
        limit_s = self.requires_action_timeout_s if older_than_s is None else older_than_s
        seen: set[str] = set()
        while len(seen) < RECOVERY_BATCH:  # one claim at a time, as drive_stale does, for the same reason
            rows = await self.store.claim_abandoned(older_than_s=limit_s, limit=1)
            if not rows or rows[0]["order_id"] in seen:
                break
            row = rows[0]
            seen.add(row["order_id"])
            failed = False
            try:
                outcome = await self.processor.cancel(
                    order_id=row["order_id"], payment_intent_id=row["payment_intent_id"]
                )
                if outcome.status == "canceled":
                    outcome = dataclasses.replace(
                        outcome, failure_code="payment_canceled", failure_message=ABANDONED_MESSAGE
                    )
                await self.settlement.apply(row, outcome, source="recovery", deadline=None)
            except Exception as exc:
                code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
                log.warning("cancelling abandoned %s: %s", row["order_id"], code)
                failed = True
            if failed:
                # It keeps its lease until that runs out, so the next rounds start with the others.
                break  # the processor or the ledger is failing: the next round tries again
            await self.store.release(row["order_id"])  # a settled order is not picked again
        return len(seen)

    async def round(self) -> float | None:
        """One pass of every step (a round of services/common/loops.py): a full batch anywhere
        goes again at once, else the next round comes after the interval."""
        stale = await self.drive_stale()
        abandoned = await self.cancel_abandoned()
        refunds = await self.refunds.drive_unfinished()
        woken = await self.dispatcher.wake_paid()
        applied = await self.dispatcher.apply_pending()
        busy = (
            stale == RECOVERY_BATCH
            or abandoned == RECOVERY_BATCH
            or refunds == UNFINISHED_BATCH
            or woken == PENDING_BATCH_MAX
            or applied == PENDING_BATCH_MAX
        )
        return 0.0 if busy else None

    def run(self) -> Coroutine[Any, Any, NoReturn]:
        """The loop for ever: a failed round (the database or the processor away) is logged and
        retried with capped backoff, never the end of the service."""
        return loops.supervised("order-recovery", self.round, interval_s=RECOVERY_INTERVAL_S, log=log)
