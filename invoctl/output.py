"""How invoctl shows an answer: JSON for scripts (`--json`), or lines and a table for people."""

from __future__ import annotations

import json
from typing import Any

COLUMN_MAX = 40


def render(answer: Any, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(answer, indent=2, sort_keys=False)
    if isinstance(answer, dict) and isinstance(answer.get("data"), list):
        rest = {k: v for k, v in answer.items() if k != "data"}
        table = render_table(answer["data"])
        return table + ("\n" + render_fields(rest) if rest else "")
    if isinstance(answer, dict):
        return render_fields(answer)
    if isinstance(answer, list):
        return render_table(answer)
    return str(answer)


def render_fields(answer: dict[str, Any]) -> str:
    width = max((len(k) for k in answer), default=0)
    return "\n".join(f"{k:<{width}}  {_cell(v, limit=None)}" for k, v in answer.items())


def render_table(rows: list[Any]) -> str:
    if not rows:
        return "(none)"
    if not all(isinstance(r, dict) for r in rows):
        return "\n".join(_cell(r, limit=None) for r in rows)
    columns = [k for k, v in rows[0].items() if not isinstance(v, dict | list)]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any, limit: int | None = COLUMN_MAX) -> str:
    text = "-" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
