"""The webhooks service: every event on the stream reaches its tenant's endpoint, signed, at least once.

Consume: a durable JetStream pull consumer. Each fetched batch is recorded in PostgreSQL (the event
once, by event id, and a delivery per endpoint, unique per event and URL; an event of a tenant
without a webhook URL is not kept) in one statement, and only then acknowledged. A crash before
the commit redelivers the batch; a crash after it and before the ack redelivers messages whose
rows already exist, which are skipped. So an event consumed twice is never delivered twice
because of it.

Send: a loop claims due deliveries with a lease (an UPDATE that re-checks the lease), at most 100
times a second, walking the endpoints so that each gets its share; POSTs them with a bounded
concurrency overall and per endpoint, records every attempt (the attempts that finish together
are committed together), and schedules the next one by the retry schedule; after the last retry
a delivery is `failed` until redelivered. A sender that dies mid-attempt leaves a lease that runs
out, and the delivery is tried again: at least once. Production tenants' URLs must be https and
must not resolve to private, loopback or link-local addresses (checked after DNS resolution, at
connect time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import errno
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
from typing import Any

import aiohttp
import asyncpg
import nats
from aiohttp.abc import AbstractResolver, ResolveResult
from invo.v1 import tenants_pb2, tenants_pb2_grpc, webhooks_pb2, webhooks_pb2_grpc
from nats.js.api import AckPolicy, ConsumerConfig

from services.common import errors, events, grpcutil, ids
from services.common.config import Settings
from services.common.grpcutil import GrpcService
from services.common.signing import signature_header

log = logging.getLogger("invo.webhooks")

FETCH_BATCH = 200
# After a short batch, wait this long before fetching again, so that a steady stream of events is
# recorded in batches of dozens (one tenants lookup and one insert each) rather than a few at a time.
CONSUME_LINGER_S = 0.05
RESPONSE_BODY_MAX = 1024
LIST_LIMIT_MAX = 100
SEND_POLL_S = 0.2
# Between two claims, completions gather: one claim (which reads the due backlog) refills many
# slots instead of one. It bounds claims to 100 a second.
CLAIM_INTERVAL_S = 0.01
OUTCOMES_BATCH_MAX = 500
CLAIM_ENDPOINTS_MAX = 256  # endpoints a claim looks at; the next claim goes on from the last one
TENANT_LOOKUP_BATCH = 1000  # the tenants service's limit per GetWebhookTargets call
USER_AGENT = "INVO-Webhooks/1.0"


_ts = grpcutil.timestamp


class RefusedAddress(OSError):
    def __init__(self, message: str) -> None:
        # errno and strerror set, so aiohttp's connection error carries the reason.
        super().__init__(errno.EACCES, message)


def check_public(ip_text: str) -> None:
    ip = ipaddress.ip_address(ip_text)
    if not ip.is_global or ip.is_multicast:
        raise RefusedAddress(f"refused: {ip_text} is not a public address")


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses any private, loopback or link-local answer, so a
    DNS name cannot point a production delivery inside our network."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            check_public(entry["host"])
        return found

    async def close(self) -> None:
        await self._inner.close()


class TenantCache:
    """Tenants' webhook settings, read fresh for each batch or send round (one call for all the
    tenants in it, never cached across rounds): a rotated secret or a changed URL applies to the
    very next delivery."""

    def __init__(self, stub: Any, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def get(self, tenant_id: str) -> tenants_pb2.WebhookSecrets:
        info = (await self.get_many({tenant_id}, secrets=False)).get(tenant_id)
        if info is None:
            raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
        return info

    async def get_many(self, tenant_ids: set[str], *, secrets: bool) -> dict[str, tenants_pb2.WebhookSecrets]:
        """The tenants that exist, by id; the signing secrets only when `secrets` (for sending)."""
        found: dict[str, tenants_pb2.WebhookSecrets] = {}
        ordered = sorted(tenant_ids)
        for i in range(0, len(ordered), TENANT_LOOKUP_BATCH):
            resp: tenants_pb2.GetWebhookTargetsResponse = await grpcutil.call(
                self.stub.GetWebhookTargets,
                tenants_pb2.GetWebhookTargetsRequest(
                    tenant_ids=ordered[i : i + TENANT_LOOKUP_BATCH], include_secrets=secrets
                ),
                timeout_s=self.timeout_s,
            )
            found.update(resp.targets)
        return found


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One attempt's result and what it makes of its delivery."""

    delivery_id: str
    attempt: int
    started_at: datetime.datetime
    status_code: int | None
    latency_ms: int
    response_body: str
    error: str
    status: str  # pending, delivered or failed
    cycle_attempts: int
    next_attempt_at: datetime.datetime | None


class OutcomeWriter:
    """Group commit for attempt outcomes: what finished while the previous batch was written goes
    in the next one, as one statement (one round trip, one commit). `write` returns once its
    outcome is committed, so a sender frees its slot only after the attempt is on record; if the
    write fails the delivery keeps its lease and is tried again when the lease runs out.

    An outcome applies only to the attempt it reports (the delivery's attempt count must be one
    less): written twice (a retry after a write whose answer was lost) or late (another sender
    has attempted since), it changes nothing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()

    async def write(self, outcome: Outcome) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, fut))
        self._ready.set()
        await fut

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            await self._write_next()

    async def flush(self) -> None:
        """Writes whatever is queued (at shutdown, once `run` is cancelled): attempts that reached
        a partner are on record, not sent again when their lease runs out."""
        while self._queue:
            await self._write_next()

    async def _write_next(self) -> None:
        batch, self._queue = self._queue[:OUTCOMES_BATCH_MAX], self._queue[OUTCOMES_BATCH_MAX:]
        if not self._queue:
            self._ready.clear()
        if not batch:
            return
        try:
            await self._write([o for o, _ in batch])
        except Exception as exc:  # the writer must outlive any one batch
            log.warning("could not record %d attempts together: %r", len(batch), exc)
            # One by one, so that one bad outcome cannot keep the others off the record.
            for item in batch if len(batch) > 1 else []:
                await self._write_alone(*item)
            if len(batch) == 1 and not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _write_alone(self, outcome: Outcome, fut: asyncio.Future[None]) -> None:
        try:
            await self._write([outcome])
        except Exception as exc:
            log.warning("could not record the attempt of %s: %r", outcome.delivery_id, exc)
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(None)

    async def _write(self, batch: list[Outcome]) -> None:
        await self.pool.execute(
            "WITH o AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::timestamptz[], $4::integer[],"
            "   $5::integer[], $6::text[], $7::text[], $8::text[], $9::integer[], $10::timestamptz[])"
            "   AS o(delivery_id, attempt, started_at, status_code, latency_ms, response_body, error, status,"
            "        cycle_attempts, next_attempt_at)),"
            " u AS (UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1,"
            "   cycle_attempts = o.cycle_attempts, next_attempt_at = o.next_attempt_at, lease_until = NULL,"
            "   updated_at = now(), delivered_at = CASE WHEN o.status = 'delivered' THEN now() ELSE d.delivered_at END"
            "   FROM o WHERE d.delivery_id = o.delivery_id AND d.attempts = o.attempt - 1 RETURNING d.delivery_id)"
            " INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,"
            "   response_body, error)"
            " SELECT o.delivery_id, o.attempt, o.started_at, o.status_code, o.latency_ms, o.response_body, o.error"
            " FROM o JOIN u ON u.delivery_id = o.delivery_id",
            [o.delivery_id for o in batch],
            [o.attempt for o in batch],
            [o.started_at for o in batch],
            [o.status_code for o in batch],
            [o.latency_ms for o in batch],
            # PostgreSQL text cannot hold NUL, and a partner's answer might.
            [o.response_body.replace("\x00", "\ufffd") for o in batch],
            [o.error.replace("\x00", "\ufffd") for o in batch],
            [o.status for o in batch],
            [o.cycle_attempts for o in batch],
            [o.next_attempt_at for o in batch],
        )


_DELIVERY_COLUMNS = (
    "delivery_id, event_id, tenant_id, event_type, url, status, attempts, next_attempt_at, created_at, delivered_at"
)


class Webhooks(webhooks_pb2_grpc.WebhooksServiceServicer):
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tenants: TenantCache) -> None:
        self.pool = pool
        self.settings = settings
        self.tenants = tenants
        self.outcomes = OutcomeWriter(pool)
        self._url_cursor = ""  # where the next claim's walk over endpoints starts
        self.schedule_s = [float(x) for x in settings.webhook_retry_schedule_s.split(",") if x.strip()]
        self.lease_s = settings.webhook_timeout_s + 5.0
        self.wake = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.global_slots = asyncio.Semaphore(settings.webhook_concurrency_max)
        self.tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
        self.open_http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        self.public_http = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0, resolver=PublicOnlyResolver())
        )

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.outcomes.flush()
        except Exception:  # shutting down: the leases run out and the deliveries are tried again
            log.exception("could not record the last attempts")
        await self.open_http.close()
        await self.public_http.close()

    # -- consuming --------------------------------------------------------------------------

    async def record(self, items: list[tuple[str, str, str, str]]) -> int:
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
            "WITH e AS (INSERT INTO events (event_id, tenant_id, event_type, body)"
            "   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING),"
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
        )
        self.wake.set()
        return int(new)

    async def consume(self, js: Any) -> None:
        s = self.settings
        sub = await js.pull_subscribe(
            f"{s.nats_subject_prefix}.>",
            durable=s.webhook_consumer,
            stream=s.nats_stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=10_000),
        )
        while True:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            items = []
            valid = []
            for msg in msgs:
                try:
                    env = json.loads(msg.data)
                    items.append(
                        (str(env["event_id"]), str(env["tenant_id"]), str(env["event_type"]), msg.data.decode())
                    )
                    valid.append(msg)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    # Terminated, so never redelivered, and never acknowledged after that.
                    log.error("dropping a malformed event on %s", msg.subject)
                    await msg.term()
            try:
                if items:
                    await self.record(items)
            except (asyncpg.PostgresError, OSError, errors.InvoError) as exc:
                # Not acknowledged: JetStream redelivers them after ack_wait.
                log.warning("could not record %d events: %s", len(items), exc)
                await asyncio.sleep(1.0)
                continue
            for msg in valid:
                await msg.ack()
            if len(msgs) < FETCH_BATCH:
                await asyncio.sleep(CONSUME_LINGER_S)

    # -- sending ----------------------------------------------------------------------------

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
            "   RETURNING d.delivery_id, d.event_id, d.tenant_id, d.url, d.attempts, d.cycle_attempts, e.body)"
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

    async def send_loop(self) -> None:
        while True:
            free = self.settings.webhook_concurrency_max - sum(self.in_flight.values())
            rows = await self.claim(free) if free > 0 else []
            infos = await self.tenants.get_many({r["tenant_id"] for r in rows}, secrets=True) if rows else {}
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
                await self.pool.execute(
                    "UPDATE deliveries SET lease_until = NULL WHERE delivery_id = ANY($1::text[])", handed_back
                )
            if not rows:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=SEND_POLL_S)
                except TimeoutError:
                    pass
            await asyncio.sleep(CLAIM_INTERVAL_S)

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
                try:
                    check_public(parsed.hostname or "")
                except ValueError:
                    pass  # a name, not an address literal: the resolver checks what it resolves to
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
        elif cycle > len(self.schedule_s):
            status, next_at = "failed", None
        else:
            status = "pending"
            next_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.schedule_s[cycle - 1])
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

    # -- the API --------------------------------------------------------------------------

    async def _message(self, row: asyncpg.Record, *, with_attempts: bool = False) -> webhooks_pb2.Delivery:
        msg = webhooks_pb2.Delivery(
            delivery_id=row["delivery_id"],
            event_id=row["event_id"],
            tenant_id=row["tenant_id"],
            event_type=row["event_type"],
            url=row["url"],
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=_ts(row["next_attempt_at"]),
            created_at=_ts(row["created_at"]),
            delivered_at=_ts(row["delivered_at"]),
        )
        if with_attempts:
            attempts = await self.pool.fetch(
                "SELECT attempt, started_at, status_code, latency_ms, response_body, error FROM delivery_attempts"
                " WHERE delivery_id = $1 ORDER BY id LIMIT 100",
                row["delivery_id"],
            )
            msg.attempt_log.extend(
                webhooks_pb2.Attempt(
                    attempt=a["attempt"],
                    at=_ts(a["started_at"]),
                    status_code=a["status_code"] or 0,
                    latency_ms=a["latency_ms"],
                    response_body=a["response_body"],
                    error=a["error"],
                )
                for a in attempts
            )
        return msg

    async def _get(self, tenant_id: str, delivery_id: str) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = $1 AND ($2 = '' OR tenant_id = $2)",
            delivery_id,
            tenant_id,
        )
        if row is None:
            raise errors.NotFound("No such delivery.", error_code="DELIVERY_NOT_FOUND")
        return row

    async def ListDeliveries(self, request: webhooks_pb2.ListDeliveriesRequest, context: Any) -> Any:
        limit = request.limit or 20
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {LIST_LIMIT_MAX}")
        if request.status and request.status not in ("pending", "delivered", "failed"):
            raise errors.InvalidRequest("status must be pending, delivered or failed")
        since = request.since.ToDatetime(tzinfo=datetime.UTC) if request.HasField("since") else None
        until = request.until.ToDatetime(tzinfo=datetime.UTC) if request.HasField("until") else None
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"
            " WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR event_type = $2) AND ($3 = '' OR status = $3)"
            " AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)"
            " AND ($6 = '' OR delivery_id < $6)"
            " ORDER BY delivery_id DESC LIMIT $7",
            request.tenant_id,
            request.event_type,
            request.status,
            since,
            until,
            request.after_delivery_id,
            limit + 1,
        )
        return webhooks_pb2.ListDeliveriesResponse(
            deliveries=[await self._message(r) for r in rows[:limit]], has_more=len(rows) > limit
        )

    async def GetDelivery(self, request: webhooks_pb2.GetDeliveryRequest, context: Any) -> Any:
        return await self._message(await self._get(request.tenant_id, request.delivery_id), with_attempts=True)

    async def Redeliver(self, request: webhooks_pb2.GetDeliveryRequest, context: Any) -> Any:
        await self._get(request.tenant_id, request.delivery_id)
        await self.pool.execute(
            "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, next_attempt_at = now(),"
            " updated_at = now() WHERE delivery_id = $1 AND (status <> 'pending' OR lease_until IS NULL)",
            request.delivery_id,
        )
        self.wake.set()
        return await self._message(await self._get(request.tenant_id, request.delivery_id))

    async def RedeliverFailed(self, request: webhooks_pb2.RedeliverFailedRequest, context: Any) -> Any:
        if not request.HasField("since"):
            raise errors.InvalidRequest("since is required", error_code="MISSING_PARAMETER")
        result = await self.pool.execute(
            "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, next_attempt_at = now(), updated_at = now()"
            " WHERE status = 'failed' AND ($1 = '' OR tenant_id = $1) AND updated_at >= $2",
            request.tenant_id,
            request.since.ToDatetime(tzinfo=datetime.UTC),
        )
        self.wake.set()
        return webhooks_pb2.RedeliverFailedResponse(redelivered=int(result.split()[-1]))

    async def SendTestEvent(self, request: webhooks_pb2.SendTestEventRequest, context: Any) -> Any:
        info = await self.tenants.get(request.tenant_id)
        if not info.webhook_url:
            raise errors.InvalidRequest(
                "This tenant has no webhook URL to send a test event to.", error_code="NO_WEBHOOK_URL"
            )
        event_id = ids.new_id("evt")
        body = events.envelope(
            event_id=event_id,
            event_type="webhook.test",
            tenant_id=request.tenant_id,
            data={"message": "A test event from INVO Network."},
        )
        await self.record([(event_id, request.tenant_id, "webhook.test", body)])
        row = await self.pool.fetchrow(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1", event_id)
        return await self._message(row)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("nats_url")
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    tenants = TenantCache(tenants_pb2_grpc.TenantsServiceStub(tenants_channel), settings.rpc_timeout_s)
    service = Webhooks(pool, settings, tenants)
    svc.on_shutdown(service.close)
    nc = await events.connect_nats(settings.nats_url, name="invo-webhooks")
    svc.on_shutdown(nc.close)
    js = nc.jetstream()
    await events.ensure_stream(js, stream=settings.nats_stream, subject_prefix=settings.nats_subject_prefix)
    svc.background(service.consume(js), "webhook-consumer")
    svc.background(service.send_loop(), "webhook-sender")
    svc.background(service.outcomes.run(), "webhook-outcomes")
    svc.add(
        webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server,
        service,
        webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"].full_name,
    )
