"""`make faults`: the permanent fault suite, on a network of its own.

Starts the network the way `make bench` does (a temporary INVO_HOME, PostgreSQL with fsync, NATS,
every service), with retry schedules shortened so that a phase's recovery fits in seconds (the
same logic, the same number of retries), runs every phase, prints the table, writes
`faults/results/<timestamp>.json` and exits 1 on any violation. The temporary INVO_HOME (logs,
data) is kept when something failed, and its path printed.

    python -m faults [--phase NAME ...] [--quick] [--load-s S] [--rate N] [--clients N] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

from devstack.devservers import free_port
from devstack.stack import Stack
from faults import phases, report, runner
from faults.workload import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "faults" / "results"
BUDGET_S = 15 * 60  # the whole suite on the 2-core box, the bound

# The seed's schedules, shortened (README, INVO_* variables): a phase must recover in seconds.
EXTRA_ENV = {
    "INVO_LOG_LEVEL": "INFO",  # the evidence when a phase fails
    # Renewals within the run: the workload moves the subscriptions service's clock a day at a time.
    "INVO_SUBSCRIPTIONS_TEST_CLOCK": "on",
    "INVO_SUBSCRIPTION_RENEWAL_INTERVAL_S": "0.5",
    "INVO_WEBHOOK_RETRY_SCHEDULE_S": "0.5,1,2,4,8,15",
    "INVO_WEBHOOK_TIMEOUT_S": "5",
    "INVO_BREAKER_COOLDOWN_S": "2",
    "INVO_PROCESSOR_TIMEOUT_S": "5",
    "INVO_AUTH_CACHE_TTL_S": "5",
    # Many purchases per player in a few minutes: the velocity rules would refuse most of them.
    "INVO_PURCHASE_ATTEMPTS_PER_MINUTE_MAX": "100000",
    "INVO_DECLINES_MAX": "100000",
    # A 3-D Secure challenge the processor forgot is cancelled within the run, not after an hour.
    "INVO_REQUIRES_ACTION_TIMEOUT_S": "30",
    # Two texts a transfer: the full suite's transfers would pass a tenant's 1,000 an hour.
    "INVO_SMS_PER_TENANT_PER_HOUR": "100000",
    # A payout settles (processing, sent, completed, then returned for a 100XX account) in about two
    # seconds, not eight; a worker killed mid-call to the ACH provider leaves its lease for 20 s, not 30.
    "INVO_ACH_SIM_SETTLE_DELAY_S": "0.5",
    "INVO_ACH_TIMEOUT_S": "5",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phase",
        action="append",
        help=f"run only these faults (repeatable), of: {', '.join(phases.FULL)}",
    )
    parser.add_argument("--quick", action="store_true", help=f"only {' and '.join(phases.SHORT)}, shorter")
    parser.add_argument("--load-s", type=float, help="each phase's load, at least (default 14)")
    parser.add_argument("--rate", type=float, help="operations started per second, at most (default 100)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="the workload's random seed (default: a new one)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="where the result goes")
    args = parser.parse_args(argv)
    settings = Settings(seed=args.seed)
    names = list(args.phase or (phases.SHORT if args.quick else phases.FULL))
    if args.quick:
        settings.load_s, settings.tenants, settings.players_per_tenant = 8.0, 2, 12
    if args.load_s is not None:
        settings.load_s = args.load_s
    if args.rate is not None:
        settings.rate_per_s = args.rate
    if args.clients is not None:
        settings.clients = args.clients
    if not (1 <= settings.clients <= 256 and 1 <= settings.rate_per_s <= 2000 and 2 <= settings.load_s <= 600):
        parser.error("clients 1..256, rate 1..2000, load 2..600 s")
    try:
        faults = [phases.by_name(n) for n in names]
    except ValueError as exc:
        parser.error(str(exc))

    started = time.monotonic()
    home = pathlib.Path(tempfile.mkdtemp(prefix="invo-faults-"))
    print(f"starting the network in {home} (PostgreSQL with fsync, NATS, every service)...", file=sys.stderr)
    port = os.environ.get("INVO_GATEWAY_PORT") or str(free_port())
    stack = Stack(home, env={**os.environ, "INVO_GATEWAY_PORT": port}, extra_env=EXTRA_ENV)
    ok = False
    try:
        stack.start()
        result = asyncio.run(runner.run(stack, settings, faults, supervised=True))
        ok = result["violations"] == 0
    finally:
        stack.stop()
        if ok:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept the network's home (logs, data): {home}", file=sys.stderr)
    elapsed_s = time.monotonic() - started
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result.update(
        timestamp=stamp,
        total_s=round(elapsed_s, 1),
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        home_kept=None if ok else str(home),
    )
    path = report.write(result, args.out, stamp)
    print()
    print(report.table(result["phases"]))
    if not ok:
        print()
        print(report.violations_text(result["phases"]))
    over = elapsed_s > BUDGET_S and not args.phase and not args.quick
    print(
        f"\n{result['operations']} operations, {result['acknowledged']} acknowledged, {result['refunds']} of them"
        f" refunds, {result['payouts']} payouts; processor record: "
        f"{result['processor_source']}"
    )
    budget = " (over the 15-minute budget)" if over else ""
    print(f"violations: {result['violations']}; {elapsed_s:.0f} s{budget}; seed {result['seed']} (--seed repeats it)")
    print(f"results: {path}")
    return 0 if ok and not over else 1


if __name__ == "__main__":
    raise SystemExit(main())
