"""Rewrite the README's environment-variable table from `Settings` (run after adding a setting)."""

from __future__ import annotations

import dataclasses
import pathlib

from services.common.config import Settings

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
HEAD = "| variable | default | meaning |\n|---|---|---|\n"
TAIL = "| `INVO_HOME` |"


def main() -> None:
    rows = []
    for f in dataclasses.fields(Settings):
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    text = README.read_text()
    start = text.index(HEAD) + len(HEAD)
    end = text.index(TAIL)
    README.write_text(text[:start] + "\n".join(rows) + "\n" + text[end:])


if __name__ == "__main__":
    main()
