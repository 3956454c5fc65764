"""`python -m invoctl [--url URL] [--credential KEY] [--config FILE] [--json] COMMAND ...`

Exit status: 0 done, 1 the API refused (its error code and message on stderr), 2 a usage error
or a configuration problem, 3 the gateway could not be reached.
"""

from __future__ import annotations

import sys
import urllib.error
from typing import Any

import click

from invoctl import bulk, client, commands, output
from invoctl.config import Config, ConfigError, load

PAGES_MAX = 10_000  # `--all` stops there whatever the gateway says


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--url", envvar="INVO_URL", help="The gateway, e.g. https://api.invo.example (INVO_URL).")
@click.option("--credential", help="An operator's credential, invo_op_... (INVO_OPERATOR_KEY).")
@click.option("--config", "config_path", help="A TOML file with url and credential (INVOCTL_CONFIG).")
@click.option("--json", "as_json", is_flag=True, help="Answers as JSON, for scripts.")
@click.pass_context
def cli(ctx: click.Context, url: str | None, credential: str | None, config_path: str | None, as_json: bool) -> None:
    """The INVO operators' command line: every admin API call, under your own operator's role."""
    ctx.obj = {"url": url, "credential": credential, "config": config_path, "json": as_json}


def _config() -> Config:
    obj = click.get_current_context().find_root().obj
    try:
        return load(obj["url"], obj["credential"], obj["config"])
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run(route: commands.Route, params: dict[str, str], query: dict[str, Any], body: Any, all_pages: bool) -> None:
    obj = click.get_current_context().find_root().obj
    config = _config()
    path = commands.fill(route.decl.path, params)
    try:
        answer = client.call(config, route.decl.method, path, query=query, body=body)
        if all_pages and isinstance(answer, dict):
            answer = _every_page(config, route, path, query, answer)
    except client.ApiError as exc:
        click.echo(output.render(exc.body, as_json=True) if obj["json"] else f"error: {exc}", err=True)
        sys.exit(1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        click.echo(f"error: cannot reach {config.url}: {exc}", err=True)
        sys.exit(3)
    click.echo(output.render(answer, as_json=obj["json"]))


def _every_page(
    config: Config, route: commands.Route, path: str, query: dict[str, Any], first: dict[str, Any]
) -> dict[str, Any]:
    """Follow the pages (next_cursor, or the last item's id for starting_after), with a progress
    bar on stderr; the answer is every item in one `data`."""
    cursor = next(f.name for f in route.query if f.name in commands.CURSORS)
    id_key = route.words[-2].rstrip("s") + "_id" if len(route.words) > 1 else "id"
    items = list(first.get("data", []))
    page = first
    with click.progressbar(length=0, label="pages", file=sys.stderr, show_pos=True) as bar:
        for _ in range(PAGES_MAX):
            if not page.get("has_more") or not page.get("data"):
                break
            after = page.get("next_cursor") or page["data"][-1].get(id_key)
            if not after:
                break
            page = client.call(config, "GET", path, query={**query, cursor: after})
            items += page.get("data", [])
            bar.update(1)
    return {"data": items, "has_more": False}


def _fail(exc: client.ApiError) -> None:
    obj = click.get_current_context().find_root().obj
    click.echo(output.render(exc.body, as_json=True) if obj["json"] else f"error: {exc}", err=True)
    sys.exit(1)


commands.build(cli, run)
bulk.add(cli, _config, _fail)


def main() -> None:
    cli(prog_name="invoctl")


if __name__ == "__main__":
    main()
