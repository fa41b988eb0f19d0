"""What callers may make grow, and how fast (docs/auth.md, "Limits").

- Quotas: VMs one owner holds (checkouts and on-demand), VMs running in total, open on-demand
  requests per owner and in total. The owner is the token's user (its canonical name), else the
  anonymous client's address. Checked in the scripts that take the VMs (store/lua/quota.lua).
- Request rates: vmpooler's ``rate_limiting_enabled`` and ``rate_limits`` (per user when a valid
  token is sent, else per client address; VM creation and deletion counted on their own), a fixed
  window per client in Redis, so every API process and Lambda shares it. Past the limit: 429 with
  ``Retry-After``. Each class counts at most ``max_rate_limited_clients`` clients on their own at
  once; past it a client not counted yet shares one of ``SHARED_RATE_COUNTERS`` counters (by its
  IPv6 /48, address or user), so Redis holds a bounded number of counters whatever the period and
  however many addresses callers have, and no client already counted is reset or refused for
  what others send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from chalicelib.api.http import ApiError, ApiRequest
from chalicelib.api.identity import Caller, path_token_check, token_check
from chalicelib.auth.base import acceptable_credentials, canonical_user, login_key
from chalicelib.auth.basic import parse_basic_auth
from chalicelib.auth.directory_check import Standing
from chalicelib.auth.ratelimit import address_key, address_prefix, shared_counter_of
from chalicelib.services import Services
from chalicelib.store import Quota, QuotaExceeded
from chalicelib.store.keys import quota_owner, rate_limit_client

# --- quotas -------------------------------------------------------------------------------------


def quota(services: Services, request: ApiRequest, caller: Caller | None) -> Quota:
    """The limits a checkout or on-demand request by this caller is held to."""
    config = services.config.service
    return Quota(
        # By the directory entry: a departed person's VMs, still running under the name, used
        # the quota of the newcomer given the name; a renamed user's were counted apart.
        owner=quota_owner(canonical_user(caller.user) if caller else None, address_key(request.source_ip) or "unknown",
                          caller.entry_id if caller else None),
        max_owner_vms=int(config.max_running_vms_per_user),
        max_vms=int(config.max_running_vms),
        pools=services.config.pool_names,
        max_owner_requests=int(config.max_ondemand_requests_per_user),
        max_requests=int(config.max_ondemand_requests),
        max_kept_requests=int(config.max_ondemand_requests_kept),
    )


def never_fits(services: Services, wanted: int, key: str = "error") -> None:
    """403 for a request of ``wanted`` VMs larger than the VMs one may hold at once or the service
    runs in all: it never fits, whatever anyone returns. The message names the limit and the most
    one may ask for, under ``key`` (as ``quota_error``). Checked before the quota script: the
    service's limit answered 503 with Retry-After, and vmfloaty and beaker asked again forever."""
    most, field = services.config.service.largest_request()
    if wanted > most:
        limit = (f"you may hold at most {most} VMs at once" if field == "max_running_vms_per_user"
                 else f"the service runs at most {most} VMs in all")
        raise ApiError(403, {key: f"{limit}, and this request alone asks for {wanted}; ask for at most {most}"})


def quota_error(services: Services, exceeded: QuotaExceeded, key: str = "error") -> ApiError:
    """The answer to a request refused by a quota: 403 for the caller's own limits (give some
    back first), 503 with Retry-After for the service's (others will give some back). The
    message is under ``key``, the one the route's other errors use (vmpooler's: ``error`` on
    ``POST /vm``, ``message`` on ``POST /ondemandvm``). A request that never fits was refused
    before (``never_fits``)."""
    config = services.config.service
    messages = {
        "owner_vms": (403, f"you may hold at most {config.max_running_vms_per_user} VMs at once; return some first"),
        "owner_requests": (403, (f"you may have at most {config.max_ondemand_requests_per_user} "
                                 "on-demand requests open at once")),
        "service_vms": (503, f"the service runs its maximum of {config.max_running_vms} VMs; try again later"),
        "service_requests": (503, (f"the service has its maximum of {config.max_ondemand_requests} "
                                   "on-demand requests open; try again later")),
    }
    status, message = messages[exceeded.limit]
    if status == 503:
        return ApiError(503, {key: message}, {"Retry-After": "60"})
    return ApiError(403, {key: message})


# --- request rates ----------------------------------------------------------------------------

DEFAULT_RATE_LIMITS: Mapping[str, Mapping[str, int]] = {
    "global_per_ip": {"limit": 100, "period": 60},
    "authenticated": {"limit": 500, "period": 60},
    "vm_creation": {"limit": 20, "period": 60},
    "vm_deletion": {"limit": 50, "period": 60},
}
"""vmpooler's defaults (lib/vmpooler/api/rate_limiter.rb); ``rate_limits`` overrides any of them."""

@dataclass(frozen=True)
class RateClass:
    name: str
    limit: int
    period: int


def rate_class(services: Services, method: str, path: str, authenticated: bool) -> RateClass:
    """vmpooler's classes: a POST to a VM path (``/vm`` or ``/ondemandvm``) creates, a DELETE
    deletes, a request with a valid token is ``authenticated``, anything else ``global_per_ip``."""
    # ``/ondemandvm`` holds no "/vm": read as vmpooler reads the path, an on-demand request, each
    # one cloning VMs, went under ``authenticated`` (500 a minute against vm_creation's 20).
    vm_path = "/vm" in path or path.startswith("/ondemandvm")
    if method == "POST" and vm_path:
        name = "vm_creation"
    elif method == "DELETE" and vm_path:
        name = "vm_deletion"
    elif authenticated:
        name = "authenticated"
    else:
        name = "global_per_ip"
    settings = {**DEFAULT_RATE_LIMITS[name], **(services.config.rate_limits.get(name) or {})}
    return RateClass(name, int(settings["limit"]), int(settings["period"]))


SHARED_RATE_COUNTERS = 16384
"""The counters a rate-limit class's clients share once it counts ``max_rate_limited_clients`` on
their own: a few MB per class. A new client shares one with the clients whose IPv6 /48 (address,
user) hashes alike, so a caller with many /64s of one /48 fills one, and filling them all takes
``SHARED_RATE_COUNTERS`` x the limit requests in a period (1.6 million a minute by default)."""


def shared_counter(user: str | None, address: str | None) -> int:
    """Which of the ``SHARED_RATE_COUNTERS`` counters a client shares once its class's table is full."""
    return shared_counter_of(rate_limit_client(user, address_prefix(address) or "unknown"), SHARED_RATE_COUNTERS)


def _token_user(services: Services, request: ApiRequest) -> str | None:
    """The client of the valid token the request sends (auth configured: ``rate_client``), else
    None. A token whose user the directory no longer has is not valid: the request is the
    address's. One the directory cannot vouch for during an outage is still its user's (nobody
    said the user left; the handler answers 503 where the token matters)."""
    check = token_check(services, request)
    if check is None or check.record is None or check.standing is Standing.REMOVED:
        return None
    return rate_client(check.record.user, check.record.entry_id)


def rate_client(user: str, entry_id: str | None) -> str:
    """Whom a token's requests are counted as: the directory entry its login bound as when known
    (``entry`` and a line break, which no user name holds, before its id), as quotas count
    (``quota_owner``), else its canonical user. A name given to a newcomer while the departed
    person's tokens still work (``directory_check_minutes: 0``) is another client: the departed
    person's CI spent the newcomer's budget. A user renamed (the same entry) is one client under
    both names: by name and entry, the new name was a fresh budget, a whole window's more. A
    token without an entry id counts under the name alone, as before."""
    return f"entry\n{entry_id}" if entry_id else canonical_user(user)


BASIC_CREDENTIAL_PATHS = ("/token", "/token/{token}")
"""The routes whose handlers check the request's HTTP Basic credentials (api/tokens.py): there
alone a request sending them is counted per user name and address (``_basic_login``)."""
PATH_TOKEN_ROUTE = ("GET", "/token/{token}")
"""The route whose token in the path is the caller's credential (vmfloaty's ``token status``
sends nothing else): counted as that token's user, as an ``X-AUTH-TOKEN`` is."""


def _basic_login(services: Services, path: str, request: ApiRequest) -> str | None:
    """The user name of the Basic credentials a token route checks, as failed logins count it
    (``login_key``); None elsewhere, without ``:auth:``, or for credentials no directory would
    be asked about (refused without a login: the address's)."""
    if services.config.auth is None or path not in BASIC_CREDENTIAL_PATHS:
        return None
    credentials = parse_basic_auth(request.header("Authorization"))
    if credentials is None or not acceptable_credentials(*credentials):
        return None
    return login_key(credentials[0])


def _path_token_user(services: Services, method: str, path: str, request: ApiRequest) -> str | None:
    """For ``GET /token/<t>``, the client of the token in the path when it is live and its user
    not removed from the directory (as ``_token_user``); None otherwise."""
    if services.config.auth is None or (method, path) != PATH_TOKEN_ROUTE:
        return None
    check = path_token_check(services, request)  # kept on the request: the handler reads it again for free
    if check.record is None or check.standing is Standing.REMOVED:
        return None
    return rate_client(check.record.user, check.record.entry_id)


def check_rate(services: Services, method: str, path: str, request: ApiRequest) -> None:
    """Count the request against its class's limit; 429 with Retry-After past it. A no-op
    unless ``rate_limiting_enabled``."""
    if not services.config.service.rate_limiting_enabled:
        return
    # Who is counted: the user of a valid token (every token of one user is one client), else the
    # address. A header anyone can make up (a token that is not valid, or any token without
    # :auth:) changes neither the client nor its class: it buys no budget of its own.
    # Where the route checks them, Basic credentials (counted per user name and address, the
    # name unchecked yet: anyone may send any, so they buy nothing of a user's own budget) and a
    # token in the path: users behind one address (a NAT, a CI farm) managing their tokens were
    # all one client, and one of them listing tokens in a loop got the others 429.
    user = _token_user(services, request)
    login = None if user is not None else _basic_login(services, path, request)
    if user is None and login is None:
        user = _path_token_user(services, method, path, request)
    rate = rate_class(services, method, path, authenticated=user is not None)
    address = address_key(request.source_ip) or "unknown"
    client = rate_limit_client(user, address, login)
    # Past the table's room, a user name at an address shares the address's counter: names made
    # up by the thousand from one address fill one counter.
    counted = services.store.count_request(rate.name, client, shared_counter(user, request.source_ip), rate.period,
                                           int(services.config.service.max_rate_limited_clients))
    if counted.count <= rate.limit:
        return
    wait = max(1, math.ceil(counted.left_ms / 1000)) if counted.left_ms > 0 else rate.period
    now = int(services.clock.now())
    body: dict[str, object] = {"error": "Rate limit exceeded", "limit": rate.limit, "period": rate.period,
                               "retry_after": wait}
    if counted.shared:
        # Said so the client (and its operator) know why a client that sent little is refused.
        body["shared"] = True
    raise ApiError(
        429, body,
        {"Retry-After": str(wait), "X-RateLimit-Limit": str(rate.limit), "X-RateLimit-Remaining": "0",
         "X-RateLimit-Reset": str(now + wait)},
    )
