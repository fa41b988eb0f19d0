"""The LDAP service account's refused password, remembered by every API process through Redis.

Every login, directory check and admin-group check binds as the service account first. A wrong
service password (a typo in a config push, a password rotated in the directory and not in the
secret) was sent again by every one of them, from every process: the directory, Active Directory
and most password policies, locks an account out after a few refusals (AD: 5 to 10 within 30
minutes), and the locked account stayed locked after the password was fixed, for the service
and for whatever else uses that account. Now a refusal is recorded in Redis (``HOLD_SECONDS``,
expiring) and, within the hold, the same password is not sent again, by any process: the API
answers 503 at once, as for the refusal. A changed password is tried at once.

The record holds a salted scrypt hash of the refused password, never the password: a Redis dump
shows what was refused only to someone who can guess it at scrypt's cost. It is compared only
while a record exists (a refusal within the hold), its hash worked out once per process and
password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from typing import Any

from chalicelib.logs import module_logger
from chalicelib.store.keys import DEFAULT_PREFIX, Keys

logger = module_logger(__name__)

HOLD_SECONDS = 300
"""How long a refused service password is not sent again (by any process): 6 refusals in half an
hour at most, under Active Directory's usual lockout thresholds, where every login sent one."""

_SCRYPT = {"n": 2**12, "r": 8, "p": 1, "dklen": 32}
"""4 MB a hash; 174 ms measured on a 2-core machine at load 11 (16 times that with n=2**14): worked
out once per process and salt, and only while a refusal is held."""
_SALT_BYTES = 16


def _digest(salt: bytes, password: str) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


class RefusedPasswords:
    """Which service-account password the directory refused within the last ``hold_seconds``,
    shared through Redis (one small key per account, expiring with the hold)."""

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX, hold_seconds: int = HOLD_SECONDS) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.hold_seconds = hold_seconds
        self._digests: dict[tuple[bytes, str, str], bytes] = {}
        self._lock = threading.Lock()

    def _key(self, account: str) -> str:
        return self.keys.service_password_refused(hashlib.sha256(account.encode("utf-8")).hexdigest()[:32])

    def _digest_of(self, account: str, salt: bytes, password: str) -> bytes:
        """``_digest``, worked out once per process for the salt and password in use (scrypt is
        slow on purpose; every login within the hold compares)."""
        cache_key = (salt, account, password)
        with self._lock:
            known = self._digests.get(cache_key)
        if known is None:
            known = _digest(salt, password)
            with self._lock:
                if len(self._digests) >= 8:
                    self._digests.clear()
                self._digests[cache_key] = known
        return known

    def held(self, account: str, password: str) -> bool:
        """Whether the directory refused ``password`` for ``account`` within the hold."""
        recorded = self.redis.get(self._key(account))
        if not recorded:
            return False
        text = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        salt_hex, _, digest_hex = text.partition(":")
        try:
            salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        except ValueError:
            return False
        return hmac.compare_digest(self._digest_of(account, salt, password), digest)

    def refused(self, account: str, password: str) -> None:
        """Record that the directory refused ``password`` for ``account`` (now, for the hold)."""
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = self._digest_of(account, salt, password)
        self.redis.set(self._key(account), f"{salt.hex()}:{digest.hex()}", ex=self.hold_seconds)

    def forgive(self, account: str) -> None:
        """The account's password was accepted: no refusal of it holds any more."""
        self.redis.delete(self._key(account))
