"""The NetworkPolicy checks of `make k8s-check` (tools/k8s_check.py): the pod-to-pod connections the
rendered policies allow must be exactly those the services' code makes, only the gateway's port (from
the ingress controller) and the metrics port (from the monitoring namespace) reachable from outside
the namespace, and the open internet only for the services that call providers."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from services.common.config import SERVICES
from tools.k8s_objects import (
    GRPC_PORT,
    INTERNET_PORTS,
    METRICS_PORT,
    MONITORING_NAMESPACE,
    PRIVATE_V4,
    PRIVATE_V6,
    SCRAPED,
    Obj,
    callees_in_code,
    namespace_peer,
    nats_clients,
    of_kind,
    selects,
    workloads,
)


def policies_selecting(objects: list[Obj], labels: Mapping[str, str], policy_type: str) -> list[Obj]:
    return [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if policy_type in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], labels)
    ]


def port_allowed(rule: Obj, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP" for p in ports)


def peer_is_pod(peer: Obj, labels: Mapping[str, str]) -> bool:
    """A peer that is a pod of this namespace with these labels (no namespaceSelector, no ipBlock)."""
    return "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"], labels)


def connections(objects: list[Obj]) -> set[tuple[str, str, int]]:
    """Every (from, to, port) between two workloads of the namespace that the NetworkPolicies allow:
    the source's egress and the destination's ingress both (a pod no policy of a type selects is
    open in that direction)."""
    allowed = set()
    ws = workloads(objects)
    for src in ws:
        egress = policies_selecting(objects, src.labels, "Egress")
        for dst in ws:
            ingress = policies_selecting(objects, dst.labels, "Ingress")
            for port in dst.ports:
                out = not egress or any(
                    port_allowed(rule, port) and any(peer_is_pod(peer, dst.labels) for peer in rule.get("to", []))
                    for p in egress
                    for rule in p["spec"].get("egress", [])
                )
                into = not ingress or any(
                    port_allowed(rule, port) and any(peer_is_pod(peer, src.labels) for peer in rule.get("from", []))
                    for p in ingress
                    for rule in p["spec"].get("ingress", [])
                )
                if out and into:
                    allowed.add((src.name, dst.name, port))
    return allowed


def expected_connections(objects: list[Obj]) -> set[tuple[str, str, int]]:
    """What the code does: each service's gRPC calls, NATS for its clients, the database for the
    services and the migration Job (when the database runs in the namespace), NATS's routes."""
    names = {w.name for w in workloads(objects)}
    want = {(caller, callee, GRPC_PORT) for caller in ("gateway", *SERVICES) for callee in callees_in_code(caller)}
    want |= {(client, "nats", 4222) for client in nats_clients()}
    want.add(("nats", "nats", 6222))
    if "postgres" in names:
        want |= {(client, "postgres", 5432) for client in (*SERVICES, "migrate")}
    return want


def check_network_policies(objects: list[Obj]) -> list[str]:
    """Default deny; a policy of its own (a non-empty podSelector) for every workload; between the
    namespace's pods exactly the connections the code makes; from outside the namespace only the
    ingress controller's namespace to the gateway's port, and the monitoring namespace to the
    metrics port of the gateway's and the services' pods; out of the cluster only DNS, the
    database's address (when it is outside) and, for the services that call the world, the public
    internet without the private, shared and link-local ranges."""
    found = []
    policies = of_kind(objects, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] in ({}, None)
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        found.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rule)")
    for w in workloads(objects):
        # Its own: a policy that selects this workload's pods and no other workload's.
        own = [
            p
            for p in policies
            if [v.name for v in workloads(objects) if selects(p["spec"]["podSelector"], v.labels)] == [w.name]
        ]
        if not own:
            found.append(f"{w.kind}/{w.obj['metadata']['name']}: no NetworkPolicy of its own selects it")
    got, want = connections(objects), expected_connections(objects)
    found += [f"NetworkPolicies allow {s} -> {d}:{p}, which the code does not make" for s, d, p in sorted(got - want)]
    found += [f"NetworkPolicies refuse {s} -> {d}:{p}, which the code makes" for s, d, p in sorted(want - got)]
    for p in policies:
        at = f"NetworkPolicy/{p['metadata']['name']}"
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from"):
                found.append(f"{at}: an ingress rule from anywhere")
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    continue
                pods = [w.name for w in workloads(objects) if selects(p["spec"]["podSelector"], w.labels)]
                public = (
                    pods == ["gateway"]
                    and "namespaceSelector" in peer
                    and rule.get("ports") == [{"protocol": "TCP", "port": 8080}]
                )
                scrape = (
                    bool(pods)
                    and set(pods) <= SCRAPED
                    and peer == namespace_peer(MONITORING_NAMESPACE)
                    and rule.get("ports") == [{"protocol": "TCP", "port": METRICS_PORT}]
                )
                if not (public or scrape):
                    ports = [f"{q.get('protocol', 'TCP')}/{q.get('port', '*')}" for q in rule.get("ports", [])]
                    found.append(
                        f"{at}: lets {peer} in to {pods} on {', '.join(ports) or 'every port'}: only the gateway's "
                        f"port is open to outside, and the metrics port {METRICS_PORT} to {MONITORING_NAMESPACE}"
                    )
        for rule in p["spec"].get("egress", []):
            if not rule.get("to"):
                found.append(f"{at}: an egress rule to anywhere")
            for peer in rule.get("to", []):
                found += _check_egress_peer(objects, p, rule, peer)
    return found


def _check_egress_peer(objects: list[Obj], policy: Obj, rule: Obj, peer: Obj) -> list[str]:
    at = f"NetworkPolicy/{policy['metadata']['name']}"
    pods = sorted(w.name for w in workloads(objects) if selects(policy["spec"]["podSelector"], w.labels))
    if "namespaceSelector" in peer:
        dns = peer == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
        dns_ports = {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}
        if not dns or dns_ports != {("UDP", 53), ("TCP", 53)}:
            return [f"{at}: egress to another namespace other than DNS: {peer}"]
        return []
    if "ipBlock" not in peer:
        return []
    cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
    if cidr.prefixlen == 0:
        ports = [p.get("port") for p in rule.get("ports", [])] or [None]
        strangers = [name for name in pods if name not in INTERNET_PORTS or [INTERNET_PORTS[name]] != ports]
        if strangers:
            return [f"{at}: {strangers} may reach the internet (ports {ports})"]
        private = PRIVATE_V4 if cidr.version == 4 else PRIVATE_V6
        if not set(private) <= set(peer["ipBlock"].get("except", [])):
            return [f"{at}: the internet rule does not keep out {private}"]
        return []
    # A narrower block: the managed database's address, and only for its clients on its port.
    clients = {*SERVICES, "migrate"}
    if policy["metadata"]["name"] != "database-egress" or not set(pods) <= clients:
        return [f"{at}: egress to {cidr} for {pods}: only the database's clients reach an address"]
    if rule.get("ports") != [{"protocol": "TCP", "port": 5432}]:
        return [f"{at}: the database's address open on {rule.get('ports')}, not 5432 alone"]
    return []
