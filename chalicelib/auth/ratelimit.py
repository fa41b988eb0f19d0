"""Failed-login limiter: counters in Redis per (client address, user name), per user name and
per client address, with expiry.

Fixed windows: the first attempt starts a window of ``window_seconds``. Past ``max_per_user``
failures of a user name from one address, ``max_per_user_all_addresses`` of the name from
anywhere, or ``max_per_address`` of any names from an address, logins are refused until the window
ends (the API answers 429 with ``Retry-After``). The small limit is the pair's: one user's typos,
or guesses at one account, lock out only that user from that address, not everyone behind the
same NAT; the two ceilings are much higher: guessing across many names from one address, and one
name from many addresses. A successful login gives its own attempt
back and clears no failures: the user name's counter holds the failures of every spelling
``login_key`` merges (``jose`` and ``jos\u00e9``), and the holder of one such account must not reset the
guesses at another's password by logging in between them.

Each attempt is reserved before the directory is asked (``reserve``: check and count in one
script): 40 wrong passwords sent at once reach LDAP only as often as the limits allow, not 40
times. Each counter keeps a count of its attempts still in flight beside it, so a refusal says
whether failures fill the limit (wait for the window to end) or attempts in flight do (they may
all be right: try again in a second). The pair's counter lets ``PAIR_ROOM_IN_FLIGHT`` attempts in
flight past its limit (a CI farm's jobs logging in as one user at once), the ceilings none.
``settle`` records the answer: a failure stays counted; a success or an outage is given back.

User names are keyed by ``base.login_key``: NFKC-normalised, case-folded, without accents or
characters RFC 4518 maps to nothing, coarser than directories match (a fullwidth ``\uff42ob`` binds
as ``bob``, Active Directory's ``jesush`` as ``j\u00e9sush``: each shares the entry's counter), then
hashed (bounded key size). IPv6 addresses count per /64, since one client usually holds a whole /64.

What the counters keep is bounded whatever the window: at most ``max_counters`` user names and as
many addresses are counted on their own at once; past it, a name (address) not counted already
is counted on one of ``SHARED_LOGIN_COUNTERS`` counters it shares with the names (the IPv6 /48s)
hashing alike, under the same limit, so no name is guessed more often than alone.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.store.connection import written_behind_a_lost_reply
from chalicelib.store.keys import DEFAULT_PREFIX, Keys
from chalicelib.store.scripts import registered, script_source

from .base import login_key

if TYPE_CHECKING:
    from chalicelib.config import AuthConfig


def _user_part(user: str) -> str:
    return hashlib.sha256(login_key(user).encode("utf-8")).hexdigest()[:32]


def address_key(address: str | None) -> str | None:
    """How a client address is counted: IPv4 as it is, IPv6 by its /64 (one client usually
    holds a whole /64), anything else hashed. None without an address. API Gateway sends an
    address; its console test ``test-invoke-source-ip``, and a direct invoke any text: a lone
    surrogate (JSON's ``\\udc80``) included, hashed as the bytes it stands for rather than failing
    every checkout with a UnicodeEncodeError (a 500). Kept for the last ADDRESSES_KEPT
    addresses no longer than an IPv6 address's text (every checkout asks: parsing one was nine
    calls of Python)."""
    if not address:
        return None
    if len(address) <= ADDRESS_CHARS_KEPT:
        return _kept_address_key(address)
    return _address_key(address)


ADDRESSES_KEPT = 1024
ADDRESS_CHARS_KEPT = 64
"""Longer texts (no address is: an IPv6 one with a zone is under 60) are worked out each time,
never kept: a direct invoke may send a megabyte."""


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


_kept_address_key = functools.lru_cache(maxsize=ADDRESSES_KEPT)(_address_key)


def address_prefix(address: str | None) -> str | None:
    """A client address coarser than ``address_key``: IPv6 by its /48 (a site's allocation: one
    caller with a /48 holds 65,536 /64s), anything else as ``address_key`` counts it."""
    part = address_key(address)
    if part is not None and part.endswith("/64"):
        return str(ipaddress.IPv6Network(part).supernet(new_prefix=48))
    return part


def _pair_part(user: str, address: str | None) -> str:
    """The (client address, user name) pair an attempt is counted on: both hashed together
    (bounded key size; no address: one pair of all callers without one)."""
    text = f"{address_key(address) or ''}\n{login_key(user)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


PAIR_ROOM_IN_FLIGHT = 64
"""Attempts of one (address, user) pair that may wait for the directory at once past the pair's
failure limit: correct logins sent together (CI jobs starting at once behind one NAT) all go ahead,
bounded by the user's and the address's ceilings, which count their attempts in flight in full."""

IN_FLIGHT_SECONDS = 120
"""How long a count of attempts in flight lives after the last one started: longer than any login
takes (LDAP's timeouts, API Gateway's 29 s), so an attempt whose process died is forgotten."""
BUSY_RETRY_SECONDS = 1
"""What a caller refused for attempts still in flight is told to wait."""


SHARED_LOGIN_COUNTERS = 16384
"""The counters user names (and, apart, addresses) share once ``max_counters`` are counted on
their own: locking out every name not counted yet takes this many x the per-user limit failed
logins in a window (164,000 by default), against the directory's rate of answers."""

DEFAULT_MAX_COUNTERS = 20000
"""Names (and addresses) counted on their own at once unless ``auth.max_login_counters`` says."""


def shared_counter_of(part: str, counters: int) -> int:
    """Which of ``counters`` shared counters the name (address, client) ``part`` is counted on
    once its table is full: its hash, so the same one in every process."""
    return int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "big") % counters


@dataclass(frozen=True)
class _Limit:
    """One limit an attempt is counted under: its own counter, the one it shares past the
    table's bound, its kind's table and its name there, the limit, and how many attempts in
    flight may go past it."""

    own: str
    shared: str
    table: str
    name: str
    limit: int
    room_in_flight: int = 0


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
        max_per_address: int = 500,
        window_seconds: int = 300,
        prefix: str = DEFAULT_PREFIX,
        max_counters: int = DEFAULT_MAX_COUNTERS,
        max_per_user_all_addresses: int = 100,
    ) -> None:
        if min(max_per_user, max_per_address, max_per_user_all_addresses, window_seconds, max_counters) < 1:
            raise ValueError("login limits, window and counters must be >= 1")
        self.redis = redis
        self.max_per_user = int(max_per_user)
        self.max_per_user_all_addresses = int(max_per_user_all_addresses)
        self.max_per_address = int(max_per_address)
        self.window_seconds = int(window_seconds)
        self.max_counters = int(max_counters)
        self.keys = Keys(prefix)
        self._reserve = registered(redis, script_source("login_reserve"))
        self._settle = registered(redis, script_source("login_settle"))

    @classmethod
    def from_config(cls, auth_config: "AuthConfig | None", redis: Any, prefix: str = DEFAULT_PREFIX) -> "LoginLimiter":
        """From the ``:auth:`` section's login_attempts_per_user / _per_user_all_addresses /
        _per_address, login_window_seconds and max_login_counters (the defaults without ``:auth:``)."""
        if auth_config is None:
            return cls(redis, prefix=prefix)
        return cls(
            redis,
            max_per_user=auth_config.login_attempts_per_user,
            max_per_address=auth_config.login_attempts_per_address,
            max_per_user_all_addresses=auth_config.login_attempts_per_user_all_addresses,
            window_seconds=auth_config.login_window_seconds,
            prefix=prefix,
            max_counters=auth_config.max_login_counters,
        )

    def _limits(self, user: str | None, address: str | None) -> list[_Limit]:
        """The limits an attempt by ``user`` from ``address`` counts under (none without either)."""
        limits = []
        if user is not None:
            pair = _pair_part(user, address)
            limits.append(_Limit(self.keys.login_pair(pair),
                                 self.keys.login_pair_shared(shared_counter_of(pair, SHARED_LOGIN_COUNTERS)),
                                 self.keys.login_pairs_counted, pair, self.max_per_user, PAIR_ROOM_IN_FLIGHT))
            part = _user_part(user)
            limits.append(_Limit(self.keys.login_user(part),
                                 self.keys.login_user_shared(shared_counter_of(part, SHARED_LOGIN_COUNTERS)),
                                 self.keys.login_users_counted, part, self.max_per_user_all_addresses))
        counted_as = address_key(address)
        if counted_as is not None:
            limits.append(_Limit(self.keys.login_address(counted_as),
                                 self.keys.login_address_shared(
                                     shared_counter_of(address_prefix(address) or counted_as, SHARED_LOGIN_COUNTERS)),
                                 self.keys.login_addresses_counted, counted_as, self.max_per_address))
        return limits

    def _script_keys(self, limits: list[_Limit], attempt: str) -> list[str]:
        """lua/login_reserve.lua's and login_settle.lua's KEYS."""
        return [*(limit.own for limit in limits), *(limit.shared for limit in limits),
                *(self.keys.login_in_flight(limit.own) for limit in limits),
                *(self.keys.login_in_flight(limit.shared) for limit in limits),
                *(limit.table for limit in limits), self.keys.login_attempt(attempt)]

    def reserve(self, user: str | None, address: str | None, attempt: str) -> Refusal | None:
        """Count an attempt before it is made, atomically: None when it may go ahead (it now
        counts as a failure until ``settle`` says otherwise), else why not (nothing counted).
        Windows are timed on Redis's clock, which expires the counters: the service's is not asked.
        ``attempt`` (``new_attempt``) names it for its ``settle``.

        A reply that times out (Redis stalled: a SIGSTOP, a slow fork, a failover) leaves the
        caller a 503, but the script runs once Redis resumes: the attempt stayed counted as a
        failed login of a user who never got to type a password wrong, and a user retrying through
        a few stalls was refused for the whole window (429) with the right password. So the
        attempt's undo is written right behind it on its connection (``written_behind_a_lost_reply``,
        by EVAL: whatever scripts that Redis has loaded); it undoes exactly what the reserve
        counted, nothing when it counted nothing."""
        limits = self._limits(user, address)
        if not limits:
            return None
        keys = self._script_keys(limits, attempt)
        undo = ("EVAL", self._settle.script, len(keys), *keys, *self._settle_args(limits, "refund", "undo"))
        with written_behind_a_lost_reply(undo):
            answer = int(self._reserve(keys=keys, args=self._reserve_args(limits)))
        if answer == 0:
            return None
        if answer < 0:
            return Refusal(BUSY_RETRY_SECONDS, busy=True)
        return Refusal(max(1, math.ceil(answer / 1000)), busy=False)

    def settle(self, user: str | None, address: str | None, attempt: str, *, succeeded: bool | None) -> None:
        """The answer to an attempt ``reserve`` let through: ``succeeded`` False (it stays
        counted on the user name and the address), True or None (a success, or the directory
        could not answer: it is given back). A success clears no failures (the module doc).
        ``attempt``: the name given to ``reserve``: its answer changes the counters that counted
        it (judged from those with attempts in flight once its name expired with them)."""
        limits = self._limits(user, address)
        if limits:
            self._settle(keys=self._script_keys(limits, attempt),
                         args=self._settle_args(limits, "failed" if succeeded is False else "refund", "answer"))

    def _reserve_args(self, limits: list[_Limit]) -> list[Any]:
        """lua/login_reserve.lua's ARGV."""
        return [self.window_seconds, IN_FLIGHT_SECONDS, self.max_counters, *(limit.limit for limit in limits),
                *(limit.name for limit in limits), *(limit.room_in_flight for limit in limits)]

    @staticmethod
    def _settle_args(limits: list[_Limit], mode: str, why: str) -> list[str]:
        """lua/login_settle.lua's ARGV."""
        return [*(mode for _ in limits), *(limit.name for limit in limits), why]


def new_attempt() -> str:
    """A name for a login attempt (``LoginLimiter.reserve``, ``settle``)."""
    return secrets.token_hex(8)
