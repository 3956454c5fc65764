"""The `/webhooks` surface: the card processor's events in (the ACH provider's: `ach_webhooks.py`).

Its authentication is the processor's signature (Stripe's scheme, checked by the `stripe` SDK),
verified by this surface's middleware before any handler runs; the handler hands the verified
event to the payments service, which stores it raw in its inbox and applies it. Replayed events
are acknowledged as duplicates; events of a type with no handler yet are acknowledged and kept. A
failure to apply one is a 5xx, so the processor sends it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import stripe
from aiohttp import web
from invo.v1 import payments_pb2

from services.common import errors
from services.gateway import declare, payments_schema
from services.gateway.auth import one_header
from services.gateway.context import ctx_of
from services.gateway.http import json_response, parse_json

# Documented by payments_schema.PROCESSOR_EVENTS; the body is the middleware's to check.
routes = declare.Table(security=declare.SIGNED)

SIGNATURE_TOLERANCE_S = 300
PROCESSOR_EVENT_BYTES_MAX = 512 * 1024  # Stripe's events are far smaller; the limit bounds memory
READ_CHUNK_BYTES = 64 * 1024
VERIFIED_PAYLOAD = "processor_payload"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_limited(request: web.Request, bytes_max: int) -> bytes:
    """The body, up to a limit of this surface's own: the app-wide client_max_size (for partner
    requests) is smaller than a processor event may be, and request.read() would apply it."""
    if request.content_length is not None and request.content_length > bytes_max:
        raise errors.PayloadTooLarge("The event is too large.")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > bytes_max:
            raise errors.PayloadTooLarge("The event is too large.")
        chunks.append(chunk)


Verifier = Callable[[web.Request], Awaitable[str | None]]
# Each provider's events by path, with the check of its own signature scheme.
VERIFIERS: dict[str, Verifier] = {}


@web.middleware
async def provider_signature(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only a body its provider signed reaches a handler, as `request[VERIFIED_PAYLOAD]`."""
    verify = VERIFIERS.get(request.path)
    if verify is None:
        return await handler(request)  # routing answers 404
    payload = await verify(request)
    if payload is not None:
        request[VERIFIED_PAYLOAD] = payload
    return await handler(request)


async def stripe_signature(request: web.Request) -> str | None:
    """The card processor's scheme (Stripe's, checked by the `stripe` SDK); None for a method
    other than POST (routing answers it; nothing is read)."""
    ctx = ctx_of(request)
    secret = ctx.settings.processor_webhook_secret
    if not secret:
        raise errors.Unavailable("Processor webhooks are not configured.", error_code="WEBHOOKS_NOT_CONFIGURED")
    if request.method != "POST":
        return None
    signature = one_header(request, "Stripe-Signature")
    # A header that was not UTF-8 arrives with surrogates, which the SDK cannot encode (a 500).
    if not signature.isascii():
        raise errors.InvalidRequest("Invalid processor signature.", error_code="INVALID_SIGNATURE")
    raw = await read_limited(request, PROCESSOR_EVENT_BYTES_MAX)
    payload = raw.decode("utf-8", errors="replace")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=SIGNATURE_TOLERANCE_S)
    except stripe.SignatureVerificationError as exc:
        raise errors.InvalidRequest("Invalid processor signature.", error_code="INVALID_SIGNATURE") from exc
    return payload


VERIFIERS["/webhooks/processor"] = stripe_signature


@routes.adopt(payments_schema.PROCESSOR_EVENTS)
async def processor_webhook(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    payload: str = request[VERIFIED_PAYLOAD]
    try:
        # Signed, yet parsed as strictly as a partner's body: a key twice is read one way by us and
        # maybe another by the payments service, and a lone surrogate cannot cross gRPC at all.
        event = parse_json(payload)
        event_id, event_type = str(event["id"]), str(event["type"])
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.InvalidRequest("Malformed processor event.", error_code="INVALID_EVENT") from exc
    ack = await ctx.backends.call(
        ctx.backends.payments.HandleProcessorEvent,
        payments_pb2.ProcessorEvent(event_id=event_id, type=event_type, payload_json=payload),
    )
    return json_response({"received": True, "duplicate": ack.duplicate, "ignored": ack.ignored})
