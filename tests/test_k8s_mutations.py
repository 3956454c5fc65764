"""k8s/: each check of tools/k8s_check.py catches what it is for. Every mutation below breaks one
rule in a rendered overlay; the check for that rule names it, and passes on the unbroken render."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_k8s import container, find, overlay
from tools import k8s_check as kc

__all__ = ["overlay"]  # the fixture, imported for this module's tests
Obj = dict[str, Any]


# -- the checks catch what they are for ---------------------------------------------------------------


def _del_probe(objects: list[Obj]) -> None:
    del container(objects, "Deployment", "ledger")["readinessProbe"]


def _ready_on_backends(objects: list[Obj]) -> None:
    container(objects, "Deployment", "gateway")["readinessProbe"]["httpGet"]["path"] = "/readyz"


def _del_limits(objects: list[Obj]) -> None:
    del container(objects, "Deployment", "gateway")["resources"]["limits"]


def _root(objects: list[Obj]) -> None:
    find(objects, "Deployment", "payments")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0


def _writable_root(objects: list[Obj]) -> None:
    container(objects, "Deployment", "payouts")["securityContext"]["readOnlyRootFilesystem"] = False


def _no_pdb(objects: list[Obj]) -> None:
    objects.remove(find(objects, "PodDisruptionBudget", "tenants"))


def _no_own_policy(objects: list[Obj]) -> None:
    objects.remove(find(objects, "NetworkPolicy", "transfers"))


def _extra_caller(objects: list[Obj]) -> None:
    """webhooks may call the ledger: its egress and the ledger's ingress both say so."""
    ledger_in = find(objects, "NetworkPolicy", "ledger")["spec"]["ingress"][0]["from"][0]["podSelector"]
    ledger_in["matchExpressions"][0]["values"].append("webhooks")
    webhooks_out = find(objects, "NetworkPolicy", "webhooks")["spec"]["egress"][0]["to"][0]["podSelector"]
    webhooks_out["matchExpressions"][0]["values"].append("ledger")


def _open_to_every_namespace(objects: list[Obj]) -> None:
    find(objects, "NetworkPolicy", "ledger")["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})


def _ledger_to_internet(objects: list[Obj]) -> None:
    find(objects, "NetworkPolicy", "ledger")["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})


def _secret_in_configmap(objects: list[Obj]) -> None:
    next(o for o in objects if o["kind"] == "ConfigMap" and "INVO_ENVIRONMENT" in o["data"])["data"][
        "INVO_KEY_PEPPER"
    ] = "pepper"


def _setting_missing(objects: list[Obj]) -> None:
    del next(o for o in objects if o["kind"] == "ConfigMap" and "INVO_ENVIRONMENT" in o["data"])["data"][
        "INVO_RPC_TIMEOUT_S"
    ]


def _secret_not_read(objects: list[Obj]) -> None:
    ref = {"secretKeyRef": {"name": "invo-secrets", "key": "INVO_ACH_API_KEY"}}
    container(objects, "Deployment", "tenants")["env"].append({"name": "INVO_ACH_API_KEY", "valueFrom": ref})


def _unknown_field(objects: list[Obj]) -> None:
    container(objects, "Deployment", "webhooks")["livenessProbes"] = {}


def _replicas_beside_hpa(objects: list[Obj]) -> None:
    find(objects, "Deployment", "ledger")["spec"]["replicas"] = 2


def _rolls_before_migrations(objects: list[Obj]) -> None:
    del find(objects, "Deployment", "payments")["metadata"]["labels"][kc.PHASE_LABEL]


def _migration_entry_gone(objects: list[Obj]) -> None:
    container(objects, "Job", kc.MIGRATE_JOB)["args"] = ["migrate-everything"]


def _entry_point_overridden(objects: list[Obj]) -> None:
    container(objects, "Deployment", "webhooks")["command"] = ["python", "-m", "services.webhooks"]


def _wrong_service(objects: list[Obj]) -> None:
    container(objects, "Deployment", "payouts")["args"] = ["payments"]


def _nats_async_sync(objects: list[Obj]) -> None:
    nats = next(o for o in objects if o["kind"] == "ConfigMap" and "nats.conf" in o["data"])
    nats["data"]["nats.conf"] = nats["data"]["nats.conf"].replace("sync_interval: always", "sync_interval: 2m")


def _secret_with_data(objects: list[Obj]) -> None:
    ns = kc.namespace(objects)
    objects.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": ns}, "data": {"k": "dg=="}}
    )


def _template(objects: list[Obj], kind: str, name: str) -> Obj:
    found: Obj = find(objects, kind, name)["spec"]["template"]
    return found


def _no_metrics_port(objects: list[Obj]) -> None:
    c = container(objects, "Deployment", "ledger")
    c["ports"] = [p for p in c["ports"] if p["name"] != "metrics"]


def _no_scrape_annotation(objects: list[Obj]) -> None:
    del _template(objects, "Deployment", "payments")["metadata"]["annotations"]["prometheus.io/scrape"]


def _scrape_annotation_elsewhere(objects: list[Obj]) -> None:
    _template(objects, "Deployment", "gateway")["metadata"]["annotations"]["prometheus.io/port"] = "8080"


def _metrics_on_loopback(objects: list[Obj]) -> None:
    container(objects, "Deployment", "transfers")["env"].append(
        {"name": "INVO_METRICS_LISTEN", "value": "127.0.0.1:9090"}
    )


def _metrics_listen_elsewhere(objects: list[Obj]) -> None:
    config = next(o for o in objects if o["kind"] == "ConfigMap" and "INVO_ENVIRONMENT" in o["data"])
    config["data"]["INVO_METRICS_LISTEN"] = "0.0.0.0:9091"


def _gateway_public_on_metrics_port(objects: list[Obj]) -> None:
    container(objects, "Deployment", "gateway")["env"].append({"name": "INVO_GATEWAY_PORT", "value": "9090"})


def _metrics_policy_gone(objects: list[Obj]) -> None:
    objects.remove(find(objects, "NetworkPolicy", "metrics-ingress"))


def _metrics_from_every_namespace(objects: list[Obj]) -> None:
    find(objects, "NetworkPolicy", "metrics-ingress")["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]


def _metrics_from_the_namespace(objects: list[Obj]) -> None:
    find(objects, "NetworkPolicy", "metrics-ingress")["spec"]["ingress"][0]["from"].append({"podSelector": {}})


def _payments_scrapes(objects: list[Obj]) -> None:
    """payments may reach the metrics ports: its egress and the metrics ingress both say so."""
    payments = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "payments"}}}
    find(objects, "NetworkPolicy", "metrics-ingress")["spec"]["ingress"][0]["from"].append(payments)
    find(objects, "NetworkPolicy", "payments")["spec"]["egress"].append(
        {"to": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 9090}]}
    )


def _monitoring_to_grpc(objects: list[Obj]) -> None:
    ports = find(objects, "NetworkPolicy", "metrics-ingress")["spec"]["ingress"][0]["ports"]
    ports.append({"protocol": "TCP", "port": 50051})


def _monitoring_to_nats(objects: list[Obj]) -> None:
    selector = find(objects, "NetworkPolicy", "metrics-ingress")["spec"]["podSelector"]
    selector["matchExpressions"][0]["values"].append("nats")


def _metrics_on_public_service(objects: list[Obj]) -> None:
    find(objects, "Service", "gateway")["spec"]["ports"].append({"name": "m", "port": 9090, "targetPort": "metrics"})


def _nats_annotated(objects: list[Obj]) -> None:
    _template(objects, "StatefulSet", "nats")["metadata"].setdefault("annotations", {})["prometheus.io/scrape"] = "true"


def _no_webhooks_deployment(objects: list[Obj]) -> None:
    objects.remove(find(objects, "Deployment", "webhooks"))


Check = Callable[[list[Obj], str], list[str]]


def _validation(objects: list[Obj], overlay: str) -> list[str]:
    return kc.validate(objects)


def _check(name: str) -> Check:
    return lambda objects, overlay: kc.CHECKS[name](objects)


def _overlay_check(name: str) -> Check:
    return kc.OVERLAY_CHECKS[name]


MUTATIONS: list[tuple[Callable[[list[Obj]], None], Check, str]] = [
    (_del_probe, _check("pods"), "Deployment/ledger container invo: no readinessProbe"),
    (_ready_on_backends, _check("probes"), "Deployment/gateway: readinessProbe is not GET /healthz on its port"),
    (_del_limits, _check("pods"), "Deployment/gateway container invo: no limits of cpu, memory"),
    (_root, _check("pods"), "Deployment/payments: pod securityContext.runAsUser is not a numeric non-root user"),
    (_writable_root, _check("pods"), "Deployment/payouts container invo: readOnlyRootFilesystem is not true"),
    (_no_pdb, _check("disruption budgets"), "Deployment/tenants: no PodDisruptionBudget selects it"),
    (_no_own_policy, _check("network policies"), "Deployment/transfers: no NetworkPolicy of its own selects it"),
    (
        _extra_caller,
        _check("network policies"),
        "NetworkPolicies allow webhooks -> ledger:50051, which the code does not make",
    ),
    (_open_to_every_namespace, _check("network policies"), "NetworkPolicy/ledger: lets {'namespaceSelector': {}} in"),
    (_ledger_to_internet, _check("network policies"), "NetworkPolicy/ledger: ['ledger'] may reach the internet"),
    (_secret_in_configmap, _check("settings"), "holds secrets: ['INVO_KEY_PEPPER']"),
    (_setting_missing, _check("settings"), "settings neither in its ConfigMap nor its env: ['INVO_RPC_TIMEOUT_S']"),
    (_secret_not_read, _check("settings"), "Deployment/tenants: Secret references"),
    (_unknown_field, _validation, "'livenessProbes' was unexpected"),
    (_replicas_beside_hpa, _check("scaling"), "Deployment/ledger: sets replicas, which its autoscaler owns"),
    (
        _rolls_before_migrations,
        _check("migrations first"),
        "Deployment/payments: label invo.network/phase=serve must mark",
    ),
    (_migration_entry_gone, _check("migrations first"), "args are not [migrate]"),
    (_entry_point_overridden, _check("images"), "Deployment/webhooks: overrides the image's entry point"),
    (_wrong_service, _check("images"), "Deployment/payouts: args are not [payouts]"),
    (_nats_async_sync, _check("nats"), "nats.conf: JetStream's sync_interval is not always"),
    (_secret_with_data, _overlay_check("no secret values"), "Secret/x: carries data"),
    (_no_metrics_port, _check("metrics"), "Deployment/ledger: no container port metrics on 9090 (TCP)"),
    (
        _no_scrape_annotation,
        _check("metrics"),
        "Deployment/payments: pod annotation prometheus.io/scrape is None, not 'true'",
    ),
    (
        _scrape_annotation_elsewhere,
        _check("metrics"),
        "Deployment/gateway: pod annotation prometheus.io/port is '8080', not '9090'",
    ),
    (_metrics_on_loopback, _check("metrics"), "Deployment/transfers: INVO_METRICS_LISTEN is '127.0.0.1:9090'"),
    (_metrics_listen_elsewhere, _check("metrics"), "Deployment/webhooks: INVO_METRICS_LISTEN is '0.0.0.0:9091'"),
    (_gateway_public_on_metrics_port, _check("metrics"), "Deployment/gateway: INVO_GATEWAY_PORT is the metrics port"),
    (
        _metrics_policy_gone,
        _check("metrics"),
        "Deployment/ledger: its metrics port 9090 is open to nobody, not exactly the namespace monitoring",
    ),
    (
        _metrics_from_every_namespace,
        _check("metrics"),
        """Deployment/tenants: its metrics port 9090 is open to ['{"namespaceSelector": {}}']""",
    ),
    (
        _metrics_from_every_namespace,
        _check("network policies"),
        "NetworkPolicy/metrics-ingress: lets {'namespaceSelector': {}} in",
    ),
    (
        _metrics_from_the_namespace,
        _check("metrics"),
        "Deployment/payouts: pods of its namespace may reach its metrics port 9090",
    ),
    (
        _payments_scrapes,
        _check("network policies"),
        "NetworkPolicies allow payments -> ledger:9090, which the code does not make",
    ),
    (
        _monitoring_to_grpc,
        _check("network policies"),
        "'webhooks'] on TCP/9090, TCP/50051: only the gateway's port",
    ),
    (_monitoring_to_nats, _check("network policies"), "'webhooks', 'nats'] on TCP/9090:"),
    (_metrics_on_public_service, _check("metrics"), "Service/gateway: routes port 9090 to the metrics port"),
    (_nats_annotated, _check("metrics"), "StatefulSet/nats: annotated for scraping, but serves no /metrics"),
    (_no_webhooks_deployment, _check("metrics"), "no Deployment webhooks to scrape"),
]


@pytest.mark.parametrize(
    ("mutate", "check", "expected"), MUTATIONS, ids=[m.__name__.strip("_") for m, _, _ in MUTATIONS]
)
def test_the_checks_catch_what_they_are_for(
    overlay: tuple[str, list[Obj]], mutate: Callable[[list[Obj]], None], check: Check, expected: str
) -> None:
    """Each mutation breaks one rule; the check for that rule names it (and passes unbroken)."""
    name, objects = overlay
    assert check(objects, name) == []
    broken = copy.deepcopy(objects)
    mutate(broken)
    found = check(broken, name)
    assert any(expected in problem for problem in found), found
