"""`python -m services <name>`: the image's one entry point (Dockerfile, k8s/).

<name> is a service (tenants, ledger, payments, transfers, payouts, webhooks, subscriptions), the gateway, or
`migrate` (every service's migrations, then exit). Each runs exactly as `python -m services.<name>`.
"""

from __future__ import annotations

import runpy
import sys

from services.common.config import SERVICES

COMMANDS = (*SERVICES, "gateway", "migrate")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m services {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    module = "services.common.migrate" if argv[0] == "migrate" else f"services.{argv[0]}"
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
