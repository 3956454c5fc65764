import asyncio

from services.common import logs
from services.common.config import Settings
from services.processor_sim.app import serve


def main() -> None:
    settings = Settings.from_env()
    logs.setup("processor_sim", settings.log_level)
    settings.require("processor_secret_key", "processor_webhook_secret")
    host, _, port = settings.processor_sim_listen.rpartition(":")
    asyncio.run(
        serve(
            host=host,
            port=int(port),
            secret_key=settings.processor_secret_key,
            webhook_secret=settings.processor_webhook_secret,
            webhook_url=settings.processor_sim_webhook_url,
        )
    )


if __name__ == "__main__":
    main()
