"""The result as a table (one row per phase) and as a JSON file."""

from __future__ import annotations

import json
import pathlib
from typing import Any

COLUMNS = (
    ("phase", "phase", 22),
    ("requests", "requests", 8),
    ("acknowledged", "acked", 6),
    ("answers_5xx", "5xx", 5),
    ("answers_5xx_bad", "not 503", 7),
    ("timeouts", "timeouts", 8),
    ("connection_errors", "conn err", 8),
    ("recovery_s", "recovery s", 10),
    ("lost", "lost", 4),
    ("doubled", "doubled", 7),
    ("webhooks_missing", "wh missing", 10),
    ("webhooks_duplicated", "wh dup", 6),
    ("webhook_lag_s", "wh lag s", 8),
    ("violations", "violations", 10),
)
# The findings that are lists, shown by their first items.
LISTED = ("dead", "unresolved", "lost", "doubled", "wallets", "replays", "sessions", "refunds", "transfers", "payouts")


def table(rows: list[dict[str, Any]]) -> str:
    head = " ".join(f"{title:>{width}}" if i else f"{title:<{width}}" for i, (_, title, width) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['phase']:<22} skipped: {row['skipped']}")
            continue
        cells = []
        for i, (key, _, width) in enumerate(COLUMNS):
            value = row.get(key, "")
            cells.append(f"{value!s:>{width}}" if i else f"{value!s:<{width}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def violations_text(rows: list[dict[str, Any]], limit: int = 12) -> str:
    """What failed, briefly: the first findings of each phase that has any."""
    out = []
    for row in rows:
        if not row.get("violations"):
            continue
        f = row.get("findings", {})
        parts = []
        if row.get("error"):
            parts.append(f"error: {row['error']}")
        if f and not f.get("ledger", {}).get("ok", True):
            parts.append(f"ledger check: {f['ledger']}")
        for kind in LISTED:
            if f.get(kind):
                parts.append(f"{kind} ({len(f[kind])}): {json.dumps(f[kind][:2], default=str)[:400]}")
        for group in ("processor", "webhooks"):
            g = f.get(group) or {}
            if g.get("violations"):
                shown = {k: v for k, v in g.items() if v and k not in ("violations", "source")}
                parts.append(f"{group}: {json.dumps(shown, default=str)[:600]}")
        out.append(f"{row['phase']}:\n  " + "\n  ".join(parts))
        if len(out) >= limit:
            break
    return "\n".join(out)


def write(result: dict[str, Any], directory: pathlib.Path, stamp: str) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
