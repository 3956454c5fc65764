"""The aiohttp application: request ids and the error envelope for every request, and one
sub-application per surface (`surfaces.py`), each with its own authentication."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from services.common import errors, logs, metrics, runtime
from services.common.config import Settings
from services.common.logs import REQUEST_ID_HEADER, accept_request_id, request_id_var
from services.gateway import declare, document, surfaces
from services.gateway.answers import Answer
from services.gateway.backends import Backends
from services.gateway.context import CTX, GatewayContext, ctx_of
from services.gateway.http import error_response, json_response
from services.gateway.server import GatewayRunner

log = logging.getLogger("invo.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in, request id out, every error as the envelope, one log line per request."""
    sent_id = request.headers.get(REQUEST_ID_HEADER)
    # An id we echo in a header and write in every log line: ASCII only (a header is bytes).
    rid = accept_request_id(sent_id if sent_id is not None and sent_id.isascii() else None)
    token = request_id_var.set(rid)
    started = time.monotonic()
    try:
        try:
            problem = url_problem(request.raw_path)
            if problem:
                raise errors.InvalidRequest(problem, error_code="INVALID_REQUEST")
            resp = await handler(request)
        except errors.InvoError as exc:
            resp = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = error_response(errors.for_http_status(exc.status, exc.reason + "."))
        except Exception:
            log.exception("unhandled error")
            resp = error_response(errors.Internal("An internal error occurred."))
        resp.headers[REQUEST_ID_HEADER] = rid
        elapsed_s = time.monotonic() - started
        metrics.observe_http(_route_of(request), request.method, resp.status, elapsed_s)
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            resp.status,
            extra=logs.fields(
                status=resp.status,
                latency_ms=round(elapsed_s * 1000, 2),
                tenant_id=request.get("tenant_id", ""),
            ),
        )
        return resp
    finally:
        request_id_var.reset(token)


def _route_of(request: web.Request) -> str:
    """The declared route's template (`/api/orders/{order_id}`), or `unmatched`: a metric label
    must not take whatever path a client sends."""
    resource = getattr(request.match_info.route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) and resource is not None else metrics.UNMATCHED


def url_problem(raw_path: str) -> str | None:
    """Why the URL (path and query, as sent) cannot be read one way, or None. Percent-escapes that
    are not UTF-8 (a lone surrogate's "%ED%A0%80", a bare "%FF") would be read as U+FFFD, so two
    different URLs would name one player; PostgreSQL text cannot hold NUL. Both are refused here,
    on every surface, never a 500 or a wrong wallet later."""
    try:
        text = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return "The URL must be UTF-8: a percent-escape here is not."
    if "\x00" in text:
        return "The URL must not contain NUL characters."
    return None


root = declare.Table(security=None)


class Health(Answer):
    """The gateway process is up."""

    status: Literal["ok"]


class Ready(Answer):
    """Every backend the gateway routes to answers its health check."""

    status: Literal["ready"]
    services: dict[str, bool]


class OpenApi(BaseModel):
    """This document."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    paths: dict[str, Any]


@root.declare("GET", "/healthz", summary="Liveness.", answers={200: Health})
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@root.declare(
    "GET",
    "/readyz",
    summary="The whole network: every routed backend is healthy (Kubernetes' readiness probe is /healthz).",
    answers={200: Ready},
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    # The services the gateway routes to.
    health = await ctx.backends.health(surfaces.ROUTED_SERVICES)
    if all(health.values()):
        return json_response({"status": "ready", "services": health})
    down = sorted(name for name, ok in health.items() if not ok)
    raise errors.Unavailable(f"Not ready: {', '.join(down)}.", extra={"services": health})


@root.declare("GET", "/openapi.json", summary="The OpenAPI 3.1 document of every surface.", answers={200: OpenApi})
async def openapi_json(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    base = ctx.settings.public_base_url or f"{request.scheme}://{request.host}"
    return json_response(document.document(base))


def create_app(settings: Settings, backends: Backends) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware], client_max_size=settings.http_body_max_bytes)
    ctx = GatewayContext(settings, backends)
    app[CTX] = ctx
    app.add_routes(root)
    surfaces.mount_all(app, ctx)
    return app


async def serve(settings: Settings) -> None:
    backends = Backends(settings)
    app = create_app(settings, backends)
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=settings.grpc_shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port, backlog=1024)
    await site.start()
    stop_metrics = await metrics.serve(settings.metrics_listen)
    runtime.freeze_startup_heap()
    log.info("gateway listening on http://%s:%s", settings.gateway_host, settings.gateway_port)
    stop = asyncio.Event()
    # SIGTERM stops it within the grace period plus runtime's hard bound, or it is ended (exit 124).
    runtime.stop_signals(stop, name="gateway", grace_s=settings.grpc_shutdown_grace_s)
    try:
        await stop.wait()
    finally:
        log.info("gateway shutting down")
        await runner.cleanup()
        await app[CTX].close()
        await backends.close()
        if stop_metrics is not None:
            await stop_metrics()


def main() -> None:
    settings = Settings.from_env()
    logs.setup("gateway", settings.log_level)
    raise SystemExit(runtime.run(serve(settings)))
