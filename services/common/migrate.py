"""Every service's migrations, once: `python -m services migrate` in the image (the Kubernetes
Job that runs before any Deployment rolls), `make migrate` on a development machine.

Each service also migrates its own schema at start-up (a no-op once this has run; an advisory lock
keeps concurrent runs apart), so this is the one clear failure before a rollout rather than the
only way a schema moves.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

from services.common import logs
from services.common.config import Settings
from services.common.service import migrate_all


def run(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply every service's pending migrations to `INVO_DATABASE_URL`; the count per service."""
    return asyncio.run(migrate_all(Settings.from_env(env)))


def report(applied: Mapping[str, int]) -> str:
    return "\n".join(f"{name}: {count} migration(s) applied" for name, count in applied.items())


def main() -> int:
    settings = Settings.from_env()
    logs.setup("migrate", settings.log_level)
    try:
        applied = run()
    except Exception as exc:  # one line for the Job's log, never the URL (it holds the password)
        print(f"migrations failed: {type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
    print(report(applied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
