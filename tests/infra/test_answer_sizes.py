"""The API's largest answers at the config's most pools still fit one Lambda response.

API Gateway hands the API function's answer over as one synchronous Lambda response, at most 6 MB
(6,291,456 bytes) of JSON holding the body as an escaped string: past it Lambda fails the
invocation and API Gateway answers 502 with no JSON, in AWS only (the local front has no such
limit). The answers that grow with the pools are built here in process, from a vmpooler.yaml-style
config of 10,000 pools (tests/infra/packaged.py ``pools_config``), and measured as Lambda would
send them. Measured on 2026-12-05 (docs/deploy.md), as Lambda sends them: ``/config`` 2.8 MB,
``/status`` 1.5 MB, ``/dashboard/stats/history?hours=168`` 4.1 MB.

A config whose answers could pass the limit is refused where it is validated (chalicelib/answer_sizes.py),
and the runtime templates and clone targets /config shows may not take it past either."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any, Iterator

import pytest
import redis
from packaged import pools_config
from packaged_functions import Context, api_event

import app as app_module
from chalicelib.answer_sizes import (
    ANSWER_LIMIT_BYTES,
    HOSTNAME_BYTES,
    LAMBDA_RESPONSE_BYTES,
    TOKEN_BYTES,
    TOKEN_STATUS_BYTES,
    fits_room,
    lambda_bytes,
    override_room,
)
from chalicelib.auth.tokens import iso
from chalicelib.clock import FakeClock
from chalicelib.config import MAX_HOURS, MAX_POOLS, ConfigError, parse
from chalicelib.manager.dispatch import report_ignored_overrides
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from chalicelib.store import DurationSample
from chalicelib.store.pool_overrides import MAX_CLONE_TARGET, MAX_TEMPLATE, PoolOverrides
from chalicelib.timestamps import day_of
from local.redis_server import RedisServer

MOST_POOLS = pools_config(MAX_POOLS)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Services]:
    yield from _fleet()


def _fleet(config_text: str | None = None) -> Iterator[Services]:
    """The pools (10,000 by default) of one ready VM each, in a Redis of their own, served by the
    app's API function."""
    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        services = Services(parse(config_text or MOST_POOLS), client, clock=FakeClock())
        keys = services.store.keys
        pipe = client.pipeline(transaction=False)
        for n, pool in enumerate(services.config.pool_names):
            host = f"vm{n:06d}"
            pipe.hset(keys.vm(host), mapping={"pool": pool, "state": "ready"})
            pipe.zadd(keys.pool_state(pool, "ready"), {host: 1})
        pipe.execute()
        with _serving(services):
            yield services


@pytest.mark.parametrize("path, query", [
    ("/api/v3/config", None), ("/api/v3/status", None), ("/api/v1/status", None), ("/api/v3/vm", None),
    ("/dashboard/stats/vmpooler/pool", {"history": "true"}), ("/dashboard/stats/history", {"hours": "168"}),
])
def test_answers_at_the_most_pools_fit_one_lambda_response(fleet: Services, path: str,
                                                           query: dict[str, str] | None) -> None:
    response = app_module.app(api_event("GET", path, path, query=query), Context())
    assert response["statusCode"] == 200, response["body"][:200]
    assert len(json.dumps(response)) < LAMBDA_RESPONSE_BYTES


def _lambda_bytes(path: str, query: dict[str, str] | None = None) -> int:
    response = app_module.app(api_event("GET", path, path, query=query), Context())
    assert response["statusCode"] == 200, response["body"][:200]
    return len(json.dumps(response))


def test_a_config_whose_answer_could_pass_lambdas_limit_is_refused_naming_the_answer_and_bytes() -> None:
    # 10,000 pools of ~670 bytes each as Lambda sends them (a deep folder): /config of 6.7 MB.
    deep = "/".join(["f" * 78] * 5)
    text = pools_config(MAX_POOLS).replace("    folder: 'vmpooler/", f"    folder: '{deep}/")
    with pytest.raises(ConfigError) as refused:
        parse(text)
    problem = next(line for line in str(refused.value).splitlines() if "GET /api/v3/config" in line)
    shown = int(problem.split(" could answer ")[1].split(" bytes")[0].replace(",", ""))
    assert LAMBDA_RESPONSE_BYTES < shown < 7_000_000, problem
    assert f"{ANSWER_LIMIT_BYTES:,}" in problem


ALIAS = "a" * 60
EXPERIMENTAL = ":config:\n  experimental_features: true\n"


def _aliased(pools: int, aliases: int) -> str:
    """``pools`` pools, each with ``aliases`` aliases of 60 characters more than usual."""
    more = "".join(f", '{ALIAS}{n}'" for n in range(aliases))
    return (pools_config(pools).replace(":config:\n", EXPERIMENTAL)
            .replace("']\n    template", f"'{more}]\n    template"))


def _largest_accepted(pools: int) -> str:
    """The config of ``pools`` pools with the most aliases that is still accepted."""
    low, high = 0, 200
    while high - low > 1:
        middle = (low + high) // 2
        try:
            parse(_aliased(pools, middle))
            low = middle
        except ConfigError as error:
            assert "could answer" in str(error)
            high = middle
    assert high < 200, "a config of 1,000 pools of 200 aliases of 60 characters was accepted"
    return _aliased(pools, low)


@pytest.fixture(scope="module")
def largest_fleet() -> Iterator[Services]:
    yield from _fleet(_largest_accepted(1000))


def _post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(body, ensure_ascii=False)  # as a client writes it: 4 bytes a character outside the BMP
    answer: dict[str, Any] = app_module.app(api_event("POST", path, path, body=text), Context())
    return answer


def test_the_largest_accepted_config_answers_within_lambdas_limit_with_every_runtime_template_at_its_longest(
        largest_fleet: Services) -> None:
    pools = largest_fleet.config.pool_names
    # Every template a dozen names of 80 characters outside the BMP (14 bytes each as Lambda sends
    # them): 13 KB a pool, which took /config of 1,000 pools to 19 MB.
    longest = "/".join(["\U0001F600" * 80] * 12)
    for start in range(0, len(pools), 12):
        answer = _post("/api/v3/config/pooltemplate", {pool: longest for pool in pools[start:start + 12]})
        assert answer["statusCode"] == 400, answer["body"][:200]
        assert json.loads(answer["body"])["bad_templates"] == list(pools[start:start + 12])
    # A template as long as the configured one still goes through.
    same_length = {pool: f"templates/os-{n % 8}-x86_6X" for n, pool in enumerate(pools[:500])}
    answer = _post("/api/v3/config/pooltemplate", same_length)
    assert answer["statusCode"] == 201, answer["body"][:200]
    PoolOverrides(largest_fleet.store).set_many("size", {pool: 10_000 for pool in pools})
    assert _lambda_bytes("/api/v3/config") < LAMBDA_RESPONSE_BYTES
    assert _lambda_bytes("/api/v3/status") < LAMBDA_RESPONSE_BYTES



@pytest.fixture(scope="module")
def fleet_3000() -> Iterator[Services]:
    yield from _fleet(pools_config(3000))


def test_a_summary_of_the_most_days_with_one_day_full_of_tags_is_refused_rather_than_passing_lambdas_limit(
        fleet_3000: Services) -> None:
    """/summary answered as many days as the pools' figures fit in 4 MiB (6 at 3,000 pools),
    whatever the tags beside them and without the range's own copy of every pool's figures: with
    one day full of tags (anyone may tag a VM), 6 days were a 9 MB answer, API Gateway's 502 for
    every caller."""
    fleet = fleet_3000
    today = date.fromisoformat(day_of(fleet.clock.now()))
    days = [(today - timedelta(days=back)).isoformat() for back in range(5, -1, -1)]
    for day in days:
        fleet.store.record_durations(day, [DurationSample(kind, pool, 12.34) for pool in fleet.config.pool_names
                                           for kind in ("clone", "boot")])
    service = fleet.config.service
    for value in range(service.max_tag_values_per_day):
        tags = {f"n{name:02d}" + "x" * 47: f"{value:03d}" + "v" * 252 for name in range(service.max_tag_names_per_day)}
        fleet.store.record_tags(days[-1], tags, service.max_tag_names_per_day, service.max_tag_values_per_day)

    for first in days:
        query = {"from": first, "to": days[-1]}
        answer = app_module.app(api_event("GET", "/api/v3/summary", "/api/v3/summary", query=query), Context())
        if answer["statusCode"] == 200:
            assert len(json.dumps(answer)) < LAMBDA_RESPONSE_BYTES, query
        else:
            assert answer["statusCode"] == 400, answer["body"][:200]
    assert _lambda_bytes("/api/v3/summary", {"from": days[-1], "to": days[-1]}) < LAMBDA_RESPONSE_BYTES


def test_a_config_letting_one_on_demand_request_hold_more_vms_than_its_status_can_show_is_refused() -> None:
    """``max_ondemand_instances_per_request`` had no upper bound: at 100,000 a ready request's
    status lists 100,000 host names, up to 38 MB as Lambda sends them."""
    text = pools_config(3).replace(":config:\n", ":config:\n  max_ondemand_instances_per_request: 100000\n")
    with pytest.raises(ConfigError) as refused:
        parse(text)
    assert "GET /api/v3/ondemandvm/<id> could answer" in str(refused.value)
    assert "max_ondemand_instances_per_request" in str(refused.value)
    parse(pools_config(3).replace(":config:\n", ":config:\n  max_ondemand_instances_per_request: 10000\n"))


@contextmanager
def _serving(services: Services) -> Iterator[Services]:
    """The app's API function serving ``services`` (its config and Redis)."""
    saved = app_module._services, app_module._config
    app_module._services, app_module._config = services, None
    try:
        yield services
    finally:
        app_module._services, app_module._config = saved


def _tokens_config(most: int) -> str:
    """Three pools, dummy auth with an administrator, tokens that expire (so listed with
    ``expires``, their widest) and ``most`` tokens a user."""
    config = f":config:\n  max_tokens_per_user: {most}\n  token_ttl: {MAX_HOURS}\n"
    return pools_config(3).replace(":config:\n", config) + ":auth:\n  provider: dummy\n  admins: ['root']\n"


def _fill_tokens(services: Services, user: str, count: int) -> None:
    """``count`` live tokens of ``user`` in Redis, as GET /token lists them (made here in one
    pipeline: 46,000 POST /token one by one take minutes)."""
    keys, now = services.store.keys, iso(services.clock.now())
    pipe = services.client.pipeline(transaction=False)
    for n in range(count):
        token_hash = hashlib.sha256(f"token-{n}".encode()).hexdigest()
        pipe.hset(keys.token(token_hash), mapping={"user": user, "created": now, "last": now})
        pipe.sadd(keys.user_tokens(user), token_hash)
    pipe.execute()


def test_a_config_letting_a_user_hold_more_tokens_than_get_token_can_list_is_refused() -> None:
    """``max_tokens_per_user`` had no upper bound: at 60,000 a user at the limit listing their
    tokens (or an administrator listing them with ``?user=``) got 7.9 MB as Lambda sends it,
    API Gateway's 502, whatever anyone tried."""
    most = (ANSWER_LIMIT_BYTES - lambda_bytes({"ok": True})) // TOKEN_BYTES
    with pytest.raises(ConfigError) as refused:
        parse(_tokens_config(60_000))
    assert "config.max_tokens_per_user: GET /token could answer" in str(refused.value)
    with pytest.raises(ConfigError):
        parse(_tokens_config(most + 1))

    with RedisServer() as server:
        services = Services(parse(_tokens_config(most)), redis.Redis(port=server.port, decode_responses=True),
                            clock=FakeClock())
        _fill_tokens(services, "alice", most)
        with _serving(services):
            for user, query in (("alice", None), ("root", {"user": "alice"})):
                credentials = base64.b64encode(f"{user}:secret".encode()).decode()
                answer = app_module.app(api_event("GET", "/token", "/token", query=query,
                                                  headers={"Authorization": f"Basic {credentials}"}), Context())
                assert answer["statusCode"] == 200, answer["body"][:200]
                assert len(json.loads(answer["body"])) == most + 1  # every token, and "ok"
                assert len(json.dumps(answer)) < LAMBDA_RESPONSE_BYTES


def _running_config(most: int) -> str:
    """Three pools, dummy auth, and ``most`` VMs a user may hold."""
    config = f":config:\n  max_running_vms_per_user: {most}\n  token_ttl: {MAX_HOURS}\n"
    return pools_config(3).replace(":config:\n", config) + ":auth:\n  provider: dummy\n"


def test_a_config_letting_a_user_hold_more_vms_than_a_tokens_status_can_list_is_refused() -> None:
    """``max_running_vms_per_user`` had no upper bound, and GET /token/<t> (vmfloaty's ``token
    status``, read by ``list --active`` and ``delete --all``) lists every running VM of the token:
    at 30,000 VMs with long names it answered more than Lambda's 6 MB, API Gateway's 502."""
    most = (ANSWER_LIMIT_BYTES - TOKEN_STATUS_BYTES) // HOSTNAME_BYTES
    with pytest.raises(ConfigError) as refused:
        parse(_running_config(30_000))
    assert "config.max_running_vms_per_user: GET /token/<t> could answer" in str(refused.value)
    with pytest.raises(ConfigError):
        parse(_running_config(most + 1))
    # Without :auth: there is no token to ask about: a load test's config lifts the quota at will.
    parse(pools_config(3).replace(":config:\n", ":config:\n  max_running_vms_per_user: 1000000\n"))

    with RedisServer() as server:
        services = Services(parse(_running_config(most)), redis.Redis(port=server.port, decode_responses=True),
                            clock=FakeClock())
        token = services.tokens.create("alice")
        token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
        keys, pools = services.store.keys, services.config.pool_names
        pipe = services.client.pipeline(transaction=False)
        for n in range(most):  # each name at its longest, as running VMs checked out with the token
            host = f"{n:06d}" + "x" * 247
            pipe.hset(keys.vm(host), mapping={"pool": pools[n % 3], "state": "running", "token_id": token_id})
            pipe.zadd(keys.pool_state(pools[n % 3], "running"), {host: n})
        pipe.execute()
        with _serving(services):
            answer = app_module.app(api_event("GET", "/token/{token}", f"/token/{token}",
                                              params={"token": token}), Context())
        assert answer["statusCode"] == 200, answer["body"][:200]
        assert len(json.loads(answer["body"])[token]["vms"]["running"]) == most
        assert len(json.dumps(answer)) < LAMBDA_RESPONSE_BYTES


def _longest(configured: str, room: int, most_characters: int) -> str:
    """The longest inventory path of emoji (14 bytes each as Lambda sends them) that takes at most
    ``room`` bytes more than ``configured`` (what POST /config/pooltemplate or clonetarget takes)."""
    value = "t/" + "\U0001F600"
    while True:
        names = value.split("/")
        longer = value + ("/\U0001F600" if len(names[-1]) == 80 else "\U0001F600")
        if len(longer) > most_characters or not fits_room(room, configured, longer):
            return value
        value = longer


def test_runtime_templates_a_later_config_has_no_room_for_are_left_out_not_shown_past_lambdas_limit(
        caplog: pytest.LogCaptureFixture) -> None:
    """A runtime template or clone target is checked against /config's room when it is set, not
    when a later config leaves less room: set at their longest under 1,000 pools with room to
    spare, then shown by a config of the same pools near the limit (longer aliases), /config was
    11.6 MB as Lambda sends it, API Gateway's 502 for everyone. Now the API and the passes leave
    them out (the pools keep their configured ones) and the tick names them."""
    roomy_text = pools_config(1000).replace(":config:\n", EXPERIMENTAL)
    tight_text = _largest_accepted(1000)
    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        roomy = Services(parse(roomy_text), client, clock=FakeClock())
        room = override_room(roomy.config)
        pools = roomy.config.pools
        with _serving(roomy):
            for start in range(0, len(pools), 50):
                batch = pools[start:start + 50]
                for route, configured, most in (("pooltemplate", lambda p: p.template, MAX_TEMPLATE),
                                                ("clonetarget", lambda p: p.clone_target, MAX_CLONE_TARGET)):
                    answer = _post(f"/api/v3/config/{route}",
                                   {pool.name: _longest(configured(pool), room, most) for pool in batch})
                    assert answer["statusCode"] == 201, answer["body"][:200]
            assert _lambda_bytes("/api/v3/config") < LAMBDA_RESPONSE_BYTES

        tight = Services(parse(tight_text), client, clock=FakeClock())
        assert override_room(tight.config) < 100
        with _serving(tight):
            answer = app_module.app(api_event("GET", "/api/v3/config", "/api/v3/config"), Context())
            assert answer["statusCode"] == 200, answer["body"][:200]
            assert len(json.dumps(answer)) < LAMBDA_RESPONSE_BYTES
            shown = json.loads(answer["body"])["pool_configuration"]
            assert [(entry["template"], entry["clone_target"]) for entry in shown] == [
                (pool.template, pool.clone_target) for pool in tight.config.pools]
        # The passes clone what /config shows: the configured template, into the configured target.
        first = tight.config.pools[0]
        assert len(run_pool(tight, first.name).passes) == 1
        # (instant dummy clones: the pass may have made them ready already)
        cloned = [host for state in ("pending", "ready")
                  for host in client.zrange(tight.store.keys.pool_state(first.name, state), 0, -1)]
        assert cloned and {tight.store.get_vm(host).template for host in cloned} == {first.template}
        with caplog.at_level(logging.WARNING):
            ignored = report_ignored_overrides(tight)
        assert len(ignored) == 2 * len(pools)
        assert any("runtime templates or clone targets ignored" in record.getMessage() for record in caplog.records)
        # Not deleted: the config with room shows them again.
        assert roomy.pool(first.name).template != first.template
