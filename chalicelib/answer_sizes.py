"""The largest answer each pool-sized route can give with a config, as Lambda sends it.

API Gateway takes the API function's answer as one synchronous Lambda response of at most 6 MB
(LAMBDA_RESPONSE_BYTES), a JSON document holding the body as an escaped string: past it Lambda
fails the invocation and API Gateway answers 502 to every caller, for as long as the config is
deployed. The answers below grow with the pools (their names, aliases, keys as written); each is
built here with every count, size and time at its widest and measured as Lambda sends it, and a
config whose answer would pass ANSWER_LIMIT_BYTES is refused wherever it is built (``make
package``, ``make config-push``, ``make run``, and a canonical object a function reads from the
bucket: the last good config stays), not met as a 502 in production.

What grows at runtime is bounded elsewhere and counted here at its bound: a pool's VM counts
(COUNT_DIGITS), sizes (sizing.settings.MAX_SIZE), the size reason (the longest of the pool's
schedule labels), a day's tag counts (config.MAX_TAG_COUNTS_PER_DAY and the configured limits).
The history feed chooses its points from the pools (dashboard.most_points); its fixed part, one
point per series, is counted here.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Protocol, Sequence

from chalicelib.auth.base import MAX_USERNAME_LENGTH
from chalicelib.sizing.settings import MAX_SIZE


class ShownPool(Protocol):
    """What the answers show of a pool (a config.PoolConfig; this module sits below the config,
    which checks itself with it, and below the API, which shapes its answers with it)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def template(self) -> str: ...
    @property
    def alias(self) -> tuple[str, ...]: ...
    @property
    def settings(self) -> Mapping[str, Any]: ...


class ShownConfig(Protocol):
    """A config.Config, as far as its answers' sizes go."""

    @property
    def pools(self) -> Sequence[ShownPool]: ...
    @property
    def service(self) -> Any: ...
    @property
    def auth(self) -> Any: ...


FEED_MINUTES = 60
"""vmpooler's feeds (/dashboard/stats/vmpooler/...) show the last hour."""
MAX_POINTS = 360
"""Points per series in /dashboard/stats/history: enough for a graph, small for the wire."""
HISTORY_FIELDS = ("ready", "running", "pending", "size")
UNWRITTEN_WHEN_EMPTY = ("template", "folder", "alias")
"""Pool keys the config reader always fills (``""``, ``()``) even when the config does not give them."""


def alias_as_written(pool: ShownPool) -> str | list[str]:
    """The pool's aliases as the config wrote them: a string stays a string, as in vmpooler."""
    written = pool.settings.get("alias")
    return written if isinstance(written, str) else list(pool.alias)


def configuration_entry(pool: ShownPool, size: int | None = None, template_ready: bool = True) -> dict[str, Any]:
    """A pool as /config shows it (``pool`` with its runtime overrides applied; ``size`` instead of
    its own; ``template_ready``: false while its clones wait for its template's preparation)."""
    settings = {key: value for key, value in pool.settings.items() if key not in UNWRITTEN_WHEN_EMPTY or value}
    settings.update(name=pool.name, size=pool.size if size is None else size, template_ready=template_ready)
    if pool.template:
        settings["template"] = pool.template
    if pool.alias:
        settings["alias"] = alias_as_written(pool)
    if "sizing" in settings:
        settings["sizing"] = settings["sizing"].source  # as written in the config
    return settings


def major(pool_name: str) -> str:
    """vmpooler groups running counts by the pool name's first word (``debian`` of
    ``debian-12-x86_64``)."""
    found = re.match(r"^(\w+)-", pool_name)
    return found.group(1) if found else pool_name


LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024
"""Lambda's limit on a synchronous response (6,291,456 bytes): the body escaped, headers and all."""
ANSWER_LIMIT_BYTES = LAMBDA_RESPONSE_BYTES - 256 * 1024
"""What the body may take as Lambda sends it: the rest is the margin for the status, the headers
(a rate limit's, CORS) and the measures below being estimates of numbers we do not control."""
COUNT_DIGITS = 6
"""Digits of a pool's VM count at its widest: a pool clones up to its size (at most 10,000, runtime
overrides included) and its running VMs are checkouts of those (or on-demand requests of at most
``max_ondemand_instances_per_request``) until they expire: well under a million."""
WIDEST_COUNT = 10**COUNT_DIGITS - 1
STATUS_REASON_CHARACTERS = 120
"""The most of a reason GET /status gives in a pool's entry (``dns_waiting_reason``), each a
printable ASCII character JSON sends as it is: a byte each, at every pool of a 10,000-pool config."""
WIDEST_SIZE = MAX_SIZE
"""A pool's size, runtime overrides included; its ready and pending VMs are clones made up to it."""
WIDEST_TIME = "2026-12-05 04:40:59 +0000"
"""lastBoot as vmpooler writes it (timestamps.ruby_time): always this long."""
WIDEST_CLONE_FAILURE = "connection"
"""A pool's ``clone_failure`` in /status at its widest: the longest failure kind (failures.FailureKind),
kept at CLONE_FAILURE_CHARS by the store whatever a provider names."""
CLONE_FAILURE_CHARS = len(WIDEST_CLONE_FAILURE)
TAG_COUNT_BYTES = 650
"""A day's tag count in /summary at its longest (config.MAX_TAG_COUNTS_PER_DAY)."""


def lambda_bytes(body: Any) -> int:
    """What ``body`` takes in Lambda's response: its JSON as the API writes it (routes.render),
    escaped once more as a string. That JSON is printable ASCII (json.dumps escapes the rest), of
    which the string escapes only ``"`` and ``\\``: counted, not written out."""
    written = json.dumps(body, separators=(",", ":"))
    return len(written) + written.count('"') + written.count("\\") + 2


def widest_reason(pool: ShownPool) -> str:
    """The longest size reason /status may show for the pool (sizing.controller)."""
    sizing = pool.settings.get("sizing")
    if not sizing or not sizing.windows:
        return "override"  # the longest of the reasons every pool may show
    labels = [f"schedule {window.label}" for window in sizing.windows]
    return max(["override", "config", "demand", *labels], key=lambda reason: len(json.dumps(reason)))


def config_answer(config: ShownConfig) -> Any:
    """GET /config at its widest, runtime templates and clone targets aside (``override_room``)."""
    # template_ready false: a byte longer than true.
    return {"pool_configuration": [configuration_entry(pool, WIDEST_SIZE, template_ready=False)
                                   for pool in config.pools],
            "status": {"ok": True}}


MAX_OVERRIDE_GROWTH = 16 * 1024
"""More than any runtime template or clone target can add (pool_overrides.MAX_TEMPLATE characters
of 14 bytes each as Lambda sends them, a character outside the BMP being ``\\ud83d\\ude00``)."""
OVERRIDE_KEY_BYTES = len(json.dumps('"clone_target":,'))
_ROOM: dict[int, tuple[ShownConfig, int]] = {}


def override_room(config: ShownConfig) -> int:
    """How many bytes, as Lambda sends them, a pool's runtime template or clone target may take
    beyond its configured one (POST /config/pooltemplate, /config/clonetarget): /config's room
    left at its widest, shared by every pool's two values. Worked out once per config."""
    cached = _ROOM.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    spare = ANSWER_LIMIT_BYTES - lambda_bytes(config_answer(config))
    # Less the key itself, which a pool that does not write the value gets with it.
    room = min(MAX_OVERRIDE_GROWTH, max(spare // max(2 * len(config.pools), 1) - OVERRIDE_KEY_BYTES, 0))
    _ROOM.clear()
    _ROOM[id(config)] = (config, room)
    return room


def override_fits(config: ShownConfig, configured: str | None, value: str) -> bool:
    """Whether ``value`` may replace a pool's ``configured`` template or clone target without
    /config ever passing one answer (``override_room``)."""
    return fits_room(override_room(config), configured, value)


def fits_room(room: int, configured: str | None, value: str) -> bool:
    """Whether ``value`` takes at most ``room`` bytes more than ``configured`` as Lambda sends them."""
    return string_bytes(value) <= string_bytes(configured or "") + room


def string_bytes(value: str) -> int:
    """What a string takes in an answer as Lambda sends it."""
    return len(json.dumps(json.dumps(value)))


def status_answer(config: ShownConfig) -> Any:
    """GET /status at its widest: every pool empty (listed twice), every count at its widest."""
    pools = {pool.name: _status_entry(pool) for pool in config.pools}
    return _status_around(pools, list(pools))


def _status_entry(pool: ShownPool | None, reason: str = "") -> dict[str, Any]:
    """A pool's entry in GET /status at its widest, its alias aside when ``pool`` is None."""
    entry: dict[str, Any] = {"ready": WIDEST_SIZE, "running": WIDEST_COUNT, "pending": WIDEST_SIZE,
                             "max": WIDEST_SIZE, "lastBoot": WIDEST_TIME,
                             "size_reason": widest_reason(pool) if pool is not None else reason,
                             "clone_failures": WIDEST_COUNT, "clone_failure": WIDEST_CLONE_FAILURE,
                             "dns_waiting": WIDEST_COUNT, "dns_waiting_reason": "x" * STATUS_REASON_CHARACTERS}
    if pool is not None and pool.alias:
        entry["alias"] = alias_as_written(pool)
    return entry


def _status_around(pools: dict[str, Any], empty: list[str], count: int | None = None) -> Any:
    """GET /status around its pools' entries (``count``: the pools its message counts)."""
    figures = {"duration": {"average": 1e9, "min": 1e9, "max": 1e9}, "count": {"total": WIDEST_COUNT * 1000}}
    count = len(pools) if count is None else count
    return {"boot": figures, "clone": figures,
            "capacity": {"current": WIDEST_COUNT * 10**5, "total": WIDEST_COUNT * 10**5, "percent": 100.0},
            "pools": pools, "queue": {key: WIDEST_COUNT * 10**5 for key in ("requested", "pending", "cloning",
                                      "booting", "ready", "running", "completed", "total")},
            "status": {"ok": False, "message": f"Found {count} empty pools.", "empty": empty,
                       "uptime": 1e9}}


# Measured without building the answers: their JSON is ASCII (json.dumps escapes the rest) and
# Lambda escapes it once more character by character, so an answer's bytes are the sum of its
# parts' (a pool name needs no escape: config.POOL_NAME_PATTERN). Building GET /status, the pool
# feed and the history of 10,000 pools took 0.4 s of CPU a config build; every format's build
# checks them (a pushed canonical object too), and the history feed measured itself at each request.
EMPTY_OBJECT_BYTES = lambda_bytes({})


def _keyed_bytes(names: Sequence[str], entry_bytes: Callable[[int], int]) -> int:
    """An object's members, ``"<name>":<entry>`` each, as Lambda sends them inside their object's
    braces (``entry_bytes(i)``: the i-th entry's, the same measure), with their commas."""
    return sum(len(name) for name in names) + sum(entry_bytes(index) for index in range(len(names))) \
        + max(len(names) - 1, 0)


def _member_bytes(entry: Any) -> int:
    """``"":<entry>`` as Lambda sends it (a member of an object, its name aside)."""
    return lambda_bytes({"": entry}) - EMPTY_OBJECT_BYTES


def status_bytes(config: ShownConfig) -> int:
    """``lambda_bytes(status_answer(config))``, without building the answer."""
    pools = config.pools
    names = [pool.name for pool in pools]
    plain = _member_bytes(_status_entry(None))
    alias_key = _member_bytes({"": 0, "alias": 0}) - _member_bytes({"": 0}) - 1  # ,"alias": escaped
    reasons: dict[str, int] = {}

    def entry(index: int) -> int:
        pool = pools[index]
        reason = widest_reason(pool)
        extra = reasons.get(reason)
        if extra is None:
            extra = reasons[reason] = string_bytes(reason) - string_bytes("")
        if pool.alias:
            extra += alias_key + lambda_bytes(alias_as_written(pool)) - 2
        return plain + extra

    around = lambda_bytes(_status_around({}, [], len(pools)))
    if not pools:
        return around
    listed = sum(string_bytes(name) - 2 for name in names) + len(names) - 1  # "empty": ["<name>",...]
    return around + _keyed_bytes(names, entry) + listed


def pool_feed_answer(config: ShownConfig) -> Any:
    """GET /dashboard/stats/vmpooler/pool?history=true at its widest."""
    return {pool.name: {"size": WIDEST_SIZE, "ready": WIDEST_SIZE, "history": [WIDEST_SIZE] * FEED_MINUTES}
            for pool in config.pools}


def pool_feed_bytes(config: ShownConfig) -> int:
    """``lambda_bytes(pool_feed_answer(config))``, without building the answer."""
    entry = _member_bytes({"size": WIDEST_SIZE, "ready": WIDEST_SIZE, "history": [WIDEST_SIZE] * FEED_MINUTES})
    return EMPTY_OBJECT_BYTES + _keyed_bytes([pool.name for pool in config.pools], lambda index: entry)


def running_feed_answer(config: ShownConfig) -> Any:
    """GET /dashboard/stats/vmpooler/running?history=true at its widest (a group's running count is
    the sum of its pools')."""
    groups: dict[str, int] = {}
    for pool in config.pools:
        groups[major(pool.name)] = groups.get(major(pool.name), 0) + WIDEST_COUNT
    return {group: {"running": total, "history": [total] * FEED_MINUTES} for group, total in groups.items()}


def history_bytes(pools: Sequence[ShownPool], points: int) -> int:
    """GET /dashboard/stats/history with ``points`` points per series at their widest, as Lambda
    sends it (it takes fewer points, never none, as the pools grow: dashboard.most_points)."""
    widest = {"ready": WIDEST_SIZE, "running": WIDEST_COUNT, "pending": WIDEST_SIZE, "size": WIDEST_SIZE}
    around = lambda_bytes({"ok": True, "start": 10**10, "step": 10**6, "points": MAX_POINTS, "pools": {}})
    if not pools:
        return around
    entry = _member_bytes({field: [widest[field]] * points for field in HISTORY_FIELDS})
    return around + _keyed_bytes([pool.name for pool in pools], lambda index: entry)


WIDEST_SECONDS = 99_999.99
"""A clone's or boot's duration at its widest (seconds, hundredths: summary._stats): over a day."""
WIDEST_TOTAL_SECONDS = 9_999_999.99
"""A pool's durations of a range added up, at their widest."""


def _pool_day_bytes() -> int:
    """A pool's boot and clone figures of one day in /summary, its name aside, as Lambda sends
    them (``"<name>":{...}`` under ``duration.pool`` and ``count.pool`` of each, with a comma)."""
    duration = {"": {"total": WIDEST_TOTAL_SECONDS, **dict.fromkeys(("average", "min", "max"), WIDEST_SECONDS)}}
    count = {"": {"total": WIDEST_COUNT}}
    return 2 * sum(lambda_bytes(entry) - lambda_bytes({}) + 1 for entry in (duration, count))


POOL_DAY_BYTES = _pool_day_bytes()


def summary_day_bytes(pools: Sequence[ShownPool]) -> int:
    """The pools' boot and clone figures of one day in /summary as Lambda sends them (a pool name
    needs no escape: config.POOL_NAME_PATTERN); a range shows them once per day and once more for
    the whole range."""
    return sum(POOL_DAY_BYTES + 4 * len(pool.name) for pool in pools)


def summary_answer_bytes(config: ShownConfig) -> int:
    """GET /summary of one day (the shortest range it answers) at its widest: every pool's boot and
    clone figures, and the most tag counts the day may keep, each at its longest."""
    service = config.service
    tags = (service.max_tag_names_per_day + 1) * (service.max_tag_values_per_day + 1)
    return 2 * summary_day_bytes(config.pools) + tags * TAG_COUNT_BYTES


HOSTNAME_BYTES = len(json.dumps(json.dumps("x" * 253))) + 1
"""A VM's name with its domain at its longest (a DNS name), as Lambda sends it, with a comma."""
REQUEST_NAME_BYTES = lambda_bytes({"x" * 100: {"hostname": []}}) - lambda_bytes({}) + 1
"""A pool or alias asked for in an on-demand request, at its longest, as its status shows it."""


def ondemand_answer_bytes(config: ShownConfig) -> int:
    """GET /ondemandvm/<id> of a ready request at its widest: as many VMs as one request may ask
    for (``max_ondemand_instances_per_request``, which the config reader bounds only from below),
    each of another pool, each name at its longest."""
    return 200 + config.service.max_ondemand_instances_per_request * (HOSTNAME_BYTES + REQUEST_NAME_BYTES)


WIDEST_TOKEN_TIME = "2026-12-05 04:40:59 +0000"
"""A token's ``created``, ``last`` or ``expires`` as GET /token shows it (vmpooler's format,
timestamps.ruby_time, years below 10,000: config.MAX_HOURS): always this long."""
TOKEN_BYTES = lambda_bytes({"0" * 16: dict.fromkeys(("created", "last", "expires"), WIDEST_TOKEN_TIME)}) \
    - lambda_bytes({}) + 1
"""One token in GET /token as Lambda sends it, under its 16-character id, with a comma."""


def tokens_answer_bytes(config: ShownConfig) -> int:
    """GET /token at its widest, a user's own list or the one an administrator asks for with
    ``?user=``: ``max_tokens_per_user`` tokens (the most a user may hold; the config reader bounds
    it only from below), each with an expiry."""
    return lambda_bytes({"ok": True}) + config.service.max_tokens_per_user * TOKEN_BYTES


WIDEST_USER_BYTES = len(json.dumps(json.dumps("\u00e9" * MAX_USERNAME_LENGTH * 2 * 18)))
"""A token's user as GET /token/<t> shows it, at its widest: a login name of at most
MAX_USERNAME_LENGTH characters, each lower-cased to at most 2 and NFKC-normalised to at most 18
(auth.base.canonical_user), each escaped as ``\\u00e9``."""
TOKEN_STATUS_BYTES = lambda_bytes({"ok": True, "0" * 32: {
    "user": "", **dict.fromkeys(("created", "last", "expires"), WIDEST_TOKEN_TIME), "vms": {"running": []}}}) \
    + WIDEST_USER_BYTES
"""GET /token/<t> as Lambda sends it, its running VMs aside."""


def token_status_answer_bytes(config: ShownConfig) -> int:
    """GET /token/<t> (vmfloaty's ``token status``, ``list --active``) at its widest: the token's
    running VMs, at most ``max_running_vms_per_user`` (what its user may hold, every token of the
    user together; the config reader bounds it only from below), each name at its longest.
    Nothing without ``:auth:``: no tokens, the route answers 404 (and a service without logins,
    a load test's, may lift the per-address quota as high as it likes)."""
    if config.auth is None:
        return 0
    return TOKEN_STATUS_BYTES + config.service.max_running_vms_per_user * HOSTNAME_BYTES


ANSWERS: tuple[tuple[str, Callable[[ShownConfig], int]], ...] = (
    ("GET /api/v3/config", lambda config: lambda_bytes(config_answer(config))),
    ("GET /api/v3/status", status_bytes),
    ("GET /api/v3/vm", lambda config: lambda_bytes([pool.name for pool in config.pools])),
    ("GET /dashboard/stats/vmpooler/pool?history=true", pool_feed_bytes),
    ("GET /dashboard/stats/vmpooler/running?history=true", lambda config: lambda_bytes(running_feed_answer(config))),
    ("GET /dashboard/stats/history", lambda config: history_bytes(config.pools, 1)),
    ("GET /api/v3/summary (one day)", summary_answer_bytes),
    ("GET /api/v3/ondemandvm/<id>", ondemand_answer_bytes),
    ("GET /token", tokens_answer_bytes),
    ("GET /token/<t>", token_status_answer_bytes),
)
"""Every answer that grows with the config, and its size at the widest. /poolstat is a part of
/status; /totalrunning and /vm/<host> do not grow with it."""


def widest_answers(config: ShownConfig) -> dict[str, int]:
    """Each pool-sized answer's bytes at its widest, as Lambda sends it."""
    return {route: measure(config) for route, measure in ANSWERS}


def answer_size_problems(config: ShownConfig) -> list[str]:
    """Why ``config`` could make an answer too large for Lambda (empty when none could)."""
    problems = []
    for route, size in widest_answers(config).items():
        if size <= ANSWER_LIMIT_BYTES:
            continue
        where, remedy = "pools", "fewer pools, shorter names, aliases or keys"
        if "ondemand" in route:
            remedy += ", or fewer VMs a request (config.max_ondemand_instances_per_request)"
        elif "summary" in route:
            remedy += ", or fewer tag names and values a day (config.max_tag_names_per_day, max_tag_values_per_day)"
        elif route == "GET /token":  # the pools have no part in it
            where, remedy = "config.max_tokens_per_user", "fewer tokens a user"
        elif route == "GET /token/<t>":  # nor in this one
            where, remedy = "config.max_running_vms_per_user", "fewer VMs a user"
        problems.append(f"{where}: {route} could answer {size:,} bytes as Lambda sends it, more than the "
                        f"{ANSWER_LIMIT_BYTES:,} one answer may take (Lambda's limit is {LAMBDA_RESPONSE_BYTES:,}, "
                        f"past it API Gateway answers 502 to everyone): {remedy}")
    return problems
