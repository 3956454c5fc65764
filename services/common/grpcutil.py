"""gRPC plumbing every service shares: the server bootstrap and the client call helper.

Server: health service, reflection, an interceptor that carries the request id into logs,
refuses calls without a deadline, and turns `InvoError` into a status (and any other exception
into a logged INTERNAL). SIGTERM/SIGINT: health goes NOT_SERVING, in-flight calls get a grace
period, then background tasks are cancelled and resources closed.

Client: `call(stub.Method, request, timeout_s=...)` always sends a deadline and the request id and
turns a failed status back into the `InvoError` the server raised.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import errors
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


async def _guard(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, errors.InvoError):
        context.set_trailing_metadata(errors.to_grpc_metadata(exc))
        await context.abort(exc.grpc_code, exc.message)
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _log_rpc(method: str, outcome: str, started: float) -> None:
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
                    outcome = exc.error_code if isinstance(exc, errors.InvoError) else "INTERNAL"
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
                try:
                    if context.time_remaining() is None:
                        raise errors.InvalidRequest(
                            f"{method} called without a deadline", error_code="DEADLINE_REQUIRED"
                        )
                    async for item in inner_us(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _guard(context, method, exc)
                finally:
                    _log_rpc(method, "STREAM_END", started)
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


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


def channel(addr: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS, interceptors=[DeadlineRequired()])


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
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


Cleanup = Callable[[], Awaitable[None]]


class GrpcService:
    """Runs one service's gRPC server until SIGTERM or SIGINT."""

    def __init__(self, name: str, listen_addr: str, *, shutdown_grace_s: float) -> None:
        self.name = name
        self.listen_addr = listen_addr
        self.shutdown_grace_s = shutdown_grace_s
        self.server = grpc.aio.server(interceptors=[ServerInterceptor()], options=_CHANNEL_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._cleanups: list[Cleanup] = []
        self._stop = asyncio.Event()

    def add(self, adder: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        """Register a servicer: `add(pb2_grpc.add_XServicer_to_server, impl, "invo.v1.X")`."""
        adder(servicer, self.server)
        self._service_names.append(full_name)

    def background(self, coro: Awaitable[Any], name: str) -> None:
        """A task that runs for the server's life and is cancelled at shutdown."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._on_background_done)
        self._tasks.append(task)

    def _on_background_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A background loop must never die quietly: take the service down so it is restarted.
            log.error("background task %s died", task.get_name(), exc_info=exc)
            self._stop.set()

    def on_shutdown(self, cleanup: Cleanup) -> None:
        self._cleanups.append(cleanup)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        names: Sequence[str] = (
            *self._service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        port = self.server.add_insecure_port(self.listen_addr)
        if port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.listen_addr}")
        await self.server.start()
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("%s listening on %s", self.name, self.listen_addr)
        try:
            await self._stop.wait()
        finally:
            log.info("%s shutting down", self.name)
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.shutdown_grace_s)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for cleanup in reversed(self._cleanups):
                await cleanup()
            log.info("%s stopped", self.name)
