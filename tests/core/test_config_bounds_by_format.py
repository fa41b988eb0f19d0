"""A config's bounds do not depend on its format: what ``make config-push`` refuses in the YAML
is refused, with the same message, in a canonical JSON object a function builds (one written by
another tool or by hand and put in the bucket), the last good config staying; and an on-demand
request's ttl cannot outlive the record that answers for it."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from chalicelib.config import ConfigError, canonical_json, from_text, parse
from chalicelib.config_fields import show

MILLION = "x" * 1_000_000
HEAD = ":providers:\n  :dummy:\n    provider_class: dummy\n"
POOL = {"name": "a", "size": 1, "provider": "dummy", "alias": ["linux"]}


def yaml_text(config: dict[str, Any] | None = None, pool: dict[str, Any] | None = None) -> str:
    """A YAML config (JSON is YAML) of one dummy pool, with ``config`` and ``pool``'s keys."""
    text = HEAD + ":pools:\n  - " + json.dumps({**POOL, **(pool or {})}) + "\n"
    return text + (":config: " + json.dumps(config) + "\n" if config else "")


def pushed(config: dict[str, Any] | None = None, pool: dict[str, Any] | None = None) -> str:
    """The canonical JSON of a valid config, then edited to hold ``config`` and ``pool``'s keys."""
    document = json.loads(canonical_json(parse(yaml_text())))
    document["config"].update(config or {})
    document["pools"][0].update(pool or {})
    return json.dumps(document)


def refusal(load: Callable[[], Any]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load()
    return refused.value.problems


HOSTILE: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {
    "a 1,000,000-character pool name": (None, {"name": MILLION}),
    "a 1,000,000-character template": (None, {"template": MILLION}),
    "a folder holding a NUL": (None, {"folder": "vmpool/\u0000/x"}),
    "a 1,000,000-character alias": (None, {"alias": ["linux", MILLION]}),
    "100,000 aliases, one too long": (None, {"alias": [f"a{n}" for n in range(100_000)] + ["y" * 101]}),
    "an alias of nested lists": (None, {"alias": [["a", ["b"]]]}),
    "allowed tags of nested lists": ({"allowed_tags": ["owner", ["a", ["b"]]]}, None),
    "100,000 allowed tags": ({"allowed_tags": [f"t{n}" for n in range(100_000)]}, None),
    "1,001 allowed tags": ({"allowed_tags": [f"t{n}" for n in range(1_001)]}, None),
    "an allowed tag no key can be (51 characters)": ({"allowed_tags": ["owner", "t" * 51]}, None),
    "an empty allowed tag": ({"allowed_tags": ["owner", ""]}, None),
    "a 1,000,000-character prefix": ({"prefix": MILLION}, None),
    "a 1,000,000-character domain": ({"domain": MILLION}, None),
    "a 1,000,000-character deployment": ({"deployment": MILLION}, None),
    "a time zone no one has": ({"sizing_timezone": "Mars/Olympus"}, None),
    "a negative backend weight": ({"backend_weight": {"a": -1}}, None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_pushed_config_is_refused_as_its_yaml_is(case: str) -> None:
    config, pool = HOSTILE[case]
    expected = refusal(lambda: parse(yaml_text(config, pool)))

    assert refusal(lambda: from_text(pushed(config, pool), "s3 config")) == expected
    assert all(len(problem) < 400 for problem in expected)  # named by its start, not written whole


def test_an_alias_of_100_characters_and_100_000_aliases_still_load_from_either_form() -> None:
    aliases = [f"a{n}" for n in range(100_000)] + ["y" * 100]
    for built in (parse(yaml_text(pool={"alias": aliases})), from_text(pushed(pool={"alias": aliases}))):
        assert built.resolve("y" * 100) == ("a",) and len(built.pools[0].alias) == 100_001


def test_more_than_1_000_tagfilters_are_refused_in_either_form() -> None:
    """Each is compiled at every cold start: 100,000 pushed (3 MB) cost each one 7.1 s of CPU."""
    patterns = {f"k{n}": f"^(x{n})-[a-z]+$" for n in range(1_001)}
    yaml = yaml_text() + ":tagfilter: " + json.dumps(patterns) + "\n"
    document = json.loads(pushed())
    document["tagfilter"] = patterns
    problem = ["tagfilter: at most 1,000 tags, got 1,001"]

    assert refusal(lambda: parse(yaml)) == problem
    assert refusal(lambda: from_text(json.dumps(document), "s3 config")) == problem
    del patterns["k1000"]
    assert len(from_text(canonical_json(parse(yaml_text() + ":tagfilter: " + json.dumps(patterns) + "\n"))).tagfilter) \
        == 1_000


def test_1_000_allowed_tags_of_50_characters_load_from_either_form() -> None:
    tags = [f"{n:04d}".ljust(50, "t") for n in range(1_000)]
    for built in (parse(yaml_text({"allowed_tags": tags})), from_text(pushed({"allowed_tags": tags}))):
        assert built.service.allowed_tags == tuple(tags)


def test_allowed_tags_refused_name_the_field() -> None:
    problems = refusal(lambda: from_text(pushed({"allowed_tags": ["t" * 51]}), "s3 config"))
    assert problems == ["config.allowed_tags: [0]: must be 1 to 50 characters, got 51"]
    problems = refusal(lambda: parse(yaml_text({"allowed_tags": ["t"] * 1_001})))
    assert problems == ["config.allowed_tags: must list at most 1,000 names, got 1,001"]


def test_what_config_push_writes_today_still_loads() -> None:
    text = yaml_text({"prefix": "ci-", "domain": "example.com", "deployment": "prod/eu-1", "allowed_tags": ["owner"],
                      "backend_weight": {"a": 1}, "sizing_timezone": "Europe/Berlin", "ondemand_request_ttl": 60},
                     {"template": "/templates/debian-12/", "folder": "vmpool/ci", "alias": "linux"})
    validated = parse(text)

    assert from_text(canonical_json(validated)) == validated


def ondemand(ttl_minutes: int, data_ttl_hours: int) -> str:
    return yaml_text({"ondemand_request_ttl": ttl_minutes}) + f":redis: {{data_ttl: {data_ttl_hours}}}\n"


def test_an_ondemand_request_ttl_its_record_would_not_outlive_is_refused_in_either_form() -> None:
    """Before: ``ondemand_request_ttl: 600`` with ``data_ttl: 2`` loaded, and a request still
    open after 2 hours lost its record (the request is recorded for data_ttl from its creation):
    its poller got 404, the VMs delivered to it ran for nobody."""
    expected = [("config.ondemand_request_ttl: 600 minutes is longer than half of redis.data_ttl (2 hours): "
                 "an open on-demand request's record is kept data_ttl hours from its creation, and one still "
                 "open then is forgotten (its GET answers 404, its VMs run for nobody); ondemand_request_ttl "
                 "must be at most 60 minutes, or data_ttl longer")]
    assert refusal(lambda: parse(ondemand(600, 2))) == expected

    document = json.loads(canonical_json(parse(ondemand(60, 2))))
    document["config"]["ondemand_request_ttl"] = 600
    assert refusal(lambda: from_text(json.dumps(document))) == expected


def test_an_ondemand_request_ttl_within_half_of_data_ttl_loads() -> None:
    assert parse(ondemand(60, 2)).service.ondemand_request_ttl == 60
    assert parse(yaml_text()).service.ondemand_request_ttl == 5  # the defaults: 5 minutes, 168 hours


def test_a_data_ttl_past_what_redis_can_expire_is_refused_in_either_form() -> None:
    """Before: ``data_ttl: 10000000000000`` loaded, and every write's EXPIRE (3.6e16 seconds) was
    past Redis's range: ``ERR invalid expire time``, every write failing."""
    huge = 10_000_000_000_000
    expected = refusal(lambda: parse(yaml_text() + f":redis: {{data_ttl: {huge}}}\n"))
    assert expected == [f"redis.data_ttl: must be an integer <= 876000, got {huge}"]

    document = json.loads(canonical_json(parse(yaml_text())))
    document["redis"]["data_ttl"] = huge
    assert refusal(lambda: from_text(json.dumps(document))) == expected


@pytest.mark.parametrize(("key", "most"), [("max_ondemand_requests", 10_000),
                                           ("max_ondemand_requests_per_user", 10_000),
                                           ("max_ondemand_requests_kept", 1_000_000)])
def test_an_ondemand_request_limit_past_its_bound_is_refused_in_either_form(key: str, most: int) -> None:
    """Before, any integer loaded (10**400 too): every pass makes one script call per open
    request and /status reads each, and a huge ``_kept`` kept every request made in Redis."""
    for value in (most + 1, 10**400):
        expected = [f"config.{key}: must be an integer <= {most}, got {show(value)}"]
        assert refusal(lambda value=value: parse(yaml_text({key: value}))) == expected and len(expected[0]) < 400
        assert refusal(lambda value=value: from_text(pushed({key: value}), "s3 config")) == expected
    for built in (parse(yaml_text({key: most})), from_text(pushed({key: most}))):
        assert getattr(built.service, key) == most
