"""invoctl, the operators' command line, through the real admin API of the session's network: every
admin route is a command, every command reaches its route (the gateway's own request counters say
so), roles are the API's, actions ask before they act, and the configuration keeps the credential
private."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import click.testing

from devstack import replicas
from devstack.stack import Stack
from invoctl import commands
from invoctl.__main__ import cli
from services.gateway import operators
from tests import payouts_support as ps
from tests import transfers_support as ts
from tests.after_sale_support import paid
from tests.helpers import Api, eventually
from tests.test_metrics import scrape
from tests.webhooks_support import Receiver, receivers, tenant_for

__all__ = ["receivers"]  # the fixture, imported for this module's tests


class Ctl:
    """invoctl as an operator runs it, against the session's gateway."""

    def __init__(self, stack: Stack, credential: str) -> None:
        self.url = stack.gateway_url
        self.credential = credential

    async def __call__(self, *args: str, credential: str | None = None, ok: bool = True) -> click.testing.Result:
        env = {
            "INVO_URL": self.url,
            "INVO_OPERATOR_KEY": credential or self.credential,
            "INVOCTL_CONFIG": "/nonexistent",
        }
        result = await asyncio.to_thread(click.testing.CliRunner(env=env).invoke, cli, list(args))
        if ok:
            assert result.exit_code == 0, (args, result.output, result.stderr, result.exception)
        return result

    async def json(self, *args: str, credential: str | None = None) -> Any:
        return json.loads((await self("--json", *args, credential=credential)).stdout)


def test_every_admin_route_is_a_command_and_only_once() -> None:
    routes = commands.admin_routes()
    assert {r.decl.key for r in routes} == set(operators.PERMISSIONS)
    assert len({r.words for r in routes}) == len(routes)
    for r in routes:  # the command is where its words say
        group: Any = cli
        for word in r.words:
            group = group.commands[word]
        assert group.name == r.words[-1]


async def test_every_command_reaches_its_route_through_the_admin_api(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    ctl = Ctl(stack, stack.env["INVO_ADMIN_TOKEN"])
    gateway_metrics = replicas.metrics_urls(stack.replica_env)["gateway"]
    before = await scrape(gateway_metrics)
    rx = await receivers(failing=True)

    # Tenants, keys, the webhook secret.
    t = await ctl.json(
        "tenants", "create", "--name", "CLI Game", "--currency-name", "Gems", "--webhook-url", rx.url, "--yes"
    )
    tid = t["tenant_id"]
    assert (await ctl.json("tenants", "show", tid))["currency_name"] == "Gems"
    assert (await ctl.json("tenants", "update", tid, "--rate-limit-per-second", "77", "--yes"))[
        "rate_limit_per_second"
    ] == 77
    keys = await ctl.json("tenants", "keys", "list", tid)
    assert len(keys["data"]) == 1
    issued = await ctl.json("tenants", "keys", "issue", tid, "--yes")
    rotated = await ctl.json("tenants", "keys", "rotate", tid, issued["key_id"], "--overlap-seconds", "60", "--yes")
    assert rotated["new_key"]["key_id"] != issued["key_id"]
    await ctl("tenants", "keys", "revoke", tid, issued["key_id"], "--yes")
    await ctl("tenants", "webhook-secret", "rotate", tid, "--yes")

    # Players and the ledger.
    player = f"cli-{uuid.uuid4().hex[:6]}@example.com"
    credit = ("--tenant-id", tid, "--player-email", player, "--reason", "cli test", "--yes")
    assert (await ctl.json("players", "credit", *credit, "--amount", "50"))["new_balance"] == "50"
    assert (await ctl.json("players", "debit", *credit, "--amount", "5"))["new_balance"] == "45"
    assert (await ctl.json("ledger", "check"))["ok"] is True

    # Operators: two finance operators (the two-person rule), a viewer revoked.
    fin = [
        await ctl.json(
            "operators",
            "create",
            "--name",
            f"Fin {i}",
            "--email",
            f"fin{i}-{uuid.uuid4().hex[:6]}@invo.test",
            "--role",
            "finance",
            "--yes",
        )
        for i in (1, 2)
    ]
    viewer = await ctl.json(
        "operators",
        "create",
        "--name",
        "V",
        "--email",
        f"v-{uuid.uuid4().hex[:6]}@invo.test",
        "--role",
        "viewer",
        "--yes",
    )
    listed = await ctl.json("operators", "list", "--limit", "1", "--all")
    assert {o["operator_id"] for o in fin} <= {o["operator_id"] for o in listed["data"]}
    refused = await ctl("players", "credit", *credit, "--amount", "1", credential=viewer["credential"], ok=False)
    assert refused.exit_code == 1 and "OPERATOR_ROLE_FORBIDDEN" in refused.stderr
    await ctl("operators", "revoke", viewer["operator_id"], "--yes")

    # An order and its refund.
    payer = await api.create_tenant()
    _, bought = await paid(api, payer)
    order = await ctl.json("orders", "show", bought["order_id"])
    assert order["status"] == "completed"
    refund = await ctl.json(
        "orders", "refund", bought["order_id"], "--usd-amount", "1.00", "--yes", credential=fin[0]["credential"]
    )
    assert refund["refund"]["status"] == "succeeded"

    # Payouts: asked by the admin, approved by one finance operator, another rejected by the other.
    earning = await ps.earning_tenant(api)
    bank = (
        "--contact-email",
        "f@p.example",
        "--account-holder-name",
        "P Inc.",
        "--routing-number",
        ps.ROUTING,
        "--account-number",
        ps.COMPLETES,
        "--account-type",
        "checking",
    )
    first = await ctl.json(
        "payouts", "create", "--tenant-id", earning["tenant_id"], "--usd-amount", "2.00", *bank, "--yes"
    )
    second = await ctl.json(
        "payouts", "create", "--tenant-id", earning["tenant_id"], "--usd-amount", "1.00", *bank, "--yes"
    )
    page = await ctl.json("payouts", "list", "--tenant-id", earning["tenant_id"], "--limit", "1", "--all")
    assert {p["payout_id"] for p in page["data"]} == {first["payout_id"], second["payout_id"]}
    assert (await ctl.json("payouts", "show", first["payout_id"]))["status"] == "requested"
    approved = await ctl.json("payouts", "approve", first["payout_id"], "--yes", credential=fin[0]["credential"])
    assert approved["status"] in ("approved", "processing", "completed")
    rejected = await ctl.json(
        "payouts", "reject", second["payout_id"], "--reason", "not this one", "--yes", credential=fin[1]["credential"]
    )
    assert rejected["status"] == "rejected"

    # Webhook deliveries: the failing endpoint's, one redelivered, then every failed one since.
    since = "2020-01-01T00:00:00Z"

    async def failed() -> list[dict[str, Any]] | None:
        page = await ctl.json("webhooks", "deliveries", "list", "--tenant-id", tid, "--status", "failed")
        return page["data"] or None

    dead = await eventually(failed, timeout_s=30)
    assert dead
    shown = await ctl.json("webhooks", "deliveries", "show", dead[0]["delivery_id"])
    assert shown["attempts"]
    await ctl("webhooks", "deliveries", "redeliver", dead[0]["delivery_id"], "--yes")
    await ctl("webhooks", "redeliver-failed", "--since", since, "--tenant-id", tid, "--yes")
    await ctl("dev", "sms", "--limit", "1")
    assert await ctl.json("me") == {"operator_id": "op_bootstrap", "role": "admin"}
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    stated = await ctl.json("tenants", "statements", "show", tid, day)
    assert stated["day"] == day and stated["balances"]["players"]["closing"] == "45"
    assert len((await ctl.json("volumes", "--hours", "3"))["hours"]) == 3
    assert (await ctl.json("tenants", "player", tid, "--player-email", player))["balance"] == "45"
    assert (await ctl.json("disputes", "--tenant-id", tid, "--open-only", "true"))["data"] == []
    # A transfer, read and cancelled on its source tenant's behalf.
    src, dst = await ts.tenants(api)
    sender = ts.email()
    await ts.fund(api, src, sender, "20")
    trf, _, _ = await ts.self_transfer_to_claimable(api, src, dst, sender, "10")
    assert [t["transfer_id"] for t in (await ctl.json("tenants", "transfers", "list", src["tenant_id"]))["data"]] == [
        trf
    ]
    assert (await ctl.json("tenants", "transfers", "show", src["tenant_id"], trf))["status"] == "claimable"
    assert (await ctl.json("tenants", "transfers", "cancel", src["tenant_id"], trf, "--yes"))["status"] == "cancelled"
    log = await ctl.json("operator-actions", "--tenant-id", tid, "--limit", "3")
    assert [a["route"] for a in log["data"]][:1] == ["/admin/webhooks/redeliver-failed"]

    # Every admin route was called by a command.
    after = await scrape(gateway_metrics)

    def calls(samples: dict[Any, float], method: str, path: str) -> float:
        return sum(
            v
            for (n, ls), v in samples.items()
            if n == "invo_http_requests_total" and dict(ls).get("route") == path and dict(ls).get("method") == method
        )

    missed = [key for key in operators.PERMISSIONS if calls(after, *key) <= calls(before, *key)]
    assert not missed, f"no invoctl command reached {missed}"


async def test_an_action_asks_first_and_a_script_must_say_yes(api: Api, stack: Stack) -> None:
    ctl = Ctl(stack, stack.env["INVO_ADMIN_TOKEN"])
    t = await api.create_tenant(rate_limit_per_second=10)
    refused = await ctl("tenants", "update", t["tenant_id"], "--rate-limit-per-second", "99", ok=False)
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    assert (await ctl.json("tenants", "show", t["tenant_id"]))["rate_limit_per_second"] == 10  # nothing changed


async def test_answers_for_people_and_for_scripts_and_errors_with_their_code(api: Api, stack: Stack) -> None:
    ctl = Ctl(stack, stack.env["INVO_ADMIN_TOKEN"])
    t = await api.create_tenant()
    human = (await ctl("tenants", "keys", "list", t["tenant_id"])).stdout
    header, row = human.splitlines()
    assert header.split()[:3] == ["KEY_ID", "TENANT_ID", "PREFIX"] and row.split()[1] == t["tenant_id"]
    shown = (await ctl("tenants", "show", t["tenant_id"])).stdout.splitlines()
    assert "currency_name               Gold Coins" in shown and "webhook_url                 -" in shown
    missing = await ctl("tenants", "show", "tn_" + "0" * 26, ok=False)
    assert missing.exit_code == 1 and missing.stderr.startswith("error: 404 ")
    as_json = await ctl("--json", "tenants", "show", "tn_" + "0" * 26, ok=False)
    assert json.loads(as_json.stderr)["status"] == "error"
    bad = await ctl("tenants", "update", t["tenant_id"], "--spending-caps", "{not json", "--yes", ok=False)
    assert bad.exit_code == 2 and "not JSON" in bad.stderr
    unreachable = Ctl(stack, "x")
    unreachable.url = "http://127.0.0.1:9"
    down = await unreachable("ledger", "check", ok=False)
    assert down.exit_code == 3 and "cannot reach" in down.stderr


def test_a_config_file_with_a_credential_must_be_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = "http://127.0.0.1:9"\ncredential = "invo_op_secret"\n')
    path.chmod(0o644)
    runner = click.testing.CliRunner(env={"INVO_URL": None, "INVO_OPERATOR_KEY": None})
    open_file = runner.invoke(cli, ["--config", str(path), "ledger", "check"])
    assert open_file.exit_code == 2 and f"chmod 600 {path}" in open_file.stderr
    assert "invo_op_secret" not in open_file.output + open_file.stderr
    path.chmod(0o600)
    private = runner.invoke(cli, ["--config", str(path), "ledger", "check"])
    assert private.exit_code == 3 and "http://127.0.0.1:9" in private.stderr  # the file's URL, tried
    none = click.testing.CliRunner(env={"INVO_OPERATOR_KEY": None, "INVOCTL_CONFIG": os.devnull + "x"})
    assert none.invoke(cli, ["ledger", "check"]).exit_code == 2


async def test_bulk_replay_and_statement_export_show_progress_and_are_bounded(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]], tmp_path: pathlib.Path
) -> None:
    ctl = Ctl(stack, stack.env["INVO_ADMIN_TOKEN"])
    rx = await receivers(failing=True)
    t = await tenant_for(api, rx)
    for _ in range(3):
        assert (await api.post("/api/webhooks/test", key=t["sdk_key"])).status == 201

    async def all_failed() -> bool:
        page = await api.get(f"/admin/webhooks/deliveries?tenant_id={t['tenant_id']}&status=failed", admin=True)
        return len(page.body["data"]) == 3

    await eventually(all_failed, timeout_s=30)
    rx.failing = False
    since = "2020-01-01T00:00:00Z"
    capped = await ctl(
        "webhooks", "replay-failed", "--tenant-id", t["tenant_id"], "--since", since, "--max", "2", "--yes"
    )
    assert json.loads(capped.stdout) == {"redelivered": 2, "matched": 2} and "redelivering" in capped.stderr
    rest = await ctl("webhooks", "replay-failed", "--tenant-id", t["tenant_id"], "--since", since, "--yes")
    assert json.loads(rest.stdout)["redelivered"] in (0, 1)  # the third, unless already picked up by the first
    # Each redelivery is an action of its own in the log (they name no tenant: the delivery does).
    logged = (await api.get("/admin/operator-actions?operator_id=op_bootstrap&limit=5", admin=True)).body["data"]
    redelivered = [a for a in logged if a["route"] == "/admin/webhooks/deliveries/{delivery_id}/redeliver"]
    assert len(redelivered) >= 2 and all(a["status"] == 200 for a in redelivered)

    today = datetime.datetime.now(datetime.UTC).date()
    first = (today - datetime.timedelta(days=2)).isoformat()
    done = await ctl(
        "tenants",
        "statements",
        "export",
        t["tenant_id"],
        "--from",
        first,
        "--to",
        today.isoformat(),
        "--out",
        str(tmp_path),
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 and files[-1] == f"{t['tenant_id']}-{today.isoformat()}.csv" and "statements" in done.stderr
    assert (tmp_path / files[-1]).read_text().startswith("section,account,kind,count,amount\n")
    too_long = await ctl(
        "tenants",
        "statements",
        "export",
        t["tenant_id"],
        "--from",
        "2020-01-01",
        "--to",
        today.isoformat(),
        "--out",
        str(tmp_path),
        ok=False,
    )
    assert too_long.exit_code == 2
