"""Consuming: every event on the stream is recorded with its deliveries before it is acknowledged.

A durable JetStream pull consumer. Each fetched batch is recorded in PostgreSQL (the event once,
by event id, and a delivery per endpoint, unique per event and URL; an event of a tenant without
a webhook URL is not kept) in one statement, and only then acknowledged. A crash before the
commit redelivers the batch; a crash after it and before the ack redelivers messages whose rows
already exist, which are skipped. So an event consumed twice is never delivered twice because
of it. A batch that cannot be recorded (the database or the tenants service away) is handed back
to JetStream at once and the round fails, to be retried with backoff: the loop never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, NoReturn

import asyncpg
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from services.common import ids, loops
from services.common.config import Settings
from services.webhooks.tenants import TenantCache

log = logging.getLogger("invo.webhooks")

FETCH_BATCH = 200
FETCH_TIMEOUT_S = 1.0
# After a short batch, wait this long before fetching again, so that a steady stream of events is
# recorded in batches of dozens (one tenants lookup and one insert each) rather than a few at a time.
CONSUME_LINGER_S = 0.05
ACK_WAIT_S = 30.0
ACK_PENDING_MAX = 10_000
# Events wait out the backoff once the outage is over: short, since a failed round costs one fetch.
CONSUME_BACKOFF_MAX_S = 5.0

Item = tuple[str, str, str, str]  # event_id, tenant_id, event_type, body
ORDER_ID_MAX = 64


def order_of(body: str) -> str | None:
    """The order an event is about (`data.order_id`), or None. Most events name none, and are not
    parsed for it."""
    if '"order_id"' not in body:
        return None
    try:
        value = json.loads(body).get("data", {}).get("order_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= ORDER_ID_MAX else None


class Consumer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tenants: TenantCache, wake: asyncio.Event) -> None:
        self.pool = pool
        self.settings = settings
        self.tenants = tenants
        self.wake = wake  # set when there are new deliveries, so the sender claims at once
        self._sub: Any = None

    async def record(self, items: list[Item]) -> int:
        """Record events (event_id, tenant_id, event_type, body) and their deliveries; returns how
        many deliveries are new. An event of a tenant without a webhook URL has nothing to
        deliver and is not kept (nothing reads an event without its delivery)."""
        infos = await self.tenants.get_many({tenant_id for _, tenant_id, _, _ in items}, secrets=False)
        urls = {tenant_id: info.webhook_url for tenant_id, info in infos.items()}
        wanted = [i for i in items if urls.get(i[1])]
        if not wanted:
            return 0
        # One statement, so one round trip and one commit (foreign keys are checked at its end).
        new = await self.pool.fetchval(
            "WITH e AS (INSERT INTO events (event_id, tenant_id, event_type, body, order_id)"
            "   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $7::text[])"
            "   ON CONFLICT DO NOTHING),"
            " d AS (INSERT INTO deliveries (delivery_id, event_id, tenant_id, event_type, url, status, next_attempt_at)"
            "   SELECT w.*, 'pending', now() FROM unnest($5::text[], $1::text[], $2::text[], $3::text[], $6::text[])"
            "   AS w ON CONFLICT (event_id, url) DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM d",
            [i[0] for i in wanted],
            [i[1] for i in wanted],
            [i[2] for i in wanted],
            [i[3] for i in wanted],
            [ids.new_id("whd") for _ in wanted],
            [urls[i[1]] for i in wanted],
            [order_of(i[3]) for i in wanted],
        )
        self.wake.set()
        return int(new)

    async def _subscription(self, js: Any) -> Any:
        # Made in a round, not at start-up, so that NATS being away at start is one more failed round.
        if self._sub is None:
            s = self.settings
            self._sub = await js.pull_subscribe(
                f"{s.nats_subject_prefix}.>",
                durable=s.webhook_consumer,
                stream=s.nats_stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=ACK_PENDING_MAX
                ),
            )
        return self._sub

    async def consume_round(self, js: Any) -> float:
        sub = await self._subscription(js)
        try:
            msgs: list[Msg] = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats.errors.TimeoutError, and the asyncio one nats-py raises too
            return 0.0  # nothing arrived within the fetch's own wait
        items: list[Item] = []
        valid: list[Msg] = []
        for msg in msgs:
            try:
                env = json.loads(msg.data)
                items.append((str(env["event_id"]), str(env["tenant_id"]), str(env["event_type"]), msg.data.decode()))
                valid.append(msg)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                # Terminated, so never redelivered, and never acknowledged after that.
                log.error("dropping a malformed event on %s", msg.subject)
                await msg.term()
        if items:
            try:
                await self.record(items)
            except Exception:
                # Not acknowledged. Handed back now, so the fetch after the backoff has them again
                # (not ack_wait later); if even that fails, JetStream redelivers after ack_wait.
                with contextlib.suppress(Exception):
                    await asyncio.gather(*(msg.nak() for msg in valid))
                raise
        for msg in valid:
            await msg.ack()
        return CONSUME_LINGER_S if len(msgs) < FETCH_BATCH else 0.0

    async def run(self, js: Any) -> NoReturn:
        await loops.supervised(
            "webhook-consumer",
            lambda: self.consume_round(js),
            interval_s=0.0,
            log=log,
            backoff_max_s=CONSUME_BACKOFF_MAX_S,
        )
