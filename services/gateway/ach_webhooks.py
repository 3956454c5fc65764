"""`POST /webhooks/ach`: the ACH provider's webhooks in (Modern Treasury's scheme).

The provider signs the raw body with HMAC-SHA256 under its webhook key and sends the hex digest as
`X-Signature`, and a unique `X-Webhook-ID`. The signature is checked here in constant time against
every key of INVO_ACH_WEBHOOK_KEYS (so a key rotates: list the new one beside the old until the
provider has switched), before any handler runs; the payouts service stores the event raw (deduped
on the webhook id) and applies it. A failure to apply is a 5xx, so the provider sends it again.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from aiohttp import web
from invo.v1 import payouts_pb2

from services.common import errors
from services.gateway import declare
from services.gateway.auth import one_header
from services.gateway.context import ctx_of
from services.gateway.http import json_response, parse_json
from services.gateway.payouts_schema import AchAck
from services.gateway.processor_webhooks import VERIFIED_PAYLOAD, VERIFIERS, read_limited

routes = declare.Table(security=declare.SIGNED)

ACH_EVENT_BYTES_MAX = 256 * 1024
_HEX_64 = re.compile(r"^[0-9a-fA-F]{64}$")
_WEBHOOK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def _keys(raw: str) -> list[bytes]:
    return [k.strip().encode() for k in raw.split(",") if k.strip()]


async def ach_signature(request: web.Request) -> str | None:
    keys = _keys(ctx_of(request).settings.ach_webhook_keys)
    if not keys:
        raise errors.Unavailable("ACH webhooks are not configured.", error_code="WEBHOOKS_NOT_CONFIGURED")
    if request.method != "POST":
        return None
    signature = one_header(request, "X-Signature")
    if not _HEX_64.match(signature) or not _WEBHOOK_ID.match(one_header(request, "X-Webhook-ID")):
        raise errors.InvalidRequest("Invalid ACH provider signature.", error_code="INVALID_SIGNATURE")
    raw = await read_limited(request, ACH_EVENT_BYTES_MAX)
    wanted = signature.lower().encode()
    matched = False
    for key in keys:  # every key is tried, so the time does not tell which one matched
        matched |= hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).hexdigest().encode(), wanted)
    if not matched:
        raise errors.InvalidRequest("Invalid ACH provider signature.", error_code="INVALID_SIGNATURE")
    return raw.decode("utf-8", errors="replace")


VERIFIERS["/webhooks/ach"] = ach_signature


ACH_EVENTS = declare.register(
    declare.Declaration(
        method="POST",
        path="/webhooks/ach",
        summary="The ACH provider's payment-order events (X-Signature verified), stored and applied once.",
        security=declare.SIGNED,
        answers={200: AchAck},
        errors=(400, 413, 503),
        description="Called by the ACH provider, not by partners: every request must carry a valid X-Signature and"
        " X-Webhook-ID.",
    )
)


@routes.adopt(ACH_EVENTS)
async def ach_webhook(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    payload: str = request[VERIFIED_PAYLOAD]
    try:
        event = parse_json(payload)  # signed, yet read as strictly as a partner's body
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("event"), str)
            or not isinstance(event.get("data"), dict)
        ):
            raise ValueError("not an event")
    except ValueError as exc:
        raise errors.InvalidRequest("Malformed ACH provider event.", error_code="INVALID_EVENT") from exc
    ack: payouts_pb2.ProviderEventAck = await ctx.backends.call(
        ctx.backends.payouts.ReceiveProviderEvent,
        payouts_pb2.ProviderEvent(webhook_id=one_header(request, "X-Webhook-ID"), body_json=payload),
        timeout_s=3 * ctx.settings.rpc_timeout_s,
    )
    return json_response({"received": True, "duplicate": ack.duplicate, "ignored": ack.ignored})
