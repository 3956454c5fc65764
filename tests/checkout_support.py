"""What the hosted-checkout API tests share: minting a session with the SDK key, the page API with
the session token, reading and forging tokens, and the simulator's record of the charges a
session made. No browser: these are the calls the page's script makes, and the partner's."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
from typing import Any

import jwt

from devstack.stack import Stack
from tests.helpers import Api, Response, assert_envelope

SESSIONS = "/api/checkout/sessions"
PAGE = "/checkout/"
PAGE_SESSION = "/checkout/api/session"
PAY = "/checkout/api/pay"
CONFIRM = "/checkout/api/confirm"
CANCEL = "/checkout/api/cancel"
CARDS = "/checkout/api/cards"
TTL_S = 900  # the seed's 15 minutes
SUCCESS_URL = "https://partner.example/store/success"
CANCEL_URL = "https://partner.example/store/cancel"
METADATA = {"your_user_id": "u_42", "coin_pack": "starter"}
# The answer of a pay that charged: exactly these keys.
PAID_KEYS = {"status", "order_id", "transaction_id", "currency_received", "new_balance"}


@dataclasses.dataclass(frozen=True)
class Minted:
    session_id: str
    token: str
    body: dict[str, Any]


def session_body(player: str, **kw: Any) -> dict[str, Any]:
    return {
        "player_email": player,
        "usd_amount": "10.00",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "metadata": METADATA,
        **kw,
    }


def token_of(checkout_url: str) -> str:
    head, sep, token = checkout_url.partition("?session=")
    assert sep and head.endswith(PAGE), checkout_url
    return token


async def mint_raw(api: Api, t: dict[str, Any], player: str, **kw: Any) -> Response:
    return await api.post(SESSIONS, key=t["sdk_key"], json=session_body(player, **kw))


async def mint(api: Api, t: dict[str, Any], player: str, **kw: Any) -> Minted:
    resp = await mint_raw(api, t, player, **kw)
    assert resp.status == 201, resp
    return Minted(resp.body["session_id"], token_of(resp.body["checkout_url"]), dict(resp.body))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def view(api: Api, token: str) -> Response:
    return await api.get(PAGE_SESSION, headers=bearer(token))


async def pay(api: Api, token: str, payment_method_id: str, *, save_card: bool = False) -> Response:
    body = {"payment_method_id": payment_method_id, "save_card": save_card}
    return await api.post(PAY, json=body, headers=bearer(token))


async def confirm(api: Api, token: str) -> Response:
    return await api.post(CONFIRM, json={}, headers=bearer(token))


async def cancel(api: Api, token: str) -> Response:
    return await api.post(CANCEL, json={}, headers=bearer(token))


async def remove_card(api: Api, token: str, card_id: str) -> Response:
    return await api.request("DELETE", f"{CARDS}/{card_id}", headers=bearer(token))


async def page_json(api: Api, token: str) -> Response:
    """The page as a client that asks for JSON: a refusal is the error envelope."""
    return await api.get(f"{PAGE}?session={token}", headers={"Accept": "application/json"})


async def page_html(api: Api, token: str) -> Response:
    """The page as a browser asks for it: a refusal is a page too, not the envelope."""
    return await api.get(f"{PAGE}?session={token}", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})


def csp_directives(resp: Response) -> dict[str, list[str]]:
    """The Content-Security-Policy header as {directive: [sources]}."""
    found: dict[str, list[str]] = {}
    for part in resp.headers["Content-Security-Policy"].split(";"):
        name, *sources = part.split()
        assert name not in found, resp.headers["Content-Security-Policy"]
        found[name] = sources
    return found


async def state(api: Api, t: dict[str, Any], session_id: str) -> Response:
    return await api.get(f"{SESSIONS}/{session_id}", key=t["sdk_key"])


async def status_of(api: Api, t: dict[str, Any], session_id: str) -> str:
    resp = await state(api, t, session_id)
    assert resp.status == 200, resp
    return str(resp.body["status"])


def assert_paid(resp: Response, *, new_balance: str, currency_received: str = "100") -> None:
    assert resp.status == 200, resp
    assert set(resp.body) == PAID_KEYS, resp.body
    assert resp.body["status"] == "success"
    assert resp.body["order_id"].startswith("ord_") and resp.body["transaction_id"].startswith("txn_")
    assert resp.body["currency_received"] == currency_received
    assert resp.body["new_balance"] == new_balance


def assert_no_store(resp: Response) -> None:
    assert resp.headers["Cache-Control"] == "no-store", dict(resp.headers)
    assert resp.headers["Referrer-Policy"] == "no-referrer", dict(resp.headers)


# -- tokens -----------------------------------------------------------------------------------


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def with_claims(token: str, **changes: Any) -> str:
    """The token with its payload edited and its signature kept (what a tamperer can do)."""
    header, _, signature = token.split(".")
    payload = {**claims(token), **changes}
    return ".".join((header, _b64(json.dumps(payload, separators=(",", ":")).encode()), signature))


def flip(token: str, part: int, index: int) -> str:
    """One base64 character of the token's `part` (0 header, 1 payload, 2 signature) changed."""
    parts = token.split(".")
    chars = list(parts[part])
    chars[index] = "A" if chars[index] != "A" else "B"
    parts[part] = "".join(chars)
    return ".".join(parts)


def signed(payload: dict[str, Any], *, secret: str, kid: str) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": kid})


def resigned(stack: Stack, token: str, **changes: Any) -> str:
    """The token re-signed with the stack's own checkout key after an edit: a tamperer who holds
    the key still cannot point a session at another tenant or amount (the stored session decides)."""
    kid, _, secret = stack.env["INVO_CHECKOUT_KEYS"].split(",")[0].partition(":")
    return signed({**claims(token), **changes}, secret=secret, kid=kid)


def foreign_token(token: str) -> str:
    """The token's claims signed by a key that is not ours, under a kid we never issued."""
    return signed({**claims(token), "iat": int(time.time())}, secret=secrets.token_urlsafe(32), kid="zz")


# -- the processor simulator's side -------------------------------------------------------------


async def session_intents(api: Api, stack: Stack, session_id: str) -> list[dict[str, Any]]:
    """Every PaymentIntent the session's attempts made at the simulator (its reference is
    `checkout:<session_id>:<attempt>`)."""
    assert api.session is not None
    async with api.session.get(f"{stack.env['INVO_PROCESSOR_API_BASE']}/_sim/state") as resp:
        assert resp.status == 200
        found = (await resp.json())["intents"]
    prefix = f"checkout:{session_id}:"
    return [pi for pi in found if str((pi.get("metadata") or {}).get("purchase_reference", "")).startswith(prefix)]


async def charged(api: Api, stack: Stack, session_id: str) -> list[dict[str, Any]]:
    return [pi for pi in await session_intents(api, stack, session_id) if pi["status"] == "succeeded"]


async def new_card(api: Api, stack: Stack, number: str = "4242424242424242") -> dict[str, Any]:
    """A PaymentMethod made as the card field makes one: the publishable key, the card's number."""
    assert api.session is not None
    form = {
        "type": "card",
        "card[number]": number,
        "card[exp_month]": "12",
        "card[exp_year]": "2034",
        "card[cvc]": "123",
    }
    async with api.session.post(
        f"{stack.env['INVO_PROCESSOR_API_BASE']}/v1/payment_methods",
        data=form,
        headers={"Authorization": f"Bearer {stack.env['INVO_PROCESSOR_PUBLISHABLE_KEY']}"},
    ) as resp:
        body = dict(await resp.json())
        assert resp.status == 200, (resp.status, body)
        return body


# -- what a test reads back -----------------------------------------------------------------------


def intent_of(client_secret: str) -> str:
    """The PaymentIntent a client secret belongs to (Stripe's `<pi>_secret_<...>`)."""
    pi, sep, _ = client_secret.partition("_secret_")
    assert sep and pi.startswith("pi_"), client_secret
    return pi


async def consumed_everywhere(api: Api, m: Minted) -> None:
    """A paid session: a second pay and the page itself answer 409; the page's own view shows it
    completed, with what was credited (the page's poll after `pending` learns its result there)."""
    assert_envelope(await pay(api, m.token, "pm_card_visa"), 409, "SESSION_ALREADY_CONSUMED")
    seen = await view(api, m.token)
    assert seen.status == 200 and seen.body["status"] == "completed", seen
    paid = seen.body["order"]
    assert paid["status"] == "completed" and paid["transaction_id"] and paid["currency_received"], seen
    page = await page_json(api, m.token)
    assert_envelope(page, 409, "SESSION_ALREADY_CONSUMED")
    assert page.body["error"] == "session_already_consumed"


async def refused_everywhere(api: Api, token: str) -> None:
    """A token that is not a session's: every call of the page API, and the page, answer 401."""
    calls: list[Response] = [
        await view(api, token),
        await pay(api, token, "pm_card_visa"),
        await confirm(api, token),
        await cancel(api, token),
        await remove_card(api, token, "pm_card_visa"),
        await page_json(api, token),
    ]
    for resp in calls:
        assert_envelope(resp, 401, "INVALID_SESSION")
        assert resp.body["error"] == "invalid_session"


async def saved_cards(api: Api, t: dict[str, Any], player: str) -> tuple[Minted, list[dict[str, Any]]]:
    """A new session for the player, and the saved cards its page lists."""
    m = await mint(api, t, player)
    seen = await view(api, m.token)
    assert seen.status == 200, seen
    return m, list(seen.body["saved_cards"])
