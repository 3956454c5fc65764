"""Install the pinned dependencies of pyproject.toml into the running interpreter's venv.

Standard library only: it runs before anything else is installed.

    python tools/install.py                  development: every group, and a `.pth` file so
                                             that the repository root (`services`, `devstack`) and
                                             `gen/` (the generated protobuf code) are importable
    python tools/install.py --only runtime   the image's final stage (Dockerfile): what production
                                             imports, wheels only (no compiler in any stage), no .pth
    python tools/install.py --only build     the image's protobuf stage: grpcio-tools, wheels only

The groups are pyproject.toml's `dependencies` (runtime), and its optional `build`, `cli` (invoctl,
the operators' command line) and `dev` tables.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import sysconfig
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
GROUPS = ("runtime", "build", "cli", "dev")


def requirements(group: str, pyproject: pathlib.Path = ROOT / "pyproject.toml") -> list[str]:
    """The pinned requirements of one group of pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    if group == "runtime":
        return list(project["dependencies"])
    return list(project["optional-dependencies"][group])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/install.py")
    parser.add_argument("--only", choices=GROUPS, help="install one group, from wheels only, without the .pth file")
    args = parser.parse_args(argv)
    if sys.prefix == sys.base_prefix:
        print("tools/install.py must run inside a venv", file=sys.stderr)
        return 2
    groups = [args.only] if args.only else list(GROUPS)
    wanted = [spec for group in groups for spec in requirements(group)]
    for spec in wanted:
        if "==" not in spec:
            print(f"dependency {spec!r} is not pinned with ==", file=sys.stderr)
            return 2
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if args.only:
        cmd += ["--no-cache-dir", "--only-binary=:all:"]
    subprocess.run([*cmd, *wanted], check=True, timeout=1800)  # noqa: S603 - fixed argv, no shell
    if not args.only:
        site_packages = pathlib.Path(sysconfig.get_paths()["purelib"])
        (site_packages / "invo-network.pth").write_text(f"{ROOT}\n{ROOT / 'gen'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
