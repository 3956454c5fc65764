"""TenantsService over gRPC. Validation here is authoritative; the gateway only translates formats."""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from services.common import crypto, errors, grpcutil, ids, limits
from services.common.config import Settings
from services.common.grpcserver import GrpcService
from services.common.logs import operator_id_var, request_id_var
from services.tenants.operators import OperatorsServicer

log = logging.getLogger("invo.tenants")

SDK_KEY_PREFIX = limits.SDK_KEY_PREFIX  # one spelling, which the gateway checks keys against too
SDK_KEY_RANDOM_BYTES = 32
KEYS_PER_TENANT_MAX = 20
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
WEBHOOK_TARGETS_MAX = 1000

_TENANT_COLUMNS = (
    "tenant_id, name, currency_name, environment, status, webhook_url, network_fee_bps, transfer_fee_bps,"
    " allows_outgoing_transfers, allows_incoming_transfers, universal_transfers, linked_game_ids,"
    " hourly_cap_usd_cents, daily_cap_usd_cents, monthly_cap_usd_cents, rate_limit_per_second,"
    " auto_refund_fraud_warnings, created_at, updated_at"
)
TARGETS_PAGE_MAX = 1000
_KEY_COLUMNS = "key_id, tenant_id, prefix, environment, created_at, expires_at, revoked_at"


_ts = grpcutil.timestamp


def tenant_message(row: asyncpg.Record) -> tenants_pb2.Tenant:
    caps = tenants_pb2.SpendingCaps()
    for period in ("hourly", "daily", "monthly"):
        value = row[f"{period}_cap_usd_cents"]
        if value is not None:
            setattr(caps, f"{period}_usd_cents", value)
    return tenants_pb2.Tenant(
        tenant_id=row["tenant_id"],
        name=row["name"],
        currency_name=row["currency_name"],
        environment=row["environment"],
        status=row["status"],
        webhook_url=row["webhook_url"],
        network_fee_bps=row["network_fee_bps"],
        transfer_fee_bps=row["transfer_fee_bps"],
        allows_outgoing_transfers=row["allows_outgoing_transfers"],
        allows_incoming_transfers=row["allows_incoming_transfers"],
        universal_transfers=row["universal_transfers"],
        linked_game_ids=list(row["linked_game_ids"]),
        spending_caps=caps,
        rate_limit_per_second=row["rate_limit_per_second"],
        auto_refund_fraud_warnings=row["auto_refund_fraud_warnings"],
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
    )


def key_message(row: asyncpg.Record) -> tenants_pb2.SdkKey:
    return tenants_pb2.SdkKey(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        prefix=row["prefix"],
        environment=row["environment"],
        created_at=_ts(row["created_at"]),
        expires_at=_ts(row["expires_at"]),
        revoked_at=_ts(row["revoked_at"]),
    )


def _check_text(value: str, field: str, *, max_len: int) -> str:
    value = value.strip()
    if not value or len(value) > max_len or any(ord(c) < 32 for c in value):
        raise errors.InvalidRequest(f"{field} must be 1 to {max_len} printable characters")
    return value


def check_webhook_url(url: str, *, environment: str) -> str:
    if url == "":
        return url
    if len(url) > limits.WEBHOOK_URL_LEN_MAX:
        raise errors.InvalidRequest(f"webhook_url must be at most {limits.WEBHOOK_URL_LEN_MAX} characters")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise errors.InvalidRequest("webhook_url must be an absolute http(s) URL")
    if parsed.username or parsed.password:
        raise errors.InvalidRequest("webhook_url must not carry credentials")
    if environment == "production" and parsed.scheme != "https":
        raise errors.InvalidRequest("webhook_url must use https for a production tenant")
    return url


def _has(message: Any, field: str) -> bool:
    return bool(message.HasField(field))


def _settings_changes(s: tenants_pb2.TenantSettings, *, environment: str) -> dict[str, Any]:
    """Column -> new value for every field present in `s`, validated."""
    changes: dict[str, Any] = {}
    if s.HasField("name"):
        changes["name"] = _check_text(s.name, "name", max_len=limits.TENANT_NAME_LEN_MAX)
    if s.HasField("currency_name"):
        changes["currency_name"] = _check_text(s.currency_name, "currency_name", max_len=limits.CURRENCY_NAME_LEN_MAX)
    if s.HasField("webhook_url"):
        changes["webhook_url"] = check_webhook_url(s.webhook_url, environment=environment)
    if s.HasField("network_fee_bps"):
        if not 0 <= s.network_fee_bps <= limits.NETWORK_FEE_BPS_MAX:
            raise errors.InvalidRequest("network_fee_percentage must be between 0 and 100")
        changes["network_fee_bps"] = s.network_fee_bps
    if s.HasField("transfer_fee_bps"):
        if not 0 <= s.transfer_fee_bps <= limits.TRANSFER_FEE_BPS_MAX:
            # The user pays 10%; the destination keeps 3.5%; the source can take at most the rest.
            raise errors.InvalidRequest("transfer_fee_percentage must be between 0 and 6.5")
        changes["transfer_fee_bps"] = s.transfer_fee_bps
    for flag in (
        "allows_outgoing_transfers",
        "allows_incoming_transfers",
        "universal_transfers",
        "auto_refund_fraud_warnings",
    ):
        if _has(s, flag):
            changes[flag] = getattr(s, flag)
    if s.HasField("linked_game_ids"):
        linked = list(dict.fromkeys(s.linked_game_ids.values))
        if len(linked) > limits.LINKED_GAME_IDS_MAX:
            raise errors.InvalidRequest(f"linked_game_ids holds at most {limits.LINKED_GAME_IDS_MAX} tenant ids")
        for tid in linked:
            if not limits.TENANT_ID_RE.match(tid):
                raise errors.InvalidRequest(f"linked_game_ids: {tid[:40]!r} is not a tenant id")
        changes["linked_game_ids"] = linked
    for period in ("hourly", "daily", "monthly"):
        field = f"{period}_cap_usd_cents"
        if _has(s, field):
            value = getattr(s, field)
            if value < -1:
                raise errors.InvalidRequest(f"spending_caps.{period}_usd must not be negative")
            changes[field] = None if value == -1 else value
    if s.HasField("status"):
        if s.status not in ("active", "suspended"):
            raise errors.InvalidRequest("status must be active or suspended")
        changes["status"] = s.status
    if s.HasField("rate_limit_per_second"):
        if not 0 <= s.rate_limit_per_second <= limits.RATE_LIMIT_PER_SECOND_MAX:
            raise errors.InvalidRequest(
                f"rate_limit_per_second must be between 0 and {limits.RATE_LIMIT_PER_SECOND_MAX}"
            )
        changes["rate_limit_per_second"] = s.rate_limit_per_second
    return changes


def _check_tenant_id(tenant_id: str) -> None:
    if not limits.TENANT_ID_RE.match(tenant_id):
        raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")


def _check_key_id(key_id: str) -> None:
    if not limits.KEY_ID_RE.match(key_id):
        raise errors.NotFound("No such key.", error_code="KEY_NOT_FOUND")


async def _audit(conn: asyncpg.Connection, tenant_id: str, action: str, detail: dict[str, Any]) -> None:
    # The operator who asked arrives from the gateway in the call's metadata, like the request id.
    await conn.execute(
        "INSERT INTO audit_log (tenant_id, action, detail, request_id, operator_id) VALUES ($1, $2, $3::jsonb, $4, $5)",
        tenant_id,
        action,
        json.dumps(detail, default=str),
        request_id_var.get(),
        operator_id_var.get(),
    )


class TenantsServicer(tenants_pb2_grpc.TenantsServiceServicer):
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.keyring = crypto.Keyring(settings.data_keys)
        if not settings.key_pepper:
            raise errors.Internal("INVO_KEY_PEPPER is required by the tenants service")
        self.pepper = settings.key_pepper

    # -- keys -----------------------------------------------------------------------------

    async def _new_key(self, conn: asyncpg.Connection, tenant_id: str, environment: str) -> tenants_pb2.IssuedKey:
        count = await conn.fetchval(
            "SELECT count(*) FROM sdk_keys WHERE tenant_id = $1 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())",
            tenant_id,
        )
        if count >= KEYS_PER_TENANT_MAX:
            raise errors.Conflict(
                f"A tenant has at most {KEYS_PER_TENANT_MAX} live keys; revoke one first.",
                error_code="TOO_MANY_KEYS",
            )
        plaintext = SDK_KEY_PREFIX + crypto.random_base62(SDK_KEY_RANDOM_BYTES)
        row = await conn.fetchrow(
            f"INSERT INTO sdk_keys (key_id, tenant_id, key_hash, prefix, environment)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_KEY_COLUMNS}",
            ids.new_id("key"),
            tenant_id,
            crypto.keyed_hash(self.pepper, plaintext),
            plaintext[:12],
            environment,
        )
        await _audit(conn, tenant_id, "key.issued", {"key_id": row["key_id"]})
        return tenants_pb2.IssuedKey(key=key_message(row), sdk_key=plaintext)

    async def AuthenticateKey(self, request: tenants_pb2.AuthenticateKeyRequest, context: Any) -> Any:
        key = request.sdk_key
        if not key.startswith(SDK_KEY_PREFIX) or len(key) > limits.SDK_KEY_LEN_MAX:
            raise errors.Unauthenticated("Invalid API key provided.", error_code="INVALID_API_KEY")
        digest = crypto.keyed_hash(self.pepper, key)
        row = await self.pool.fetchrow(
            f"SELECT k.key_hash, k.key_id, k.expires_at, k.revoked_at, now() AS now,"
            f" {', '.join('t.' + c.strip() for c in _TENANT_COLUMNS.split(','))}"
            " FROM sdk_keys k JOIN tenants t USING (tenant_id) WHERE k.key_hash = $1",
            digest,
        )
        # The index lookup finds the row; the comparison that decides is constant-time.
        if row is None or not crypto.constant_time_equal(bytes(row["key_hash"]), digest):
            raise errors.Unauthenticated("Invalid API key provided.", error_code="INVALID_API_KEY")
        if row["revoked_at"] is not None:
            raise errors.Unauthenticated("This API key has been revoked.", error_code="API_KEY_REVOKED")
        if row["expires_at"] is not None and row["expires_at"] <= row["now"]:
            raise errors.Unauthenticated("This API key has expired.", error_code="API_KEY_EXPIRED")
        return tenants_pb2.AuthenticateKeyResponse(
            tenant=tenant_message(row), key_id=row["key_id"], key_expires_at=_ts(row["expires_at"])
        )

    async def IssueKey(self, request: tenants_pb2.IssueKeyRequest, context: Any) -> Any:
        _check_tenant_id(request.tenant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            env = await conn.fetchval(
                "SELECT environment FROM tenants WHERE tenant_id = $1 FOR UPDATE", request.tenant_id
            )
            if env is None:
                raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
            return await self._new_key(conn, request.tenant_id, env)

    async def RotateKey(self, request: tenants_pb2.RotateKeyRequest, context: Any) -> Any:
        _check_tenant_id(request.tenant_id)
        _check_key_id(request.key_id)
        overlap_s = (
            request.overlap_seconds if request.HasField("overlap_seconds") else self.settings.key_rotation_overlap_s
        )
        if not 0 <= overlap_s <= limits.ROTATION_OVERLAP_S_MAX:
            raise errors.InvalidRequest(f"overlap_seconds must be between 0 and {limits.ROTATION_OVERLAP_S_MAX}")
        async with self.pool.acquire() as conn, conn.transaction():
            env = await conn.fetchval(
                "SELECT environment FROM tenants WHERE tenant_id = $1 FOR UPDATE", request.tenant_id
            )
            if env is None:
                raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
            # Only a live key can be rotated; its expiry only ever moves earlier.
            old = await conn.fetchrow(
                f"UPDATE sdk_keys SET expires_at = LEAST(COALESCE(expires_at, 'infinity'),"
                f" now() + make_interval(secs => $3))"
                f" WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL"
                f" AND (expires_at IS NULL OR expires_at > now()) RETURNING {_KEY_COLUMNS}",
                request.tenant_id,
                request.key_id,
                float(overlap_s),
            )
            if old is None:
                raise errors.NotFound("No such live key.", error_code="KEY_NOT_FOUND")
            new = await self._new_key(conn, request.tenant_id, env)
            await _audit(
                conn,
                request.tenant_id,
                "key.rotated",
                {"old_key_id": request.key_id, "new_key_id": new.key.key_id, "overlap_s": overlap_s},
            )
            return tenants_pb2.RotateKeyResponse(new_key=new, old_key=key_message(old))

    async def RevokeKey(self, request: tenants_pb2.RevokeKeyRequest, context: Any) -> Any:
        _check_tenant_id(request.tenant_id)
        _check_key_id(request.key_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE sdk_keys SET revoked_at = COALESCE(revoked_at, now())"
                f" WHERE tenant_id = $1 AND key_id = $2 RETURNING {_KEY_COLUMNS}",
                request.tenant_id,
                request.key_id,
            )
            if row is None:
                raise errors.NotFound("No such key.", error_code="KEY_NOT_FOUND")
            await _audit(conn, request.tenant_id, "key.revoked", {"key_id": request.key_id})
            return key_message(row)

    async def ListKeys(self, request: tenants_pb2.ListKeysRequest, context: Any) -> Any:
        await self._get_tenant_row(request.tenant_id)
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM sdk_keys WHERE tenant_id = $1 ORDER BY created_at, key_id LIMIT 1000",
            request.tenant_id,
        )
        return tenants_pb2.ListKeysResponse(keys=[key_message(r) for r in rows])

    # -- webhook signing secrets ----------------------------------------------------------

    async def GetWebhookTargets(self, request: tenants_pb2.GetWebhookTargetsRequest, context: Any) -> Any:
        if len(request.tenant_ids) > WEBHOOK_TARGETS_MAX:
            raise errors.InvalidRequest(f"at most {WEBHOOK_TARGETS_MAX} tenant_ids per call")
        wanted = sorted({t for t in request.tenant_ids if limits.TENANT_ID_RE.match(t)})
        tenants = await self.pool.fetch(
            "SELECT tenant_id, webhook_url, environment, status FROM tenants WHERE tenant_id = ANY($1::text[])", wanted
        )
        out = {
            r["tenant_id"]: tenants_pb2.WebhookSecrets(
                webhook_url=r["webhook_url"], environment=r["environment"], status=r["status"]
            )
            for r in tenants
        }
        if request.include_secrets and out:
            rows = await self.pool.fetch(
                "SELECT tenant_id, data_key_id, sealed FROM ("
                "  SELECT tenant_id, data_key_id, sealed,"
                "         row_number() OVER (PARTITION BY tenant_id ORDER BY created_at DESC) AS n"
                "  FROM webhook_secrets WHERE tenant_id = ANY($1::text[])"
                "  AND (expires_at IS NULL OR expires_at > now())"
                ") s WHERE n <= 5 ORDER BY tenant_id, n",
                list(out),
            )
            for r in rows:
                tenant_id = r["tenant_id"]
                out[tenant_id].secrets.append(self.keyring.open(r["data_key_id"], bytes(r["sealed"]), aad=tenant_id))
        return tenants_pb2.GetWebhookTargetsResponse(targets=out)

    async def RotateWebhookSecret(self, request: tenants_pb2.RotateWebhookSecretRequest, context: Any) -> Any:
        await self._get_tenant_row(request.tenant_id)
        overlap_s = (
            request.overlap_seconds if request.HasField("overlap_seconds") else self.settings.key_rotation_overlap_s
        )
        if not 0 <= overlap_s <= limits.ROTATION_OVERLAP_S_MAX:
            raise errors.InvalidRequest(f"overlap_seconds must be between 0 and {limits.ROTATION_OVERLAP_S_MAX}")
        secret = WEBHOOK_SECRET_PREFIX + crypto.random_base62(32)
        kid, sealed = self.keyring.seal(secret, aad=request.tenant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", request.tenant_id)
            expires = await conn.fetchval(
                "UPDATE webhook_secrets SET expires_at = LEAST(COALESCE(expires_at, 'infinity'),"
                " now() + make_interval(secs => $2)) WHERE tenant_id = $1"
                " AND (expires_at IS NULL OR expires_at > now()) RETURNING expires_at",
                request.tenant_id,
                float(overlap_s),
            )
            await conn.execute(
                "INSERT INTO webhook_secrets (secret_id, tenant_id, data_key_id, sealed) VALUES ($1, $2, $3, $4)",
                ids.new_id("whs"),
                request.tenant_id,
                kid,
                sealed,
            )
            await _audit(conn, request.tenant_id, "webhook_secret.rotated", {"overlap_s": overlap_s})
        return tenants_pb2.RotateWebhookSecretResponse(webhook_signing_secret=secret, previous_expires_at=_ts(expires))

    # -- tenants --------------------------------------------------------------------------

    async def _get_tenant_row(self, tenant_id: str) -> asyncpg.Record:
        _check_tenant_id(tenant_id)
        row = await self.pool.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id)
        if row is None:
            raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
        return row

    async def CreateTenant(self, request: tenants_pb2.CreateTenantRequest, context: Any) -> Any:
        if request.environment not in ("sandbox", "production"):
            raise errors.InvalidRequest("environment must be sandbox or production")
        s = request.settings
        for required in ("name", "currency_name"):
            if not s.HasField(required):
                raise errors.InvalidRequest(f"{required} is required")
        changes = _settings_changes(s, environment=request.environment)
        changes.pop("status", None)  # a new tenant starts active
        tenant_id = ids.new_id("tn")
        columns = ["tenant_id", "environment", *changes]
        values = [tenant_id, request.environment, *changes.values()]
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        secret = WEBHOOK_SECRET_PREFIX + crypto.random_base62(32)
        kid, sealed = self.keyring.seal(secret, aad=tenant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO tenants ({', '.join(columns)}) VALUES ({placeholders}) RETURNING {_TENANT_COLUMNS}",
                *values,
            )
            await conn.execute(
                "INSERT INTO webhook_secrets (secret_id, tenant_id, data_key_id, sealed) VALUES ($1, $2, $3, $4)",
                ids.new_id("whs"),
                tenant_id,
                kid,
                sealed,
            )
            await _audit(conn, tenant_id, "tenant.created", {k: v for k, v in changes.items()})
            key = await self._new_key(conn, tenant_id, request.environment)
        log.info("tenant created", extra={"fields": {"tenant_id": tenant_id}})
        return tenants_pb2.CreateTenantResponse(tenant=tenant_message(row), key=key, webhook_signing_secret=secret)

    async def GetTenant(self, request: tenants_pb2.GetTenantRequest, context: Any) -> Any:
        return tenant_message(await self._get_tenant_row(request.tenant_id))

    async def ListTransferTargets(self, request: tenants_pb2.ListTransferTargetsRequest, context: Any) -> Any:
        if request.environment not in ("sandbox", "production") or not 1 <= request.limit <= TARGETS_PAGE_MAX:
            raise errors.InvalidRequest(f"an environment and a limit from 1 to {TARGETS_PAGE_MAX} are required")
        if len(request.tenant_ids) > TARGETS_PAGE_MAX:
            raise errors.InvalidRequest(f"at most {TARGETS_PAGE_MAX} tenant_ids")
        rows = await self.pool.fetch(
            f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE environment = $1 AND status = 'active'"
            f" AND allows_incoming_transfers AND tenant_id > $2 AND ($3::text[] IS NULL OR tenant_id = ANY($3))"
            f" ORDER BY tenant_id LIMIT $4",
            request.environment,
            request.after_tenant_id,
            list(request.tenant_ids) or None,
            request.limit + 1,
        )
        return tenants_pb2.ListTransferTargetsResponse(
            tenants=[tenant_message(r) for r in rows[: request.limit]], has_more=len(rows) > request.limit
        )

    async def UpdateTenant(self, request: tenants_pb2.UpdateTenantRequest, context: Any) -> Any:
        current = await self._get_tenant_row(request.tenant_id)
        changes = _settings_changes(request.settings, environment=current["environment"])
        if not changes:
            return tenant_message(current)
        sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE tenants SET {sets}, updated_at = now() WHERE tenant_id = $1 RETURNING {_TENANT_COLUMNS}",
                request.tenant_id,
                *changes.values(),
            )
            await _audit(conn, request.tenant_id, "tenant.updated", changes)
        return tenant_message(row)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("key_pepper", "data_keys")
    svc.add(
        tenants_pb2_grpc.add_TenantsServiceServicer_to_server,
        TenantsServicer(pool, settings),
        tenants_pb2.DESCRIPTOR.services_by_name["TenantsService"].full_name,
    )
    svc.add(
        tenants_pb2_grpc.add_OperatorsServiceServicer_to_server,
        OperatorsServicer(pool, pepper=settings.key_pepper),
        tenants_pb2.DESCRIPTOR.services_by_name["OperatorsService"].full_name,
    )
