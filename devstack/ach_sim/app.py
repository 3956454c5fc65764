"""An ACH provider simulator that speaks the subset of Modern Treasury's API the payouts service uses.

The payouts service talks to it through Modern Treasury's official SDK (`modern-treasury`, its async
client) with only the base address changed, so production and tests run one code path, as the
payments service does with `stripe` against `devstack/processor_sim`. It implements:

- Payment orders (api.py): create (an ACH credit to an inline receiving account from the
  configured originating account; 201), retrieve, list (a bare JSON array, `metadata[...]`
  filters, `X-After-Cursor` paging) and ping, with HTTP basic auth (organization id : API key),
  `Idempotency-Key` replays (409 while the first is in flight) and Modern Treasury's error
  objects (422 `parameter_invalid` for a bad routing number by the ABA checksum, an account number
  that is not 4 to 17 digits, an amount that is not a positive integer, ...).
- Each order's life (lifecycle.py): `approved` -> `processing` -> `sent` -> `completed`, one
  INVO_ACH_SIM_SETTLE_DELAY_S apart, or `failed` after `processing`, or `returned` one delay after
  `completed`, as the account number says (orders.py, like Modern Treasury's sandbox): `111111110`
  (any number starting `11111111`) fails; `100XX` (`10001`, `10003`, ...) is returned with `RXX`;
  any other number completes.
- Signed webhooks (`X-Signature`, `X-Webhook-ID`) for `begin_processing`, `finish_processing`,
  `completed`, `failed` and `returned`, each `{"event", "data": <the order as of that event>}`,
  retried with backoff until the gateway (`/webhooks/ach`) takes it.
- Test controls under `/_sim/` (controls.py): move an order on at once, return a completed one
  with any code, fail or hold API calls, hold, duplicate or delay webhooks, list what was sent.

Account numbers are read once, at creation, and only their last four digits are kept: no journal
line, log line, answer or webhook of the simulator ever holds a whole one.

State survives a restart, as Modern Treasury's does: orders, idempotency records, pending moves
and owed webhooks are journaled (services/common/journal.py) in `INVO_ACH_SIM_STATE` (`make run`:
`.invo/ach_sim/state.jsonl`) before the call that made them answers; moves that fell due while it
was down happen at once when it comes back, and owed webhooks are sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib

from aiohttp import web

from devstack.ach_sim import controls
from devstack.ach_sim.api import AchApi
from devstack.ach_sim.lifecycle import KINDS, signature
from devstack.journal import Journal
from services.common import runtime

__all__ = ["KINDS", "Simulator", "create_app", "serve", "signature"]

log = logging.getLogger("invo.ach_sim")

STOP_GRACE_S = 5.0  # webhook deliveries in flight are cancelled, and owed again at the next start


class Simulator(AchApi):
    """The whole simulator: Modern Treasury's payment orders, their webhooks, the test controls."""

    async def control(self, request: web.Request) -> web.Response:
        return await controls.control(self, request)

    async def close(self) -> None:
        await super().close()
        self.journal.close()


def create_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/api/{tail:.*}", sim.api)
    app.router.add_post("/_sim/{action}", sim.control)
    app.router.add_get("/_sim/{action}", sim.control)

    async def on_startup(_app: web.Application) -> None:
        sim.start()

    async def on_cleanup(_app: web.Application) -> None:
        await sim.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(
    *,
    host: str,
    port: int,
    organization_id: str,
    api_key: str,
    originating_account_id: str,
    webhook_key: str,
    webhook_url: str,
    settle_delay_s: float,
    state_path: pathlib.Path | None = None,
) -> None:
    sim = Simulator(
        organization_id=organization_id,
        api_key=api_key,
        originating_account_id=originating_account_id,
        webhook_key=webhook_key,
        webhook_url=webhook_url,
        journal=Journal(state_path, KINDS),
        settle_delay_s=settle_delay_s,
    )
    runner = web.AppRunner(create_app(sim), access_log=None, shutdown_timeout=STOP_GRACE_S / 2)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info(
        "ACH simulator on http://%s:%s, webhooks to %s, settling every %g s; %d payment orders on record,"
        " %d moves pending, %d webhooks owed",
        host,
        port,
        webhook_url or "(nowhere)",
        settle_delay_s,
        len(sim.orders),
        len(sim.transitions),
        len(sim.owed_events),
    )
    stop = asyncio.Event()
    # SIGTERM stops it within STOP_GRACE_S plus runtime's hard bound, or it is ended (exit 124).
    runtime.stop_signals(stop, name="ach_sim", grace_s=STOP_GRACE_S)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await runner.cleanup()
