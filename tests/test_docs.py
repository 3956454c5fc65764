"""The README stays true to the code: every setting is documented, the two commands are there."""

from __future__ import annotations

import pathlib

from services.common.config import documented_variables

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_in_the_readme() -> None:
    missing = [name for name in documented_variables() if f"`{name}`" not in README]
    assert not missing, f"README.md does not document {missing}: run .venv/bin/python tools/readme_env.py"


def test_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
