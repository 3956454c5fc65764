"""k8s/: every overlay renders with the real kustomize (`kubectl kustomize`), every object validates
strictly against the Kubernetes version the manifests target, and the render meets what the
platform asks (tools/k8s_check.py, which `make k8s-check` runs too). Then each check is shown to
catch what it is for, and k8s/deploy.sh to roll the services only after the migration Job."""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from services.common.config import SERVICES
from tools import k8s_check as kc
from tools import k8s_network, k8s_objects

Obj = dict[str, Any]
DEPLOYMENTS = {"gateway", *SERVICES}


@pytest.fixture(scope="module", params=kc.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    """(name, rendered objects) of each overlay, rendered once for the module."""
    name = str(request.param)
    return name, kc.render(name)


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(objects: list[Obj], kind: str, name: str) -> Obj:
    found: Obj = find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return found


def test_every_object_validates_strictly(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    assert {"Job", "StatefulSet", "ConfigMap", "Namespace"} <= kinds
    assert kc.validate(objects) == []


def test_every_deployment_has_probes_limits_and_the_security_context(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    assert {d["metadata"]["name"] for d in kc.of_kind(objects, "Deployment")} == DEPLOYMENTS
    assert kc.check_pods(objects) == []
    assert kc.check_probes_reach_the_servers(objects) == []
    assert kc.check_images(objects) == []
    # Read back one, as an operator would see it.
    ledger = find(objects, "Deployment", "ledger")["spec"]["template"]["spec"]
    assert ledger["securityContext"]["runAsNonRoot"] is True and ledger["securityContext"]["runAsUser"] > 0
    assert ledger["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert ledger["containers"][0]["readinessProbe"]["grpc"] == {"port": 50051}
    assert container(objects, "Deployment", "gateway")["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_every_deployment_has_a_disruption_budget_and_a_network_policy(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    assert kc.check_disruption_budgets(objects) == []
    assert kc.check_network_policies(objects) == []


def test_network_policies_allow_exactly_the_calls_the_code_makes(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    got = k8s_network.connections(objects)
    assert got == k8s_network.expected_connections(objects)
    grpc_calls = {(s, d) for s, d, port in got if port == kc.GRPC_PORT}
    assert grpc_calls == {("gateway", service) for service in SERVICES} | {
        ("payments", "ledger"),
        ("payments", "tenants"),
        ("transfers", "ledger"),
        ("transfers", "tenants"),
        ("payouts", "ledger"),
        ("webhooks", "tenants"),
    }
    assert ("tenants", "nats", 4222) not in got and ("gateway", "nats", 4222) not in got
    assert (name == "sandbox") == (("ledger", "postgres", 5432) in got)


def test_every_setting_is_in_the_configmap_or_a_secret_reference(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    assert kc.check_settings(objects) == []
    # The secrets' split, as the code reads them: each pod gets only its own.
    refs = {
        d["metadata"]["name"]: {e["name"] for e in container(objects, "Deployment", d["metadata"]["name"])["env"]}
        for d in kc.of_kind(objects, "Deployment")
    }
    assert refs["gateway"] == {
        "INVO_ADMIN_TOKEN",
        "INVO_CONSOLE_KEYS",
        "INVO_PROCESSOR_WEBHOOK_SECRET",
        "INVO_ACH_WEBHOOK_KEYS",
    }
    assert "INVO_PROCESSOR_SECRET_KEY" in refs["payments"] and "INVO_PROCESSOR_SECRET_KEY" not in refs["ledger"]
    assert set().union(*refs.values()) == kc.SECRET_SETTINGS


def test_no_secret_value_in_the_repository(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    assert kc.check_no_secret_values(objects, name) == []
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_scaling_migrations_nats_and_the_database(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    assert kc.check_scaling(objects) == []
    assert kc.check_migrations_first(objects) == []
    assert kc.check_nats(objects) == []
    assert kc.check_database(objects, name) == []
    hpa = find(objects, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["minReplicas"] == (3 if name == "production" else 2)
    egress = find(objects, "NetworkPolicy", "database-egress")["spec"]["egress"][0]["to"]
    assert ("ipBlock" in egress[0]) == (name == "production")


def test_every_service_serves_metrics_to_the_monitoring_namespace_only(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    assert kc.CHECKS["metrics"](objects) == []
    for name in DEPLOYMENTS:
        template = find(objects, "Deployment", name)["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "prometheus.io/path": "/metrics",
        }
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 9090 and list(ports.values()).count(9090) == 1
        plain, _ = k8s_objects.container_env(template["spec"]["containers"][0], objects)
        assert plain["INVO_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert "prometheus.io/scrape" not in container(objects, "Job", kc.MIGRATE_JOB)
    # No pod of the namespace reaches a metrics port; the monitoring namespace alone does, and only it.
    assert not [c for c in k8s_network.connections(objects) if c[2] == 9090]
    scrape = find(objects, "NetworkPolicy", "metrics-ingress")["spec"]
    assert scrape["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 9090}],
        }
    ]
    # The gateway's public Service never routes to /metrics.
    assert [p["targetPort"] for p in find(objects, "Service", "gateway")["spec"]["ports"]] == ["http"]


def test_the_grafana_dashboard_ships_for_grafanas_sidecar(overlay: tuple[str, list[Obj]]) -> None:
    """k8s/monitoring/grafana-dashboard.json as a ConfigMap the sidecar loads (its label), under a
    fixed name (a release's old one is not left beside it); tests/test_grafana_dashboard.py checks
    the dashboard itself."""
    _, objects = overlay
    dashboard = find(objects, "ConfigMap", "invo-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"invo-network.json": (kc.K8S / "monitoring" / "grafana-dashboard.json").read_text()}


# -- the checks catch what they are for ---------------------------------------------------------------


def _del_probe(objects: list[Obj]) -> None:
    del container(objects, "Deployment", "ledger")["readinessProbe"]


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


# -- k8s/deploy.sh: the services roll only after the migration Job ---------------------------------

FAKE_KUBECTL = """#!/usr/bin/env bash
# Records each call; renders with the real kubectl; answers the Job's conditions and the Deployments.
echo "$*" >> "$FAKE_LOG"
case "$*" in
    kustomize*) exec "$REAL_KUBECTL" "$@" ;;
    *"get job invo-migrate"*) printf '%s' "$FAKE_JOB_CONDITIONS" ;;
    *"get deployment"*) printf 'deployment.apps/gateway\\ndeployment.apps/ledger\\n' ;;
    apply*) n=$(ls "$FAKE_DIR" | grep -c '^applied' || true); cp "$3" "$FAKE_DIR/applied-$n.yaml" ;;
esac
"""


def _deploy(tmp_path: pathlib.Path, overlay: str, conditions: str) -> tuple[int, list[str], str]:
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    env = {
        **os.environ,
        "KUBECTL": str(fake),
        "REAL_KUBECTL": k8s_objects.kubectl(),
        "FAKE_LOG": str(tmp_path / "calls"),
        "FAKE_DIR": str(tmp_path),
        "FAKE_JOB_CONDITIONS": conditions,
    }
    done = subprocess.run(
        ["bash", str(kc.K8S / "deploy.sh"), overlay], env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, (tmp_path / "calls").read_text().splitlines(), done.stderr


def test_deploy_applies_and_waits_for_the_migrations_before_the_services(tmp_path: pathlib.Path) -> None:
    code, calls, err = _deploy(tmp_path, "production", "SuccessCriteriaMet Complete ")
    assert code == 0, err
    ns = "--namespace invo"
    assert calls[0].startswith("kustomize ") and calls[0].endswith("k8s/overlays/production")
    assert calls[1] == f"{ns} delete job invo-migrate --ignore-not-found --wait=true"
    assert calls[2].startswith("apply --filename ") and calls[2].endswith("--selector invo.network/phase!=serve")
    assert calls[3].startswith(f"{ns} get job invo-migrate ")
    assert calls[4].startswith("apply --filename ") and "--selector" not in calls[4]
    assert calls[5] == f"{ns} get deployment --selector invo.network/phase=serve --output name"
    assert calls[6:] == [f"{ns} rollout status deployment.apps/{d} --timeout=10m" for d in ("gateway", "ledger")]
    applied = [o for o in yaml.safe_load_all((tmp_path / "applied-0.yaml").read_text()) if o]
    assert applied == kc.render("production")


def test_deploy_stops_when_the_migrations_fail(tmp_path: pathlib.Path) -> None:
    code, calls, err = _deploy(tmp_path, "sandbox", "FailureTarget Failed ")
    assert code == 1
    assert "the migration Job failed; nothing else was rolled" in err
    assert [c.split()[0] for c in calls if c.startswith("apply")] == ["apply"]  # the first phase only
    assert not [c for c in calls if "rollout" in c]
