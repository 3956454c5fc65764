"""One error hierarchy, mapped both ways between gRPC status codes and the HTTP error envelope.

A service raises an `InvoError` subclass; the gRPC server interceptor turns it into a status with
the error's codes in trailing metadata; the client side turns that status back into the same
error; the gateway renders it as the envelope
`{"status": "error", "error", "error_code", "message", "request_id"}`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import grpc

# Trailing-metadata keys carrying the exact error across a gRPC hop.
MD_ERROR = "invo-error"
MD_ERROR_CODE = "invo-error-code"
MD_RETRY_AFTER = "invo-retry-after-s"
MD_EXTRA = "invo-error-extra"
EXTRA_BYTES_MAX = 2048


class InvoError(Exception):
    """Root of every error a client may see. Subclasses fix the status codes."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_error: ClassVar[str] = "internal_error"
    default_error_code: ClassVar[str] = "INTERNAL_ERROR"
    # Seconds a client should wait before retrying (the Retry-After header) when the raiser gives none.
    default_retry_after_s: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_code: str | None = None,
        retry_after_s: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error = error or self.default_error
        self.error_code = error_code or self.default_error_code
        self.retry_after_s = self.default_retry_after_s if retry_after_s is None else retry_after_s
        # Extra fields merged into the HTTP body (`param`, `decline_code`, ...); they cross gRPC
        # as JSON in trailing metadata, bounded in size.
        self.extra = extra or {}

    def envelope(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "error": self.error,
            "error_code": self.error_code,
            "message": self.message,
            "request_id": request_id,
        }
        body.update(self.extra)
        return body


class InvalidRequest(InvoError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    default_error = "invalid_request"
    default_error_code = "INVALID_REQUEST"


class Unauthenticated(InvoError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_error = "unauthorized"
    default_error_code = "UNAUTHORIZED"


class PaymentRequired(InvoError):
    http_status = 402
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    default_error = "payment_required"
    default_error_code = "PAYMENT_REQUIRED"


class Forbidden(InvoError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_error = "forbidden"
    default_error_code = "FORBIDDEN"


class NotFound(InvoError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    default_error = "not_found"
    default_error_code = "NOT_FOUND"


class MethodNotAllowed(InvoError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    default_error = "method_not_allowed"
    default_error_code = "METHOD_NOT_ALLOWED"


class Conflict(InvoError):
    http_status = 409
    grpc_code = grpc.StatusCode.ABORTED
    default_error = "conflict"
    default_error_code = "CONFLICT"


class Gone(InvoError):
    """The thing existed and no longer can be used (an expired checkout session)."""

    http_status = 410
    grpc_code = grpc.StatusCode.OUT_OF_RANGE
    default_error = "gone"
    default_error_code = "GONE"


class PayloadTooLarge(InvoError):
    http_status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    default_error = "payload_too_large"
    default_error_code = "PAYLOAD_TOO_LARGE"


class RateLimited(InvoError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_error = "rate_limited"
    default_error_code = "RATE_LIMITED"


class Internal(InvoError):
    pass


class Unavailable(InvoError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_error = "service_unavailable"
    default_error_code = "SERVICE_UNAVAILABLE"
    default_retry_after_s = 1


class Timeout(InvoError):
    # A dependency that did not answer in time is, for the client, one that is unavailable: a 503
    # with Retry-After (never a 504 or a 500), and the same request retried finishes the work.
    http_status = 503
    default_retry_after_s = 1
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_error = "timeout"
    default_error_code = "TIMEOUT"


# Which class a gRPC status becomes on the client side. Several codes share a class where the
# HTTP meaning is the same; the exact error and error_code travel in trailing metadata.
_BY_GRPC_CODE: dict[grpc.StatusCode, type[InvoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: Gone,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: PaymentRequired,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNIMPLEMENTED: MethodNotAllowed,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.CANCELLED: Unavailable,
}

_BY_HTTP_STATUS: dict[int, type[InvoError]] = {
    cls.http_status: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        PaymentRequired,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        Gone,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
    )
}


def to_grpc_metadata(exc: InvoError) -> tuple[tuple[str, str], ...]:
    md = [(MD_ERROR, exc.error), (MD_ERROR_CODE, exc.error_code)]
    if exc.retry_after_s is not None:
        md.append((MD_RETRY_AFTER, str(exc.retry_after_s)))
    if exc.extra:
        text = json.dumps(exc.extra, separators=(",", ":"), default=str)
        if len(text) <= EXTRA_BYTES_MAX:
            md.append((MD_EXTRA, text))
    return tuple(md)


def from_grpc(code: grpc.StatusCode, details: str | None, trailing: Any) -> InvoError:
    """Rebuild the error a server raised from a gRPC status and its trailing metadata."""
    md: dict[str, str] = {}
    for item in trailing or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            md[key] = value
    cls = _BY_GRPC_CODE.get(code, Internal)
    if MD_ERROR_CODE not in md:
        # A status no service raised on purpose (transport failure, deadline, crash): its text
        # names internal addresses, so the caller gets a generic message.
        generic = {
            Unavailable: "A backend service is unavailable; retry the request.",
            Timeout: "A backend service did not answer in time; retry the request.",
        }.get(cls, "An internal error occurred.")
        return (cls if cls in (Unavailable, Timeout) else Internal)(generic)
    retry = md.get(MD_RETRY_AFTER)
    extra: dict[str, Any] = {}
    if MD_EXTRA in md:
        try:
            decoded = json.loads(md[MD_EXTRA])
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            extra = decoded
    return cls(
        details or cls.default_error.replace("_", " "),
        error=md.get(MD_ERROR),
        error_code=md.get(MD_ERROR_CODE),
        retry_after_s=int(retry) if retry and retry.isdigit() else None,
        extra=extra,
    )


_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def code_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


def from_code_number(number: int, message: str, metadata: Any) -> InvoError:
    """Rebuild an error carried inside a batch answer (status number, message, metadata pairs)."""
    return from_grpc(_CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message, metadata)


def for_http_status(status: int, message: str) -> InvoError:
    """The error an HTTP status (an aiohttp routing 404/405/413, say) is rendered as."""
    return _BY_HTTP_STATUS.get(status, Internal)(message)
