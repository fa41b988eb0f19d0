"""The LDAP service account's refused password, remembered by every API process through Redis.

Every login, directory check and admin-group check binds as the service account first. A wrong
service password (a typo in a config push, a password rotated in the directory and not in the
secret) was sent again by every one of them, from every process: the directory, Active Directory
and most password policies, locks an account out after a few refusals (AD: 5 to 10 within 30
minutes), and the locked account stayed locked after the password was fixed, for the service
and for whatever else uses that account. Now a refusal is recorded in Redis (``HOLD_SECONDS``,
expiring) and, within the hold, the same password is not sent again, by any process: the API
answers 503 at once, as for the refusal. A changed password is tried at once.

Each refused password is held on its own (a key per account and refused password, expiring with
its hold), beside a mark that the account has a refusal held: a refusal of another password (an
old process still carrying the password before a config push, while new ones carry a typo) or a
login vCenter accepted with another password never ends the hold of one still in use elsewhere.
With one record per account, the last refusal or acceptance replaced it: two refused passwords
in use at once were each sent again by every login and pass (the lockout the hold prevents).

The key names a scrypt hash of the refused password (salted by the account), never the password:
a Redis dump shows what was refused only to someone who can guess it at scrypt's cost. It is
worked out only while the account's mark exists (a refusal within the hold), once per process and
password.
"""

from __future__ import annotations

import hashlib
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
out once per process and password, and only while a refusal of the account is held."""
_SALT_BYTES = 16


def _digest(account: str, password: str) -> bytes:
    """The scrypt hash of ``password`` salted by ``account`` (each account's own, and the same in
    every process: it names the refusal's key)."""
    salt = hashlib.sha256(b"vmpool refused service password\0" + account.encode("utf-8")).digest()[:_SALT_BYTES]
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


class RefusedPasswords:
    """Which service-account password the directory refused within the last ``hold_seconds``,
    shared through Redis (a small key per account and refused password, and the account's mark,
    each expiring with its hold)."""

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX, hold_seconds: int = HOLD_SECONDS) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.hold_seconds = hold_seconds
        self._digests: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def _mark(self, account: str) -> str:
        """The key marking that ``account`` has a refused password held (expiring with the last)."""
        return self.keys.service_password_refused(self._account_hash(account))

    def _key(self, account: str, password: str) -> str:
        """The key holding the refusal of ``password`` for ``account``."""
        return self.keys.service_password_refused(
            f"{self._account_hash(account)}:{self._digest_of(account, password).hex()}")

    @staticmethod
    def _account_hash(account: str) -> str:
        return hashlib.sha256(account.encode("utf-8")).hexdigest()[:32]

    def _digest_of(self, account: str, password: str) -> bytes:
        """``_digest``, worked out once per process for the account and password in use (scrypt
        is slow on purpose; every login within the hold checks)."""
        cache_key = (account, password)
        with self._lock:
            known = self._digests.get(cache_key)
        if known is None:
            known = _digest(account, password)
            with self._lock:
                if len(self._digests) >= 8:
                    self._digests.clear()
                self._digests[cache_key] = known
        return known

    def held(self, account: str, password: str) -> bool:
        """Whether the directory refused ``password`` for ``account`` within the hold (whatever
        other password was refused or accepted since)."""
        if not self.redis.exists(self._mark(account)):
            return False  # no refusal held: no hash worked out
        return bool(self.redis.exists(self._key(account, password)))

    def refused(self, account: str, password: str) -> None:
        """Record that the directory refused ``password`` for ``account`` (now, for the hold)."""
        key = self._key(account, password)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, "1", ex=self.hold_seconds)
        pipe.set(self._mark(account), "1", ex=self.hold_seconds)
        pipe.execute()

    def forgive(self, account: str, password: str) -> None:
        """``password`` was accepted for ``account``: its refusal holds no more (another
        password's, still in use by other processes, does)."""
        if self.redis.exists(self._mark(account)):
            self.redis.delete(self._key(account, password))
