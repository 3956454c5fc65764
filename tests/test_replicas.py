"""Two replicas of every service and of the gateway (issue 16): nothing in the network may assume
it runs once. A network of its own (`INVO_REPLICAS=2`) takes the fault suite's mixed load (item and
currency purchases, hosted checkouts, refunds, transfers, payouts, subscriptions renewed by both
replicas' renewal loops as the clock moves, webhook deliveries) through both
gateways while one replica of each service, and then of the gateway, is SIGKILLed in turn; after
each phase and at the end the fault suite's checks hold: the ledger is consistent, every accepted
request took effect once, every event was delivered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from devstack import replicas
from devstack.devservers import free_port
from devstack.stack import Stack
from faults import phases, report, runner
from faults.workload import Settings
from services.common import grpcutil
from services.common.config import SERVICES

LOAD = Settings(
    tenants=2,
    players_per_tenant=30,
    clients=6,
    rate_per_s=30.0,
    load_s=4.0,
    warm_s=1.5,
    after_heal_s=1.5,
    op_deadline_s=45.0,
    check_deadline_s=60.0,
    webhook_bound_s=30.0,
    replay_max=60,
)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("replicas"),
        durable=False,
        extra_env={
            "INVO_REPLICAS": "2",
            "INVO_GATEWAY_PORT": str(free_port()),
            "INVO_LOG_LEVEL": "INFO",
            "INVO_BREAKER_COOLDOWN_S": "1",
            "INVO_PROCESSOR_TIMEOUT_S": "3",
            "INVO_WEBHOOK_RETRY_SCHEDULE_S": "0.2,0.2,0.3,0.3,0.4,0.4",
            "INVO_WEBHOOK_TIMEOUT_S": "2",
            "INVO_ACH_SIM_SETTLE_DELAY_S": "0.3",
            # The workload's ticker moves the subscriptions' clock a day at a time: both replicas'
            # renewal loops race for the same due subscriptions, each period charged once.
            "INVO_SUBSCRIPTIONS_TEST_CLOCK": "on",
            "INVO_SUBSCRIPTION_RENEWAL_INTERVAL_S": "0.5",
        },
    )
    s.start()
    yield s
    s.stop()


async def test_every_service_and_the_gateway_run_twice_and_one_replica_down_is_skipped(replicated: Stack) -> None:
    names = replicated.process_names()
    for name in (*SERVICES, "gateway"):
        assert {name, f"{name}@2"} <= set(names), names
        assert replicas.module_of(f"{name}@2") == name
    for name in SERVICES:
        listed = replicated.env[f"INVO_{name.upper()}_ADDR"].split(",")
        assert len(listed) == 2 and len(set(listed)) == 2, listed
        assert {replicated.env_for(p)["INVO_GRPC_LISTEN"] for p in (name, f"{name}@2")} == set(listed)
    assert len(replicated.gateway_urls) == 2 and replicated.gateway_url == replicated.gateway_urls[0]

    # Calls spread over both replicas and skip one that is down: with the first tenants replica
    # stopped, every call through the round_robin channel is answered by the second.
    channel = grpcutil.channel(replicated.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(channel)
        request = tenants_pb2.ListTransferTargetsRequest(environment="sandbox", limit=1)
        for _ in range(6):
            await grpcutil.call(stub.ListTransferTargets, request, timeout_s=5)
        replicated.stop_process("tenants")
        try:
            for _ in range(20):
                await grpcutil.call(stub.ListTransferTargets, request, timeout_s=5)
        finally:
            replicated.start_process("tenants")
    finally:
        await channel.close()


async def test_mixed_load_loses_and_doubles_nothing_as_one_replica_of_each_is_killed(replicated: Stack) -> None:
    # The first replica of some services, the second of the others: neither is special.
    kills = [f"{name}@2" if i % 2 else name for i, name in enumerate(SERVICES)] + ["gateway@2"]
    result = await runner.run(replicated, LOAD, [phases.Kill(name) for name in kills])
    rows = result["phases"]
    assert result["violations"] == 0, report.table(rows) + "\n" + report.violations_text(rows)
    by_phase = {r["phase"]: r for r in rows}
    for name in kills:
        row = by_phase[f"kill-{name}"]
        assert row["unresolved"] == 0 and row["acknowledged"] > 20, row
        assert row["findings"]["webhooks"]["expected"] > 0, row
    findings = [r["findings"] for r in rows if "findings" in r]
    for kind in ("refunds_checked", "sessions_checked", "transfers_checked", "payouts_checked"):
        assert sum(int(f.get(kind, 0)) for f in findings) > 0, (kind, findings[-1])
    # Renewals made by both replicas' loops, each held to one charge a period by the checks.
    assert findings[-1]["subscriptions_checked"] > 0 and findings[-1]["subscription_renewals"] > 0, findings[-1]
    assert replicated.dead() == []
