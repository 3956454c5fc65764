"""Sending: due deliveries are claimed with a lease, POSTed signed, and every attempt recorded.

A loop claims due deliveries with a lease (an UPDATE that re-checks the lease), at most 100 times
a second, walking the endpoints so that each gets its share; POSTs them with a bounded
concurrency overall and per endpoint, records every attempt (the attempts that finish together
are committed together, outcomes.py), and schedules the next one by the retry schedule; after the
last retry a delivery is `failed` until redelivered. A sender that dies mid-attempt leaves a
lease that runs out, and the delivery is tried again: at least once. A round that fails (the
database or the tenants service away) hands back what it claimed and is retried with backoff
(services/common/loops.py): an outage never ends the loop. Production tenants' URLs must be
https and must not resolve to private, loopback or link-local addresses (addresses.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import urllib.parse
from typing import NoReturn

import aiohttp
import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors, grpcserver, loops, metrics
from services.common.config import Settings
from services.common.signing import signature_header
from services.webhooks.addresses import PublicOnlyResolver, RefusedAddress, check_public, literal_address
from services.webhooks.outcomes import Outcome, OutcomeWriter
from services.webhooks.tenants import TenantCache

log = logging.getLogger("invo.webhooks")

RESPONSE_BODY_MAX = 1024
SEND_POLL_S = 0.2
# Between two claims, completions gather: one claim (which reads the due backlog) refills many
# slots instead of one. It bounds claims to 100 a second.
CLAIM_INTERVAL_S = 0.01
CLAIM_ENDPOINTS_MAX = 256  # endpoints a claim looks at; the next claim goes on from the last one
# Deliveries wait out the backoff once the outage is over: short, since a failed round is one query.
SEND_BACKOFF_MAX_S = 5.0
SEND_STOP_S = 0.5  # how long cancelled attempts may take to end at shutdown
USER_AGENT = "INVO-Webhooks/1.0"


class Sender:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tenants: TenantCache, wake: asyncio.Event) -> None:
        self.pool = pool
        self.settings = settings
        self.tenants = tenants
        self.wake = wake  # set when a delivery may be due (new, redelivered, or a slot freed)
        self.outcomes = OutcomeWriter(pool)
        self._url_cursor = ""  # where the next claim's walk over endpoints starts
        self.schedule_s = [float(x) for x in settings.webhook_retry_schedule_s.split(",") if x.strip()]
        self.lease_s = settings.webhook_timeout_s + 5.0
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
        self.open_http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        self.public_http = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0, resolver=PublicOnlyResolver())
        )

    async def close(self) -> None:
        # Bounded: an attempt that does not end when cancelled keeps its lease and is tried again
        # once it runs out, and the attempts that did finish are still flushed below.
        stuck = await grpcserver.end_tasks(list(self.tasks), SEND_STOP_S)
        if stuck:
            log.warning("%d delivery attempts still running at shutdown; their leases will run out", len(stuck))
        try:
            await self.outcomes.flush()
        except Exception:  # shutting down: the leases run out and the deliveries are tried again
            log.exception("could not record the last attempts")
        await self.open_http.close()
        await self.public_http.close()

    async def claim(self, limit: int) -> list[asyncpg.Record]:
        """Due deliveries, at most `webhook_per_endpoint_max` per endpoint, oldest first: an
        endpoint with a backlog cannot crowd out the others. A row another sender leased meanwhile
        is skipped (the UPDATE re-checks the lease).

        The endpoints are walked in URL order from where the last claim stopped, at most
        `CLAIM_ENDPOINTS_MAX` per claim (a loose index scan), and each gives its oldest due rows
        (an index range): the cost does not grow with the backlog, and with many endpoints every
        one is visited in turn."""
        busy = [url for url, n in self.in_flight.items() if n >= self.settings.webhook_per_endpoint_max]
        rows = await self.pool.fetch(
            "WITH RECURSIVE urls(url, n) AS ("
            "   (SELECT url, 1 FROM deliveries WHERE status = 'pending' AND url > $5 ORDER BY url LIMIT 1)"
            "   UNION ALL"
            "   SELECT (SELECT d.url FROM deliveries d WHERE d.status = 'pending' AND d.url > u.url"
            "           ORDER BY d.url LIMIT 1), u.n + 1"
            "   FROM urls u WHERE u.url IS NOT NULL AND u.n < $6),"
            " visited AS (SELECT url FROM urls WHERE url IS NOT NULL),"
            " due AS ("
            "   SELECT c.delivery_id, c.next_attempt_at FROM visited v CROSS JOIN LATERAL ("
            "     SELECT delivery_id, next_attempt_at FROM deliveries d"
            "     WHERE d.status = 'pending' AND d.url = v.url AND d.next_attempt_at <= now()"
            "     AND (d.lease_until IS NULL OR d.lease_until < now())"
            "     ORDER BY d.next_attempt_at LIMIT $4) c"
            "   WHERE v.url <> ALL($3::text[])"
            "   ORDER BY c.next_attempt_at LIMIT $2),"
            " claimed AS ("
            # By primary key, whatever the planner thinks of the table (fresh tables have no stats).
            "   UPDATE deliveries d SET lease_until = now() + make_interval(secs => $1)"
            "   FROM events e"
            "   WHERE d.delivery_id = ANY(ARRAY(SELECT delivery_id FROM due))"
            "   AND e.event_id = d.event_id AND d.status = 'pending'"
            "   AND (d.lease_until IS NULL OR d.lease_until < now())"
            "   RETURNING d.delivery_id, d.event_id, d.tenant_id, d.url, d.attempts, d.cycle_attempts, d.created_at,"
            "   e.body)"
            # One row at least, so the walk's position comes back even when nothing was claimed.
            " SELECT claimed.*, (SELECT max(url) FROM visited) AS visited_to,"
            " (SELECT count(*) FROM visited) AS visited"
            " FROM (SELECT 1) one LEFT JOIN claimed ON true",
            self.lease_s,
            limit,
            busy,
            self.settings.webhook_per_endpoint_max,
            self._url_cursor,
            CLAIM_ENDPOINTS_MAX,
        )
        # A walk that saw fewer endpoints than it may reached the last one: start over next time.
        walked_to, walked = rows[0]["visited_to"], rows[0]["visited"]
        self._url_cursor = walked_to if walked >= CLAIM_ENDPOINTS_MAX and walked_to is not None else ""
        return [r for r in rows if r["delivery_id"] is not None]

    async def _hand_back(self, delivery_ids: list[str]) -> None:
        await self.pool.execute(
            "UPDATE deliveries SET lease_until = NULL WHERE delivery_id = ANY($1::text[])", delivery_ids
        )

    async def send_round(self) -> float | None:
        free = self.settings.webhook_concurrency_max - sum(self.in_flight.values())
        rows = await self.claim(free) if free > 0 else []
        infos: dict[str, tenants_pb2.WebhookSecrets] = {}
        if rows:
            try:
                infos = await self.tenants.get_many({r["tenant_id"] for r in rows}, secrets=True)
            except Exception:
                # Without the secrets nothing can be signed: hand the claims back so that the next
                # round can take them at once. If the database is away too, the leases run out.
                with contextlib.suppress(Exception):
                    await self._hand_back([r["delivery_id"] for r in rows])
                raise
        handed_back = []
        for row in rows:
            url = row["url"]
            if self.in_flight.get(url, 0) >= self.settings.webhook_per_endpoint_max:
                handed_back.append(row["delivery_id"])  # its endpoint filled up: next round
                continue
            self.in_flight[url] = self.in_flight.get(url, 0) + 1
            task = asyncio.ensure_future(self._send(row, infos.get(row["tenant_id"])))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if handed_back:
            await self._hand_back(handed_back)
        if not rows:
            self.wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that arrives as
            # the wake-up does, and a stopping service's sender then claimed on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_POLL_S):
                    await self.wake.wait()
        return CLAIM_INTERVAL_S

    async def run(self) -> NoReturn:
        await loops.supervised(
            "webhook-sender",
            self.send_round,
            interval_s=CLAIM_INTERVAL_S,
            log=log,
            backoff_max_s=SEND_BACKOFF_MAX_S,
        )

    async def _send(self, row: asyncpg.Record, info: tenants_pb2.WebhookSecrets | None) -> None:
        url = row["url"]
        try:
            await self._attempt(row, info)
        except Exception:
            log.exception("delivery %s crashed", row["delivery_id"])
        finally:
            self.in_flight[url] -= 1
            if self.in_flight[url] <= 0:
                del self.in_flight[url]
            self.wake.set()

    async def _attempt(self, row: asyncpg.Record, info: tenants_pb2.WebhookSecrets | None) -> None:
        started = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        status_code: int | None = None
        body_text = ""
        error = ""
        try:
            if info is None:
                raise RefusedAddress("refused: the tenant no longer exists")
            body = row["body"].encode()
            event_id = row["event_id"]
            # Production tenants, and every tenant of a production deployment: no private targets.
            production = info.environment == "production" or self.settings.environment == "production"
            parsed = urllib.parse.urlsplit(row["url"])
            if production:
                if parsed.scheme != "https":
                    raise RefusedAddress("refused: production webhooks must use https")
                address = literal_address(parsed.hostname or "")
                if address is not None:  # a name is checked by the resolver, on what it resolves to
                    check_public(address)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Invo-Event-Id": event_id,
                "X-Invo-Signature": signature_header(body, list(info.secrets), timestamp=int(time.time())),
            }
            http = self.public_http if production else self.open_http
            async with http.post(row["url"], data=body, headers=headers, allow_redirects=False) as resp:
                status_code = resp.status
                body_text = (await resp.content.read(RESPONSE_BODY_MAX)).decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError, errors.InvoError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        latency_ms = int((time.monotonic() - t0) * 1000)
        ok = status_code is not None and 200 <= status_code < 300
        cycle = row["cycle_attempts"] + 1
        if ok:
            status, next_at = "delivered", None
            metrics.WEBHOOK_LATENCY.observe(
                max(0.0, (datetime.datetime.now(datetime.UTC) - row["created_at"]).total_seconds())
            )
        elif cycle > len(self.schedule_s):
            status, next_at = "failed", None
        else:
            status = "pending"
            next_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.schedule_s[cycle - 1])
        metrics.WEBHOOK_DELIVERIES.labels("retrying" if status == "pending" else status).inc()
        await self.outcomes.write(
            Outcome(
                delivery_id=row["delivery_id"],
                attempt=row["attempts"] + 1,
                started_at=started,
                status_code=status_code,
                latency_ms=latency_ms,
                response_body=body_text,
                error=error,
                status=status,
                cycle_attempts=cycle,
                next_attempt_at=next_at,
            )
        )
