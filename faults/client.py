"""A partner's HTTP client: one request retried with the same body (so the same idempotency key or
purchase_reference) until the network gives a definite answer.

Definite: any 2xx, and any 4xx but the ones that mean "not yet" (409 `pending` while a purchase is
in flight, 429 `RATE_LIMITED`). Indefinite, so retried with capped, jittered backoff: a 5xx, a
timeout, a refused or dropped connection. The retries are bounded by a deadline: an answer still
indefinite then is `unresolved`, which the checks count as a violation (the network did not
recover in time). Every attempt is counted in the current phase's `Stats`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import time
from typing import Any

import aiohttp

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
RETRY_AFTER_MAX_S = 2.0  # a Retry-After beyond this is capped: the fault is ours, we know it ends
ATTEMPTS_MAX = 1000  # with the backoff cap, more than the longest deadline anyone passes
BODY_KEPT_MAX = 4096  # an answer body that is not JSON is kept this long in the records


@dataclasses.dataclass
class Stats:
    """What the clients saw during one phase (all flows together)."""

    name: str
    requests: int = 0  # HTTP attempts, retries included
    answers_2xx: int = 0
    answers_4xx: int = 0
    answers_5xx: int = 0
    # 5xx answers that are not a 503 with Retry-After (a 500, say): a fault must never cause one.
    answers_5xx_bad: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    last_indefinite_at: float = 0.0  # time.monotonic() of the latest indefinite answer
    first_indefinite_at: float = 0.0
    refusals: dict[str, int] = dataclasses.field(default_factory=dict)  # definite 4xx by error_code

    def indefinite(self, now: float) -> None:
        if not self.first_indefinite_at:
            self.first_indefinite_at = now
        self.last_indefinite_at = now

    def summary(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("last_indefinite_at")
        out.pop("first_indefinite_at")
        return out


@dataclasses.dataclass
class Answer:
    status: int  # 0: no definite answer before the deadline
    body: Any
    attempts: int
    indefinite: int  # attempts that ended in a 5xx, a timeout or a connection error
    elapsed_s: float

    @property
    def definite(self) -> bool:
        return self.status != 0

    @property
    def error_code(self) -> str:
        return str(self.body.get("error_code") or "") if isinstance(self.body, dict) else ""


def not_yet(status: int, body: Any) -> bool:
    """A definite-looking answer that says "ask again" (nothing was decided yet)."""
    if status == 409 and isinstance(body, dict) and body.get("status") == "pending":
        return True
    return status == 429 and isinstance(body, dict) and body.get("error_code") == "RATE_LIMITED"


class Gateway:
    """The public gateway (SDK keys) and its admin API (the bootstrap token), as a partner sees them."""

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str,
        request_timeout_s: float,
        rng: random.Random,
        alternates: tuple[str, ...] = (),
    ) -> None:
        self.base_url = base_url
        # Every gateway replica, each attempt to the next (a killed one's attempts fail and are retried
        # on another), as a load balancer in front of them would spread a partner's requests.
        self._bases = itertools.cycle((base_url, *alternates))
        self.admin_token = admin_token
        self.request_timeout_s = request_timeout_s
        self.rng = rng
        self.stats = Stats("setup")
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        # A bounded pool: the load is paced, and a dead gateway must not leave hundreds of sockets.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def headers(self, *, key: str | None = None, admin: bool = False) -> dict[str, str]:
        h = {}
        if key is not None:
            h["X-Game-Secret-Key"] = key
        if admin:
            h["Authorization"] = f"Bearer {self.admin_token}"
        return h

    async def once(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, float | None]:
        """One attempt: (status, parsed body, Retry-After seconds). Raises on a transport error."""
        if self.session is None:
            raise RuntimeError("Gateway used outside `async with`")
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        full = url if url.startswith("http") else next(self._bases) + url
        async with self.session.request(
            method, full, json=body, params=params, headers=headers, timeout=timeout
        ) as resp:
            raw = await resp.read()
            try:
                parsed: Any = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw[:BODY_KEPT_MAX].decode(errors="replace")
            retry_after: float | None = None
            try:
                retry_after = float(resp.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
            return resp.status, parsed, retry_after

    async def until_definite(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        key: str | None = None,
        admin: bool = False,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stats: Stats | None = None,
    ) -> Answer:
        """Send the same request until a definite answer or `deadline` (time.monotonic())."""
        st = stats or self.stats
        headers = {**self.headers(key=key, admin=admin), **(headers or {})}
        started = time.monotonic()
        attempts = indefinite = 0
        failures = 0
        while attempts < ATTEMPTS_MAX:
            attempts += 1
            st.requests += 1
            wait_s: float | None = None
            try:
                status, parsed, retry_after = await self.once(method, url, headers=headers, body=body, params=params)
            except TimeoutError:
                st.timeouts += 1
                status, parsed, retry_after = 0, None, None
            except (aiohttp.ClientError, OSError):
                st.connection_errors += 1
                status, parsed, retry_after = 0, None, None
            now = time.monotonic()
            if status >= 500:
                st.answers_5xx += 1
                if status != 503 or not retry_after:
                    st.answers_5xx_bad += 1
            if 200 <= status < 300:
                st.answers_2xx += 1
                return Answer(status, parsed, attempts, indefinite, now - started)
            if 400 <= status < 500:
                if not not_yet(status, parsed):
                    st.answers_4xx += 1
                    code = parsed.get("error_code") if isinstance(parsed, dict) else None
                    label = f"{status} {code or (parsed.get('status') if isinstance(parsed, dict) else '')}"
                    st.refusals[label] = st.refusals.get(label, 0) + 1
                    return Answer(status, parsed, attempts, indefinite, now - started)
                wait_s = min(retry_after, RETRY_AFTER_MAX_S) if retry_after else None
            else:
                indefinite += 1
                st.indefinite(now)
                if status == 503 and retry_after:
                    wait_s = min(retry_after, RETRY_AFTER_MAX_S)
            failures += 1
            if wait_s is None:
                backoff = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures - 1, 16))
                wait_s = backoff * (0.5 + self.rng.random() / 2)  # jitter: clients that failed together spread out
            if now + wait_s >= deadline:
                break
            await asyncio.sleep(wait_s)
        return Answer(0, None, attempts, indefinite, time.monotonic() - started)
