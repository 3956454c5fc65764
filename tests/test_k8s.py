"""k8s/: every overlay renders with the real kustomize (`kubectl kustomize`), every object validates
strictly against the Kubernetes version the manifests target, and the render meets what the
platform asks (tools/k8s_check.py, which `make k8s-check` runs too). Then each check is shown to
catch what it is for, and k8s/deploy.sh to roll the services only after the migration Job."""

from __future__ import annotations

import os
import pathlib
import subprocess
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
    # Not /readyz: one backend down must not take every gateway pod out of the Service.
    assert container(objects, "Deployment", "gateway")["readinessProbe"]["httpGet"]["path"] == "/healthz"


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
        ("subscriptions", "ledger"),
        ("subscriptions", "tenants"),
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
