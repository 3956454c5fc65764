"""One run: set up the workload, then for each fault a phase (load, the fault in the middle of it,
load after it healed, then every check), and a final check of everything.

A phase's row says what the clients saw (requests, acknowledged operations, 5xx, timeouts and
connection errors, how long after the fault they kept seeing them: `recovery_s`) and what the
checks found that this phase broke (lost, doubled, webhooks missing and duplicated, violations).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from devstack.stack import Stack, StackError
from faults.checks import Checker, Findings
from faults.client import Stats
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Op
from faults.phases import Fault, Times, blocking
from faults.workload import Settings, Workload

SUPERVISE_S = 0.5  # make run's period


def _row(name: str, stats: Stats, ops: list[Op], times: Times | None, f: Findings, **extra: Any) -> dict[str, Any]:
    recovery_s = 0.0
    if times is not None and stats.last_indefinite_at > times.injected_at:
        recovery_s = stats.last_indefinite_at - times.injected_at
    outcomes = {k: sum(1 for op in ops if op.outcome == k) for k in (ACKED, REFUSED, UNRESOLVED, ABANDONED)}
    # Per flow: how many of each ran, were acknowledged, and needed a retry (what the fault touched).
    by_flow: dict[str, dict[str, int]] = {}
    for op in ops:
        counts = by_flow.setdefault(op.flow, {"operations": 0, ACKED: 0, "retried": 0})
        counts["operations"] += 1
        counts[ACKED] += op.outcome == ACKED
        counts["retried"] += op.indefinite > 0
    return {
        "phase": name,
        "operations": len(ops),
        "requests": stats.requests,
        "acknowledged": outcomes[ACKED],
        "refunds": sum(1 for op in ops if op.refund_of and op.outcome == ACKED),  # of them, operators' refunds
        "refused": outcomes[REFUSED],
        "unresolved": outcomes[UNRESOLVED],
        "abandoned": outcomes[ABANDONED],
        "answers_5xx": stats.answers_5xx,
        "answers_5xx_bad": stats.answers_5xx_bad,
        "timeouts": stats.timeouts,
        "connection_errors": stats.connection_errors,
        "recovery_s": round(recovery_s, 2),
        "heal_s": round(times.healed_at - times.injected_at, 2) if times is not None else None,
        "fault": times.detail if times is not None else "",
        "lost": len(f.lost),
        "doubled": len(f.doubled) + int(f.processor.get("doubled", 0)),
        "webhooks_missing": int(f.webhooks.get("missing", 0)),
        "webhooks_duplicated": int(f.webhooks.get("duplicates", 0)),
        # From an operation's answer to its event's first arrival, the slowest of the phase.
        "webhook_lag_s": f.webhooks.get("lag_s_max"),
        "violations": f.violations + stats.answers_5xx_bad,
        "refusals": stats.refusals,
        "by_flow": by_flow,
        "findings": f.summary(),
        **extra,
    }


async def run_phase(wl: Workload, checker: Checker, fault: Fault) -> dict[str, Any]:
    s, stack = wl.settings, wl.stack
    stats = Stats(fault.name)
    wl.gateway.stats = stats
    wl.world.processor_stats = Stats(f"{fault.name} (processor)")
    try:
        await fault.prepare(stack)
    except RuntimeError as exc:
        return {"phase": fault.name, "skipped": str(exc), "violations": 0}
    stop = asyncio.Event()
    started = time.monotonic()
    clients = wl.start(fault.name, stop)
    times: Times | None = None
    error = ""
    try:
        await asyncio.sleep(s.warm_s)  # the load's duration before the fault: a schedule, not a wait
        times = await fault.inject(stack)
        if fault.name == "kill-processor_sim":
            checker.processor_restarted_at = times.injected_at
        end = max(started + s.load_s, times.healed_at + s.after_heal_s)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    except Exception as exc:  # the fault itself failed: say so, and still check what happened
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        await asyncio.gather(*clients)
    load_s = time.monotonic() - started
    ops = wl.ops_of(fault.name)
    findings = await checker.run(phase_ops=ops, deadline_s=s.check_deadline_s, webhook_bound_s=s.webhook_bound_s)
    try:
        await fault.restore(stack)
    except Exception as exc:
        error = (error + f"; restore: {type(exc).__name__}: {exc}").lstrip("; ")
    row = _row(
        fault.name, stats, ops, times, findings, load_s=round(load_s, 2), processor=wl.world.processor_stats.summary()
    )
    if error:
        row["error"] = error
        row["violations"] += 1
    return row


async def supervise(stack: Stack, checker: Checker, stop: asyncio.Event) -> None:
    """`make run`'s supervision (`Stack.watch_once`) every SUPERVISE_S, on the thread that runs the
    faults' restarts (it is not thread-safe with them); what it reports goes to the next check."""
    while not stop.is_set():
        try:
            checker.supervisor_lines += await blocking(stack.watch_once)
        except StackError as exc:  # a crash loop: the supervisor gives up, the run says so
            checker.supervisor_lines.append(f"supervisor died ({exc})"[:2000])
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=SUPERVISE_S)  # the supervisor's period, as in make run


async def run(stack: Stack, settings: Settings, faults: list[Fault], *, supervised: bool = False) -> dict[str, Any]:
    """The whole run; `supervised`: restart what dies on its own, as `make run` does (the test
    session's network is never supervised: a test's stopped process stays stopped)."""
    stop = asyncio.Event()
    supervisor: asyncio.Task[None] | None = None
    try:
        async with Workload(stack, settings) as wl:
            checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
            if supervised:
                supervisor = asyncio.ensure_future(supervise(stack, checker, stop))
            return await _run(wl, checker, settings, faults)
    finally:
        stop.set()
        if supervisor is not None:
            await supervisor


async def _run(wl: Workload, checker: Checker, settings: Settings, faults: list[Fault]) -> dict[str, Any]:
    started = time.monotonic()
    setup_ops = await wl.setup()
    setup = await checker.run(
        phase_ops=setup_ops, deadline_s=settings.check_deadline_s, webhook_bound_s=settings.webhook_bound_s
    )
    rows = [_row("setup", wl.gateway.stats, setup_ops, None, setup)]
    for fault in faults:
        rows.append(await run_phase(wl, checker, fault))
    wl.gateway.stats = Stats("final")
    final = await checker.run(
        phase_ops=wl.world.model.ops,
        deadline_s=settings.check_deadline_s,
        webhook_bound_s=settings.webhook_bound_s,
        replay_all=True,
    )
    rows.append(_row("final check", wl.gateway.stats, [], None, final))
    model = wl.world.model
    return {
        "run_id": wl.run_id,
        "seed": wl.seed,
        "elapsed_s": round(time.monotonic() - started, 1),
        "settings": {k: v for k, v in vars(settings).items()},
        "phases": rows,
        "violations": sum(int(r.get("violations", 0)) for r in rows),
        "operations": len(model.ops),
        "acknowledged": len(model.acked()),
        "refunds": sum(1 for op in model.acked() if op.refund_of),
        "payouts": len(model.payouts()),  # asked for and acknowledged
        "processor_source": wl.world.processor.source,
        "odd_answers": [op.summary() for op in model.ops if op.note][:50],
    }
