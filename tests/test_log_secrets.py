"""No log line carries a secret, and every file under INVO_HOME that holds one is private.

The unit tests cover the redaction safety net in `services.common.logs`; the slow test starts a
network the way `make up` does and reads every file it left under its home.
"""

from __future__ import annotations

import json
import logging
import pathlib
import stat
import subprocess
import sys

import pytest

from devstack.devservers import free_port
from services.common import logs
from tests.test_devstack import ROOT, _cleanup, _down, _env, _read_dev_env, _up

SDK_KEY = "ivsdk_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v"
ADMIN_TOKEN = "invo_admin_Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1H"
SECRETS = {
    SDK_KEY: "ivsdk_",
    ADMIN_TOKEN: "invo_admin_",
    "invo_op_Q2w3E4r5T6y7U8i9O0p": "invo_op_",
    "whsec_sim_abcDEF123456789_-xyz": "whsec_",
    "sk_test_sim_4eC39HqLyjWDarjtT1zdp7dc": "sk_test_",
    "sk_live_51H8Jk2LmNoPqRsTuVwXyZ": "sk_live_",
}


# -- the redaction safety net -------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "prefix"), list(SECRETS.items()))
def test_redact_keeps_the_prefix_and_drops_the_secret(secret: str, prefix: str) -> None:
    for text in (secret, f"key={secret}", f'{{"k": "{secret}"}}', f"({secret}).", f"x_{secret} y"):
        out = logs.redact(text)
        assert secret not in out and secret[len(prefix) :] not in out, out
        assert prefix + logs.REDACTED in out, out
    assert logs.redact(logs.redact(secret)) == logs.redact(secret)  # a second pass changes nothing


def test_redact_bearer_credentials_and_url_passwords() -> None:
    assert logs.redact("Authorization: Bearer abc.DEF-123_x/y+z=") == "Authorization: Bearer " + logs.REDACTED
    assert logs.redact("authorization: bearer opaque-token") == "authorization: bearer " + logs.REDACTED
    assert logs.redact(f"Authorization: Bearer {ADMIN_TOKEN}") == "Authorization: Bearer " + logs.REDACTED
    assert logs.redact("Bearer ivsdk_[REDACTED]") == "Bearer ivsdk_[REDACTED]"  # redacted already
    url = "postgresql://invo:s3cr3t-Pass_word@127.0.0.1:5432/invo"
    assert logs.redact(f"connecting to {url}") == f"connecting to postgresql://invo:{logs.REDACTED}@127.0.0.1:5432/invo"


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "An SDK key (ivsdk_...).",
        "ledger listening on 127.0.0.1:50052",
        "tenant tn_01JD3Q8X4Z6N2R5T7V9W1Y3A5C operator op_bootstrap order ord_123",
        "http://127.0.0.1:8080/readyz",
        "ask_test_value task_live_x",  # the prefixes only count at the start of a word
        "network_fee risk_level whsec",
        "",
    ):
        assert logs.redact(text) == text


def test_redact_value_walks_structures_keys_included() -> None:
    value = {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "keys": [SDK_KEY, (SDK_KEY, 3)], SDK_KEY: 1}
    out = json.dumps(logs.redact_value(value))
    assert SDK_KEY not in out and ADMIN_TOKEN not in out, out
    assert '"keys": ["ivsdk_[REDACTED]", ["ivsdk_[REDACTED]", 3]]' in out, out


def _format(record: logging.LogRecord) -> str:
    handler = logging.StreamHandler()
    handler.addFilter(logs.RedactFilter())
    handler.setFormatter(logs.JsonFormatter("test"))
    assert handler.filter(record)
    return handler.format(record)


def test_filter_and_formatter_redact_message_args_extra_and_traceback() -> None:
    try:
        raise ValueError(f"bad key {SDK_KEY}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "invo.test", logging.ERROR, __file__, 1, "token %s for %r", (ADMIN_TOKEN, {"k": SDK_KEY}), exc_info
    )
    record.fields = {"authorization": f"Bearer {ADMIN_TOKEN}", "nested": {"sdk_key": SDK_KEY}}
    record.__dict__["raw_extra"] = f"whsec_{'q' * 30}"  # an `extra=` attribute that is not `fields`
    line = _format(record)
    entry = json.loads(line)
    assert ADMIN_TOKEN not in line and SDK_KEY not in line and "q" * 30 not in line, line
    assert entry["msg"] == "token invo_admin_[REDACTED] for {'k': 'ivsdk_[REDACTED]'}"
    assert entry["authorization"] == "Bearer [REDACTED]" and entry["nested"] == {"sdk_key": "ivsdk_[REDACTED]"}
    assert "ValueError: bad key ivsdk_[REDACTED]" in entry["exc"], entry
    assert record.__dict__["raw_extra"] == "whsec_[REDACTED]"
    # An object turned into text only by json's default=str is caught on the whole line.
    late = logging.LogRecord("invo.test", logging.INFO, __file__, 1, "m", None, None)
    late.fields = {"obj": pathlib.PurePosixPath(f"/x/{SDK_KEY}")}
    assert SDK_KEY not in logs.JsonFormatter("test").format(late)


def test_a_service_log_line_is_redacted() -> None:
    """`logs.setup`, as every service calls it: a real process, its real stderr."""
    code = (
        "import logging, sys; from services.common import logs; logs.setup('probe');"
        "log = logging.getLogger('invo.probe');"
        "log.warning('admin %s', sys.argv[1], extra=logs.fields(key=sys.argv[2]));"
        "logging.getLogger('aiohttp.server').error('Authorization: Bearer %s', sys.argv[1])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, ADMIN_TOKEN, SDK_KEY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in res.stderr.splitlines()]
    assert len(lines) == 2, res.stderr
    assert ADMIN_TOKEN not in res.stderr and SDK_KEY not in res.stderr, res.stderr
    assert lines[0]["msg"] == "admin invo_admin_[REDACTED]" and lines[0]["key"] == "ivsdk_[REDACTED]"
    assert lines[1]["msg"] == "Authorization: Bearer [REDACTED]"


# -- what `make up` leaves under INVO_HOME ------------------------------------------------------


def _secret_values(home: pathlib.Path) -> dict[str, str]:
    """Every secret the network generated (secrets.json) or handed out (the demo SDK key)."""
    found = {f"secrets.json:{k}": v for k, v in json.loads((home / "secrets.json").read_text()).items()}
    dev = _read_dev_env(home)
    found["demo SDK key"] = dev["INVO_DEMO_SDK_KEY"]
    found["admin token"] = dev["INVO_ADMIN_TOKEN"]
    return {name: value for name, value in found.items() if len(value) >= 16}


def _files_holding(home: pathlib.Path, secrets: dict[str, str]) -> dict[pathlib.Path, list[str]]:
    needles = {name: value.encode() for name, value in secrets.items()}
    holding: dict[pathlib.Path, list[str]] = {}
    for path in home.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        names = [name for name, needle in needles.items() if needle in data]
        if names:
            holding[path] = names
    return holding


@pytest.mark.slow
def test_up_leaves_no_secret_in_a_log_and_none_readable_by_others(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "invo-home"
    env = _env(home, free_port())
    try:
        up = _up(env)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        secrets = _secret_values(home)
        dev = _read_dev_env(home)
        # `make up` shows them on the terminal, as `make run` does...
        assert dev["INVO_DEMO_SDK_KEY"] in up.stdout and dev["INVO_ADMIN_TOKEN"] in up.stdout, up.stdout
        holding = _files_holding(home, secrets)
        # ...but no log carries one: not stack.log (the detached run's stdout), not a service's.
        in_logs = {str(p.relative_to(home)): names for p, names in holding.items() if p.is_relative_to(home / "logs")}
        assert not in_logs, in_logs
        assert (home / "logs" / "stack.log").exists()
        assert f"INVO_DEMO_SDK_KEY in {home / 'dev.env'}" in (home / "logs" / "stack.log").read_text()
        # Every file holding one is the user's alone, and so is every directory above it in home.
        assert {home / "dev.env", home / "secrets.json", home / "demo.json"} <= set(holding), holding
        for path in holding:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
            for parent in path.relative_to(home).parents:
                mode = stat.S_IMODE((home / parent).stat().st_mode)
                # 0700; 0710 when root runs PostgreSQL as its own user (its group may only enter).
                assert mode & 0o067 == 0, (home / parent, oct(mode))
        for log in (home / "logs").iterdir():
            assert stat.S_IMODE(log.stat().st_mode) == 0o600, (log, oct(log.stat().st_mode))
        assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
        down = _down(env)
        assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
    finally:
        _cleanup(env, home)
