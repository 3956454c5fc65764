"""invoctl's bulk commands, beside the generated one-route commands, each with a progress bar on
stderr and a bound:

    invoctl webhooks replay-failed --tenant-id T --since 2026-12-01T00:00:00Z [--event-type X] [--max 1000]
        every failed delivery matching, redelivered one by one (each its own recorded action)
    invoctl tenants statements export T --from 2026-11-01 --to 2026-11-30 [--format csv] --out DIR
        one statement file per day (at most 366 days)
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import urllib.parse
from typing import Any

import click

from invoctl import client
from invoctl.config import Config

REPLAY_MAX = 10_000
EXPORT_DAYS_MAX = 366
PAGE = 100


def _failed(config: Config, tenant_id: str, since: str, event_type: str | None, most: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    while len(found) < most:
        query = {"tenant_id": tenant_id, "status": "failed", "since": since, "limit": PAGE, "cursor": cursor or None}
        if event_type:
            query["event_type"] = event_type
        page = client.call(config, "GET", "/admin/webhooks/deliveries", query=query)
        found += page["data"]
        if not page.get("has_more") or not page.get("next_cursor"):
            break
        cursor = page["next_cursor"]
    return found[:most]


def add(cli: click.Group, config_of: Any, fail: Any) -> None:
    """Add the bulk commands to the generated groups (`webhooks`, `tenants statements`)."""

    @click.command("replay-failed")
    @click.option("--tenant-id", required=True, help="The tenant whose failed deliveries to send again.")
    @click.option("--since", required=True, help="Failed since this time (ISO 8601, UTC).")
    @click.option("--event-type", help="Only events of this type.")
    @click.option("--max", "most", type=click.IntRange(1, REPLAY_MAX), default=1000, show_default=True)
    @click.option("--yes", "-y", is_flag=True, help="Do it without asking.")
    def replay_failed(tenant_id: str, since: str, event_type: str | None, most: int, yes: bool) -> None:
        """Send every failed delivery matching again, one recorded action each, with a progress bar."""
        config = config_of()
        try:
            todo = _failed(config, tenant_id, since, event_type, most)
            if not todo:
                click.echo("no failed delivery matches")
                return
            if not yes:
                if not sys.stdin.isatty():
                    raise click.UsageError("replay-failed changes something: pass --yes to do it without a terminal.")
                click.confirm(f"Redeliver {len(todo)} failed deliveries of {tenant_id}?", abort=True)
            done = 0
            with click.progressbar(todo, label="redelivering", file=sys.stderr, show_pos=True) as bar:
                for d in bar:
                    path = f"/admin/webhooks/deliveries/{urllib.parse.quote(d['delivery_id'], safe='')}/redeliver"
                    client.call(config, "POST", path, body={})
                    done += 1
        except client.ApiError as exc:
            fail(exc)
        click.echo(json.dumps({"redelivered": done, "matched": len(todo)}))

    @click.command("export")
    @click.argument("tenant_id")
    @click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC).")
    @click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC).")
    @click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="csv", show_default=True)
    @click.option("--out", required=True, type=click.Path(file_okay=False, path_type=pathlib.Path))
    def export(tenant_id: str, first: datetime.datetime, last: datetime.datetime, fmt: str, out: pathlib.Path) -> None:
        """Every day's statement from --from to --to, one file per day in --out, with a progress bar."""
        days = (last.date() - first.date()).days + 1
        if not 1 <= days <= EXPORT_DAYS_MAX:
            raise click.UsageError(f"--from must not be after --to, and at most {EXPORT_DAYS_MAX} days apart")
        config = config_of()
        out.mkdir(parents=True, exist_ok=True)
        written = []
        try:
            with click.progressbar(range(days), label="statements", file=sys.stderr, show_pos=True) as bar:
                for i in bar:
                    day = (first.date() + datetime.timedelta(days=i)).isoformat()
                    path = f"/admin/tenants/{urllib.parse.quote(tenant_id, safe='')}/statements/{day}"
                    raw = client.call_raw(config, "GET", path, query={"format": fmt})
                    target = out / f"{tenant_id}-{day}.{fmt}"
                    target.write_bytes(raw)
                    written.append(str(target))
        except client.ApiError as exc:
            fail(exc)
        click.echo(json.dumps({"written": written}))

    webhooks = cli.commands["webhooks"]
    statements = cli.commands["tenants"].commands["statements"]  # type: ignore[attr-defined]
    assert isinstance(webhooks, click.Group) and isinstance(statements, click.Group)
    webhooks.add_command(replay_failed)
    statements.add_command(export)
