"""Commands from the admin routes' declarations: one command per route, named by its path.

`POST /admin/tenants/{tenant_id}/keys/{key_id}/rotate` is `invoctl tenants keys rotate TENANT_ID
KEY_ID [--overlap-seconds N]`: the path's words are the command's, its parameters are arguments,
the body's and the query's fields are options (an object or a list as JSON text), and a route
ending in a parameter or naming a collection takes the verb of its method (`show`, `update`,
`list`, `create`). An `--idempotency-key` left out is generated and shown. Every action that is
not a read asks for confirmation unless `--yes` is given (and a script without a terminal must
give it).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import click
from pydantic import BaseModel

from services.gateway import declare, surfaces  # noqa: F401 - importing surfaces declares every route

# Where the path's words alone would read badly.
NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/admin/orders/{order_id}/refunds"): ("orders", "refund"),
    ("POST", "/admin/tenants/{tenant_id}/keys"): ("tenants", "keys", "issue"),
    ("POST", "/admin/tenants/{tenant_id}/webhook-secret/rotate"): ("tenants", "webhook-secret", "rotate"),
}
CURSORS = ("cursor", "starting_after")
GROUPS = {
    "dev": "Development deployments only: the SMS outbox.",
    "ledger": "The ledger: its invariants, checked now.",
    "operators": "The operators and their roles (admins only).",
    "orders": "Currency orders: the timeline, and refunds.",
    "payouts": "Partners' payouts: the review queue, approval under the two-person rule, rejection.",
    "players": "Players' wallets: an operator's credit or debit.",
    "tenants": "Tenants: their settings and status, SDK keys, webhook signing secrets.",
    "webhooks": "Webhook deliveries with every attempt, and redelivery.",
}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string, integer, number, boolean, json
    required: bool
    help: str


@dataclasses.dataclass(frozen=True)
class Route:
    decl: declare.Declaration
    words: tuple[str, ...]
    body: tuple[Field, ...]
    query: tuple[Field, ...]

    @property
    def reads(self) -> bool:
        return self.decl.method == "GET"


def admin_routes() -> list[Route]:
    decls = [d for d in declare.REGISTRY.values() if d.security == declare.OPERATOR]
    paths = {d.path for d in decls}
    out = [
        Route(decl=d, words=NAMES.get(d.key) or _words(d, paths), body=_fields(d.body), query=_fields(d.query))
        for d in sorted(decls, key=lambda d: (d.path, d.method))
    ]
    seen: dict[tuple[str, ...], Route] = {}
    for r in out:
        if r.words in seen:
            raise RuntimeError(f"two admin routes would be `invoctl {' '.join(r.words)}`: add one to NAMES")
        seen[r.words] = r
    return out


def _words(decl: declare.Declaration, paths: set[str]) -> tuple[str, ...]:
    parts = decl.path.removeprefix("/admin/").split("/")
    words = [p for p in parts if not p.startswith("{")]
    if parts[-1].startswith("{"):
        verb = {"GET": "show", "PATCH": "update", "DELETE": "delete"}.get(decl.method, decl.method.lower())
        return (*words, verb)
    collection = any(p.startswith(decl.path + "/{") for p in paths)
    if collection:
        return (*words, "list" if decl.method == "GET" else "create")
    return tuple(words)


def _fields(model: type[BaseModel] | None) -> tuple[Field, ...]:
    if model is None:
        return ()
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        types = [prop.get("type")] if "type" in prop else [a.get("type") for a in prop.get("anyOf", [])]
        kinds = {t for t in types if t not in (None, "null")} if types else set()
        if "$ref" in prop or None in types or kinds & {"object", "array"}:
            kind = "json"
        else:
            kind = next(iter(kinds), "string")
        out.append(Field(name, kind, name in required, str(prop.get("description") or prop.get("title") or "")))
    return tuple(out)


def _option(f: Field) -> Callable[[Any], Any]:
    flag = "--" + f.name.replace("_", "-")
    note = " (JSON)" if f.kind == "json" else ""
    if f.kind == "boolean":
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=f.help)
    kind: Any = {"integer": click.INT, "number": click.FLOAT}.get(f.kind, click.STRING)
    needed = f.required and f.name != "idempotency_key"
    return click.option(flag, f.name, type=kind, required=needed, default=None, help=f.help + note)


def _values(fields: tuple[Field, ...], given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        value = given.get(f.name)
        if value is None:
            continue
        if f.kind == "json":
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--" + f.name.replace("_", "-")) from None
        out[f.name] = value
    return out


Runner = Callable[[Route, dict[str, str], dict[str, Any], Any, bool], None]


def build(group: click.Group, run: Runner) -> None:
    """Add a command for every admin route under `group`, each calling `run(route, path_params,
    query, body, all_pages)`."""
    for route in admin_routes():
        parent = group
        for word in route.words[:-1]:
            sub = parent.commands.get(word)
            if not isinstance(sub, click.Group):
                sub = click.Group(word, help=GROUPS.get(word, f"{word.replace('-', ' ').capitalize()}."))
                parent.add_command(sub)
            parent = sub
        parent.add_command(_command(route, run))


def _command(route: Route, run: Runner) -> click.Command:
    decl = route.decl

    def callback(**given: Any) -> None:
        params = {p: given.pop(p) for p in decl.path_params}
        all_pages = bool(given.pop("all_pages", False))
        if not route.reads and not given.pop("yes", False):
            _confirm(route, params)
        body: Any = _values(route.body, given) if decl.body is not None else None
        if any(f.name == "idempotency_key" for f in route.body) and "idempotency_key" not in body:
            body["idempotency_key"] = f"invoctl-{uuid.uuid4().hex}"
            click.echo(f"idempotency key: {body['idempotency_key']}", err=True)
        if decl.body is not None and not decl.body_required and not body:
            body = None
        if decl.method == "POST" and decl.body is None:
            body = {}
        run(route, params, _values(route.query, given), body, all_pages)

    summary = decl.summary.rstrip(".")
    command = click.Command(
        route.words[-1],
        callback=callback,
        help=f"{summary}.\n\n{decl.method} {decl.path}",
        short_help=summary,
    )
    for p in decl.path_params:
        command.params.append(click.Argument([p]))
    for f in (*route.body, *route.query):
        _option(f)(command)
    if not route.reads:
        click.option("--yes", "-y", is_flag=True, help="Do it without asking.")(command)
    if route.reads and any(f.name in CURSORS for f in route.query):
        click.option("--all", "all_pages", is_flag=True, help="Every page, not only the first.")(command)
    return command


def _confirm(route: Route, params: dict[str, str]) -> None:
    what = " ".join(route.words) + "".join(f" {v}" for v in params.values())
    if not sys.stdin.isatty():
        raise click.UsageError(f"`{what}` changes something: pass --yes to do it without a terminal.")
    click.confirm(f"{route.decl.summary.rstrip('.')}: {what}. Go ahead?", abort=True)


def fill(path: str, params: dict[str, str]) -> str:
    """The path with its parameters, each quoted whole (a `/` in one stays inside it)."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: urllib.parse.quote(params[m.group(1)], safe=""), path)
