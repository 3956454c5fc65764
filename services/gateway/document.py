"""The OpenAPI 3.1 document, generated from the route declarations (`declare.REGISTRY`): every
route of every surface, every status it can answer, the schemas its answers satisfy."""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.gateway import declare, fields

REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "Bad input; nothing changed.",
    401: "Missing or invalid credentials.",
    402: "Insufficient balance or a card decline.",
    403: "The tenant is suspended, or the operator's role does not allow this.",
    404: "No such resource.",
    405: "The path does not route this method.",
    409: "Conflict.",
    413: "The request body is too large.",
    429: "Rate limited; the Retry-After header says when to retry.",
    503: "A backend, the database or the card processor is unavailable or did not answer in time; "
    "retry after Retry-After seconds (with the same idempotency key).",
}


class Error(BaseModel):
    """The error envelope of every error answer."""

    model_config = ConfigDict(extra="allow", title="Error")

    status: Literal["error"]
    error: str
    error_code: str
    message: str
    request_id: str
    param: str | None = None


def _operation_id(decl: declare.Declaration) -> str:
    if decl.operation_id:
        return decl.operation_id
    words = [w for w in decl.path.replace("{", "").replace("}", "").replace("-", "/").split("/") if w]
    return decl.method.lower() + "".join(w[:1].upper() + w[1:] for w in words).replace("_", "")


def _answer(spec: declare.AnswerSpec) -> declare.Answer:
    if isinstance(spec, declare.Answer):
        return spec
    return declare.Answer(description=spec.__doc__ or spec.__name__, models=(spec,))


def _models(decls: list[declare.Declaration]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    out: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Error, "serialization"): None}
    for d in decls:
        if d.body is not None:
            out[(d.body, "validation")] = None
        for spec in d.answers.values():
            for m in _answer(spec).models:
                out[(m, "serialization")] = None
    return list(out)


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation(decl: declare.Declaration, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": _operation_id(decl), "summary": decl.summary}
    if decl.description:
        op["description"] = decl.description
    op["security"] = [{decl.security: []}] if decl.security in declare.SECURITY_SCHEMES else []
    params = [
        {"name": p, "in": "path", "required": True, "schema": dict(fields.PATH_SCHEMAS.get(p, fields.PATH_ID_SCHEMA))}
        for p in decl.path_params
    ]
    if decl.query is not None:
        params += _query_params(decl.query)
    if params:
        op["parameters"] = params
    if decl.body is not None:
        op["requestBody"] = {
            "required": decl.body_required,
            "content": {"application/json": {"schema": refs[(decl.body, "validation")]}},
        }
    elif declare.takes_no_body(decl):
        op["requestBody"] = {
            "required": False,
            "description": "None: no body, or an empty JSON object.",
            "content": {"application/json": {"schema": dict(declare.NO_BODY_SCHEMA)}},
        }
    responses: dict[str, Any] = {}
    error_ref = refs[(Error, "serialization")]
    errors = set(decl.error_statuses())
    for status, spec in sorted(decl.answers.items()):
        a = _answer(spec)
        if a.schema is not None:
            schema = a.schema
        else:
            found = [refs[(m, "serialization")] for m in a.models]
            schema = found[0] if len(found) == 1 else {"anyOf": found}
        if status in errors:  # the same status is also an error envelope (409 pending or under review)
            schema = {"anyOf": [schema, error_ref]}
        content = {a.media_type: {"schema": schema}} | {media: {"schema": other} for media, other in a.also.items()}
        responses[str(status)] = {"description": a.description, "content": content}
    for status in sorted(errors - set(decl.answers)):
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "An error."),
            "content": {"application/json": {"schema": error_ref}},
        }
        if decl.html_errors:
            responses[str(status)]["content"]["text/html"] = {"schema": {"type": "string"}}
    op["responses"] = responses
    return op


@functools.cache
def _document_text() -> str:
    decls = sorted(declare.REGISTRY.values(), key=lambda d: (d.path, d.method))
    refs, defs = models_json_schema(_models(decls), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for d in decls:
        paths.setdefault(d.path, {})[d.method.lower()] = _operation(d, refs)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "INVO Network API",
            "version": "1.0.0",
            "description": "Branded in-app currencies: purchases, balances, webhooks; the operators' admin API.",
        },
        "servers": [{"url": "{server}"}],
        "paths": paths,
        "components": {"securitySchemes": declare.SECURITY_SCHEMES, "schemas": defs.get("$defs", {})},
    }
    return json.dumps(doc, separators=(",", ":"))


def document(server_url: str) -> dict[str, Any]:
    """The document, served from `server_url`. Built once per process: the routes do not change."""
    doc: dict[str, Any] = json.loads(_document_text())
    doc["servers"] = [{"url": server_url}]
    return doc
