"""What the simulator serves to browsers, so a checkout page runs against it as against Stripe.js:

- `GET /js/v3/stripe.js`: a plain-script look-alike of Stripe.js (assets/stripe.js), loadable
  from any origin (`Cross-Origin-Resource-Policy: cross-origin`, CORS).
- `GET /elements/card?origin=&key=&element=`: the card field the look-alike mounts in an iframe
  (assets/card.html, card.js, card.css). It tokenises the card itself and talks by postMessage
  only to `origin` (any page may frame it, as Stripe's own fields: the checkout page that mounts it
  is itself framed by a partner, and `frame-ancestors` judges the whole chain).
- `GET /3ds/challenge?origin=&key=&payment_intent=`: the 3-D Secure challenge, in the look-alike's
  overlay, with "Complete authentication" and "Fail authentication"; its buttons
  `POST /3ds/authenticate` (publishable key + the intent's client secret), which does what
  `/_sim/three_d_secure` does (three_d_secure.authenticate).

Every page has a strict CSP of its own: nothing but its own script, style and API.
"""

from __future__ import annotations

import pathlib
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from devstack.processor_sim import three_d_secure
from devstack.processor_sim.payment_methods import (
    CardResources,
    client_secret_matches,
    public_intent,
    wrong_client_secret,
)
from devstack.processor_sim.resources import StripeError, invalid

ASSETS = pathlib.Path(__file__).parent / "assets"
# A parent page's origin, as a browser writes `location.origin`.
ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
SCRIPT_TYPE = "text/javascript"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# (route, file, content type): the frames' own scripts and styles, same-origin to their pages.
FILES = (
    ("/elements/card.js", "card.js", SCRIPT_TYPE),
    ("/elements/card.css", "card.css", "text/css"),
    ("/3ds/challenge.js", "challenge.js", SCRIPT_TYPE),
    ("/3ds/challenge.css", "challenge.css", "text/css"),
)


def _csp() -> str:
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "frame-ancestors *; base-uri 'none'; form-action 'none'"
    )


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def add_routes(app: web.Application, sim: CardResources) -> None:
    texts = {name: _asset(name) for name in ("stripe.js", "card.html", "challenge.html")}

    async def stripe_js(request: web.Request) -> web.Response:
        headers = {
            **COMMON_HEADERS,
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Access-Control-Allow-Origin": "*",
        }
        return web.Response(text=texts["stripe.js"], content_type=SCRIPT_TYPE, charset="utf-8", headers=headers)

    def frame(name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            origin = request.query.get("origin", "")
            if not ORIGIN.fullmatch(origin):
                raise web.HTTPBadRequest(text="origin: the parent page's origin, as http(s)://host[:port]")
            headers = {**COMMON_HEADERS, "Content-Security-Policy": _csp()}
            return web.Response(text=texts[name], content_type="text/html", charset="utf-8", headers=headers)

        return handler

    def static(name: str, content_type: str) -> Handler:
        text = _asset(name)

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type=content_type, charset="utf-8", headers=COMMON_HEADERS)

        return handler

    async def authenticate(request: web.Request) -> web.Response:
        """The challenge page's buttons: the publishable key, and the client secret that proves
        the page was handed this intent."""
        if not sim.is_publishable_key(request.headers.get("Authorization", "")):
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}}, status=401
            )
        form = await request.post()
        pi = sim.intents.get(str(form.get("payment_intent", "")))
        result = form.get("result")
        try:
            if not client_secret_matches(pi, str(form.get("client_secret", ""))) or pi is None:
                raise wrong_client_secret()
            if result not in ("complete", "fail"):
                raise invalid("result: complete or fail", "result")
            three_d_secure.authenticate(sim, pi, succeed=result == "complete")
        except StripeError as exc:
            return web.json_response({"error": exc.body}, status=exc.status, headers=COMMON_HEADERS)
        return web.json_response(public_intent(pi), headers=COMMON_HEADERS)

    app.router.add_get("/js/v3/stripe.js", stripe_js)
    app.router.add_get("/elements/card", frame("card.html"))
    app.router.add_get("/3ds/challenge", frame("challenge.html"))
    app.router.add_post("/3ds/authenticate", authenticate)
    for route, name, content_type in FILES:
        app.router.add_get(route, static(name, content_type))
