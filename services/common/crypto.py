"""Secrets at rest and SDK key hashing.

SDK keys carry 256 random bits, so a keyed HMAC (pepper from the environment) is enough to make
the stored hash useless without the pepper; no slow KDF is needed. Secrets we must read back
(webhook signing secrets, bank account numbers) are sealed with AES-256-GCM; the key id is
stored with the ciphertext so that keys can be rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class KeyringError(Exception):
    pass


def random_base62(n_bytes: int) -> str:
    value = int.from_bytes(secrets.token_bytes(n_bytes), "big")
    out = []
    length = int(n_bytes * 8 / 5.954) + 1  # ceil(bits / log2(62)): fixed length
    for _ in range(length):
        value, rem = divmod(value, 62)
        out.append(_BASE62[rem])
    return "".join(out)


def request_hash(payload: dict[str, Any]) -> bytes:
    """The fingerprint stored with an idempotency key: the same request always hashes the same."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).digest()


def keyed_hash(pepper: str, value: str) -> bytes:
    return hmac.new(pepper.encode(), value.encode(), hashlib.sha256).digest()


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


class Keyring:
    """AES-256-GCM keys from `kid:base64key,kid:base64key`; the first one seals."""

    def __init__(self, spec: str) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._active = ""
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kid, sep, b64 = part.partition(":")
            if not sep or not kid:
                raise KeyringError("INVO_DATA_KEYS entries look like kid:base64key")
            try:
                raw = base64.b64decode(b64, validate=True)
            except binascii.Error as exc:
                raise KeyringError(f"data key {kid!r} is not valid base64") from exc
            if len(raw) != 32:
                raise KeyringError(f"data key {kid!r} must be 32 bytes")
            self._keys[kid] = AESGCM(raw)
            self._active = self._active or kid
        if not self._active:
            raise KeyringError("INVO_DATA_KEYS is empty")

    @property
    def active_kid(self) -> str:
        """The key that seals (the first listed): what a re-encryption moves everything to."""
        return self._active

    @staticmethod
    def generate_spec(kid: str = "k1") -> str:
        return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"

    def seal(self, plaintext: str, *, aad: str) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(12)
        ct = self._keys[self._active].encrypt(nonce, plaintext.encode(), aad.encode())
        return self._active, nonce + ct

    def open(self, kid: str, blob: bytes, *, aad: str) -> str:
        key = self._keys.get(kid)
        if key is None:
            raise KeyringError(f"data key {kid!r} is not configured")
        return key.decrypt(blob[:12], blob[12:], aad.encode()).decode()
