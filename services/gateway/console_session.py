"""The console's sign-in: a sealed session cookie, a CSRF token, and the admin API it speaks to.

An operator signs in with their own credential. The console keeps it only inside the session
cookie, sealed with AES-256-GCM under `INVO_CONSOLE_KEYS` (HttpOnly, SameSite=Strict, Secure over
https, path /console, for `INVO_CONSOLE_SESSION_S`), and makes every read and action through the
gateway's own admin API with it, over loopback: the same validation, the same role checks, the
same operator action log as `invoctl` and any script. Revoking the operator ends the session at
the next page. Every form carries the session's CSRF token.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web

from services.common import crypto
from services.common.logs import REQUEST_ID_HEADER, request_id_var

COOKIE = "invo_console"
AAD = "invo-console-session"
COOKIE_LEN_MAX = 4000
API_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class Session:
    credential: str
    operator_id: str
    role: str
    csrf: str
    expires: int

    def seal(self, keyring: crypto.Keyring) -> str:
        kid, blob = keyring.seal(json.dumps(dataclasses.asdict(self)), aad=AAD)
        return f"{kid}.{base64.urlsafe_b64encode(blob).decode().rstrip('=')}"

    @staticmethod
    def open(keyring: crypto.Keyring, value: str | None) -> Session | None:
        """The session in a cookie, or None: absent, altered, sealed under a key no longer
        listed, or expired."""
        if not value or len(value) > COOKIE_LEN_MAX or "." not in value:
            return None
        kid, _, text = value.partition(".")
        try:
            blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = json.loads(keyring.open(kid, blob, aad=AAD))
            session = Session(**fields)
        except (binascii.Error, ValueError, TypeError, crypto.KeyringError, Exception):
            return None
        return session if session.expires > time.time() else None


def new_session(credential: str, operator_id: str, role: str, lifetime_s: int) -> Session:
    return Session(credential, operator_id, role, secrets.token_urlsafe(24), int(time.time()) + lifetime_s)


def set_cookie(resp: web.StreamResponse, request: web.Request, value: str, max_age: int) -> None:
    resp.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )


def clear_cookie(resp: web.StreamResponse) -> None:
    resp.del_cookie(COOKIE, path="/console")


class AdminApi:
    """The gateway's own admin API, as one operator."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, credential: str, client: str | None) -> None:
        self.http = http
        self.base_url = base_url
        self.credential = credential
        self.client = client or ""  # the browser's address: failed sign-ins count against it

    async def call(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {
            "Authorization": f"Bearer {self.credential}",
            REQUEST_ID_HEADER: request_id_var.get(),
            "X-Invo-Console-Client": self.client,
        }
        params = {k: v for k, v in (query or {}).items() if v}
        try:
            async with self.http.request(
                method, self.base_url + path, params=params, json=body, headers=headers, allow_redirects=False
            ) as resp:
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:
                    return resp.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 503, {"error_code": "SERVICE_UNAVAILABLE", "message": "The admin API did not answer; retry shortly."}


def client(timeout_s: float = API_TIMEOUT_S) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
