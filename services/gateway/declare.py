"""One declaration per route: its body, query, path parameters, answers per status, the error
statuses it can answer, and its security. The same declaration validates a request before the
handler runs and generates the OpenAPI document (`document.py`), so the two cannot drift.

    public = declare.Table(security=declare.SDK_KEY)

    @public.declare("POST", "/api/item-purchases/purchase-item", body=PurchaseItem,
                    answers={200: PurchaseItemAnswer}, errors=(402,), summary="...")
    async def purchase_item(request: web.Request, body: PurchaseItem) -> web.Response: ...

The handler receives the validated models as keyword arguments (`body=`, `query=`). A failure
becomes the envelope: an unknown field is `UNKNOWN_FIELD`, a missing one `MISSING_PARAMETER`, any
other `INVALID_PARAMETER` (or a code the field's type promises, `fields.Codes`), always with `param`,
the field's dotted path (`spending_caps.daily_usd`).

A route whose handler still parses for itself is documented by `register(Declaration(...))` and
adopted later with `table.adopt(declaration)`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from services.common import errors
from services.gateway import fields
from services.gateway.http import read_json, read_optional_json

Handler = Callable[..., Awaitable[web.StreamResponse]]

# Security schemes, by their name in the document's components.
SDK_KEY = "GameSecretKey"
OPERATOR = "OperatorBearer"
SIGNED = "ProcessorSignature"  # checked by the route itself, not a scheme a client can hold
CHECKOUT = "CheckoutSession"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    SDK_KEY: {"type": "apiKey", "in": "header", "name": "X-Game-Secret-Key", "description": "An SDK key (ivsdk_...)."},
    OPERATOR: {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator's credential (Authorization: Bearer ...); an SDK key never opens /admin.",
    },
    CHECKOUT: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The checkout session token of checkout_url (the hosted page's own calls); never an SDK key.",
    },
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Answer:
    """One documented answer: pydantic models (any of them), or a raw schema (a stream, say)."""

    description: str
    models: tuple[type[BaseModel], ...] = ()
    schema: dict[str, Any] | None = None
    media_type: str = "application/json"
    # Other representations of the same answer (a CSV of a statement): media type -> its schema.
    also: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


AnswerSpec = type[BaseModel] | Answer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Declaration:
    method: str
    path: str
    summary: str
    security: str | None
    answers: Mapping[int, AnswerSpec]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    operation_id: str = ""
    description: str = ""
    # A page for a browser: its refusals are HTML pages too (the envelope when JSON is asked for).
    html_errors: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([a-z_]+)\}", self.path)

    def error_statuses(self) -> list[int]:
        """Every error status the route can answer: its own, and those of the layers around it."""
        out = set(self.errors)
        out |= {400, 405}  # any request: a NUL in the URL, a method the path does not route
        if self.body is not None or takes_no_body(self):
            out |= {400, 413}
        if self.security == SDK_KEY:
            out |= {401, 403, 429, 503}  # the key is checked by the tenants service
        elif self.security == OPERATOR:
            # 403: the operator's role does not allow the route; 429: too many failed logins from here
            out |= {401, 403, 429, 503}
        elif self.security == CHECKOUT:
            # 401: a token that is not ours, altered or unknown; 409/410: used, cancelled, expired
            out |= {401, 409, 410, 429, 503}
        if self.path_params:
            out.add(404)
        return sorted(out)


REGISTRY: dict[tuple[str, str], Declaration] = {}


def register(decl: Declaration) -> Declaration:
    """Document a route (once: the same path and method twice is a programming error)."""
    known = REGISTRY.get(decl.key)
    if known is not None and known is not decl:
        raise ValueError(f"{decl.method} {decl.path} is declared twice")
    REGISTRY[decl.key] = decl
    return decl


def _field_codes(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, fields.Codes]:
    """The dotted path of the model fields along `loc`, and the error codes of the last one."""
    names: list[str] = []
    codes = fields.Codes()
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            break
        info = current.model_fields[part]
        names.append(part)
        codes = next((m for m in info.metadata if isinstance(m, fields.Codes)), fields.Codes())
        current = _model_in(info.annotation)
    return ".".join(names), codes


def _model_in(annotation: Any) -> Any:
    """`Caps` for `Caps | None`: the nested model a field holds, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def refusal(model: type[BaseModel], exc: ValidationError) -> errors.InvalidRequest:
    """The envelope of a request's first problem (an unknown field before any other)."""
    found = exc.errors(include_url=False)
    first = next((e for e in found if e["type"] == "extra_forbidden"), found[0])
    loc = tuple(first["loc"])
    param, codes = _field_codes(model, loc)
    kind: str = first["type"]
    if kind == "extra_forbidden":
        name = ".".join(str(p) for p in loc)[:64]
        return errors.InvalidRequest(f"Unknown field: {name}.", error_code="UNKNOWN_FIELD", extra={"param": name})
    named = (first.get("ctx") or {}).get("param")
    param = named or param or ".".join(str(p) for p in loc if isinstance(p, str))[:64]
    if kind.startswith(fields.CODE_PREFIX):
        code = kind.removeprefix(fields.CODE_PREFIX)
        # A type's own code names what is wrong; a field's own code wins over the generic ones.
        if code == "INVALID_PARAMETER":
            code = codes.invalid
        elif code == "MISSING_PARAMETER":
            code = codes.missing
        return errors.InvalidRequest(first["msg"], error_code=code, extra={"param": param})
    # null for a field that must have a value reads as missing, as it always has.
    if kind == "missing" or first.get("input", ...) is None:
        return errors.InvalidRequest(f"{param} is required.", error_code=codes.missing, extra={"param": param})
    return errors.InvalidRequest(f"{param}: {first['msg']}.", error_code=codes.invalid, extra={"param": param})


def parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise refusal(model, exc) from None


def _query_dict(model: type[BaseModel], request: web.Request) -> dict[str, str]:
    """The query as one value per name. A parameter the route reads, sent twice, is refused:
    which of the two would count is anyone's guess (parameters it ignores are ignored)."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name in out and name in model.model_fields:
            raise errors.InvalidRequest(
                f"{name} is given more than once; send it once.",
                error_code="INVALID_PARAMETER",
                extra={"param": name},
            )
        out.setdefault(name, value)
    return out


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The body of a write that declares none: nothing, or an empty JSON object (what many clients send).
NO_BODY_SCHEMA = {"type": "object", "additionalProperties": False, "maxProperties": 0}


class _NoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


def takes_no_body(decl: Declaration) -> bool:
    """A write with no declared body (cancel, approve, redeliver...): a body with a field in it is
    refused (400 UNKNOWN_FIELD), as an undeclared field of any body is, never read and ignored.
    Signed webhooks read their raw body themselves."""
    return decl.body is None and decl.method in _WRITES and decl.security != SIGNED


def validating(decl: Declaration, handler: Handler) -> Handler:
    """The handler behind the declaration's validation."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if decl.query is not None:
            kwargs["query"] = parse(decl.query, _query_dict(decl.query, request))
        if decl.body is not None:
            raw = await (read_json(request) if decl.body_required else read_optional_json(request))
            kwargs["body"] = parse(decl.body, raw)
        elif takes_no_body(decl):
            parse(_NoBody, await read_optional_json(request))
        return await handler(request, **kwargs)

    return wrapped


class Table(web.RouteTableDef):
    """A route table whose routes are declared, all under one security scheme."""

    def __init__(self, *, security: str | None) -> None:
        super().__init__()
        self.security = security

    def declare(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        answers: Mapping[int, AnswerSpec],
        body: type[BaseModel] | None = None,
        body_required: bool = True,
        query: type[BaseModel] | None = None,
        errors: tuple[int, ...] = (),
        operation_id: str = "",
        description: str = "",
    ) -> Callable[[Handler], Handler]:
        decl = Declaration(
            method=method,
            path=path,
            summary=summary,
            security=self.security,
            answers=answers,
            body=body,
            body_required=body_required,
            query=query,
            errors=errors,
            operation_id=operation_id,
            description=description,
        )
        return self.adopt(decl)

    def adopt(self, decl: Declaration) -> Callable[[Handler], Handler]:
        """Route `decl` (declared elsewhere, or just now) to the decorated handler, validated."""
        if decl.security != self.security:
            raise ValueError(f"{decl.method} {decl.path}: security {decl.security} is not this table's")
        register(decl)

        def add(handler: Handler) -> Handler:
            self.route(decl.method, decl.path)(validating(decl, handler))
            return handler

        return add
