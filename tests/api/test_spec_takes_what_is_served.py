"""docs/openapi.yaml says of requests what the service takes: a request the service answers with
success is one the spec calls valid, or a client generated from the spec refuses to send what
works (and schemathesis's negative_data_rejection, one of the checks of
tests/fuzz/test_openapi_fuzz.py that `make test` and `make fuzz` run, reports every such request
as "Schema-violating request accepted")."""

from __future__ import annotations

from typing import Any, Callable

import jsonschema
import pytest

from tests.api.configs import CONFIG_YAML
from tests.harness import Harness

EXPERIMENTAL_CONFIG = CONFIG_YAML.replace(":config:\n", ":config:\n  experimental_features: true\n", 1)


@pytest.mark.parametrize("path", ["/config/poolsize", "/config/pooltemplate", "/config/clonetarget", "/poolreset"])
def test_an_empty_object_asks_no_change_and_the_spec_allows_it(
        make_stack: Callable[..., Harness], spec: dict[str, Any], path: str) -> None:
    api = make_stack(EXPERIMENTAL_CONFIG)
    reply = api.post(f"/api/v3{path}", {})
    assert reply.status in (200, 201), reply.json
    assert reply.json == {"ok": True}
    body_schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.validate({}, body_schema)


@pytest.mark.parametrize("name", ["From", "To"])
def test_an_empty_summary_day_is_today_and_the_spec_allows_it(
        make_stack: Callable[..., Harness], spec: dict[str, Any], name: str) -> None:
    api = make_stack(CONFIG_YAML)
    reply = api.get(f"/api/v3/summary?{name.lower()}=")
    assert reply.status == 200, reply.json
    assert spec["components"]["parameters"][name].get("allowEmptyValue") is True


def test_an_empty_history_range_is_the_default_hour_and_the_spec_allows_it(
        make_stack: Callable[..., Harness], spec: dict[str, Any]) -> None:
    api = make_stack(CONFIG_YAML)
    empty, default = api.get("/dashboard/stats/history?hours="), api.get("/dashboard/stats/history")
    assert (empty.status, default.status) == (200, 200), empty.json
    assert empty.json["step"] == default.json["step"]
    hours = [parameter for parameter in spec["paths"]["/dashboard/stats/history"]["get"]["parameters"]
             if parameter["name"] == "hours"]
    assert hours and hours[0].get("allowEmptyValue") is True
