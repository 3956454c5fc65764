"""Test helpers: an HTTP client for the gateway, and waiting on conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

ENVELOPE_KEYS = {"status", "error", "error_code", "message", "request_id"}


class Response:
    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body!r}>"


class Api:
    def __init__(self, base_url: str, *, admin_token: str) -> None:
        self.base_url = base_url
        self.admin_token = admin_token
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        admin: bool = False,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        assert self.session is not None
        h = dict(headers or {})
        if key is not None:
            h["X-Game-Secret-Key"] = key
        if admin:
            h["Authorization"] = f"Bearer {self.admin_token}"
        async with self.session.request(method, self.base_url + path, json=json, data=data, headers=h) as resp:
            text = await resp.text()
            try:
                import json as _json

                body: Any = _json.loads(text) if text else None
            except ValueError:
                body = text
            return Response(resp.status, body, resp.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Response:
        return await self.request("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> Response:
        return await self.request("PATCH", path, **kw)

    async def credit(
        self, tenant_id: str, email: str, amount: str, *, reason: str = "test funding", **extra: Any
    ) -> Response:
        """An operator's credit of a player (the bootstrap token), with a fresh idempotency key
        unless `extra` names one: the admin API requires it."""
        body = {
            "tenant_id": tenant_id,
            "player_email": email,
            "amount": amount,
            "reason": reason,
            "idempotency_key": f"fund-{uuid.uuid4().hex}",
            **extra,
        }
        return await self.post("/admin/players/credit", admin=True, json=body)

    async def create_tenant(self, **settings: Any) -> dict[str, Any]:
        body = {"name": "Test Game", "currency_name": "Gold Coins", **settings}
        resp = await self.post("/admin/tenants", admin=True, json=body)
        assert resp.status == 201, resp
        return dict(resp.body)


def assert_envelope(resp: Response, status: int, error_code: str) -> None:
    """The documented error envelope, exactly, with the expected status and code."""
    assert resp.status == status, resp
    assert isinstance(resp.body, dict), resp
    assert ENVELOPE_KEYS <= set(resp.body), resp
    assert resp.body["status"] == "error"
    assert resp.body["error_code"] == error_code, resp
    assert resp.body["error"] == resp.body["error"].lower()
    assert resp.body["request_id"] == resp.headers["X-Request-Id"]
    assert resp.body["message"]


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll `check` until it returns a truthy value or raise after `timeout_s`; the failure says
    what `describe()` (awaited if it answers an awaitable) gives then: the state last seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            message = f"condition not met within {timeout_s}s (last: {result!r})"
            if describe is not None:
                detail = describe()
                message += f"; {await detail if inspect.isawaitable(detail) else detail}"
            raise AssertionError(message)
        await asyncio.sleep(interval_s)
