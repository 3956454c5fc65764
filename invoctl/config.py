"""Where invoctl finds the gateway and the operator's credential.

In order: `--url` / `--credential`, then `INVO_URL` / `INVO_OPERATOR_KEY`, then the config file
(`--config`, `INVOCTL_CONFIG`, or `~/.config/invoctl/config.toml`):

    url = "https://api.invo.example"
    credential = "invo_op_..."

A config file that holds a credential must be readable by its owner only (mode 0600), as ssh asks
of a private key: invoctl refuses a group- or world-readable one rather than use a leaked secret.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import stat
import tomllib

DEFAULT_PATH = pathlib.Path("~/.config/invoctl/config.toml")
DEFAULT_URL = "http://127.0.0.1:8080"


class ConfigError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Config:
    url: str
    credential: str


def load(url: str | None, credential: str | None, path: str | None) -> Config:
    chosen = pathlib.Path(path or os.environ.get("INVOCTL_CONFIG") or DEFAULT_PATH).expanduser()
    from_file: dict[str, object] = {}
    if chosen.exists():
        mode = chosen.stat().st_mode
        try:
            from_file = tomllib.loads(chosen.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not TOML ({exc})") from None
        if from_file.get("credential") and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{chosen} holds a credential and others may read it: chmod 600 {chosen}")
    elif path:
        raise ConfigError(f"{chosen}: no such file")
    final_url = url or os.environ.get("INVO_URL") or str(from_file.get("url") or DEFAULT_URL)
    final_credential = credential or os.environ.get("INVO_OPERATOR_KEY") or str(from_file.get("credential") or "")
    if not final_credential:
        raise ConfigError(
            "no credential: pass --credential, set INVO_OPERATOR_KEY, or put credential = ... in "
            f"{DEFAULT_PATH} (mode 0600)"
        )
    return Config(url=final_url.rstrip("/"), credential=final_credential)
