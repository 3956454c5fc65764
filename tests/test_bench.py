"""`make bench --quick` against the session's network, so the harness cannot rot. It checks that
the harness runs every scenario and records what it must; the speed itself is not tested here."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from devstack.stack import Stack

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_runs_every_scenario(stack: Stack, tmp_path: pathlib.Path) -> None:
    env_file = tmp_path / "dev.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in stack.dev_env().items()))
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--duration",
            "1",
            "--concurrency",
            "8",
            "--env-file",
            str(env_file),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [result_file] = list(out.glob("*.json"))
    result = json.loads(result_file.read_text())
    assert set(result["scenarios"]) == {
        "item-purchase-spread",
        "item-purchase-hot-tenant",
        "ledger-write",
        "balance-read",
        "currency-purchase",
        "checkout",
        "transfer",
        "subscription-renewal",
        "webhook-delivery",
        "naive-per-request-sql",
        "pgbench-peer",
    }
    for name, r in result["scenarios"].items():
        assert r["requests"] > 0 and r["errors"] == 0, (name, r)
        assert r["rps"] > 0 and r["p50_ms"] is not None and r["p99_ms"] >= r["p50_ms"]
    assert result["scenarios"]["webhook-delivery"]["bad_signatures"] == 0
    # Every measured window is also seen from the database and the machine (bench.observe).
    for name, r in result["scenarios"].items():
        d = r["database"]
        assert d["db_commits_per_s"] > 0 and d["wal_mb_per_s"] >= 0 and 0 < d["machine_busy"] <= 1, (name, d)
        assert set(d["cpu_cores"]) == {"postgres", "ledger", "gateway", "services", "nats", "bench"}, (name, d)
        # The by-module figures add up to the groups they split (rounding apart).
        by = d["cpu_by_process"]
        assert abs(
            sum(
                v
                for k, v in by.items()
                if k.startswith("services.") and k not in ("services.ledger", "services.gateway")
            )
            + sum(v for k, v in by.items() if k.startswith("devstack."))
            - d["cpu_cores"]["services"]
        ) < 0.05 + 0.01 * len(by), (name, d)
    lw = result["scenarios"]["ledger-write"]
    assert lw["purchases_failed"] == 0 and abs(lw["purchases_per_s"] - lw["rps"] * lw["ops_per_call"]) < 4, lw
    assert lw["database"]["ledger_transactions_per_s"] > 0 and lw["database"]["ledger_entries_per_s"] > 0, lw
    assert lw["database"]["cpu_cores"]["postgres"] > 0 and lw["database"]["cpu_cores"]["ledger"] > 0, lw
    checkout = result["scenarios"]["checkout"]
    assert checkout["sessions_checked"] >= checkout["requests"] and checkout["sessions_not_completed"] == 0, checkout
    assert checkout["pay_p99_ms"] is not None and checkout["mint_p99_ms"] is not None
    transfer = result["scenarios"]["transfer"]
    # Every transfer the clients saw completed (warm-up included) reads completed, every player holds
    # what the transfers moved, and nothing failed, in the warm-up either (no SMS or key limit met).
    assert transfer["transfers_checked"] >= transfer["requests"] and transfer["transfers_not_completed"] == 0, transfer
    assert transfer["balances_checked"] > transfer["transfers_checked"] and transfer["balances_wrong"] == 0, transfer
    assert transfer["failures"] == {}, transfer
    assert all(transfer[f"{step}_p99_ms"] is not None for step in ("initiate", "pin_read", "verify", "claim"))
    # Every subscription made due at once renewed exactly once, every wallet exact.
    renewal = result["scenarios"]["subscription-renewal"]
    assert renewal["subscriptions"] >= 200 and renewal["create_refused"] == 0, renewal
    assert renewal["periods_wrong"] == 0 and renewal["balances_wrong"] == 0 and renewal["requests"] == 400, renewal
    others = set(result["scenarios"]) - {"pgbench-peer"}
    assert set(result["ratios"]) == {f"{name}/pgbench-peer" for name in others} | {
        "item-purchase-spread/naive-per-request-sql",
        "item-purchase-hot-tenant/naive-per-request-sql",
        "hot/spread",
    }
    # Every target is judged on this run's figures (all its scenarios ran), printed and kept.
    assert set(result["verdicts"]) == set(result["targets"]), result["verdicts"]
    for name, v in result["verdicts"].items():
        assert v["target"] == result["targets"][name] and isinstance(v["met"], bool), (name, v)
        assert f"target {name}" in proc.stdout
    peer = result["scenarios"]["pgbench-peer"]
    assert peer["tps_reported"] > 0 and peer["requests"] > 0 and peer["p99_ms"] is not None, peer
    assert "pgbench-peer" in proc.stdout and "/pgbench-peer" in proc.stdout
    assert result["ledger_check"]["ok"] is True and result["ledger_check"]["total_balance"] == "0"
    assert list(out.glob("*.png")), "the chart was not written"
    assert "item-purchase-spread" in proc.stdout and "ledger check: ok=True" in proc.stdout
    assert "ledger tx/s" in proc.stdout and "WAL MB/s" in proc.stdout
    assert "transfer = initiate + PIN read + verify + claim" in proc.stdout
