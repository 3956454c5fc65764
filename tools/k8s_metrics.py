"""The metrics check of `make k8s-check` (tools/k8s_check.py): every process that serves Prometheus'
`GET /metrics` (services/common/metrics.py; the gateway and the seven gRPC services, not the migration
Job) serves it on a port of its own that Prometheus finds and reaches, and nobody else does.

Prometheus finds the pods by the common annotation convention (`prometheus.io/scrape`, `/port`,
`/path` on the pod template, what the prometheus-community chart's `kubernetes-pods` job reads): a
Prometheus Operator PodMonitor would be a CRD, which kubernetes-validate cannot check strictly.
"""

from __future__ import annotations

import json

from tools.k8s_network import policies_selecting, port_allowed
from tools.k8s_objects import (
    METRICS_PORT,
    METRICS_PORT_NAME,
    MONITORING_NAMESPACE,
    SCRAPE_ANNOTATIONS,
    SCRAPED,
    Obj,
    Workload,
    container_env,
    namespace_peer,
    of_kind,
    workloads,
)


def check_metrics(objects: list[Obj]) -> list[str]:
    """Every INVO Deployment (the gateway and each gRPC service): a container port `metrics` on
    9090, the three prometheus.io annotations naming it, INVO_METRICS_LISTEN (from the ConfigMap)
    on every interface of that port, and the NetworkPolicies letting exactly the monitoring
    namespace in to it (no pod of the namespace, no other namespace, no address). No Service
    routes to it (the gateway's public port is never the metrics port), and no other workload is
    annotated for a scrape it would not answer."""
    found = []
    deployments = {Workload(d).name: Workload(d) for d in of_kind(objects, "Deployment")}
    found += [f"no Deployment {name} to scrape" for name in sorted(SCRAPED - set(deployments))]
    for w in workloads(objects):
        annotations = w.obj["spec"]["template"]["metadata"].get("annotations", {})
        if w.name not in SCRAPED and annotations.get("prometheus.io/scrape") == "true":
            found.append(f"{w.kind}/{w.obj['metadata']['name']}: annotated for scraping, but serves no /metrics")
    for name in sorted(SCRAPED & set(deployments)):
        found += _check_deployment(objects, deployments[name])
    for svc in of_kind(objects, "Service"):
        for port in svc["spec"].get("ports", []):
            if port.get("targetPort", port.get("port")) in (METRICS_PORT, METRICS_PORT_NAME):
                found.append(f"Service/{svc['metadata']['name']}: routes port {port.get('port')} to the metrics port")
    return found


def _check_deployment(objects: list[Obj], w: Workload) -> list[str]:
    at = f"Deployment/{w.name}"
    found = []
    c = w.containers[0]
    ports = [p for p in c.get("ports", []) if p.get("name") == METRICS_PORT_NAME]
    if [(p["containerPort"], p.get("protocol", "TCP")) for p in ports] != [(METRICS_PORT, "TCP")]:
        found.append(f"{at}: no container port {METRICS_PORT_NAME} on {METRICS_PORT} (TCP)")
    annotations = w.obj["spec"]["template"]["metadata"].get("annotations", {})
    for key, want in SCRAPE_ANNOTATIONS.items():
        if annotations.get(key) != want:
            found.append(f"{at}: pod annotation {key} is {annotations.get(key)!r}, not {want!r}")
    plain, _ = container_env(c, objects)
    listen = plain.get("INVO_METRICS_LISTEN", "")
    if listen != f"0.0.0.0:{METRICS_PORT}":
        found.append(
            f"{at}: INVO_METRICS_LISTEN is {listen!r}, not 0.0.0.0:{METRICS_PORT} "
            f"(every interface of its port {METRICS_PORT_NAME})"
        )
    if w.name == "gateway" and plain.get("INVO_GATEWAY_PORT") == str(METRICS_PORT):
        found.append(f"{at}: INVO_GATEWAY_PORT is the metrics port: /metrics would be public")
    found += _check_ingress(objects, w)
    return found


def _check_ingress(objects: list[Obj], w: Workload) -> list[str]:
    """Who the NetworkPolicies let in to the metrics port: exactly the monitoring namespace."""
    at = f"Deployment/{w.name}"
    policies = policies_selecting(objects, w.labels, "Ingress")
    if not policies:
        return [f"{at}: no NetworkPolicy limits who reaches its metrics port"]
    want = namespace_peer(MONITORING_NAMESPACE)
    outside: list[Obj] = []
    inside = False
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if not port_allowed(rule, METRICS_PORT):
                continue
            for peer in rule.get("from") or [{"anywhere": True}]:  # no `from`: from anywhere
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    inside = True  # a pod of this namespace (whichever it selects)
                else:
                    outside.append(peer)
    found = []
    if inside:
        found.append(f"{at}: pods of its namespace may reach its metrics port {METRICS_PORT}")
    distinct = {json.dumps(peer, sort_keys=True) for peer in outside}
    if distinct != {json.dumps(want, sort_keys=True)}:
        found.append(
            f"{at}: its metrics port {METRICS_PORT} is open to {sorted(distinct) or 'nobody'}, "
            f"not exactly the namespace {MONITORING_NAMESPACE}"
        )
    return found
