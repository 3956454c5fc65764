"""The admin API over HTTP: one request, a bounded wait, the error envelope as an exception."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from invoctl.config import Config

TIMEOUT_S = 30.0
ANSWER_MAX_BYTES = 16 * 1024 * 1024


class ApiError(Exception):
    """The gateway refused the request: its status and its envelope."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        envelope = body if isinstance(body, dict) else {}
        self.code = str(envelope.get("error_code") or "")
        self.message = str(envelope.get("message") or body or "")
        super().__init__(f"{status} {self.code}: {self.message}")


def call(config: Config, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None) -> Any:
    url = config.url + path  # each parameter in it is quoted already (commands.fill)
    if query:
        url += "?" + urllib.parse.urlencode({k: _text(v) for k, v in query.items() if v is not None})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - the operator's own URL
    request.add_header("Authorization", f"Bearer {config.credential}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310
            return _decode(resp.read(ANSWER_MAX_BYTES))
    except urllib.error.HTTPError as exc:
        raise ApiError(exc.code, _decode(exc.read(ANSWER_MAX_BYTES))) from None


def call_raw(config: Config, method: str, path: str, *, query: dict[str, Any] | None = None) -> bytes:
    """The answer's bytes as they came (a statement's CSV), or ApiError."""
    url = config.url + path
    if query:
        url += "?" + urllib.parse.urlencode({k: _text(v) for k, v in query.items() if v is not None})
    request = urllib.request.Request(url, method=method)  # noqa: S310 - the operator's own URL
    request.add_header("Authorization", f"Bearer {config.credential}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310
            return bytes(resp.read(ANSWER_MAX_BYTES))
    except urllib.error.HTTPError as exc:
        raise ApiError(exc.code, _decode(exc.read(ANSWER_MAX_BYTES))) from None


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", errors="replace")
