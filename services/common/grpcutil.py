"""gRPC plumbing every service shares: the server's interceptor and the client call helper (the
server itself, with health, reflection and its bounded stop, is grpcserver.py's).

Server: an interceptor that carries the request id into logs, refuses calls without a deadline,
and turns `InvoError` into a status, a dependency that timed out or went away (PostgreSQL, NATS, a
socket) into UNAVAILABLE with a retry hint (a 503 with Retry-After at the gateway, logged as one
warning line), and any other exception into a logged INTERNAL.

Client: `call(stub.Method, request, timeout_s=...)` always sends a deadline and the request id and
turns a failed status back into the `InvoError` the server raised.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
import nats.errors
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import errors, metrics
from services.common.logs import (
    OPERATOR_ID_METADATA,
    REQUEST_ID_METADATA,
    accept_operator_id,
    new_request_id,
    operator_id_var,
    request_id_var,
)

log = logging.getLogger("invo.grpc")

# Methods exempt from the deadline rule: probes and tooling call them bare.
_EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def _request_id_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            return value
    return new_request_id()


def _operator_id_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == OPERATOR_ID_METADATA and isinstance(value, str):
            return accept_operator_id(value)
    return ""


# A dependency that timed out or went away: the same request retried later can succeed, so the
# caller gets UNAVAILABLE (503 with Retry-After), never INTERNAL.
_DEPENDENCY_AWAY: tuple[type[BaseException], ...] = (
    # 57xxx: a statement timeout (QueryCanceledError), the server shutting down or starting up.
    asyncpg.exceptions.OperatorInterventionError,
    # 08xxx: the connection failed or was lost (ProtocolViolationError is refused below: a bug).
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.TooManyConnectionsError,
    # nats-py's own (its TimeoutError is also the builtin one, caught below).
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    # asyncio's and asyncpg's command timeouts; refused, reset and unreachable sockets.
    TimeoutError,
    OSError,
)
# asyncpg raises plain InterfaceError for a pool or connection closed under a call; other
# InterfaceErrors (a connection used after release, say) are programming errors and stay INTERNAL.
_CLOSED_MESSAGES = ("connection is closed", "pool is closing", "pool is closed")
_CHAIN_DEPTH_MAX = 8  # how far down an exception's causes dependency_away looks
_UNAVAILABLE_STATUSES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
DEPENDENCY_RETRY_AFTER_S = 1
_LOGGED_MESSAGE_MAX = 300  # some messages carry a whole SQL statement


def dependency_away(exc: BaseException) -> bool:
    """Whether `exc` means a dependency timed out or went away (rather than a bug): itself, or
    what it was raised in handling (asyncpg's "cannot call Transaction.__aexit__(): the underlying
    connection is closed" comes in handling the ConnectionDoesNotExistError that closed it)."""
    seen: BaseException | None = exc
    for _ in range(_CHAIN_DEPTH_MAX):
        if seen is None:
            return False
        if _away(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _away(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.exceptions.ProtocolViolationError):
        return False
    if isinstance(exc, _DEPENDENCY_AWAY):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return any(message in str(exc) for message in _CLOSED_MESSAGES)
    if isinstance(exc, grpc.aio.AioRpcError):  # a raw stub call, not made through `call`
        return exc.code() in _UNAVAILABLE_STATUSES
    return False


async def _guard(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, errors.InvoError):
        context.set_trailing_metadata(errors.to_grpc_metadata(exc))
        await context.abort(exc.grpc_code, exc.message)
    if dependency_away(exc):
        # Expected in an outage, and one line each: no traceback for every call that met it.
        log.warning(
            "%s: a dependency timed out or went away (%s: %s); answered UNAVAILABLE",
            method,
            type(exc).__name__,
            str(exc)[:_LOGGED_MESSAGE_MAX],
            extra={"fields": {"rpc": method, "error_type": type(exc).__name__}},
        )
        unavailable = errors.Unavailable(
            "A backend dependency is unavailable; retry the request.", retry_after_s=DEPENDENCY_RETRY_AFTER_S
        )
        context.set_trailing_metadata(errors.to_grpc_metadata(unavailable))
        await context.abort(unavailable.grpc_code, unavailable.message)
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _outcome(exc: Exception) -> str:
    """A failed call's code, for its log line and its metric."""
    if isinstance(exc, errors.InvoError):
        return exc.error_code
    return "UNAVAILABLE" if dependency_away(exc) else "INTERNAL"


def _log_rpc(method: str, outcome: str, started: float, *, code: str | None = None) -> None:
    # "/invo.v1.LedgerService/PurchaseItems" -> "LedgerService/PurchaseItems": bounded, readable.
    metrics.observe_rpc(method.rpartition(".")[2], code or outcome, time.monotonic() - started)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s",
            method,
            outcome,
            extra={
                "fields": {
                    "rpc": method,
                    "outcome": outcome,
                    "latency_ms": round((time.monotonic() - started) * 1000, 2),
                }
            },
        )


class ServerInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_EXEMPT_PREFIXES):
            return handler

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = request_id_var.set(_request_id_from(context))
                operator_token = operator_id_var.set(_operator_id_from(context))
                started = time.monotonic()
                outcome = "OK"
                try:
                    if context.time_remaining() is None:
                        raise errors.InvalidRequest(
                            f"{method} called without a deadline", error_code="DEADLINE_REQUIRED"
                        )
                    return await inner_uu(request, context)
                except grpc.aio.AbortError:
                    outcome = "ABORTED"
                    raise
                except Exception as exc:
                    outcome = _outcome(exc)
                    await _guard(context, method, exc)
                finally:
                    _log_rpc(method, outcome, started)
                    request_id_var.reset(token)
                    operator_id_var.reset(operator_token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = request_id_var.set(_request_id_from(context))
                operator_token = operator_id_var.set(_operator_id_from(context))
                started = time.monotonic()
                outcome = "OK"
                try:
                    if context.time_remaining() is None:
                        raise errors.InvalidRequest(
                            f"{method} called without a deadline", error_code="DEADLINE_REQUIRED"
                        )
                    async for item in inner_us(request, context):
                        yield item
                except grpc.aio.AbortError:
                    outcome = "ABORTED"
                    raise
                except Exception as exc:
                    outcome = _outcome(exc)
                    await _guard(context, method, exc)
                finally:
                    _log_rpc(method, "STREAM_END", started, code=outcome)
                    request_id_var.reset(token)
                    operator_id_var.reset(operator_token)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class DeadlineRequired(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Client side: a call without a timeout is a programming error, caught before it is sent."""

    async def _check(self, details: grpc.aio.ClientCallDetails) -> None:
        if details.timeout is None:
            raise ValueError(f"gRPC call {details.method!r} made without a timeout")

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        await self._check(client_call_details)
        return await continuation(client_call_details, request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        await self._check(client_call_details)
        return await continuation(client_call_details, request)


CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


# Calls are spread over every address a target names (the replicas' list in the local stack, the
# pods a Kubernetes headless Service resolves to) and skip one that is down: gRPC's client-side
# round_robin. A replica that dies fails only the calls in flight on it; the caller retries them.
# round_robin reconnects to a lost replica at once and then backs off (gRPC's default reaches two
# minutes): capped at 2 s here, a restarted replica takes calls again within 2 s of serving. A single
# address keeps gRPC's default (pick_first), which reconnects on the next call.
_BALANCED = [
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _options(t: str) -> list[tuple[str, Any]]:
    return [*CHANNEL_OPTIONS, *_BALANCED] if t.startswith(("ipv4:", "ipv6:", "dns:")) else list(CHANNEL_OPTIONS)


def target(addr: str) -> str:
    """A gRPC target for an address setting: `host:port`, a list of them
    (`127.0.0.1:5001,127.0.0.1:5002`: every replica), or a target with its scheme
    (`dns:///ledger-headless.invo.svc.cluster.local:50051`)."""
    if "," in addr and "://" not in addr and not addr.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
        return "ipv4:" + ",".join(part.strip() for part in addr.split(",") if part.strip())
    return addr


def channel(addr: str) -> grpc.aio.Channel:
    t = target(addr)
    return grpc.aio.insecure_channel(t, options=_options(t), interceptors=[DeadlineRequired()])


T = TypeVar("T")


def timestamp(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp of an aware datetime (None stays None, an unset field)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _metadata() -> tuple[tuple[str, str], ...]:
    md = ((REQUEST_ID_METADATA, request_id_var.get() or new_request_id()),)
    operator_id = operator_id_var.get()
    return (*md, (OPERATOR_ID_METADATA, operator_id)) if operator_id else md


async def call(method: Callable[..., Any], request: Any, *, timeout_s: float) -> Any:
    """One unary call with a deadline and the request id; failures come back as `InvoError`."""
    try:
        return await method(request, timeout=timeout_s, metadata=_metadata())
    except grpc.aio.AioRpcError as exc:
        raise errors.from_grpc(exc.code(), exc.details(), exc.trailing_metadata()) from None


def deadline_of(context: Any) -> float | None:
    """The absolute deadline (`time.monotonic()` clock) of an incoming call, None without one: a
    handler passes it on so that the calls it makes in turn end before its caller gives up."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


def timeout_within(deadline: float | None, *, cap_s: float) -> float:
    """The timeout of an outgoing call: what is left of `deadline`, at most `cap_s`. Nothing left
    is a Timeout at once: a call that cannot be answered in time is not worth sending."""
    if deadline is None:
        return cap_s
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise errors.Timeout("The request ran out of time before it could finish; retry it.")
    return min(cap_s, left_s)


async def stream(method: Callable[..., Any], request: Any, *, timeout_s: float) -> Any:
    """A server-streaming call, yielded item by item, with the same error mapping as `call`."""
    try:
        async for item in method(request, timeout=timeout_s, metadata=_metadata()):
            yield item
    except grpc.aio.AioRpcError as exc:
        raise errors.from_grpc(exc.code(), exc.details(), exc.trailing_metadata()) from None


async def check_health(addr: str, *, timeout_s: float) -> bool:
    """Does the service answer: any replica of it serving is enough (round_robin skips the others)."""
    t = target(addr)
    async with grpc.aio.insecure_channel(t, options=_options(t)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
