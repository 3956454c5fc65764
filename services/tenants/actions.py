"""The operator action log: what each operator did through the admin API, and how it ended.

The gateway calls `start` before an admin action runs (if it cannot be recorded, the action does
not run) and `finish` with its answer after; `finish` keeps the first answer it is given. The
request's body is never kept (a payout's bank account number travels in one): the route, its path
parameters, the tenant it names and its idempotency key say what was asked.
"""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors, grpcutil, ids

ACTION_ID_RE = re.compile(r"^act_[0-9A-Z]{26}$")
OPERATOR_RE = re.compile(r"^op_([0-9A-Z]{26}|bootstrap)$")
METHODS = ("POST", "PATCH", "PUT", "DELETE")
ROUTE_RE = re.compile(r"^/admin/[a-z0-9_/{}\-]{1,190}$")
PARAMS_MAX = 8
VALUE_LEN_MAX = 255
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
_COLUMNS = (
    "action_id, operator_id, method, route, params::text AS params_json, tenant_id, idempotency_key, request_id,"
    " status, error_code, started_at, finished_at"
)


def _invalid(param: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": param})


def _short(name: str, value: str) -> str:
    if len(value) > VALUE_LEN_MAX:
        raise _invalid(name, f"{name} is longer than {VALUE_LEN_MAX} characters.")
    return value


def message(row: asyncpg.Record) -> tenants_pb2.OperatorAction:
    out = tenants_pb2.OperatorAction(
        action_id=row["action_id"],
        operator_id=row["operator_id"],
        method=row["method"],
        route=row["route"],
        params=json.loads(row["params_json"]),
        tenant_id=row["tenant_id"],
        idempotency_key=row["idempotency_key"],
        request_id=row["request_id"],
        status=row["status"] or 0,
        error_code=row["error_code"],
        started_at=grpcutil.timestamp(row["started_at"]),
    )
    finished = grpcutil.timestamp(row["finished_at"])
    if finished is not None:
        out.finished_at.CopyFrom(finished)
    return out


async def start(pool: asyncpg.Pool, r: tenants_pb2.StartActionRequest) -> tenants_pb2.OperatorAction:
    if not OPERATOR_RE.match(r.operator_id):
        raise _invalid("operator_id", "operator_id is not an operator's id.")
    if r.method not in METHODS:
        raise _invalid("method", f"method must be one of {', '.join(METHODS)}: reads are not actions.")
    if not ROUTE_RE.match(r.route):
        raise _invalid("route", "route must be an admin route's template.")
    if len(r.params) > PARAMS_MAX:
        raise _invalid("params", f"at most {PARAMS_MAX} path parameters.")
    params = {_short("params", k): _short("params", v) for k, v in r.params.items()}
    row = await pool.fetchrow(
        f"INSERT INTO operator_actions (action_id, operator_id, method, route, params, tenant_id, idempotency_key,"
        f" request_id) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) RETURNING {_COLUMNS}",
        ids.new_id("act"),
        r.operator_id,
        r.method,
        r.route,
        json.dumps(params),
        _short("tenant_id", r.tenant_id),
        _short("idempotency_key", r.idempotency_key),
        _short("request_id", r.request_id),
    )
    assert row is not None
    return message(row)


async def finish(pool: asyncpg.Pool, r: tenants_pb2.FinishActionRequest) -> tenants_pb2.OperatorAction:
    if not ACTION_ID_RE.match(r.action_id):
        raise errors.NotFound("No such action.", error_code="ACTION_NOT_FOUND")
    if not 100 <= r.status <= 599:
        raise _invalid("status", "status must be an HTTP status.")
    # The first answer stays: a repeated finish (a retry) changes nothing.
    row = await pool.fetchrow(
        f"UPDATE operator_actions SET status = COALESCE(status, $2), error_code = CASE WHEN status IS NULL"
        f" THEN $3 ELSE error_code END, finished_at = COALESCE(finished_at, now()) WHERE action_id = $1"
        f" RETURNING {_COLUMNS}",
        r.action_id,
        r.status,
        _short("error_code", r.error_code),
    )
    if row is None:
        raise errors.NotFound("No such action.", error_code="ACTION_NOT_FOUND")
    return message(row)


async def list_actions(pool: asyncpg.Pool, r: tenants_pb2.ListActionsRequest) -> tenants_pb2.ListActionsResponse:
    limit = r.limit or LIST_LIMIT_DEFAULT
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise _invalid("limit", f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}.")
    if r.cursor and not ACTION_ID_RE.match(r.cursor):
        raise _invalid("cursor", "cursor must be the next_cursor of a previous page.")
    if r.operator_id and not OPERATOR_RE.match(r.operator_id):
        raise _invalid("operator_id", "operator_id is not an operator's id.")
    where: list[str] = ["($1 = '' OR action_id < $1)"]
    args: list[Any] = [r.cursor]
    if r.operator_id:
        args.append(r.operator_id)
        where.append(f"operator_id = ${len(args)}")
    if r.tenant_id:
        args.append(_short("tenant_id", r.tenant_id))
        where.append(f"tenant_id = ${len(args)}")
    args.append(limit + 1)
    rows: list[Any] = await pool.fetch(
        f"SELECT {_COLUMNS} FROM operator_actions WHERE {' AND '.join(where)} ORDER BY action_id DESC"
        f" LIMIT ${len(args)}",
        *args,
    )
    page = rows[:limit]
    return tenants_pb2.ListActionsResponse(
        actions=[message(row) for row in page], next_cursor=page[-1]["action_id"] if len(rows) > limit else ""
    )
