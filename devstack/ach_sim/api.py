"""The simulator's REST API: the subset of Modern Treasury's that the payouts service calls.

`POST /api/payment_orders` (201), `GET /api/payment_orders/{id}`, `GET /api/payment_orders` (a bare
JSON array, newest first, filtered by `metadata[key]=value`, `external_id`, `status`, paged by
`per_page` and the `X-After-Cursor` header) and `GET /api/ping`. HTTP basic auth (organization id
as the user, API key as the password; 401 otherwise). `Idempotency-Key` as Modern Treasury keeps
it: a successful answer is replayed (same status and body) for 24 hours, a request that failed is
simply run again, and one arriving while another with its key is still running gets a 409 (which
the SDK retries). The API-call faults the test controls set (503s, held calls, late answers) apply
here.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web

from devstack.ach_sim.lifecycle import KINDS, Lifecycle
from devstack.ach_sim.orders import ApiError, check_create, invalid, new_order
from devstack.journal import Journal

log = logging.getLogger("invo.ach_sim")

IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_SWEEP_EVERY = 1_000
CALLS_KEPT_MAX = 10_000  # the API calls remembered for tests (/_sim/state), newest kept
PER_PAGE_DEFAULT = 25
PER_PAGE_MAX = 100
LIST_FILTERS = ("external_id", "status", "type", "direction", "originating_account_id")


@dataclasses.dataclass
class Faults:
    fail_next: int = 0  # answer the next N API calls with 503
    hold_next: int = 0  # hold the next N calls `hold_s` before running them (a slow provider; in flight)
    hold_s: float = 30.0
    slow_next: int = 0  # run the next N calls at once (their effects happen) but answer after `slow_s`
    slow_s: float = 2.0
    # The faults count only API calls whose "METHOD /path" ends with this ("": every call), e.g.
    # "POST /api/payment_orders" for a create.
    match: str = ""


class AchApi(Lifecycle):
    """Modern Treasury's payment orders over `Lifecycle`, for one organization and API key."""

    def __init__(
        self,
        *,
        organization_id: str,
        api_key: str,
        originating_account_id: str,
        webhook_key: str,
        webhook_url: str,
        journal: Journal | None = None,
        settle_delay_s: float = 2.0,
    ) -> None:
        super().__init__(
            webhook_key=webhook_key,
            webhook_url=webhook_url,
            journal=journal if journal is not None else Journal(None, KINDS),
            settle_delay_s=settle_delay_s,
        )
        credentials = base64.b64encode(f"{organization_id}:{api_key}".encode()).decode()
        self._authorization = f"Basic {credentials}"
        self.originating_account_id = originating_account_id
        self.faults = Faults()
        self.calls: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=CALLS_KEPT_MAX)
        self._in_flight: set[str] = set()
        self._keys_since_sweep = 0

    async def api(self, request: web.Request) -> web.Response:
        status, body, headers = await self._answer(request)
        self.calls.append((request.method, request.path, status))
        return web.json_response(body, status=status, headers=headers)

    async def _answer(self, request: web.Request) -> tuple[int, Any, dict[str, str]]:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), self._authorization.encode()):
            return 401, ApiError(401, "invalid_key", "Invalid organization id or API key").body(), {}
        targeted = f"{request.method} {request.path}".endswith(self.faults.match)
        if self.faults.fail_next > 0 and targeted:
            self.faults.fail_next -= 1
            body = ApiError(503, "service_unavailable", "Simulated outage: try again later").body()
            return 503, body, {}
        raw = await request.read()  # all of it before anything waits: a held call has its body
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if key:
            stored = self.idempotency.get(key)
            if stored is not None and stored[0] > time.time():
                return stored[1], stored[2], {"Idempotent-Replayed": "true"}
            if key in self._in_flight:
                error = ApiError(409, "conflict", "A request with this Idempotency-Key is still being processed")
                return 409, error.body(), {}
            self._in_flight.add(key)
        try:
            if self.faults.hold_next > 0 and targeted:
                self.faults.hold_next -= 1
                await asyncio.sleep(self.faults.hold_s)
            try:
                # No await from here to the record of its key: a retry sees the order, or nothing.
                status, body, headers = self._route(request.method, request.path, request.query, raw)
            except ApiError as exc:
                return exc.status, exc.body(), exc.headers
            if key and 200 <= status < 300:
                self._forget_expired_keys()
                self.idempotency[key] = [time.time() + IDEMPOTENCY_TTL_S, status, body]
                self.journal.put("idempotency", key, self.idempotency[key])
        finally:
            if key:
                self._in_flight.discard(key)
        if self.faults.slow_next > 0 and targeted:
            # The work is done (and its moves scheduled): only the answer is late (a lost answer).
            self.faults.slow_next -= 1
            await asyncio.sleep(self.faults.slow_s)
        return status, body, headers

    def _forget_expired_keys(self) -> None:
        """Keys older than 24 hours are forgotten, as Modern Treasury forgets them; looked at once
        per `IDEMPOTENCY_SWEEP_EVERY` new keys, so that memory stays bounded by a day's keys."""
        self._keys_since_sweep += 1
        if self._keys_since_sweep < IDEMPOTENCY_SWEEP_EVERY:
            return
        self._keys_since_sweep = 0
        now = time.time()
        for key in [k for k, v in self.idempotency.items() if v[0] <= now]:
            del self.idempotency[key]
            self.journal.put("idempotency", key, None)

    def _route(self, method: str, path: str, query: Any, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = path.strip("/").split("/")[1:]  # drop "api"
        if parts == ["ping"] and method == "GET":
            return 200, {"ping": "pong"}, {}
        if parts == ["payment_orders"] and method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, "parameter_invalid", "The request body is not valid JSON") from None
            return 201, self._create(body), {}
        if parts == ["payment_orders"] and method == "GET":
            page, headers = self._list(query)
            return 200, page, headers
        if len(parts) == 2 and parts[0] == "payment_orders" and method == "GET":
            order = self.orders.get(parts[1])
            if order is None:
                raise ApiError(404, "resource_not_found", "Resource not found", "id")
            return 200, order, {}
        raise ApiError(404, "not_found", "Route not found")

    def _create(self, body: Any) -> dict[str, Any]:
        checked = check_create(body, self.originating_account_id)
        order = new_order(checked)
        log.info(
            "payment order %s created: %d cents to the account ending %s, bound to end %s%s",
            order["id"],
            order["amount"],
            checked.last4,
            checked.outcome.end,
            f" ({checked.outcome.return_code})" if checked.outcome.return_code else "",
        )
        self.begin(order, checked.outcome)
        return order

    def _list(self, query: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """One page, newest first, and its headers: `X-Per-Page`, and `X-After-Cursor` (the last
        order's id) when more follow, which the SDK sends back as `after_cursor`."""
        try:
            per_page = int(query.get("per_page", PER_PAGE_DEFAULT))
        except ValueError:
            raise invalid("per_page", "per_page must be an integer") from None
        if not 1 <= per_page <= PER_PAGE_MAX:
            raise invalid("per_page", f"per_page must be between 1 and {PER_PAGE_MAX}")
        wanted = {name: query[name] for name in LIST_FILTERS if name in query}
        metadata = {key[len("metadata[") : -1]: value for key, value in query.items() if key.startswith("metadata[")}
        cursor = query.get("after_cursor") or None
        if cursor is not None and cursor not in self.orders:
            raise invalid("after_cursor", "after_cursor is not a cursor this list gave")
        page: list[dict[str, Any]] = []
        more = False
        for order in reversed(self.orders.values()):
            if cursor is not None:
                if order["id"] == cursor:
                    cursor = None
                continue
            if any(order.get(name) != value for name, value in wanted.items()):
                continue
            if any(order["metadata"].get(name) != value for name, value in metadata.items()):
                continue
            if len(page) == per_page:
                more = True
                break
            page.append(order)
        headers = {"X-Per-Page": str(per_page)}
        if more:
            headers["X-After-Cursor"] = page[-1]["id"]
        return page, headers
