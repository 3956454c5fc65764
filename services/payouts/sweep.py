"""The sweep: what no request will do. A background loop runs it every
INVO_PAYOUT_SWEEP_INTERVAL_S (the `Sweep` RPC runs one round on demand, for tests and tools):

1. requests a crash left in `creating` are driven on (the ledger replays a hold already made);
2. approved payouts not yet sent are sent (the provider was away, the breaker open, a crash);
3. ledger writes a status still calls for are made (a crash after the move, the ledger away);
4. payouts in flight not heard of for a while are asked of the provider (a webhook lost).

Any number of replicas can sweep at once: each row is taken under its lease.
"""

from __future__ import annotations

import dataclasses
import logging

from services.common import errors
from services.payouts import progress, requests
from services.payouts.deps import Deps
from services.payouts.moves import catch_up_ledger

log = logging.getLogger("invo.payouts.sweep")

BATCH = 20


@dataclasses.dataclass
class Swept:
    created: int = 0
    dispatched: int = 0
    ledger: int = 0
    polled: int = 0

    @property
    def busy(self) -> bool:
        return BATCH in (self.created, self.dispatched, self.ledger, self.polled)


def _code(exc: Exception) -> str:
    return exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__


async def sweep_once(d: Deps) -> Swept:
    out = Swept()
    for row in await d.store.claim_creating(BATCH):
        out.created += 1
        try:
            await requests.drive(d, row, source=row["requested_by"], deadline=None)
        except Exception as exc:  # a refused hold deleted the row; anything else is tried again
            log.warning("sweep: request %s: %s", row["payout_id"], _code(exc))
    for row in await d.store.claim_dispatch(BATCH):
        out.dispatched += 1
        await d.store.lease.release(d.pool, row["payout_id"])  # dispatch takes its own
        try:
            await progress.dispatch(d, row["payout_id"], source="sweep", deadline=None)
        except Exception as exc:
            log.warning("sweep: dispatch of %s: %s", row["payout_id"], _code(exc))
            break  # the provider is failing: the others would too; the next round tries again
    for row in await d.store.claim_ledger_due(BATCH):
        out.ledger += 1
        try:
            await catch_up_ledger(d, row, deadline=None)
        finally:
            await d.store.lease.release(d.pool, row["payout_id"])
    for row in await d.store.claim_poll(BATCH):
        out.polled += 1
        try:
            await progress.poll(d, row)
        except Exception as exc:
            log.warning("sweep: poll of %s: %s", row["payout_id"], _code(exc))
            break
    return out
