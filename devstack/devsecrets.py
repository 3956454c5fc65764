"""The development secrets of the local stack: made on first run under its home and kept (0600),
so that data sealed or signed with them stays readable across restarts. Never used in production,
where every secret comes from the environment."""

from __future__ import annotations

import json
import os
import pathlib
import secrets

from devstack import simulators
from services.common import crypto


def write_private(path: pathlib.Path, text: str) -> None:
    """Write atomically (a reader sees the old file or the whole new one) with mode 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_or_make(home: pathlib.Path) -> dict[str, str]:
    """Every development secret, the missing ones made now and stored with the others."""
    path = home / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {
        "admin_token": lambda: "invo_admin_" + secrets.token_urlsafe(24),
        "key_pepper": lambda: secrets.token_urlsafe(32),
        "data_keys": lambda: crypto.Keyring.generate_spec("dev1"),
        "pg_password": lambda: secrets.token_urlsafe(18),
        "identity_key": lambda: secrets.token_urlsafe(32),
        "transfer_code_key": lambda: secrets.token_urlsafe(48),
        "checkout_keys": lambda: "dev1:" + secrets.token_urlsafe(32),
        "console_keys": lambda: crypto.Keyring.generate_spec("dev1"),
        **simulators.SECRETS,
    }
    missing = {name: make() for name, make in wanted.items() if name not in stored}
    if missing:
        stored.update(missing)
        write_private(path, json.dumps(stored, indent=2))
    return stored
