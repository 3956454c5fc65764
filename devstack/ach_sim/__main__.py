import os
import pathlib

from devstack.ach_sim.app import serve
from services.common import logs, runtime
from services.common.config import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.setup("ach_sim", settings.log_level)
    settings.require("ach_organization_id", "ach_api_key", "ach_webhook_keys", "ach_originating_account_id")
    host, _, port = settings.ach_sim_listen.rpartition(":")
    state = settings.ach_sim_state
    if not state and os.environ.get("INVO_HOME"):
        state = str(pathlib.Path(os.environ["INVO_HOME"]) / "ach_sim" / "state.jsonl")
    code = runtime.run(
        serve(
            host=host,
            port=int(port),
            organization_id=settings.ach_organization_id,
            api_key=settings.ach_api_key,
            originating_account_id=settings.ach_originating_account_id,
            # Several keys verify (a rotation); the first one signs.
            webhook_key=settings.ach_webhook_keys.split(",")[0].strip(),
            webhook_url=settings.ach_sim_webhook_url,
            settle_delay_s=settings.ach_sim_settle_delay_s,
            state_path=pathlib.Path(state) if state else None,
        )
    )
    raise SystemExit(code)


if __name__ == "__main__":
    main()
