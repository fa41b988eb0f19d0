"""Failed-login limiter: counters in Redis per user and per client address, with expiry.

Fixed windows: the first attempt starts a window of ``window_seconds``; past ``max_per_user``
failures for a user name, or ``max_per_address`` from an address, logins are refused until the
window ends (the API answers 429 with ``Retry-After``). A successful login clears the user's
failures (not the address's: one valid account must not reset an attacker's address budget).

Each attempt is reserved before the directory is asked (``reserve``: check and count in one
script): 40 wrong passwords sent at once reach LDAP only as often as the limit allows, not 40
times. Each counter keeps a count of its attempts still in flight beside it, so a refusal says
whether failures fill the limit (wait for the window to end) or attempts in flight do (they may
all be right: try again in a second). ``settle`` records the answer: a failure stays counted; a
success clears the user's failures (not its attempts still in flight) and gives the address its
attempt back; an outage gives both back.

User names are keyed by ``base.login_key``: NFKC-normalised and case-folded, coarser than the
directory matches (a fullwidth ``\uff42ob`` binds as ``bob``, so it shares bob's counter), then
hashed (bounded key size). IPv6 addresses count per /64, since one client usually holds a whole /64.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.store.keys import DEFAULT_PREFIX, Keys
from chalicelib.store.scripts import script_source

from .base import login_key

if TYPE_CHECKING:
    from chalicelib.config import AuthConfig


def _user_part(user: str) -> str:
    return hashlib.sha256(login_key(user).encode("utf-8")).hexdigest()[:32]


def address_key(address: str | None) -> str | None:
    """How a client address is counted: IPv4 as it is, IPv6 by its /64 (one client usually
    holds a whole /64), anything else hashed. None without an address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return hashlib.sha256(address.encode("utf-8")).hexdigest()[:32]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def address_prefix(address: str | None) -> str | None:
    """A client address coarser than ``address_key``: IPv6 by its /48 (a site's allocation: one
    caller with a /48 holds 65,536 /64s), anything else as ``address_key`` counts it."""
    part = address_key(address)
    if part is not None and part.endswith("/64"):
        return str(ipaddress.IPv6Network(part).supernet(new_prefix=48))
    return part


IN_FLIGHT_SECONDS = 120
"""How long a count of attempts in flight lives after the last one started: longer than any login
takes (LDAP's timeouts, API Gateway's 29 s), so an attempt whose process died is forgotten."""
BUSY_RETRY_SECONDS = 1
"""What a caller refused for attempts still in flight is told to wait."""


@dataclass(frozen=True)
class Refusal:
    """Why an attempt may not go ahead now, and for how long."""

    retry_after: int
    """Seconds to wait."""
    busy: bool
    """True when attempts still in flight fill the limit (not failures): they may all succeed."""


class LoginLimiter:
    def __init__(
        self,
        redis: Any,
        max_per_user: int = 10,
        max_per_address: int = 50,
        window_seconds: int = 300,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if max_per_user < 1 or max_per_address < 1 or window_seconds < 1:
            raise ValueError("login limits and window must be >= 1")
        self.redis = redis
        self.max_per_user = int(max_per_user)
        self.max_per_address = int(max_per_address)
        self.window_seconds = int(window_seconds)
        self.keys = Keys(prefix)
        self._record = redis.register_script(script_source("login_record"))
        self._reserve = redis.register_script(script_source("login_reserve"))
        self._settle = redis.register_script(script_source("login_settle"))

    @classmethod
    def from_config(
        cls, auth_config: "AuthConfig | None", redis: Any, prefix: str = DEFAULT_PREFIX,
    ) -> "LoginLimiter":
        """From the ``:auth:`` section's login_attempts_per_user / _per_address / login_window_seconds
        (vmpooler's defaults without ``:auth:``)."""
        if auth_config is None:
            return cls(redis, prefix=prefix)
        return cls(
            redis,
            max_per_user=auth_config.login_attempts_per_user,
            max_per_address=auth_config.login_attempts_per_address,
            window_seconds=auth_config.login_window_seconds,
            prefix=prefix,
        )

    def _keys(self, user: str | None, address: str | None) -> list[tuple[str, int]]:
        keys = []
        if user is not None:
            keys.append((self.keys.login_user(_user_part(user)), self.max_per_user))
        part = address_key(address)
        if part is not None:
            keys.append((self.keys.login_address(part), self.max_per_address))
        return keys

    def reserve(self, user: str | None, address: str | None) -> Refusal | None:
        """Count an attempt before it is made, atomically: None when it may go ahead (it now
        counts as a failure until ``settle`` says otherwise), else why not (nothing counted)."""
        keys = self._keys(user, address)
        if not keys:
            return None
        counters = [key for key, _ in keys]
        answer = int(self._reserve(keys=[*counters, *map(self.keys.login_in_flight, counters)],
                                   args=[self.window_seconds, IN_FLIGHT_SECONDS, *(limit for _, limit in keys)]))
        if answer == 0:
            return None
        if answer < 0:
            return Refusal(BUSY_RETRY_SECONDS, busy=True)
        return Refusal(max(1, math.ceil(answer / 1000)), busy=False)

    def settle(self, user: str | None, address: str | None, *, succeeded: bool | None) -> None:
        """The answer to an attempt ``reserve`` let through: ``succeeded`` True (the user's
        failures are forgotten, the address gets its attempt back), False (it stays counted), or
        None (the directory could not answer: both get it back)."""
        modes = []
        counters = []
        if user is not None:
            counters.append(self.keys.login_user(_user_part(user)))
            modes.append("failed" if succeeded is False else "clear" if succeeded else "refund")
        part = address_key(address)
        if part is not None:
            counters.append(self.keys.login_address(part))
            modes.append("failed" if succeeded is False else "refund")
        if counters:
            self._settle(keys=[*counters, *map(self.keys.login_in_flight, counters)], args=modes)

    def check(self, user: str | None, address: str | None) -> int | None:
        """Seconds to wait before trying again when the user or the address is over its limit,
        else None."""
        keys = self._keys(user, address)
        if not keys:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in keys:
            pipe.get(key)
            pipe.pttl(key)
        results = pipe.execute()
        wait = 0.0
        for index, (_, limit) in enumerate(keys):
            count, pttl = results[2 * index], results[2 * index + 1]
            if count is not None and int(count) >= limit:
                seconds = pttl / 1000.0 if pttl and pttl > 0 else float(self.window_seconds)
                wait = max(wait, seconds)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def record_failure(self, user: str | None, address: str | None) -> None:
        keys = self._keys(user, address)
        if keys:
            self._record(keys=[key for key, _ in keys], args=[self.window_seconds])

    def reset(self, user: str) -> None:
        """Forget the user's failures (call after a successful login)."""
        self.redis.delete(self.keys.login_user(_user_part(user)))
