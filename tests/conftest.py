"""One network per test session: real PostgreSQL, real NATS JetStream, every service a process.

Started through the same `Stack` that `make run` uses. `INVO_DATABASE_URL` / `INVO_NATS_URL` in
the environment make it use existing servers instead, with a database and stream of its own.
Tests isolate by creating their own tenants (or, below the gateway, their own schema and stream).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from devstack.devservers import free_port
from devstack.stack import Stack
from tests.helpers import Api

# -- the event loop fails the test on any exception nobody handled ----------------------------

_loop_errors: list[dict[str, Any]] = []


def _strict_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: _loop_errors.append(context))
    return loop


_OWN_TEMPROOT = "INVO_TEST_TEMPROOT"


def pytest_configure(config: pytest.Config) -> None:
    """Every session gets a temporary root of its own. pytest makes `<tmp>/pytest-of-<user>` private
    (0700) when a session starts; the test stacks' PostgreSQL runs as another user and reaches its
    data directory through it, so a second pytest run on the same machine (a developer's, beside
    `make test`) cut the first one's database off mid-run. Removed when the session ends, unless
    INVO_KEEP_TEST_TMP is set (the browser tests' screenshots are in it)."""
    if os.environ.get("PYTEST_DEBUG_TEMPROOT") or config.option.basetemp is not None:
        return
    root = tempfile.mkdtemp(prefix="invo-pytest-")
    os.environ["PYTEST_DEBUG_TEMPROOT"] = os.environ[_OWN_TEMPROOT] = root


def pytest_unconfigure(config: pytest.Config) -> None:
    root = os.environ.pop(_OWN_TEMPROOT, "")
    if not root:
        return
    os.environ.pop("PYTEST_DEBUG_TEMPROOT", None)
    if os.environ.get("INVO_KEEP_TEST_TMP"):
        print(f"\ntest files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {"strict": _strict_loop}


@pytest.fixture(autouse=True)
def _fail_on_loop_errors() -> Iterator[None]:
    _loop_errors.clear()
    yield
    if _loop_errors:
        found = [f"{c.get('message')}: {c.get('exception')!r}" for c in _loop_errors]
        _loop_errors.clear()
        pytest.fail("unhandled exceptions in the event loop: " + "; ".join(found))


# -- the network ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    token = secrets.token_hex(4)
    external_db = bool(os.environ.get("INVO_DATABASE_URL"))
    external_nats = bool(os.environ.get("INVO_NATS_URL"))
    s = Stack(
        tmp_path_factory.mktemp("invo"),
        durable=False,  # the data is thrown away: skip fsync for speed
        database_name=f"invo_test_{token}" if external_db else "invo",
        nats_namespace=f"t{token}" if external_nats else "",
        extra_env={
            # A free port of its own: left to the default, two stacks starting at once (a test run
            # beside `make up`) could both find 8080 free, and one would talk to the other's gateway.
            "INVO_GATEWAY_PORT": str(free_port()),
            "INVO_LOG_LEVEL": "INFO",
            "INVO_AUTH_CACHE_TTL_S": "5",
            # Gauges counted in the database (holds, payouts, backlog): fresh within a second.
            "INVO_METRICS_REFRESH_S": "1",
            # Short enough that failure tests do not wait long; the behaviour is the same.
            "INVO_BREAKER_COOLDOWN_S": "1",
            "INVO_PROCESSOR_TIMEOUT_S": "3",
            # The seed's schedule (30 s .. 24 h) shortened: same number of retries, same logic.
            "INVO_WEBHOOK_RETRY_SCHEDULE_S": "0.2,0.2,0.3,0.3,0.4,0.4",
            "INVO_WEBHOOK_TIMEOUT_S": "2",
            # The ACH simulator moves a payment order one state on every 0.3 s (processing, sent,
            # completed, then returned for a 100XX account): a payout settles in about a second.
            "INVO_ACH_SIM_SETTLE_DELAY_S": "0.3",
            # Subscriptions run on the test clock (tests move it; never sleep for a month), and
            # the renewal loop looks every half second for what the moved clock made due.
            "INVO_SUBSCRIPTIONS_TEST_CLOCK": "on",
            "INVO_SUBSCRIPTION_RENEWAL_INTERVAL_S": "0.5",
        },
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    async with Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"]) as client:
        yield client
