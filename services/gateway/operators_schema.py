"""The declarations of the operators' own routes, adopted by `operators_api.py`: they validate its
requests and document them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.common import limits
from services.gateway import answers, declare, fields
from services.gateway.answers import Time
from services.gateway.fields import Query, Request

Role = Literal["viewer", "support", "finance", "admin"]
Status = Literal["active", "revoked"]


class CreateOperator(Request):
    name: Annotated[str, fields.printable(limits.TENANT_NAME_LEN_MAX)]
    email: Annotated[str, Field(max_length=limits.EMAIL_LEN_MAX, json_schema_extra=fields.EMAIL_SCHEMA)]
    role: Role


class Operator(answers.Answer):
    """An operator of the admin API (its credential's prefix only)."""

    operator_id: str
    name: str
    email: str
    role: Role
    status: Status
    credential_prefix: str
    created_by: str
    created_at: Time
    revoked_by: str | None
    revoked_at: Time | None


class CreatedOperator(Operator):
    """The new operator and its credential: shown this once, never again."""

    credential: str


class OperatorsQuery(Query):
    cursor: str | None = None
    status: Status | None = None
    limit: Annotated[int, fields.query_int(1, 500)] | None = None


class OperatorPage(answers.Answer):
    """Operators, a page at a time."""

    data: list[Operator]
    has_more: bool
    next_cursor: str | None


CREATE = declare.register(
    declare.Declaration(
        method="POST",
        path="/admin/operators",
        summary="Create an operator with a role; its credential is shown once.",
        security=declare.OPERATOR,
        body=CreateOperator,
        answers={201: CreatedOperator},
        errors=(409,),
    )
)
LIST = declare.register(
    declare.Declaration(
        method="GET",
        path="/admin/operators",
        summary="The admin API's operators.",
        security=declare.OPERATOR,
        query=OperatorsQuery,
        answers={200: OperatorPage},
    )
)
REVOKE = declare.register(
    declare.Declaration(
        method="POST",
        path="/admin/operators/{operator_id}/revoke",
        summary="Revoke an operator's credential at once.",
        security=declare.OPERATOR,
        body=fields.Empty,
        body_required=False,
        answers={200: Operator},
    )
)
