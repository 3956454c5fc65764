"""A data key rotation for the tenants' webhook signing secrets (k8s/README.md, "Rotate a secret"):
the new key first, `python -m services.tenants.rekey` moves every sealed secret under it, and the
old key can then go while every secret still opens to the same value."""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys

import asyncpg
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from devstack.stack import Stack
from services.common import grpcutil
from services.common.config import Settings
from services.common.crypto import Keyring
from tests.helpers import Api

ROOT = pathlib.Path(__file__).resolve().parents[1]


async def sealed(stack: Stack) -> dict[str, tuple[str, str, bytes]]:
    """Every webhook secret row: secret_id -> (tenant_id, data key id, sealed bytes)."""
    schema = Settings.from_env(stack.env).schema("tenants")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        rows = await conn.fetch(f"SELECT secret_id, tenant_id, data_key_id, sealed FROM {schema}.webhook_secrets")
    finally:
        await conn.close()
    return {r["secret_id"]: (r["tenant_id"], r["data_key_id"], bytes(r["sealed"])) for r in rows}


async def rekey(stack: Stack, keys: str, *, to: str) -> tuple[int, int]:
    """`python -m services.tenants.rekey` as an operator runs it: (moved, left)."""
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.tenants.rekey"],
        cwd=ROOT,
        env={**stack.env, "INVO_DATA_KEYS": keys},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    match = re.fullmatch(
        rf"re-encrypted (\d+) webhook signing secrets under key '{re.escape(to)}'; (\d+) left under other keys",
        res.stdout.strip(),
    )
    assert match, res.stdout
    assert "whsec_" not in res.stdout + res.stderr
    return int(match[1]), int(match[2])


async def secrets_of(stack: Stack, tenant_ids: list[str]) -> dict[str, list[str]]:
    ch = grpcutil.channel(stack.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        got = await grpcutil.call(
            stub.GetWebhookTargets,
            tenants_pb2.GetWebhookTargetsRequest(tenant_ids=tenant_ids, include_secrets=True),
            timeout_s=5,
        )
    finally:
        await ch.close()
    return {t: list(got.targets[t].secrets) for t in tenant_ids}


async def restart_tenants(stack: Stack, overrides: dict[str, str]) -> None:
    stack.set_process_env("tenants", overrides)
    await asyncio.to_thread(stack.restart, "tenants")


async def test_rekey_moves_every_webhook_secret_under_the_new_key_and_the_old_key_can_go(
    api: Api, stack: Stack
) -> None:
    old = stack.env["INVO_DATA_KEYS"]
    old_kid, new = Keyring(old).active_kid, Keyring.generate_spec("k2")
    assert old_kid != "k2"
    saved = dict(stack.process_env.get("tenants", {}))
    a = await api.create_tenant(webhook_url="https://a.example.com/hook")
    rotated = await api.post(
        f"/admin/tenants/{a['tenant_id']}/webhook-secret/rotate", admin=True, json={"overlap_seconds": 600}
    )
    assert rotated.status == 201, rotated
    a_secrets = [rotated.body["webhook_signing_secret"], a["webhook_signing_secret"]]
    try:
        await restart_tenants(stack, {**saved, "INVO_DATA_KEYS": f"{new},{old}"})
        b = await api.create_tenant(webhook_url="https://b.example.com/hook")  # sealed under the new key
        ids = [a["tenant_id"], b["tenant_id"]]
        assert await secrets_of(stack, ids) == {
            a["tenant_id"]: a_secrets,
            b["tenant_id"]: [b["webhook_signing_secret"]],
        }
        before = await sealed(stack)
        ours = {sid: row for sid, row in before.items() if row[0] in ids}
        assert sorted(kid for _, kid, _ in ours.values()) == sorted([old_kid, old_kid, "k2"])
        under_old = [sid for sid, (_, kid, _) in before.items() if kid != "k2"]

        assert await rekey(stack, f"{new},{old}", to="k2") == (len(under_old), 0)
        after = await sealed(stack)
        assert set(after) == set(before) and {kid for _, kid, _ in after.values()} == {"k2"}
        assert all(after[sid][2] != before[sid][2] for sid in under_old)  # sealed anew
        assert await rekey(stack, f"{new},{old}", to="k2") == (0, 0)  # nothing left: a second run is a no-op
        assert await sealed(stack) == after

        # The old key gone: every secret still opens, to the same value, newest first.
        await restart_tenants(stack, {**saved, "INVO_DATA_KEYS": new})
        assert await secrets_of(stack, ids) == {
            a["tenant_id"]: a_secrets,
            b["tenant_id"]: [b["webhook_signing_secret"]],
        }
    finally:
        try:  # every row back under the stack's own key, so later tests read them as before
            await rekey(stack, f"{old},{new}", to=old_kid)
        finally:
            await restart_tenants(stack, saved)
