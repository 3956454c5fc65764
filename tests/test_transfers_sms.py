"""The Twilio-shaped SMS adapter (`services/transfers/sms.py:TwilioSms`) against a stand-in for the
external SMS API: a small aiohttp server of this module's own that records each request and
answers as the test tells it. And the settings that pick a provider.

What the adapter must do: post the form Twilio's Messages API takes, with HTTP basic auth; answer
the provider's message id; raise `SmsRefused` for a text the provider will never send and
`SmsUnavailable` for anything a later retry may fix; never let a text's body (a PIN, a claim
code) reach a log.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from services.common.config import ConfigError, Settings
from services.transfers.sms import SmsRefused, SmsUnavailable, TwilioSms

SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "test-auth-token-5e3c"
FROM = "+15005550006"
TO = "+14155550123"
PIN, CLAIM_CODE = "482913", "7K3M-QX9P-2B4R-HT6W"
PIN_BODY = f"{PIN} is your INVO transfer PIN. It expires in 10 minutes. Never share it."
CODE_BODY = f"Your INVO claim code: {CLAIM_CODE} (expires in 24 hours)."
MESSAGES_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
TIMEOUT_S = 0.5


@dataclasses.dataclass
class Received:
    method: str
    path: str
    content_type: str
    auth: tuple[str, str] | None  # (login, password) of the Authorization header
    form: dict[str, str]


class FakeSmsApi:
    """The provider: each request recorded, answered with the next planned (status, JSON) or, when
    told to hang, never answered until the test ends."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plan: list[tuple[int, Any]] = []
        self.hang = False
        self.released = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.released.set()  # a hanging answer ends, so the server can close
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        form = await request.post()
        self.received.append(
            Received(
                method=request.method,
                path=request.path,
                content_type=request.content_type,
                auth=basic_auth(header),
                form={k: str(v) for k, v in form.items()},
            )
        )
        if self.hang:
            await self.released.wait()
        status, payload = self.plan.pop(0) if self.plan else (201, None)
        if payload is None and status == 201:
            # Twilio's answer echoes the message, body included.
            payload = {
                "sid": f"SM{len(self.received):032x}",
                "status": "queued",
                "to": form.get("To"),
                "body": form.get("Body"),
            }
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/html")
        return web.json_response(payload, status=status)


def basic_auth(header: str | None) -> tuple[str, str] | None:
    if header is None or not header.startswith("Basic "):
        return None
    login, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    return login, password


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@pytest.fixture
async def provider() -> AsyncIterator[FakeSmsApi]:
    server = FakeSmsApi()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def adapter(base: str, *, sender: str = FROM, timeout_s: float = TIMEOUT_S) -> TwilioSms:
    return TwilioSms(api_base=base, account_sid=SID, auth_token=TOKEN, sender=sender, timeout_s=timeout_s)


def assert_no_body_logged(caplog: pytest.LogCaptureFixture, *bodies: str) -> None:
    secrets = [*bodies, PIN, CLAIM_CODE, CLAIM_CODE.replace("-", "")]  # the texts, and what they carry
    for record in caplog.records:
        seen = " ".join((record.getMessage(), repr(record.args), str(record.exc_info or ""), record.exc_text or ""))
        for secret in secrets:
            assert secret not in seen, (record.name, record.levelname, record.getMessage())
    for secret in secrets:
        assert secret not in caplog.text


# -- what is sent, what comes back --------------------------------------------------------------------


async def test_a_text_posts_twilios_form_with_basic_auth_and_answers_the_message_sid(
    provider: FakeSmsApi, logs: pytest.LogCaptureFixture
) -> None:
    sms = adapter(provider.base + "/")  # a trailing slash on the base changes nothing
    try:
        sid = await sms.send(to=TO, body=PIN_BODY, message_id="sms_1")
        second = await sms.send(to="+442079460018", body=CODE_BODY, message_id="sms_2")
    finally:
        await sms.close()
    assert sid == f"SM{1:032x}" and second == f"SM{2:032x}"
    first = provider.received[0]
    assert (first.method, first.path) == ("POST", MESSAGES_PATH)
    assert first.content_type == "application/x-www-form-urlencoded"
    assert first.auth == (SID, TOKEN)
    assert first.form == {"To": TO, "From": FROM, "Body": PIN_BODY}
    assert provider.received[1].form == {"To": "+442079460018", "From": FROM, "Body": CODE_BODY}
    assert_no_body_logged(logs, PIN_BODY, CODE_BODY)


async def test_a_messaging_service_sender_goes_as_messaging_service_sid(provider: FakeSmsApi) -> None:
    service_sid = "MG9752274e9e519418a7406176694466fa"
    sms = adapter(provider.base, sender=service_sid)
    try:
        await sms.send(to=TO, body=PIN_BODY, message_id="sms_1")
    finally:
        await sms.close()
    (got,) = provider.received
    assert got.form == {"To": TO, "MessagingServiceSid": service_sid, "Body": PIN_BODY}


async def test_an_invalid_number_is_refused_for_good(provider: FakeSmsApi, logs: pytest.LogCaptureFixture) -> None:
    provider.plan = [(400, twilio_error(400, 21211, "The 'To' number +1415555 is not a valid phone number."))]
    sms = adapter(provider.base)
    try:
        with pytest.raises(SmsRefused) as caught:
            await sms.send(to="+1415555", body=PIN_BODY, message_id="sms_1")
    finally:
        await sms.close()
    assert "21211" in str(caught.value)
    assert PIN_BODY not in str(caught.value) and PIN not in str(caught.value)  # the caller logs it
    assert "+1415555" not in str(caught.value)  # nor the number the provider's message names
    assert len(provider.received) == 1
    assert_no_body_logged(logs, PIN_BODY)


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (429, twilio_error(429, 20429, "Too Many Requests")),
        (500, twilio_error(500, 20500, "Internal Server Error")),
        (503, twilio_error(503, 20503, "Service Unavailable")),
        (502, "<html><body>Bad Gateway</body></html>"),  # a proxy's page, not JSON
        # Our own credentials are wrong: ours to fix, and the text may go once they are.
        (401, twilio_error(401, 20003, "Authenticate")),
        (403, twilio_error(403, 20003, "Permission Denied")),
        (201, {"status": "queued"}),  # taken, but no id to keep: not known to be sent
    ],
)
async def test_what_a_retry_may_fix_is_unavailable(
    provider: FakeSmsApi, logs: pytest.LogCaptureFixture, status: int, payload: Any
) -> None:
    provider.plan = [(status, payload)]
    sms = adapter(provider.base)
    try:
        with pytest.raises(SmsUnavailable) as caught:
            await sms.send(to=TO, body=CODE_BODY, message_id="sms_1")
        assert CODE_BODY not in str(caught.value)
        # The same text later goes (the provider is back): the adapter was not left broken.
        assert (await sms.send(to=TO, body=CODE_BODY, message_id="sms_1")).startswith("SM")
    finally:
        await sms.close()
    assert [r.form["Body"] for r in provider.received] == [CODE_BODY, CODE_BODY]
    assert_no_body_logged(logs, CODE_BODY)


async def test_a_provider_that_never_answers_is_unavailable_after_the_timeout(
    provider: FakeSmsApi, logs: pytest.LogCaptureFixture
) -> None:
    provider.hang = True
    sms = adapter(provider.base, timeout_s=TIMEOUT_S)
    started = time.monotonic()
    try:
        with pytest.raises(SmsUnavailable):
            await sms.send(to=TO, body=PIN_BODY, message_id="sms_1")
    finally:
        await sms.close()
    assert time.monotonic() - started < TIMEOUT_S + 5  # bounded by timeout_s, not by the provider
    assert len(provider.received) == 1  # it did reach the provider, which kept it
    assert_no_body_logged(logs, PIN_BODY)


async def test_a_closed_port_is_unavailable(logs: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sms = adapter(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(SmsUnavailable) as caught:
            await sms.send(to=TO, body=PIN_BODY, message_id="sms_1")
    finally:
        await sms.close()
    assert PIN_BODY not in str(caught.value)
    assert_no_body_logged(logs, PIN_BODY)


async def test_the_adapter_uses_no_deprecated_aiohttp_api(provider: FakeSmsApi) -> None:
    """The suite turns every warning into a failure, and aiohttp 4 drops what is deprecated now."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sms = adapter(provider.base)
        try:
            await sms.send(to=TO, body=PIN_BODY, message_id="sms_1")
        finally:
            await sms.close()
    assert [str(w.message) for w in caught] == []
    assert provider.received[0].auth == (SID, TOKEN)


def test_the_adapter_needs_every_setting() -> None:
    for missing in ("api_base", "account_sid", "auth_token", "sender"):
        kwargs = {"api_base": "https://api.twilio.com", "account_sid": SID, "auth_token": TOKEN, "sender": FROM}
        kwargs[missing] = ""
        with pytest.raises(ValueError):
            TwilioSms(timeout_s=TIMEOUT_S, **kwargs)


# -- the settings that pick a provider ----------------------------------------------------------------


def test_production_refuses_the_development_outbox() -> None:
    with pytest.raises(ConfigError, match="INVO_SMS_PROVIDER"):
        Settings.from_env({"INVO_ENVIRONMENT": "production", "INVO_SMS_PROVIDER": "outbox"})
    with pytest.raises(ConfigError, match="INVO_SMS_PROVIDER"):
        Settings.from_env({"INVO_ENVIRONMENT": "production"})  # the outbox is the default
    settings = Settings.from_env({"INVO_ENVIRONMENT": "production", "INVO_SMS_PROVIDER": "twilio"})
    assert settings.sms_provider == "twilio"
    assert Settings.from_env({"INVO_ENVIRONMENT": "development"}).sms_provider == "outbox"


@pytest.mark.parametrize("name", ["nexmo", "sns", "twillio", "outbox "])
def test_an_unknown_provider_is_refused(name: str) -> None:
    for environment in ("development", "production"):
        with pytest.raises(ConfigError, match="INVO_SMS_PROVIDER"):
            Settings.from_env({"INVO_ENVIRONMENT": environment, "INVO_SMS_PROVIDER": name})
