"""The dev network's supervisor: per-process environment overrides, restarts, crash loops.

`make run` should behave as Kubernetes will: a process that dies is restarted with capped
backoff and reported with the end of its log; the network stops only on a signal or a crash loop.
"""

from __future__ import annotations

import pathlib

import pytest

from services.common.stack import Stack, StackError

# -- per-process environment (no network needed) ------------------------------------------------


def test_process_env_applies_to_one_process_only(tmp_path: pathlib.Path) -> None:
    stack = Stack(tmp_path, env={}, process_env={"ledger": {"INVO_DATABASE_URL": "postgresql://proxy/invo"}})
    stack.env = {"INVO_DATABASE_URL": "postgresql://direct/invo", "INVO_HOME": str(tmp_path)}

    assert stack.env_for("ledger") == {"INVO_DATABASE_URL": "postgresql://proxy/invo", "INVO_HOME": str(tmp_path)}
    assert stack.env_for("payments") == stack.env
    assert stack.env["INVO_DATABASE_URL"] == "postgresql://direct/invo"  # the shared env is untouched

    stack.set_process_env("ledger", {"INVO_NATS_URL": "nats://proxy:1"})  # replaces, for the next spawn
    assert stack.env_for("ledger")["INVO_DATABASE_URL"] == "postgresql://direct/invo"
    assert stack.env_for("ledger")["INVO_NATS_URL"] == "nats://proxy:1"
    stack.set_process_env("ledger", {})
    assert stack.env_for("ledger") == stack.env


def test_process_env_refuses_unknown_names_and_values(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StackError, match="no process named"):
        Stack(tmp_path, env={}, process_env={"ledgr": {"A": "1"}})
    stack = Stack(tmp_path, env={})
    with pytest.raises(StackError, match="str to str"):
        stack.set_process_env("ledger", {"A": 1})  # type: ignore[dict-item]
