"""OperatorsService: the named operators who open the admin API, in the tenants schema.

A credential is `invo_op_<random>`, returned once when the operator is created and stored only as an
HMAC with the key pepper (as SDK keys are): the database never holds anything that opens the admin
API. The lookup finds the row by its hash and a constant-time comparison decides. Roles are what the
gateway enforces (`services/gateway/operators.py`); this service validates and stores them.

Who did it: the operator who made the call arrives in the `x-operator-id` metadata
(`logs.operator_id_var`), and is stored as `created_by` / `revoked_by` on the operator's row.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from services.common import crypto, errors, grpcutil, ids, players
from services.common.logs import operator_id_var
from services.tenants import actions

log = logging.getLogger("invo.tenants.operators")

ROLES = ("viewer", "support", "finance", "admin")
STATUSES = ("active", "revoked")
CREDENTIAL_PREFIX = "invo_op_"
CREDENTIAL_RANDOM_BYTES = 32
CREDENTIAL_LEN_MAX = 100
CREDENTIAL_SHOWN_LEN = len(CREDENTIAL_PREFIX) + 4
NAME_LEN_MAX = 200
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
# Changes made with no operator in the metadata: never expected (the gateway always sends one), but
# the row must still say something rather than pretend someone named did it.
UNKNOWN_OPERATOR = "op_unknown"
OPERATOR_ID_RE = re.compile(r"^op_[0-9A-Z]{26}$")

_COLUMNS = "operator_id, name, email, role, status, credential_prefix, created_by, created_at, revoked_by, revoked_at"


def _invalid(param: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": param})


def operator_message(row: asyncpg.Record) -> tenants_pb2.Operator:
    return tenants_pb2.Operator(
        operator_id=row["operator_id"],
        name=row["name"],
        email=row["email"],
        role=row["role"],
        status=row["status"],
        credential_prefix=row["credential_prefix"],
        created_by=row["created_by"],
        created_at=grpcutil.timestamp(row["created_at"]),
        revoked_by=row["revoked_by"] or "",
        revoked_at=grpcutil.timestamp(row["revoked_at"]),
    )


def _check_name(value: str) -> str:
    value = value.strip()
    if not value or len(value) > NAME_LEN_MAX or any(ord(c) < 32 for c in value):
        raise _invalid("name", f"name must be 1 to {NAME_LEN_MAX} printable characters.")
    return value


def _check_email(value: str) -> str:
    try:
        return players.normalize_email(value, field="email")
    except errors.InvalidRequest as exc:
        raise _invalid("email", "email must be a valid email address.") from exc


def _check_role(value: str) -> str:
    if value not in ROLES:
        raise _invalid("role", f"role must be one of {', '.join(ROLES)}.")
    return value


def _actor() -> str:
    return operator_id_var.get() or UNKNOWN_OPERATOR


def _not_found() -> errors.NotFound:
    return errors.NotFound("No such operator.", error_code="OPERATOR_NOT_FOUND")


def _invalid_credential() -> errors.Unauthenticated:
    return errors.Unauthenticated("Invalid admin token.", error_code="INVALID_ADMIN_TOKEN")


class OperatorsServicer(tenants_pb2_grpc.OperatorsServiceServicer):
    def __init__(self, pool: asyncpg.Pool, *, pepper: str) -> None:
        if not pepper:
            raise errors.Internal("INVO_KEY_PEPPER is required by the operators service")
        self.pool = pool
        self.pepper = pepper

    async def CreateOperator(self, request: tenants_pb2.CreateOperatorRequest, context: Any) -> Any:
        name = _check_name(request.name)
        email = _check_email(request.email)
        role = _check_role(request.role)
        credential = CREDENTIAL_PREFIX + crypto.random_base62(CREDENTIAL_RANDOM_BYTES)
        try:
            row = await self.pool.fetchrow(
                f"INSERT INTO operators (operator_id, name, email, role, credential_hash, credential_prefix,"
                f" created_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
                ids.new_id("op"),
                name,
                email,
                role,
                crypto.keyed_hash(self.pepper, credential),
                credential[:CREDENTIAL_SHOWN_LEN],
                _actor(),
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "operators_active_email":
                raise errors.Conflict(
                    "An active operator already has this email; revoke it first.",
                    error_code="OPERATOR_EXISTS",
                    extra={"param": "email"},
                ) from None
            raise
        log.info(
            "operator created",
            extra={"fields": {"created_operator_id": row["operator_id"], "role": role}},
        )
        return tenants_pb2.CreatedOperator(operator=operator_message(row), credential=credential)

    async def AuthenticateOperator(self, request: tenants_pb2.AuthenticateOperatorRequest, context: Any) -> Any:
        credential = request.credential
        if not credential.startswith(CREDENTIAL_PREFIX) or len(credential) > CREDENTIAL_LEN_MAX:
            raise _invalid_credential()
        digest = crypto.keyed_hash(self.pepper, credential)
        row = await self.pool.fetchrow(
            f"SELECT credential_hash, {_COLUMNS} FROM operators WHERE credential_hash = $1", digest
        )
        # The index lookup finds the row; the comparison that decides is constant-time.
        if row is None or not crypto.constant_time_equal(bytes(row["credential_hash"]), digest):
            raise _invalid_credential()
        if row["status"] != "active":
            raise errors.Unauthenticated("This operator credential has been revoked.", error_code="ADMIN_TOKEN_REVOKED")
        return operator_message(row)

    async def ListOperators(self, request: tenants_pb2.ListOperatorsRequest, context: Any) -> Any:
        limit = request.limit or LIST_LIMIT_DEFAULT
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise _invalid("limit", f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}.")
        if request.status and request.status not in STATUSES:
            raise _invalid("status", f"status must be one of {', '.join(STATUSES)}.")
        if request.cursor and not OPERATOR_ID_RE.match(request.cursor):
            raise _invalid("cursor", "cursor must be the next_cursor of a previous page.")
        # One row more than asked says whether there is a next page.
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM operators WHERE operator_id > $1 AND ($2 = '' OR status = $2)"
            " ORDER BY operator_id LIMIT $3",
            request.cursor,
            request.status,
            limit + 1,
        )
        page = rows[:limit]
        next_cursor = page[-1]["operator_id"] if len(rows) > limit else ""
        return tenants_pb2.ListOperatorsResponse(operators=[operator_message(r) for r in page], next_cursor=next_cursor)

    async def RevokeOperator(self, request: tenants_pb2.RevokeOperatorRequest, context: Any) -> Any:
        if not OPERATOR_ID_RE.match(request.operator_id):
            raise _not_found()
        # COALESCE: revoking twice keeps the first revocation (who and when) as it was.
        row = await self.pool.fetchrow(
            f"UPDATE operators SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()),"
            f" revoked_by = COALESCE(revoked_by, $2) WHERE operator_id = $1 RETURNING {_COLUMNS}",
            request.operator_id,
            _actor(),
        )
        if row is None:
            raise _not_found()
        log.info("operator revoked", extra={"fields": {"revoked_operator_id": request.operator_id}})
        return operator_message(row)

    # The operator action log (services/tenants/actions.py).
    async def StartAction(self, request: tenants_pb2.StartActionRequest, context: Any) -> Any:
        return await actions.start(self.pool, request)

    async def FinishAction(self, request: tenants_pb2.FinishActionRequest, context: Any) -> Any:
        return await actions.finish(self.pool, request)

    async def ListActions(self, request: tenants_pb2.ListActionsRequest, context: Any) -> Any:
        return await actions.list_actions(self.pool, request)
