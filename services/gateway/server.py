"""The gateway's HTTP server: aiohttp's, but with the error envelope where aiohttp's own parser
refuses a request.

A request the parser cannot read (a header or the URL over 8190 bytes, a NUL or a bare CR in a
header, bytes that are not ASCII in the URL) never reaches the application or its middleware:
aiohttp answers it from `RequestHandler.handle_error`, as `text/plain` echoing the offending bytes,
and logs the exception, bytes included, at error level (an `Authorization` header with a NUL in it
would put the token in the log). Here `handle_error` answers the envelope with a request id
instead, and logs one info line that names the kind of problem, never the bytes. `GatewayRunner` is
`web.AppRunner` with this handler on every connection.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from services.common import errors, logs
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var
from services.gateway.http import json_response

log = logging.getLogger("invo.gateway")


class EnvelopeRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope for an error aiohttp answers itself; `message` (which echoes the input) is
        neither sent nor logged."""
        if request.writer.output_size > 0:
            # As aiohttp does: part of an answer is out, so no other can follow; the connection goes.
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        rid = new_request_id()
        token = request_id_var.set(rid)
        try:
            error = self._error(status, exc)
        finally:
            request_id_var.reset(token)
        resp = json_response(error.envelope(rid), status=error.http_status)
        resp.headers[REQUEST_ID_HEADER] = rid
        resp.force_close()
        return resp

    def _error(self, status: int, exc: BaseException | None) -> errors.InvoError:
        kind = type(exc).__name__ if exc is not None else ""
        if 400 <= status < 500:
            text = (
                "A header or the URL is longer than the 8190 bytes allowed."
                if isinstance(exc, LineTooLong)
                else "The request is not valid HTTP (a control character in a header, say)."
            )
            log.info("unparseable request refused", extra=logs.fields(status=status, problem=kind))
            return errors.for_http_status(status, text)
        if status == 504:
            log.warning("request handler timed out", extra=logs.fields(status=status))
            return errors.Timeout("The request took too long.")
        # Our own failure outside the middleware (it answers everything else): a bug to see.
        log.error("unhandled error outside the middleware", exc_info=exc)
        return errors.Internal("An internal error occurred.")


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors with the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is not web.Server:  # a newer aiohttp builds it otherwise: look again
            raise RuntimeError(f"unexpected aiohttp server class {type(server)!r}")
        # The application's server, built by aiohttp as always; only its connection factory differs.
        server.__class__ = _EnvelopeServer
        return server
