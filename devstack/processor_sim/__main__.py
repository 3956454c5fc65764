import os
import pathlib

from devstack.processor_sim.app import PUBLISHABLE_KEY_DEFAULT, serve
from services.common import logs, runtime
from services.common.config import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.setup("processor_sim", settings.log_level)
    settings.require("processor_secret_key", "processor_webhook_secret")
    host, _, port = settings.processor_sim_listen.rpartition(":")
    state = settings.processor_sim_state
    if not state and os.environ.get("INVO_HOME"):
        state = str(pathlib.Path(os.environ["INVO_HOME"]) / "processor_sim" / "state.jsonl")
    code = runtime.run(
        serve(
            host=host,
            port=int(port),
            secret_key=settings.processor_secret_key,
            webhook_secret=settings.processor_webhook_secret,
            webhook_url=settings.processor_sim_webhook_url,
            state_path=pathlib.Path(state) if state else None,
            # The browser's key (the card field, the 3-D Secure page); a fixed one in development.
            publishable_key=settings.processor_publishable_key or PUBLISHABLE_KEY_DEFAULT,
        )
    )
    raise SystemExit(code)


if __name__ == "__main__":
    main()
