"""The partners' webhook endpoints: one aiohttp server in the runner, a path per tenant.

Each delivery is verified the way the README tells partners to (`X-Invo-Signature: t=..,v1=..`,
HMAC-SHA256 of "<t>." + the raw body under the tenant's signing secret, any `v1` may match, at
most 5 minutes old), then recorded by event id: the first arrival, and how many times it came
(at-least-once delivery: a duplicate is counted, not refused). A bad signature, an event of
another tenant or a body that is not an event is answered 400 and counted: each is a violation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from faults.model import event_key

TOLERANCE_S = 300  # the README's replay window
EVENTS_KEPT_MAX = 1_000_000  # a run makes tens of thousands; past this the receiver refuses (and it shows)


@dataclasses.dataclass
class Received:
    event_id: str
    event_type: str
    tenant: int
    key: str | None
    first_at: float  # time.monotonic()
    deliveries: int = 1


def verify(raw: bytes, header: str, secret: str, *, now_s: float) -> bool:
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [v for k, v in fields if k == "t"]
    macs = [v for k, v in fields if k == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        return False
    if abs(now_s - int(stamps[0])) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, m) for m in macs)


class Receivers:
    def __init__(self) -> None:
        self.secrets: dict[int, str] = {}
        self.tenant_ids: dict[int, str] = {}
        self.events: dict[str, Received] = {}
        self.bad_signatures = 0
        self.wrong_tenant = 0
        self.malformed = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, tenant: int) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{tenant}"

    def register(self, tenant: int, tenant_id: str, secret: str) -> None:
        self.tenant_ids[tenant] = tenant_id
        self.secrets[tenant] = secret

    async def start(self, port: int) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook/{tenant}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            tenant = int(request.match_info["tenant"])
            secret = self.secrets[tenant]
        except (KeyError, ValueError):
            self.malformed += 1
            return web.Response(status=404)
        if not verify(raw, request.headers.get("X-Invo-Signature", ""), secret, now_s=time.time()):
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        try:
            event: Any = json.loads(raw)
            event_id, event_type, data = str(event["event_id"]), str(event["event_type"]), event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return web.Response(status=400, text="not an event")
        if event.get("tenant_id") != self.tenant_ids[tenant] or request.headers.get("X-Invo-Event-Id") != event_id:
            self.wrong_tenant += 1
            return web.Response(status=400, text="not this tenant's event")
        seen = self.events.get(event_id)
        if seen is not None:
            seen.deliveries += 1
        elif len(self.events) < EVENTS_KEPT_MAX:
            key = event_key(event_type, data) if isinstance(data, dict) else None
            self.events[event_id] = Received(event_id, event_type, tenant, key, time.monotonic())
        else:
            return web.Response(status=503, text="receiver full")
        return web.Response(text="ok")

    def by_key(self) -> dict[tuple[int, str, str], list[Received]]:
        out: dict[tuple[int, str, str], list[Received]] = {}
        for r in self.events.values():
            if r.key is not None:
                out.setdefault((r.tenant, r.event_type, r.key), []).append(r)
        return out
