"""Install the pinned dependencies of pyproject.toml into the running interpreter's venv.

Standard library only: it runs before anything else is installed. It also writes a `.pth`
file so that the repository root (the `services` package) and `gen/` (the generated protobuf
code) are importable from the venv without an editable install.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    if sys.prefix == sys.base_prefix:
        print("tools/install.py must run inside the project's .venv", file=sys.stderr)
        return 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    for spec in wanted:
        if "==" not in spec:
            print(f"dependency {spec!r} is not pinned with ==", file=sys.stderr)
            return 2
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted]
    subprocess.run(cmd, check=True, timeout=1800)  # noqa: S603 - fixed argv, no shell
    site_packages = pathlib.Path(sysconfig.get_paths()["purelib"])
    (site_packages / "invo-network.pth").write_text(f"{ROOT}\n{ROOT / 'gen'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
