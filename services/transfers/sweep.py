"""The sweep: what no request will do. A background loop runs it every
INVO_TRANSFER_SWEEP_INTERVAL_S (`Sweep` runs one round on demand, for tests and tools):

1. rows left mid-way whose lease ran out are driven on: a `creating` one from its hold, a
   `claiming` one to its settlement, a `returning` one to its return;
2. open transfers past their window expire: waiting for a PIN past `verify_by`, or claimable past
   `claim_expires_at`; the hold goes back to the sender and `transfer.expired` is sent;
3. queued texts are sent (again);
4. failed claims older than the limit's minute are forgotten.

So nothing stays held for ever: every transfer ends in `completed`, `cancelled` or `expired`.
Many replicas can sweep at once: each row is taken under its lease or its row lock.
"""

from __future__ import annotations

import dataclasses
import logging

from services.common import errors
from services.transfers import initiation
from services.transfers.deps import Deps
from services.transfers.releases import finish, start_return

log = logging.getLogger("invo.transfers.sweep")

BATCH = 50


@dataclasses.dataclass
class Swept:
    created: int = 0
    expired: int = 0
    finished: int = 0
    texts: int = 0

    @property
    def busy(self) -> bool:
        return BATCH in (self.created + self.finished, self.expired, self.texts)


async def sweep_once(d: Deps, *, lease_s: float) -> Swept:
    out = Swept()
    for row in await d.store.claim_unfinished(BATCH):
        try:
            if row["status"] == "creating":
                await initiation.drive(d, row, source="sweep", deadline=None)
                out.created += 1
            else:
                await finish(d, row, source="sweep", deadline=None)
                out.finished += 1
        except errors.PaymentRequired:
            out.created += 1  # the hold was refused: the row is gone, nothing was held
        except Exception as exc:
            code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
            log.warning("sweep of %s (%s) failed: %s", row["transfer_id"], row["status"], code)
    for due in await d.store.due(BATCH):
        final = "expired"
        done = await start_return(
            d, due["transfer_id"], final=final, reason=due["reason"], source="sweep", lease_s=lease_s, deadline=None
        )
        if done is not None:
            out.expired += 1
    out.texts = await d.texts.deliver_due(BATCH)
    await d.pool.execute("DELETE FROM claim_failures WHERE created_at < now() - interval '2 minutes'")
    return out
