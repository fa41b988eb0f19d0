"""A failed request leaves Redis unchanged (docs/reliability.md, "A failed request changes
nothing"): every route of the route table, under every path it is served at (each API version,
and unversioned where it is), is sent the requests an outsider fails with (bad JSON, wrong
types, unknown pools, hostnames, tokens and requests, another user's VM, token or request, no
or a wrong token, wrong Basic credentials, a non-administrator on the administrators' routes,
over-limit counts and quotas, a body over the limit, a method the path does not serve), and
every key of Redis is compared before and after each: type, value and absolute expiry
(``PEXPIRETIME``: an expiry set again moves it). The dummy provider's VMs are Redis keys too
(``dummy:*``), so they are compared alike: no VM made, changed or destroyed.

The harness runs no scheduler and a fake clock, so between two requests nothing but the request
changes Redis. The only keys a failed request may write are ``ALLOWED``, each with its reason.

Parametrised over ``routes.ROUTES``: a route added to the table is covered from the moment it
exists, and ``test_every_route_has_failing_cases`` fails until it has cases of its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import pytest
import redis

from chalicelib.api.http import MAX_BODY_BYTES
from chalicelib.api.routes import ROUTES, Route, versioned_paths
from tests.api.test_input_bounds import EXPERIMENTAL_CONFIG
from tests.harness import Harness, SavedState, basic, restore_state, save_state

CONFIG = EXPERIMENTAL_CONFIG.replace(
    ":config:\n",
    ":config:\n  max_running_vms_per_user: 3\n  max_tokens_per_user: 2\n  max_ondemand_requests_per_user: 1\n"
    "  max_ondemand_instances_per_request: 3\n  rate_limiting_enabled: true\n", 1,
).replace(
    ":pools:",
    ":auth:\n  provider: dummy\n  admins: [root]\n"
    ":rate_limits:\n  global_per_ip: {limit: 100000, period: 60}\n  authenticated: {limit: 100000, period: 60}\n"
    "  vm_creation: {limit: 100000, period: 60}\n  vm_deletion: {limit: 100000, period: 60}\n:pools:", 1)
"""The API tests' pools with every feature a failing request can reach: ``:auth:`` (dummy: any
password but the user name; ``root`` an administrator), the runtime pool changes, the request
rates counted (limits no test reaches), and small quotas the world below fills."""

@dataclass(frozen=True)
class Allowed:
    """Keys (a pattern of their names after the prefix) a failed request may write, and why."""

    pattern: str
    reason: str
    fields: frozenset[bytes] | None = None
    """Only these fields of the hash (and its expiry) may change; None: anything."""


ALLOWED = (
    Allowed(r"ratelimit:.*", "a request is counted against its client's rate whatever its answer: a client "
                             "sending failing requests in a loop is limited as any other (api/limits.py)"),
    Allowed(r"login:.*", "a refused login is counted against its user name and address (and an attempt in "
                         "flight marked until answered): what stops password guessing (auth/ratelimit.py)"),
    Allowed(r"demand:[^:]+:\d{4}-\d{2}-\d{2}", "a checkout refused for want of ready VMs is demand a "
                                                "demand-sized pool grows for: its miss is counted "
                                                "(sizing/demand.py)"),
    Allowed(r"token:[0-9a-f]{64}", "a request with a live token is a use of it, refused or not: its `last` "
                                   "(and its expiry from token_ttl) move, as in vmpooler (docs/auth.md, "
                                   "\"Tokens\"): a leaked token probed shows as used; but not when what it "
                                   "names is not there (NOT_A_TOKEN_USE)", frozenset({b"last"})),
)


# --- Redis, key by key ---------------------------------------------------------------------------


Digest = dict[bytes, tuple[Any, ...]]


def digest(client: redis.Redis) -> Digest:
    """Every key of the database: its type, its value read by type, and its absolute expiry in ms
    (-1: none). Three round trips whatever the number of keys."""
    keys = sorted(client.keys("*"))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pexpiretime(key)
    kinds = pipe.execute()
    reads = {b"string": lambda key: pipe.get(key), b"hash": lambda key: pipe.hgetall(key),
             b"zset": lambda key: pipe.zrange(key, 0, -1, withscores=True),
             b"set": lambda key: pipe.smembers(key), b"list": lambda key: pipe.lrange(key, 0, -1),
             b"stream": lambda key: pipe.xrange(key)}
    for index, key in enumerate(keys):
        reads[kinds[2 * index]](key)
    values = pipe.execute()
    return {key: (kinds[2 * index], values[index], kinds[2 * index + 1]) for index, key in enumerate(keys)}


def changes(before: Digest, after: Digest, prefix: str) -> list[str]:
    """The keys that differ, other than as ``ALLOWED`` lets them."""
    found = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        name = key.decode("utf-8", "backslashreplace")
        allowed = next((entry for entry in ALLOWED if re.fullmatch(entry.pattern, name.removeprefix(prefix))), None)
        if allowed is not None and (allowed.fields is None or _fields_only(old, new, allowed.fields)):
            continue
        found.append(f"{name}: {old!r} -> {new!r}")
    return found


def _fields_only(old: tuple[Any, ...] | None, new: tuple[Any, ...] | None, fields: frozenset[bytes]) -> bool:
    """Whether two reads of a hash differ in ``fields`` (and expiry) only."""
    if old is None or new is None or old[0] != b"hash" or new[0] != b"hash":
        return False
    return {k: v for k, v in old[1].items() if k not in fields} == {k: v for k, v in new[1].items() if k not in fields}


# --- the world the requests fail in --------------------------------------------------------------


@dataclass
class World:
    """Who holds what when the failing requests come: every kind of thing a request can name."""

    harness: Harness
    tokens: dict[str, str]
    """User -> a token: alice and bob (users), root (an administrator)."""
    alice_vm: str
    """Running, checked out with alice's token; she holds the most VMs she may (3)."""
    bob_vm: str
    """Running, checked out with bob's token; its snapshot ``snapshot`` is queued."""
    anonymous_vm: str
    """Running, checked out without a token."""
    ready_vm: str
    """Ready in pool1: no one's."""
    returned_vm: str
    """Returned by alice (completed)."""
    snapshot: str
    bob_request: str
    """bob's on-demand request, its id chosen: he has the most requests open he may (1)."""
    full_vm: str
    """bob's, with as many tasks queued as a VM may have waiting."""
    raw: redis.Redis
    """The test's Redis, bytes as stored."""


_BUILT: list[tuple[SavedState, float, dict[str, Any]]] = []
"""The world as first built (Redis, the clock, the names): each test after starts from a copy,
0.7 s of passes and requests saved per route."""


@pytest.fixture
def world(make_stack: Callable[[str], Harness]) -> Iterator[World]:
    stack = make_stack(CONFIG)
    raw = redis.Redis(port=stack.client.connection_pool.connection_kwargs["port"])
    if _BUILT:
        saved, now, names = _BUILT[0]
        restore_state(stack.client, saved)
        stack.clock.advance(now - stack.clock.now())
    else:
        names = _build(stack)
        _BUILT.append((save_state(stack.client), stack.clock.now(), names))
    yield World(stack, raw=raw, **names)
    raw.close()


def _build(stack: Harness) -> dict[str, Any]:
    """Make the world through the API and passes; the names of what is in it."""
    stack.fill()
    tokens = {user: stack.new_token(user, f"{user}-pw") for user in ("alice", "bob", "root")}
    stack.new_token("bob", "bob-pw")  # bob has as many tokens as he may (2)
    alice_vms = stack.checkout_vms("pool1", 2, tokens["alice"]) + stack.checkout_vms("pool2", 1, tokens["alice"])
    returned = alice_vms.pop(0)
    assert stack.delete(f"/api/v3/vm/{returned}", headers={"X-AUTH-TOKEN": tokens["alice"]}).status == 200
    stack.fill()
    alice_vms += stack.checkout_vms("pool1", 1, tokens["alice"])
    stack.fill()
    bob_vm, full_vm = stack.checkout_vms("pool2", 2, tokens["bob"])
    anonymous_vm = stack.checkout("pool3")
    stack.fill()
    reply = stack.post(f"/api/v3/vm/{bob_vm}/snapshot", headers={"X-AUTH-TOKEN": tokens["bob"]})
    assert reply.status == 202, reply.raw
    snapshot = reply.json[bob_vm]["snapshot"]
    for _ in range(10):
        reply = stack.post(f"/api/v3/vm/{full_vm}/snapshot", headers={"X-AUTH-TOKEN": tokens["bob"]})
        assert reply.status == 202, reply.raw
    reply = stack.post("/api/v3/ondemandvm", {"pool3": 1, "request_id": "bobs-request"},
                       headers={"X-AUTH-TOKEN": tokens["bob"]})
    assert reply.status == 201, reply.raw
    reply = stack.post("/api/v3/config/poolsize", {"pool3": 2}, headers={"X-AUTH-TOKEN": tokens["root"]})
    assert reply.status == 201, reply.raw
    return {"tokens": tokens, "alice_vm": alice_vms[0], "bob_vm": bob_vm, "anonymous_vm": anonymous_vm,
            "ready_vm": stack.ready("pool1")[0], "returned_vm": returned, "snapshot": snapshot,
            "bob_request": "bobs-request", "full_vm": full_vm}


# --- the failing requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One failing request: its path's parameters, query, who sends it (a user of ``World.tokens``
    by token, ``basic:<user>:<password>``, ``token:<text>`` or ``none``) and its body (bytes or
    str as sent, anything else as JSON, None for none)."""

    label: str
    params: Mapping[str, str]
    who: str = "none"
    body: Any = None
    query: str = ""
    method: str | None = None
    """Another method than the route's (one its path does not serve)."""


Cases = Callable[[World], list[Case]]
BAD_BODIES: list[tuple[str, Any]] = [
    ("unparsable JSON", b"{"),
    ("a JSON list", []),
    ("a JSON string", "\"pool1\""),
    ("not UTF-8", b'{"pool1": "\xff"}'),
]
NO_TOKEN, BAD_TOKEN, EMPTY_TOKEN = "none", "token:" + "0" * 32, "token:"
REFUSED_LOGIN = "basic:alice:alice"
"""The dummy authentication refuses a password equal to the user name."""


def _vm_routes(w: World) -> dict[str, list[Case]]:
    return {
        "checkout": [
            *[Case(label, {}, "alice", body) for label, body in BAD_BODIES],
            Case("a count that is no number", {}, "bob", {"pool1": "x"}),
            Case("a count of 0", {}, "bob", {"pool1": 0}),
            Case("a negative count", {}, "bob", {"pool1": -1}),
            Case("a count over 100", {}, "bob", {"pool1": 101}),
            Case("a count as a list", {}, "bob", {"pool1": [1]}),
            Case("a bad pool name", {}, "bob", {"pool1\u0000": 1}),
            Case("no pool", {}, "bob", {}),
            Case("an unknown pool beside a known one", {}, "bob", {"pool1": 1, "nosuch": 1}),
            Case("more than the pools hold (all or nothing)", {}, "bob", {"pool1": 1, "pool2": 50}),
            Case("more than the pools hold, no fallback wanted", {}, "bob", {"pool1": 1, "pool2": 50},
                 query="ondemand=false"),
            Case("short, the fallback over the owner's requests", {}, "bob", {"pool1": 1, "pool2": 3},
                 query="ondemand=true"),
            Case("short, the fallback over a request's size", {}, "root", {"pool1": 1, "pool2": 4},
                 query="ondemand=true"),
            Case("short, the fallback without a token", {}, NO_TOKEN, {"pool1": 1, "pool2": 3}, query="ondemand=true"),
            Case("over the owner's quota", {}, "alice", {"pool1": 1}),
            Case("a token that is no token", {}, BAD_TOKEN, {"pool1": 1}),
            Case("an empty token", {}, EMPTY_TOKEN, {"pool1": 1}),
        ],
        "checkout_path": [
            Case("an unknown pool", {"name": "nosuch"}, "bob"),
            Case("an unknown pool beside a known one", {"name": "pool1+nosuch"}, "bob"),
            Case("a bad name", {"name": "+pool1"}, "bob"),
            Case("NUL", {"name": "pool1%00"}, "bob"),
            Case("more than the pools hold (all or nothing)", {"name": "pool1+pool2+pool2+pool2"}, "bob"),
            Case("over 100", {"name": "+".join(["pool1"] * 101)}, "bob"),
            Case("over the owner's quota", {"name": "pool1"}, "alice"),
            Case("a token that is no token", {"name": "pool1"}, BAD_TOKEN),
            Case("a body that is not JSON", {"name": "pool1"}, BAD_TOKEN, b"{"),
        ],
        "describe_vm": [
            Case("an unknown VM", {"name": "nosuch"}),
            Case("a bad hostname", {"name": "no%00such"}),
        ],
        "modify_vm": [
            Case("an unknown VM", {"name": "nosuch"}, "alice", {"lifetime": 4}),
            Case("a ready VM", {"name": w.ready_vm}, "alice", {"tags": {"project": "x"}}),
            Case("a returned VM", {"name": w.returned_vm}, "alice", {"tags": {"project": "x"}}),
            Case("another user's VM", {"name": w.bob_vm}, "alice", {"lifetime": 4}),
            Case("another user's VM, its tags and lifetime", {"name": w.bob_vm}, "alice",
                 {"tags": {"project": "x"}, "lifetime": 4}),
            Case("a lifetime without a token", {"name": w.anonymous_vm}, NO_TOKEN, {"lifetime": 4}),
            Case("a token that is no token", {"name": w.alice_vm}, BAD_TOKEN, {"tags": {"project": "x"}}),
            *[Case(label, {"name": w.alice_vm}, "alice", body) for label, body in BAD_BODIES],
            Case("a lifetime that is no number", {"name": w.alice_vm}, "alice", {"lifetime": "x"}),
            Case("a lifetime over the limit", {"name": w.alice_vm}, "alice", {"lifetime": 99999}),
            Case("tags that are no object", {"name": w.alice_vm}, "alice", {"tags": "x"}),
            Case("an unknown field", {"name": w.alice_vm}, "alice", {"bogus": 1}),
            Case("a disk of 0", {"name": w.alice_vm}, "alice", {"disk": 0}),
            Case("a good lifetime and a bad tag", {"name": w.alice_vm}, "alice",
                 {"lifetime": 4, "tags": {"bad key!": "x"}}),
            Case("a good tag and an unsupported one", {"name": w.alice_vm}, "alice",
                 {"tags": {"project": "x", "unsupported": "y"}}),
            Case("a good tag and a bad lifetime", {"name": w.alice_vm}, "alice",
                 {"tags": {"project": "x"}, "lifetime": -1}),
            Case("a good disk and a bad lifetime", {"name": w.alice_vm}, "alice", {"disk": 8, "lifetime": "x"}),
            Case("a good tag and a bad disk", {"name": w.alice_vm}, "alice", {"tags": {"project": "x"}, "disk": 9999}),
            Case("a disk on a VM whose queue is full", {"name": w.full_vm}, "bob", {"disk": 8}),
            Case("a disk and a tag on a VM whose queue is full", {"name": w.full_vm}, "bob",
                 {"disk": 8, "tags": {"project": "x"}}),
        ],
        "return_vm": [
            Case("an unknown VM", {"name": "nosuch"}, "alice"),
            Case("a ready VM", {"name": w.ready_vm}, "alice"),
            Case("a VM another user returned", {"name": w.returned_vm}, "bob"),
            Case("another user's VM", {"name": w.bob_vm}, "alice"),
            Case("another user's VM without a token", {"name": w.bob_vm}, NO_TOKEN),
            Case("a token that is no token", {"name": w.anonymous_vm}, BAD_TOKEN),
            Case("an empty token", {"name": w.anonymous_vm}, EMPTY_TOKEN),
        ],
    }


def _feed_routes(w: World) -> dict[str, list[Case]]:
    """The reads answer whoever asks (a token sent to them is not read): only their own input fails."""
    return {
        "summary": [
            Case("a day that is no date", {}, query="from=yesterday"),
            Case("the range reversed", {}, query="from=2030-01-02&to=2030-01-01"),
        ],
        "summary_section": [Case("an unknown section", {"section": "nosuch"})],
        "summary_key": [Case("an unknown section", {"section": "nosuch", "key": "x"})],
        "dashboard_history": [Case("hours that are no number", {}, query="hours=x")],
        **{name: [] for name in ("list_pools", "status", "poolstat", "totalrunning", "config", "root", "healthcheck",
                                 "dashboard", "dashboard_pool_stats", "dashboard_running_stats")},
    }


def _token_routes(w: World) -> dict[str, list[Case]]:
    bob_token = w.tokens["bob"]
    return {
        "token_list": [
            Case("no credentials", {}),
            Case("credentials refused", {}, REFUSED_LOGIN),
            Case("credentials that do not decode", {}, "header:Basic %%%"),
            Case("another user's tokens, not an administrator", {}, "basic:alice:alice-pw", query="user=bob"),
            Case("a user name no login has", {}, "basic:root:root-pw", query="user=%00"),
            Case("a user without tokens", {}, "basic:carol:carol-pw"),
        ],
        "token_create": [
            Case("no credentials", {}),
            Case("credentials refused", {}, REFUSED_LOGIN),
            Case("a token instead of credentials", {}, "alice"),
            Case("over the user's tokens", {}, "basic:bob:bob-pw"),
        ],
        "token_describe": [
            Case("an unknown token", {"token": "f" * 32}),
            Case("another user's token", {"token": bob_token}, "basic:alice:alice-pw"),
            Case("credentials refused", {"token": bob_token}, "basic:bob:bob"),
            Case("a token that is no token", {"token": bob_token}, BAD_TOKEN),
        ],
        "token_delete": [
            Case("no credentials", {"token": bob_token}),
            Case("credentials refused", {"token": bob_token}, "basic:bob:bob"),
            Case("another user's token", {"token": bob_token}, "basic:alice:alice-pw"),
            Case("another user's token by its id", {"token": bob_token[:16]}, "basic:alice:alice-pw"),
            Case("another user's, not an administrator", {"token": "f" * 16}, "basic:alice:alice-pw", query="user=bob"),
            Case("an unknown token", {"token": "f" * 32}, "basic:bob:bob-pw"),
            Case("a token instead of credentials", {"token": bob_token}, "bob"),
        ],
    }


def _ondemand_routes(w: World) -> dict[str, list[Case]]:
    return {
        "ondemand_create": [
            Case("no token", {}, NO_TOKEN, {"pool1": 1}),
            Case("a token that is no token", {}, BAD_TOKEN, {"pool1": 1}),
            *[Case(label, {}, "root", body) for label, body in BAD_BODIES],
            Case("no body", {}, "root"),
            Case("a bad request_id", {}, "root", {"pool1": 1, "request_id": "a/b"}),
            Case("a request_id that is no string", {}, "root", {"pool1": 1, "request_id": 7}),
            Case("an unknown pool beside a known one", {}, "root", {"pool1": 1, "nosuch": 1}),
            Case("a count that is no number", {}, "root", {"pool1": "x"}),
            Case("over a request's size", {}, "root", {"pool1": 2, "pool2": 2}),
            Case("over the owner's requests", {}, "bob", {"pool1": 1}),
            Case("over the owner's VMs", {}, "alice", {"pool1": 1}),
            Case("another user's request_id", {}, "root", {"pool1": 1, "request_id": w.bob_request}),
        ],
        "ondemand_create_path": [
            Case("no token", {"name": "pool1"}),
            Case("an unknown pool", {"name": "pool1+nosuch"}, "root"),
            Case("a bad name", {"name": "pool1%00"}, "root"),
            Case("over a request's size", {"name": "pool1+pool1+pool2+pool2"}, "root"),
            Case("over the owner's requests", {"name": "pool1"}, "bob"),
        ],
        "ondemand_show": [
            Case("an unknown request", {"name": "nosuch"}, "alice"),
            Case("another user's request", {"name": w.bob_request}, "alice"),
            Case("a chosen id without a token", {"name": w.bob_request}),
            Case("a token that is no token", {"name": w.bob_request}, BAD_TOKEN),
        ],
        "ondemand_delete": [
            Case("an unknown request", {"name": "nosuch"}, "bob"),
            Case("another user's request", {"name": w.bob_request}, "alice"),
            Case("no token", {"name": w.bob_request}),
            Case("a token that is no token", {"name": w.bob_request}, BAD_TOKEN),
        ],
    }


def _setting_cases(value: Any, bad: Any = None) -> list[Case]:
    """``bad``: a value the setting refuses (None: any value is taken, as by /poolreset)."""
    return [
        Case("no token", {}, NO_TOKEN, {"pool1": value}),
        Case("not an administrator", {}, "alice", {"pool1": value}),
        Case("Basic credentials instead of a token", {}, "basic:root:root-pw", {"pool1": value}),
        *[Case(label, {}, "root", body) for label, body in BAD_BODIES],
        Case("an unknown pool", {}, "root", {"nosuch": value}),
        Case("a good pool beside an unknown one", {}, "root", {"pool1": value, "nosuch": value}),
        *([Case("a good value beside a bad one", {}, "root", {"pool1": value, "pool2": bad})] if bad else []),
    ]


def _clear_cases() -> list[Case]:
    return [
        Case("no token", {"pool": "pool3"}),
        Case("not an administrator", {"pool": "pool3"}, "alice"),
        Case("an unknown pool", {"pool": "nosuch"}, "root"),
        Case("a bad pool name", {"pool": "pool3%00"}, "root"),
    ]


def _admin_routes(w: World) -> dict[str, list[Case]]:
    return {
        "config_poolsize": _setting_cases(3, "x"),
        "config_poolsize_clear": _clear_cases(),
        "config_pooltemplate": _setting_cases("templates/new", {"path": "x"}),
        "config_pooltemplate_clear": _clear_cases(),
        "config_clonetarget": _setting_cases("cluster2", ["x"]),
        "config_clonetarget_clear": _clear_cases(),
        "poolreset": _setting_cases("1"),
    }


def _task_cases(route: str, w: World) -> list[Case]:
    extra = {"vm_disk": {"size": "8"}, "vm_disk_beaker": {"size": "8"}, "vm_snapshot": {},
             "vm_revert": {"snapshot": w.snapshot}}[route]
    cases = [
        Case("no token", {"name": w.bob_vm, **extra}),
        Case("a token that is no token", {"name": w.bob_vm, **extra}, BAD_TOKEN),
        Case("an unknown VM", {"name": "nosuch", **extra}, "bob"),
        Case("a ready VM", {"name": w.ready_vm, **extra}, "alice"),
        Case("a returned VM", {"name": w.returned_vm, **extra}, "alice"),
        Case("another user's VM", {"name": w.bob_vm, **extra}, "alice"),
        Case("a VM whose queue is full", {"name": w.full_vm, **extra}, "bob"),
    ]
    if "size" in extra:
        cases += [Case(f"a disk of {size}", {"name": w.bob_vm, "size": size}, "bob") for size in ("0", "99999", "x")]
    if "snapshot" in extra:
        cases += [Case("an unknown snapshot", {"name": w.bob_vm, "snapshot": "f" * 32}, "bob"),
                  Case("another VM's snapshot", {"name": w.full_vm, "snapshot": w.snapshot}, "bob")]
    return cases


def route_cases(w: World) -> dict[str, list[Case]]:
    """Every route's own failing requests."""
    return {
        **_vm_routes(w), **_feed_routes(w), **_token_routes(w), **_ondemand_routes(w), **_admin_routes(w),
        **{name: _task_cases(name, w) for name in ("vm_disk", "vm_disk_beaker", "vm_snapshot", "vm_revert")},
    }


OVERSIZED = b'{"pool1": "' + b"1" * MAX_BODY_BYTES + b'"}'


def common_cases(route: Route, params: Mapping[str, str]) -> list[Case]:
    """What fails on every route: a body over the limit, and a method its path does not serve."""
    served = {other.method for other in ROUTES if other.path == route.path}
    other = next(method for method in ("PATCH", "PUT", "POST", "DELETE") if method not in served)
    return [Case("a body over the limit", params, "alice", OVERSIZED),
            Case(f"{other}, a method the path does not serve", params, "alice", {"pool1": 1}, method=other)]


def headers_of(w: World, who: str) -> dict[str, str]:
    if who in w.tokens:
        return {"X-AUTH-TOKEN": w.tokens[who]}
    kind, _, rest = who.partition(":")
    if kind == "token":
        return {"X-AUTH-TOKEN": rest}
    if kind == "basic":
        user, _, password = rest.partition(":")
        return basic(user, password)
    if kind == "header":
        return {"Authorization": rest}
    assert who == NO_TOKEN, who
    return {}


def targets(route: Route, params: Mapping[str, str], query: str) -> list[str]:
    """The route's every path (each version, and unversioned where served) with ``params``."""
    return [re.sub(r"\{(\w+)\}", lambda found: params[found.group(1)], path) + (f"?{query}" if query else "")
            for path, _ in versioned_paths(route)]


def send(harness: Harness, method: str, target: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """Status and body of a request through the gateway into the app (the spec's check of each
    answer is tests/api/test_openapi.py's)."""
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else (
        b"" if body is None else json.dumps(body).encode())
    status, _, raw = harness.gateway(method, target, {**harness.headers, **headers}, data, harness.client_ip)
    return status, raw


def test_every_route_has_failing_cases(world: World) -> None:
    assert sorted(route_cases(world)) == sorted(route.name for route in ROUTES)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_a_failed_request_changes_nothing(world: World, route: Route) -> None:
    harness, prefix = world.harness, world.harness.store.keys.prefix
    own = route_cases(world)[route.name]
    first = own[0].params if own else {}
    problems = []
    for case in [*own, *common_cases(route, first)]:
        for target in targets(route, case.params, case.query):
            # Each request a second later: a time it writes (a token's last use) shows as a change.
            harness.clock.advance(1)
            before = digest(world.raw)
            status, raw = send(harness, case.method or route.method, target, case.body, headers_of(world, case.who))
            what = f"{case.method or route.method} {target[:100]} ({case.label}, {case.who[:20]})"
            if status < 400:
                problems.append(f"{what}: {status}, not a failure")
                continue
            after = digest(world.raw)
            changed = changes(before, after, prefix)
            if changed:
                problems.append(f"{what}: {status} {raw[:120]!r} changed {changed}")
            elif case.label in NOT_A_TOKEN_USE and any(before.get(key) != after.get(key) for key in after
                                                       if key.startswith(f"{prefix}token:".encode())):
                problems.append(f"{what}: {status} moved its token's last (nothing it names is there)")
    assert not problems, "\n".join(problems)


NOT_A_TOKEN_USE = frozenset({"an unknown VM", "an unknown request"})
"""Cases whose token, though live, is not used: what the request names is not there, and the
use is recorded only once it is found (docs/auth.md, "Tokens"); ``ALLOWED`` lets a refused
request move ``last`` otherwise (another user's VM, a 403, is a use)."""


def _one_change(make_stack: Callable[[str], Harness], config: str, method: str, target: str, body: Any,
                times: int) -> list[tuple[int, list[str], set[str]]]:
    """``times`` times the request, each with what it changed that ALLOWED does not let it, and
    the families of the keys it changed (the part of the name before its first ``:``)."""
    stack = make_stack(config)
    stack.fill()
    raw = redis.Redis(port=stack.client.connection_pool.connection_kwargs["port"])
    answers = []
    for _ in range(times):
        stack.clock.advance(1)
        before = digest(raw)
        status, _ = send(stack, method, target, body, {})
        after = digest(raw)
        families = {key.decode().removeprefix("vmpool:").split(":")[0] for key in set(before) | set(after)
                    if before.get(key) != after.get(key)}
        answers.append((status, changes(before, after, "vmpool:"), families))
    raw.close()
    return answers


def test_a_checkout_refused_by_the_rate_limit_changes_only_its_counters(make_stack: Callable[[str], Harness]) -> None:
    config = CONFIG.replace("vm_creation: {limit: 100000", "vm_creation: {limit: 1", 1)
    first, *refused = _one_change(make_stack, config, "POST", "/api/v3/vm", {"pool1": 1}, 3)
    assert first[0] == 200
    assert refused == [(429, [], {"ratelimit"})] * 2


def test_a_checkout_a_demand_sized_pool_cannot_serve_changes_only_its_demand(
        make_stack: Callable[[str], Harness]) -> None:
    config = CONFIG.replace("  - name: pool3\n", "  - name: pool3\n    sizing: {demand: {min: 1, max: 2}}\n", 1)
    # 3: more than the pool's 2, as many as a caller may hold (more never fits: a 403 that asks for nothing).
    answers = _one_change(make_stack, config, "POST", "/api/v3/vm", {"pool3": 3}, 2)
    assert answers == [(503, [], {"ratelimit", "demand"})] * 2
