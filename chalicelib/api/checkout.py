"""Checking VMs out: the request names and counts both POST /vm and POST /ondemandvm take, the
checkout from the ready pools, and its fallback to an on-demand request when they are short.

One module so that /vm and /ondemandvm each build on it without importing each other.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any, Mapping

from chalicelib import observability as metric
from chalicelib.api.http import ApiError, ApiRequest, ApiResponse, bad_request, not_found, shown, whole_number
from chalicelib.api.identity import Caller, optional_caller
from chalicelib.api.limits import never_fits, quota, quota_error
from chalicelib.api.pool_choice import live_pools, preference, preferences
from chalicelib.api.vm_lookup import named_domain
from chalicelib.config import REQUEST_NAME_PATTERN
from chalicelib.observability import emit, logger
from chalicelib.refusals import NO_READY_VMS
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest, QuotaExceeded
from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore

MAX_COUNT = 100
MAX_NAME_LENGTH = 100
"""vmpooler's ``MAX_POOL_NAME_LENGTH``, the length ``config.REQUEST_NAME_PATTERN`` allows."""
PATH_NAMES_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,100}+(?:\+[A-Za-z0-9_.-]{1,100}+)*+\Z")
"""``config.REQUEST_NAME_PATTERN`` names joined by ``+``, matched in one pass (possessive: no backtracking)."""
VALID_PATH_NAMES_PREFIX = re.compile(r"(?:[A-Za-z0-9_.-]{1,100}+\+)*+")
"""The names of a path segment before its first bad one, each with its ``+``."""


def names_in_path(segment: str) -> dict[str, int]:
    """The names of a path's ``<pool1>+<pool1>+<pool2>``, each with how many times it is named;
    400 when one is not a name. Checked and counted in one pass of C over the whole segment: a
    name at a time, a million-part segment (a direct invoke's) held the API function 4 s and
    110 MB before its 400.

    Trailing ``+`` are dropped first, as vmpooler's Ruby ``split('+')`` drops them: a script that
    joins its pools with a ``+`` after each (``debian+centos+``) is served there, and was a 400
    here. An empty name before another (``+debian``, ``debian++centos``) is still refused:
    vmpooler looks it up as the pool ``""`` and answers 404."""
    segment = segment.rstrip("+")
    if not PATH_NAMES_PATTERN.match(segment):
        raise bad_request(_bad_path_name(segment))
    return dict(Counter(segment.split("+")))


def _bad_path_name(segment: str) -> str:
    """What is wrong with the first bad name of a path segment ``PATH_NAMES_PATTERN`` refused,
    in the body's words (``check_requested_name``): a name past 100 characters is too long, as in
    a body (it was ``Invalid pool name format`` in a path only); an empty one (``debian+``) and
    one with another character are badly formed. Found without splitting the segment."""
    valid = VALID_PATH_NAMES_PREFIX.match(segment)
    start = valid.end() if valid else 0
    end = segment.find("+", start)
    length = (len(segment) if end < 0 else end) - start
    return "Pool name too long" if length > MAX_NAME_LENGTH else "Invalid pool name format"


def check_requested_name(name: str) -> None:
    """400 unless ``name`` can be a pool or alias a body asks for (``config.REQUEST_NAME_PATTERN``),
    with vmpooler's message for what is wrong: none given, longer than 100 characters, or a
    character no name has."""
    if not name:
        raise bad_request("Pool name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise bad_request("Pool name too long")
    if not REQUEST_NAME_PATTERN.match(name):
        raise bad_request("Invalid pool name format")


def parse_count(count: Any, most: int | None = MAX_COUNT) -> int:
    """A requested VM count: 1..``most``, as a JSON number or a string of digits (400 otherwise).
    ``most`` None: no bound here, the caller's own maximum applies (an on-demand request's is
    ``max_ondemand_instances_per_request``, a 403 naming it, as vmpooler answers)."""
    if count is None:
        raise bad_request("VM count is required")
    number = whole_number(count)
    if number is None and not _negative_integer(count):
        raise bad_request("VM count must be a valid integer")
    if number is None or number < 1:
        raise bad_request("VM count must be at least 1")
    if most is not None and number > most:
        raise bad_request(f"VM count must be at most {most}")
    return number


def _negative_integer(count: Any) -> bool:
    """Whether ``count`` is a negative whole number, a JSON integer or ``-`` and ASCII digits:
    an integer, too small (vmpooler, whose pattern has no sign, calls it no valid integer)."""
    if isinstance(count, bool):
        return False
    if isinstance(count, int):
        return count < 0
    return isinstance(count, str) and count.startswith("-") and count[1:].isascii() and count[1:].isdigit()


def checkout(services: Services, request: ApiRequest, wanted: Mapping[str, int]) -> ApiResponse:
    """Check out ``wanted`` (pool or alias -> count) from the ready pools, all or nothing; when
    they are short, fall back to an on-demand request if that is wanted, else answer 503."""
    if sum(wanted.values()) > MAX_COUNT:
        # Each VM asked for is a slot the checkout script matches in Redis, which serves nobody
        # else meanwhile: 100 per pool over 400 pools held it for over 100 ms.
        raise bad_request(f"at most {MAX_COUNT} VMs may be checked out in one request")
    config = services.config
    unknown = [name for name in wanted if not config.resolve(name)]
    if unknown:
        raise not_found(error=f"unknown pool or alias: {shown(', '.join(unknown), 200)}")
    caller = optional_caller(services, request)
    never_fits(services, sum(wanted.values()))
    live = live_pools(services, wanted)
    requests = []
    for name, count in wanted.items():
        # One order more: what a VM tries once its own first choices have none (an alias of many pools).
        first, *each = preferences(config, name, count + 1, live)
        requests.append(CheckoutRequest(name, first, count, each))
    lifetime = config.service.vm_lifetime_auth if caller else config.service.vm_lifetime
    fields = {"lifetime": str(lifetime)}
    if config.service.migration_limit > 0:
        fields["migration"] = "queued"  # its pool's pass moves it off a busy host (manager/migrations.py)
    if caller:
        # The owner and the token's id (a hash prefix): never the token itself.
        fields["token_user"] = caller.user
        fields["token_id"] = caller.token_id
        # The directory entry the token's login bound as: a newcomer given the same name later
        # (a new entry) is not this VM's owner. "" for none, over whatever an earlier checkout left.
        fields["token_entry"] = caller.entry_id or ""
    now = services.clock.now()
    try:
        result = services.store.checkout(requests, now, fields, quota(services, request, caller),
                                         caller.token_key if caller else "")
    except QuotaExceeded as exceeded:
        raise quota_error(services, exceeded) from None
    if not result.ok:
        # Per pool for a name that is a pool, per alias for one that is only an alias: an alias
        # is no pool to graph or to grow, and counting each pool it names wrote an EMF document
        # per pool (~300 KB of logs for one 503 of an alias of 1,000 pools, repeatable by any
        # caller). Every name here resolved to a pool (unknown ones were a 404), so the ``alias``
        # values are the config's aliases: as bounded as the pools. Summed per window, not a
        # document per request (chalicelib/refusals.py).
        services.refusals.missed([name for name in result.short if config.pool(name) is not None],
                                 [name for name in result.short if config.pool(name) is None])
        fallback = fallback_checkout(services, request, wanted, caller)
        if fallback is not None:
            return fallback
        # vmpooler's answer, exactly: its own specs and the clients written against it expect
        # the bare body. The names that were short go to the log, counted per window.
        services.refusals.refused(NO_READY_VMS, result.short)
        raise ApiError(503)
    services.refill.pools_changed({vm.pool for vm in result.vms})
    emit(None, {metric.CHECKOUTS: len(result.vms)})
    for vm in result.vms:
        logger.info("VM checked out", extra={"pool": vm.pool, "hostname": vm.hostname,
                                             "user": caller.user if caller else None})
    named: dict[str, list[tuple[str, str]]] = {}
    for vm in result.vms:
        # Named as GET /vm names it: a published VM under the domain of its record (the
        # checkout script's answer says it), which a pool's new domain does not move at once.
        named.setdefault(vm.requested, []).append((vm.hostname, named_domain(services, vm.pool, vm.published_domain)))
    hostnames, domain = hostnames_by_name(named, request.version)
    answer: dict[str, Any] = {"ok": True}
    for name, names in hostnames.items():
        answer[name] = {"hostname": names[0] if len(names) == 1 else names}
    if domain:
        answer["domain"] = domain
    # Laid out as vmpooler's JSON.pretty_generate: scripts written against it take the host from
    # the text, one line at a time (`curl -d --url <pooler>/vm/<platform>` then
    # /"hostname": "(.*)"/ in puppet-agent's Windows build and Puppetstein); compact, the pattern
    # found nothing, or everything after the host on the one line.
    return ApiResponse(200, answer, pretty=True)


def hostnames_by_name(
    named: Mapping[str, list[tuple[str, str]]], version: int
) -> tuple[dict[str, list[str]], str | None]:
    """The hostnames to answer for each requested name, from (short name, domain) pairs, and the
    top-level ``domain`` of a v1 answer.

    v2/v3 answer FQDNs. v1 clients (beaker, vmfloaty on a v1 URL) append the top-level ``domain``
    to every short name, so v1 answers short names with the one domain they all share, and FQDNs
    without a ``domain`` key when the VMs' domains differ (a pool with a domain of its own)."""
    domains = {domain for vms in named.values() for _, domain in vms}
    shared = domains.pop() if version == 1 and len(domains) == 1 else None
    short = shared is not None
    hostnames = {
        name: [hostname if short or not domain else f"{hostname}.{domain}" for hostname, domain in vms]
        for name, vms in named.items()
    }
    return hostnames, shared or None


# --- on-demand requests, and a checkout that missed becoming one ------------------------------


def open_request(
    services: Services, request: ApiRequest, wanted: Mapping[str, int], request_id: str | None,
    caller: Caller | None, quota_key: str = "message",
) -> str:
    """Record the request (409 when its id is taken, 403 or 503 over a quota, its message under
    ``quota_key``) and wake the pools that build it."""
    config = services.config.service
    never_fits(services, sum(wanted.values()), quota_key)
    # An alias is built in one of its pools, chosen by backend_weight or at random (vmpooler chooses for
    # each VM; here each name of a request is one entry: docs/api.md, "On-demand").
    live = live_pools(services, wanted)
    entries = [OnDemandEntry(name, preference(services.config, name, live)[0], count)
               for name, count in wanted.items()]
    id_generated = request_id is None
    request_id = request_id or str(uuid.uuid4())
    try:
        created = OnDemandStore(services.store).create(
            request_id, entries, services.clock.now(), int(config.ondemand_request_ttl) * 60,
            int(config.vm_lifetime_auth if caller else config.vm_lifetime), caller.user if caller else "",
            caller.token_id if caller else "", quota(services, request, caller), id_generated,
            caller.token_key if caller else "", (caller.entry_id or "") if caller else "",
        )
    except QuotaExceeded as exceeded:
        raise quota_error(services, exceeded, key=quota_key) from None
    if not created:
        raise ApiError(409, {"message": f"request_id '{request_id}' has already been created",
                             "request_id": request_id})
    services.refill.pools_changed({entry.pool for entry in entries})
    return request_id


FALLBACK_QUERY = "ondemand"
"""``POST /vm?ondemand=true`` asks for the fallback on this request, ``=false`` refuses it."""


def fallback_wanted(services: Services, request: ApiRequest, wanted: Mapping[str, int]) -> bool:
    """Whether a checkout miss becomes an on-demand request: the query says so, else every pool
    involved has ``ondemand_fallback`` (a pool's own setting, else the service's)."""
    asked = request.query.get(FALLBACK_QUERY, "").lower()
    if asked in ("true", "1", "yes"):
        return True
    if asked in ("false", "0", "no"):
        return False
    config = services.config
    default = config.service.ondemand_fallback
    # Stops at the first pool without the fallback (every refused checkout asks: the pools were
    # all looked up first, a list of them built per refusal).
    pools = (config.pool(name) for requested in wanted for name in config.resolve(requested))
    seen = False
    for pool in pools:
        seen = True
        if pool is None or not (default if pool.ondemand_fallback is None else pool.ondemand_fallback):
            return False
    return seen


def fallback_checkout(
    services: Services, request: ApiRequest, wanted: Mapping[str, int], caller: Caller | None
) -> ApiResponse | None:
    """A 202 with a new request's id for a checkout that missed, or None to answer 503 as
    usual (fallback not wanted, no token while auth is configured, or over the on-demand limit)."""
    if not fallback_wanted(services, request, wanted):
        return None
    if services.config.auth is not None and caller is None:
        return None
    if sum(wanted.values()) > services.config.service.max_ondemand_instances_per_request:
        return None
    # A POST /vm: its quota refusals read as the checkout's own (``error``).
    request_id = open_request(services, request, wanted, None, caller, quota_key="error")
    return ApiResponse(202, {"ok": True, "request_id": request_id, "ready": False})
