"""Texting a phone: one interface, two providers.

- `TwilioSms`: an HTTP SMS API in the shape of Twilio's Messages API (`POST
  /2010-04-01/Accounts/{AccountSid}/Messages.json`, form fields `To`, `From` or
  `MessagingServiceSid`, `Body`, HTTP basic auth with the account id and its token). Production
  texts through it (`INVO_SMS_PROVIDER=twilio`).
- `OutboxSms`: development only. The text is kept in the transfers schema (`sms_dev_outbox`) and
  read through `GET /admin/dev/sms`, which exists only in development: the tests and the demo
  read PINs and claim codes there.

A provider raises `SmsRefused` when the API refused this text for good (a number it cannot text:
retrying would not help) and `SmsUnavailable` for anything a retry may fix (a timeout, a 5xx, a
429). Bodies hold PINs and claim codes: they are never logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

import aiohttp
import asyncpg

log = logging.getLogger("invo.transfers.sms")

ERROR_TEXT_MAX = 200


class SmsError(Exception):
    pass


class SmsRefused(SmsError):
    """The provider will never send this text (an invalid or unreachable number)."""


class SmsUnavailable(SmsError):
    """The provider did not take the text this time; the same text may be retried."""


class SmsProvider(Protocol):
    async def send(self, *, to: str, body: str, message_id: str) -> str:
        """Text `body` to `to` (E.164); answers the provider's id of the message. `message_id` is
        ours, for a provider that can dedupe on it."""
        ...

    async def close(self) -> None: ...


class TwilioSms:
    def __init__(self, *, api_base: str, account_sid: str, auth_token: str, sender: str, timeout_s: float) -> None:
        if not (api_base and account_sid and auth_token and sender):
            raise ValueError(
                "the SMS API needs INVO_SMS_API_BASE, INVO_SMS_ACCOUNT_SID, INVO_SMS_AUTH_TOKEN, INVO_SMS_FROM"
            )
        self.url = f"{api_base.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        # HTTP basic auth as a header: aiohttp 3.14 deprecates BasicAuth and the `auth` parameter.
        self.headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}
        # A messaging service id (MG...) picks the sender number itself; otherwise From is ours.
        self.sender_field = "MessagingServiceSid" if sender.startswith("MG") else "From"
        self.sender = sender
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def send(self, *, to: str, body: str, message_id: str) -> str:
        form = {"To": to, self.sender_field: self.sender, "Body": body}
        try:
            async with self._http().post(self.url, data=form, headers=self.headers) as resp:
                payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SmsUnavailable(f"the SMS API did not answer ({type(exc).__name__})") from None
        if status in (200, 201) and isinstance(payload, dict) and isinstance(payload.get("sid"), str):
            return str(payload["sid"])
        # Only the provider's error code: its message names the phone number, which no log may hold.
        detail = ""
        if isinstance(payload, dict) and isinstance(payload.get("code"), int | str):
            detail = f"(code {str(payload['code'])[:ERROR_TEXT_MAX]})"
        if status == 429 or status >= 500:
            raise SmsUnavailable(f"the SMS API answered {status} {detail}")
        if 400 <= status < 500 and status not in (401, 403):
            raise SmsRefused(f"the SMS API refused the text: {status} {detail}")
        # 401/403 (our credentials) or an answer without an id: ours to fix, the text may go later.
        raise SmsUnavailable(f"the SMS API answered {status} {detail}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class OutboxSms:
    """Development: a text is a row a developer (or a test) reads back. Idempotent on our id."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def send(self, *, to: str, body: str, message_id: str) -> str:
        await self.pool.execute(
            "INSERT INTO sms_dev_outbox (provider_id, to_phone, body) VALUES ($1, $2, $3)"
            " ON CONFLICT (provider_id) DO NOTHING",
            message_id,
            to,
            body,
        )
        return message_id

    async def read(self, *, phone: str, limit: int) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT to_phone, body, created_at FROM sms_dev_outbox WHERE ($1 = '' OR to_phone = $1)"
                " ORDER BY id DESC LIMIT $2",
                phone,
                limit,
            )
        )

    async def close(self) -> None:
        return None
