"""Schemathesis against docs/openapi.yaml on the running local stack: every operation of the
spec, generated valid and invalid requests; no 5xx, every answer's status, content type,
headers and body as the spec says, and every request the spec calls invalid refused
(``negative_data_rejection``: a 4xx, never a success).

``make test`` runs a few examples per operation under /api/v3; ``make fuzz`` (VMPOOL_FUZZ_EXAMPLES
and VMPOOL_FUZZ_VERSIONS, e.g. ``v3,v2,v1,unversioned``) runs many more, under every version;
``unversioned`` fuzzes the operations marked ``x-unversioned`` without a prefix. Each runs
against the stacks VMPOOL_FUZZ_AUTH names (conftest.py: without ``:auth:`` and as an
administrator). Operations that exist only unversioned (``x-unversioned-only``: /, /healthcheck,
/dashboard...) are fuzzed there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from openapi_schema_validator import OAS30Validator
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

if TYPE_CHECKING:
    from tests.fuzz.fuzz_target import FuzzTarget

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("VMPOOL_FUZZ_EXAMPLES", "8"))
VERSIONS = os.environ.get("VMPOOL_FUZZ_VERSIONS", "v3").split(",")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


def headers_for(case: schemathesis.Case, fuzz_headers: dict[str, str]) -> dict[str, str]:
    """The target's headers (an administrator's token and Basic credentials), except on a case
    whose headers break the spec on purpose (a required ``Authorization`` left out): added back,
    they would undo the one invalid part, and ``negative_data_rejection`` would report the
    service's 200 as a schema-violating request accepted."""
    meta = case.meta
    if meta is not None and any(location == ParameterLocation.HEADER and component.mode.is_negative
                                for location, component in meta.components.items()):
        return {}
    return fuzz_headers


def query_as_read(case: schemathesis.Case) -> dict[str, str]:
    """The case's query as the service reads it: serialized as the transport sends it, each
    name's last value (routes._event_query)."""
    kwargs = case.as_transport_kwargs(base_url="http://127.0.0.1")
    url = requests.Request("GET", kwargs["url"], params=kwargs.get("params")).prepare().url or ""
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def _valid_query_value(definition: dict[str, Any], value: str) -> bool:
    """Whether ``value``, as sent, is one the parameter's schema admits (an integer read from its
    digits); False when unsure, which keeps the case negative."""
    schema = definition.get("schema") or {}
    if value == "" and definition.get("allowEmptyValue"):
        return True
    instance: Any = value
    if schema.get("type") == "integer":
        if not re.fullmatch(r"-?[0-9]+", value):
            return False
        instance = int(value)
    elif schema.get("type") != "string":
        return False
    return bool(OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER).is_valid(instance))


def negative_as_sent(case: schemathesis.Case) -> bool:
    """Whether the request sent is still one the spec calls invalid. A case negative only in its
    query may not be once serialized: a list of empty lists or an empty object for ``from`` sends
    no ``from`` or an empty one (``allowEmptyValue``), both valid, and the service's 200 was
    reported as a schema-violating request accepted (``make fuzz``, /summary, about one run in
    three at 60 examples)."""
    meta = case.meta
    if meta is None:
        return False
    negative = {location for location, component in meta.components.items() if component.mode.is_negative}
    if negative != {ParameterLocation.QUERY}:
        return bool(negative)
    sent = query_as_read(case)
    for parameter in case.operation.query:
        definition = parameter.definition
        if parameter.name not in sent:
            if parameter.is_required:
                return True
        elif not _valid_query_value(definition, sent[parameter.name]):
            return True
    return False  # names the spec does not declare are ignored (schemathesis does not count them)


schema = schemathesis.openapi.from_path(SPEC)


@pytest.mark.parametrize("version", VERSIONS)
@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_as_the_spec_says(case: schemathesis.Case, fuzz_target: FuzzTarget,
                                                  version: str) -> None:
    prefix = f"/api/{version}"
    if case.operation.definition.raw.get("x-unversioned-only"):
        if version != VERSIONS[0]:
            pytest.skip("served without a version prefix only: fuzzed once")
        prefix = ""
    elif version == "unversioned":
        if not case.operation.definition.raw.get("x-unversioned"):
            pytest.skip("served under a version prefix only")
        prefix = ""
    checks = CHECKS if negative_as_sent(case) else [check for check in CHECKS if check is not negative_data_rejection]
    case.call_and_validate(base_url=f"http://127.0.0.1:{fuzz_target.stack.port}{prefix}",
                           headers=headers_for(case, fuzz_target.headers),
                           checks=checks, timeout=10)
