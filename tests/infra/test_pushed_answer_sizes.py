"""A config that reaches the running service without its YAML's validation (a canonical JSON
object written by hand or by another tool and put in the bucket, or the file ``make run`` is
given) is held to the answers' sizes too (chalicelib/answer_sizes.py): before, only the YAML
was, and a pushed pool of 60,000 aliases of 100 characters made GET /status a 6.3 MB answer as
Lambda sends it, past Lambda's 6 MB: API Gateway's 502 to everyone while it was deployed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import redis
from packaged_functions import Context, api_event

import app as app_module
from chalicelib.answer_sizes import (
    LAMBDA_RESPONSE_BYTES,
    lambda_bytes,
    pool_feed_answer,
    pool_feed_bytes,
    status_answer,
    status_bytes,
)
from chalicelib.clock import FakeClock
from chalicelib.config import ConfigError, canonical_json, from_text, load, parse
from chalicelib.config_source import ConfigSource
from chalicelib.services import Services

GOOD = (":providers:\n  :dummy:\n    provider_class: dummy\n"
        ":pools:\n  - {name: debian, size: 1, provider: dummy, alias: [linux]}\n")


def too_wide() -> str:
    """The canonical JSON of GOOD, edited to give its pool 60,000 aliases of 100 characters: a
    request can name each, and /status and /config list them all."""
    document = json.loads(canonical_json(parse(GOOD)))
    document["pools"][0]["alias"] = [f"{n:06d}".ljust(100, "a") for n in range(60_000)]
    return json.dumps(document)


@pytest.fixture
def serving(redis_client: redis.Redis) -> Iterator[ConfigSource]:
    """The app's API function on GOOD, refreshing its config from a bucket holding ``too_wide``."""
    good = parse(GOOD)
    source = ConfigSource(good, lambda etag: (too_wide(), "etag-1"), FakeClock(), refresh_seconds=0)
    saved = app_module._services, app_module._config
    app_module._services = Services(good, redis_client, clock=FakeClock(), prefix="pushedsizes:")
    app_module._config = source
    try:
        yield source
    finally:
        app_module._services, app_module._config = saved


def test_a_pushed_config_whose_status_could_pass_lambdas_limit_is_refused_and_the_last_good_one_serves(
        serving: ConfigSource, caplog: pytest.LogCaptureFixture) -> None:
    response = app_module.app(api_event("GET", "/api/v3/status", "/api/v3/status"), Context())

    assert response["statusCode"] == 200, response["body"][:200]
    assert len(json.dumps(response)) < LAMBDA_RESPONSE_BYTES
    assert json.loads(response["body"])["pools"]["debian"]["alias"] == ["linux"]
    assert app_module._services is not None and app_module._services.config.pool_names == ("debian",)
    refused = [record for record in caplog.records if "pushed config is invalid" in record.getMessage()]
    assert refused and "GET /api/v3/status could answer" in str(getattr(refused[0], "error", ""))


def test_the_local_stack_refuses_such_a_canonical_file_naming_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(too_wide())

    with pytest.raises(ConfigError) as refused:
        load({"VMPOOL_CONFIG_FILE": str(path)})

    assert any(problem.startswith("pools: GET /api/v3/status could answer 6,3") for problem in refused.value.problems)


MEASURED = [GOOD, GOOD.replace("alias: [linux]", "alias: linux"), GOOD.replace(", alias: [linux]", ""),
            ":providers:\n  :dummy:\n    provider_class: dummy\n:pools: []\n",
            GOOD + "  - {name: b.c_d-9, size: 2, provider: dummy, alias: [x, y], sizing: {schedule: "
                   "[{days: weekdays, start: '07:00', end: '19:00', size: 4}]}}\n"
                   "  - {name: c, size: 1, provider: dummy, sizing: {demand: {min: 1, max: 5}}}\n"]


def test_the_answers_measured_without_being_built_are_as_long_as_built() -> None:
    """A config's check sums each pool's part of /status and the pool feed instead of writing
    the answers (0.39 s of CPU at 10,000 pools before, 0.13 s): the same bytes."""
    document = json.loads(canonical_json(parse(MEASURED[-1])))
    document["pools"][1]["alias"] = ["x", 'y\u00e9"\\z\u202e']  # a pushed form holds any of 1..100 characters
    for config in [*map(parse, MEASURED), from_text(json.dumps(document))]:
        assert status_bytes(config) == lambda_bytes(status_answer(config)), config.pools
        assert pool_feed_bytes(config) == lambda_bytes(pool_feed_answer(config)), config.pools
        assert lambda_bytes(json.loads(json.dumps(status_answer(config)))) == len(
            json.dumps(json.dumps(status_answer(config), separators=(",", ":"))))
