"""API keys: random tokens shown once, stored as SHA-256 hashes, each with a tier that sets its jobs' priority.

The mode is fixed when the server starts. Started on localhost with no key in the store, the server is in local
single-user mode: every request is the owner ``local`` at the highest tier. Started with keys, or on any other
address, it requires a valid key for as long as it runs: removing the last key then refuses everything (401)
rather than opening the server to anyone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

from img2img.jobs.store import JobStore

KEY_PREFIX = "i2i_"
LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Caller:
    owner: str
    tier: str
    rank: int


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    """The key from ``X-API-Key``, ``Authorization: Bearer KEY`` or HTTP basic auth (the key as password)."""
    if api_key:
        return api_key.strip()
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":  # A1111 clients send --api-auth user:password as basic auth
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def identify(store: JobStore, key: str | None, tiers: dict[str, int], keys_required: bool) -> Caller | None:
    """The caller a key belongs to; None for a missing or unknown key when the server requires keys."""
    if not keys_required:
        top = max(tiers, key=lambda name: tiers[name])
        return Caller(LOCAL_OWNER, top, tiers[top])
    if not key:
        return None
    found = store.key_by_hash(hash_key(key))
    if found is None:
        return None
    tier = found["tier"]
    return Caller(found["name"], tier, tiers.get(tier, min(tiers.values())))
