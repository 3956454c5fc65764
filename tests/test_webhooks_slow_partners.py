"""Webhooks end to end, slow partners: one tenant's slow endpoint, with or without a backlog,
never delays the deliveries of other tenants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.helpers import Api, eventually
from tests.webhooks_support import Receiver, _true, receivers, send_test, show, tenant_for

__all__ = ["receivers"]  # the fixture, imported for this module's tests


# -- 6. a slow partner does not hold up the others --------------------------------------------


async def test_one_slow_endpoint_never_delays_other_tenants(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    # Slow, yet half a second inside the 2 s attempt timeout: with 0.1 s to spare, a busy box's
    # scheduling turned an answer into a timeout and a second call (a fresh-clone run: 31 calls).
    slow = await receivers(delay_s=1.5)
    quick = await receivers()
    a = await tenant_for(api, slow)
    b = await tenant_for(api, quick)
    started = time.monotonic()
    sent = await asyncio.gather(
        *(send_test(api, a["sdk_key"]) for _ in range(30)), *(send_test(api, b["sdk_key"]) for _ in range(5))
    )
    b_ids = {d["event_id"] for d in sent[30:]}

    async def b_done() -> bool:
        return {c.event_id for c in quick.answered()} == b_ids

    await eventually(b_done, timeout_s=5, interval_s=0.02)
    b_s = time.monotonic() - started
    assert b_s < 1.5, b_s
    assert len(slow.answered()) < 30

    async def a_done() -> bool:
        return len({c.event_id for c in slow.answered()}) == 30

    await eventually(a_done, timeout_s=30, interval_s=0.1)
    a_s = time.monotonic() - started
    assert a_s > b_s + 3, (a_s, b_s)
    assert len(quick.calls) == 5 and len(slow.calls) == 30  # each once: 1.5 s is within the timeout
    for d in sent[:30]:
        assert (await show(api, a["sdk_key"], d["delivery_id"]))["status"] == "delivered"


async def test_a_slow_endpoint_with_a_backlog_never_delays_other_tenants(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    slow = await receivers(delay_s=1.9)
    quick = await receivers()
    a = await tenant_for(api, slow)
    b = await tenant_for(api, quick)
    try:
        await asyncio.gather(*(send_test(api, a["sdk_key"]) for _ in range(80)))
        await eventually(lambda: _true(slow.in_flight >= 8), timeout_s=5)
        started = time.monotonic()
        sent = await asyncio.gather(*(send_test(api, b["sdk_key"]) for _ in range(5)))
        b_ids = {d["event_id"] for d in sent}

        async def b_done() -> bool:
            return {c.event_id for c in quick.answered()} == b_ids

        await eventually(b_done, timeout_s=15, interval_s=0.02)
        b_s = time.monotonic() - started
        assert b_s < 1.5, f"tenant B's events waited {b_s:.1f}s behind tenant A's backlog"
    finally:
        slow.fast.set()  # answer the backlog at once, so it drains before the next test

        async def a_done() -> bool:
            return len({c.event_id for c in slow.answered()}) == 80

        await eventually(a_done, timeout_s=30, interval_s=0.1)
