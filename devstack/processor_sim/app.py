"""A card-processor simulator that speaks the subset of Stripe's REST API the payments service uses.

The payments service talks to it through the real `stripe` SDK with only the base address changed,
so production and tests run one code path. It implements:

- Customers, PaymentMethods (Stripe's test ids), PaymentIntents (create / retrieve / confirm /
  cancel, with Stripe's status machine); form-encoded bodies, Bearer auth, Stripe's error objects
  (`card_error` with `decline_code` on a 402), and `Idempotency-Key` replays.
- After a sale (after_sale.py): Refunds (`POST /v1/refunds` by `payment_intent` or `charge`, full
  or partial, several per charge, with Stripe's refusals: over-refund, `charge_already_refunded`,
  `charge_disputed`; `GET /v1/refunds` filtered by `charge` / `payment_intent`, `GET
  /v1/refunds/{id}`), Disputes (`GET /v1/disputes`, `GET /v1/disputes/{id}`) and early fraud
  warnings (`GET /v1/radar/early_fraud_warnings/{id}`), which the test cards pm_card_createDispute,
  pm_card_createDisputeInquiry and pm_card_radarEarlyFraudWarning (and their numbers) raise 0.2 s
  after they are charged.
- Signed processor webhooks (`Stripe-Signature: t=...,v1=...`) for `payment_intent.succeeded`,
  `payment_intent.payment_failed`, `payment_intent.canceled`, `charge.refunded`,
  `charge.dispute.created`, `charge.dispute.closed`, `radar.early_fraud_warning.created`.
- What a hosted checkout page needs (payment_methods.py): `POST /v1/payment_methods` from a
  card's details (Luhn, expiry and CVC checked, Stripe's `card_error`s; the test card numbers
  behave as their test ids, across restarts; only brand, last 4 and expiry kept), `customer` +
  `setup_future_usage` on PaymentIntents (the card is attached to the Customer when the payment
  succeeds; another Customer's card is refused), `GET /v1/customers/{id}/payment_methods`,
  `POST /v1/payment_methods/{id}/detach`. The publishable key (`INVO_PROCESSOR_PUBLISHABLE_KEY`)
  may only create a PaymentMethod and read a PaymentIntent with its client secret, with CORS.
- For browsers (pages.py): `GET /js/v3/stripe.js`, a look-alike of the Stripe.js subset the page
  uses (`Stripe(pk)`, `elements().create('card')`, `mount`/`on('change')`/`focus`/`clear`/
  `unmount`, `createPaymentMethod`, `confirmCardPayment`); the card field it frames
  (`/elements/card`), which tokenises the card itself; the 3-D Secure challenge page
  (`/3ds/challenge`, "Complete authentication" / "Fail authentication", the same effect as
  `/_sim/three_d_secure`: three_d_secure.py).
- Test controls under `/_sim/` (controls.py): complete or fail a 3-D Secure challenge, make the
  next N calls fail with 500s, time out, or succeed but answer late; charge another amount than
  asked; delay webhooks, send each webhook twice, hold webhooks back and release them in reverse
  order; open and close a dispute (chargeback or inquiry), raise an early fraud warning, refund as
  from Stripe's dashboard; list what was called and sent.

State survives a restart, as Stripe's does: every object (refunds, disputes and warnings too) is
journaled before the call that made it answers (state.py), in `INVO_PROCESSOR_SIM_STATE`
(`make run`: `.invo/processor_sim/state.jsonl`), and the webhooks it still owed are sent again when it
comes back. PaymentIntents can be listed (`GET /v1/payment_intents`, Stripe's pagination), which the
fault suite uses to count charges.

This module holds the `Simulator` and the aiohttp app and server around it (`create_app`, `serve`);
the REST API is in `resources`, `payment_methods` and `after_sale`, the test cards in `cards`, the browser's
script and pages in `pages` (and assets/), the events in `webhooks`, the test controls in `controls`. The
names tests and tools import from here (`sign`, `decode_form`, `TEST_CARDS`, ...) still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib

from aiohttp import web

from devstack.processor_sim import controls, pages
from devstack.processor_sim.after_sale import AfterSaleResources
from devstack.processor_sim.cards import DECLINE_MESSAGES, TEST_CARDS
from devstack.processor_sim.payment_methods import PUBLISHABLE_KEY_DEFAULT, CardResources
from devstack.processor_sim.resources import IDEMPOTENCY_TTL_S, StripeError, decode_form, invalid
from devstack.processor_sim.state import Journal
from devstack.processor_sim.webhooks import (
    API_VERSION,
    WEBHOOK_ATTEMPTS_MAX,
    WEBHOOK_TIMEOUT_S,
    Faults,
    WebhookSender,
    sign,
)
from services.common import runtime

__all__ = [
    "API_VERSION",
    "DECLINE_MESSAGES",
    "IDEMPOTENCY_TTL_S",
    "PUBLISHABLE_KEY_DEFAULT",
    "TEST_CARDS",
    "WEBHOOK_ATTEMPTS_MAX",
    "WEBHOOK_TIMEOUT_S",
    "Faults",
    "Simulator",
    "StripeError",
    "WebhookSender",
    "create_app",
    "decode_form",
    "invalid",
    "serve",
    "sign",
]

log = logging.getLogger("invo.processor_sim")

STOP_GRACE_S = 5.0  # webhook deliveries in flight are cancelled, and owed again at the next start


class Simulator(CardResources, AfterSaleResources):
    """The whole simulator: Stripe's REST API and its webhooks, plus the test controls. Each
    module's class adds its routes in `_route_more` and hands the rest to the next in line
    (CardResources, then AfterSaleResources, then StripeResources)."""

    async def control(self, request: web.Request) -> web.Response:
        return await controls.control(self, request)

    async def close(self) -> None:
        await super().close()
        self.journal.close()


def create_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/v1/{tail:.*}", sim.api)
    app.router.add_post("/_sim/{action}", sim.control)
    app.router.add_get("/_sim/{action}", sim.control)
    pages.add_routes(app, sim)

    async def on_cleanup(_app: web.Application) -> None:
        await sim.close()

    app.on_cleanup.append(on_cleanup)
    return app


async def serve(
    *,
    host: str,
    port: int,
    secret_key: str,
    webhook_secret: str,
    webhook_url: str,
    state_path: pathlib.Path | None = None,
    publishable_key: str = PUBLISHABLE_KEY_DEFAULT,
) -> None:
    sim = Simulator(
        secret_key=secret_key,
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
        journal=Journal(state_path),
        publishable_key=publishable_key,
    )
    runner = web.AppRunner(create_app(sim), access_log=None, shutdown_timeout=STOP_GRACE_S / 2)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info(
        "processor simulator on http://%s:%s, webhooks to %s, %d PaymentIntents on record, %d webhooks owed",
        host,
        port,
        webhook_url,
        len(sim.intents),
        len(sim.owed_events),
    )
    sim.resume(sim.owed_events)
    stop = asyncio.Event()
    # SIGTERM stops it within STOP_GRACE_S plus runtime's hard bound, or it is ended (exit 124).
    runtime.stop_signals(stop, name="processor_sim", grace_s=STOP_GRACE_S)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await runner.cleanup()
