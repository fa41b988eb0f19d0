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
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis
import pytest
import schemathesis
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
    case.call_and_validate(base_url=f"http://127.0.0.1:{fuzz_target.stack.port}{prefix}",
                           headers=headers_for(case, fuzz_target.headers),
                           checks=CHECKS, timeout=10)
