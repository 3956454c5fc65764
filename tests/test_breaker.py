"""The shared circuit breaker (services/common/breaker.py), on a clock the test moves."""

from __future__ import annotations

import pytest

from services.common import errors
from services.common.breaker import CircuitBreaker
from services.payments.processor import Processor, ProcessorUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SmsUnavailable(errors.Unavailable):
    default_error_code = "SMS_UNAVAILABLE"


def breaker(clock: Clock, **kw: object) -> CircuitBreaker:
    return CircuitBreaker(name="test", failures_max=3, cooldown_s=10.0, clock=clock, **kw)  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success in between: the count starts again
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    b.before_call()
    b.record_failure()
    assert b.state == "open"
    with pytest.raises(errors.Unavailable) as refused:
        b.before_call()
    assert refused.value.retry_after_s == 11
    assert refused.value.http_status == 503


def test_half_open_lets_one_probe_through_and_its_outcome_decides() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 10.0
    assert b.state == "half_open"
    b.check()  # looking does not take the probe
    b.before_call()  # this call is the probe
    with pytest.raises(errors.Unavailable):
        b.before_call()  # a second caller meanwhile is refused
    b.record_failure()  # the probe failed: open again for a whole cool-down
    assert b.state == "open"
    clock.now += 9.9
    with pytest.raises(errors.Unavailable):
        b.check()
    clock.now += 0.1
    b.before_call()
    b.record_success()
    assert b.state == "closed" and b.failures == 0
    b.before_call()


def test_the_error_class_and_message_are_the_callers() -> None:
    clock = Clock()
    b = breaker(clock, error=SmsUnavailable, message="The SMS provider is unavailable.")
    for _ in range(3):
        b.record_failure()
    with pytest.raises(SmsUnavailable) as refused:
        b.check()
    assert (refused.value.error_code, refused.value.message) == ("SMS_UNAVAILABLE", "The SMS provider is unavailable.")


def test_the_processor_breaker_still_answers_503_processor_unavailable() -> None:
    p = Processor(api_key="sk_test", api_base="http://127.0.0.1:9", timeout_s=1.0, failures_max=1, cooldown_s=30.0)
    p.breaker.record_failure()
    with pytest.raises(ProcessorUnavailable) as refused:
        p.breaker.check()
    assert (refused.value.http_status, refused.value.error_code) == (503, "PROCESSOR_UNAVAILABLE")
    assert "nothing was charged" in refused.value.message


@pytest.mark.parametrize("kw", [{"failures_max": 0}, {"cooldown_s": -1.0}])
def test_limits_are_checked(kw: dict[str, float]) -> None:
    args: dict[str, object] = {"name": "x", "failures_max": 1, "cooldown_s": 1.0, **kw}
    with pytest.raises(ValueError):
        CircuitBreaker(**args)  # type: ignore[arg-type]


async def test_a_cancelled_probe_does_not_leave_the_breaker_refusing_for_ever() -> None:
    """The caller's deadline cancels the half-open probe: no verdict, so the next call probes."""
    import asyncio

    p = Processor(api_key="sk_test", api_base="http://127.0.0.1:9", timeout_s=1.0, failures_max=1, cooldown_s=30.0)
    clock = Clock()
    p.breaker.clock = clock
    try:
        p.breaker.record_failure()
        clock.now += 30.0
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        probe = asyncio.ensure_future(p._guarded(never))
        await asyncio.sleep(0)  # the probe is taken and waits on the processor
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        clock.now += 1000.0
        p.breaker.before_call()  # not refused: this call is the new probe
        assert p.breaker.probing
    finally:
        await p.close()
