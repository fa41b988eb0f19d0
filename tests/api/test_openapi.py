"""docs/openapi.yaml is a valid OpenAPI 3.0 document and documents exactly the routes the app serves.

Answers are checked against the spec's schemas by the API client in conftest.py, in every API test.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

import app
from tests.harness import SpecOperations, spec_template

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
VERSION_PREFIX = re.compile(r"^/api/v[123](?=/)")

def served() -> dict[tuple[str, str], set[str]]:
    """(method, path template relative to the version) -> the prefixes it is served under
    (``/api/v3``, ``/api/v2``, ``/api/v1`` or ``""`` for unversioned)."""
    routes: dict[tuple[str, str], set[str]] = {}
    for path, methods in app.app.routes.items():
        match = VERSION_PREFIX.match(path)
        prefix = match.group(0) if match else ""
        relative = spec_template(path[len(prefix):])
        for method in methods:
            if method == "HEAD":  # GET without its body wherever GET is (docs/api.md), not an operation
                continue
            routes.setdefault((method.upper(), relative), set()).add(prefix)
    return routes


def documented(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), spec_template(path)): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_spec_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)


def test_every_served_route_is_documented(spec: dict[str, Any]) -> None:
    missing = sorted(set(served()) - set(documented(spec)))
    assert not missing, f"routes the app serves that docs/openapi.yaml lacks: {missing}"


def test_every_documented_route_is_served(spec: dict[str, Any]) -> None:
    unserved = sorted(set(documented(spec)) - set(served()))
    assert not unserved, f"routes in docs/openapi.yaml that the app does not serve: {unserved}"


def test_every_route_is_served_under_each_version(spec: dict[str, Any]) -> None:
    only_unversioned = {key for key, operation in documented(spec).items() if operation.get("x-unversioned-only")}
    for (method, path), prefixes in served().items():
        if (method, path) in only_unversioned:
            assert prefixes == {""}, (method, path, prefixes)
        else:
            assert {"/api/v3", "/api/v2", "/api/v1"} <= prefixes, (method, path, prefixes)


def test_unversioned_routes_are_the_ones_the_spec_marks(spec: dict[str, Any]) -> None:
    marked = {key for key, operation in documented(spec).items() if operation.get("x-unversioned")}
    unversioned = {key for key, prefixes in served().items() if "" in prefixes}
    assert unversioned == marked


def test_every_operation_documents_its_errors_as_json(spec: dict[str, Any]) -> None:
    for (method, path), operation in documented(spec).items():
        responses = operation["responses"]
        assert "500" in responses, (method, path)
        for status in responses:
            if status.startswith(("4", "5")):
                response = responses[status]
                if "$ref" in response:
                    response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                ref = schema.get("$ref") or ""
                alternatives = [s.get("$ref", "") for s in schema.get("anyOf", [])]
                names = [r.rsplit("/", 1)[-1] for r in [ref, *alternatives] if r]
                assert names, (method, path, status)
                for name in names:
                    ok = spec["components"]["schemas"][name]["properties"]["ok"]
                    assert ok["enum"] == [False], (method, path, status, name)


def test_the_spec_check_rejects_an_undocumented_status(operations: SpecOperations) -> None:
    with pytest.raises(AssertionError, match="status 418"):
        operations.check("GET", "/api/v3/totalrunning", 418, {"running": 1})


def test_the_spec_check_rejects_a_body_of_the_wrong_shape(operations: SpecOperations) -> None:
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        operations.check("GET", "/api/v1/totalrunning", 200, {"running": "1"})
    with pytest.raises(ValidationError):
        operations.check("GET", "/vm/abc", 200, {"ok": True, "abc": {"state": "ready"}})


def test_the_spec_check_matches_literal_paths_before_parameters(operations: SpecOperations) -> None:
    assert operations.operation("GET", "/api/v2/summary/boot?from=2024-01-01") is not None
    assert operations.operation("GET", "/api/v2/summary/boot")[0] == "/summary/{section}"
    assert operations.operation("POST", "/api/v1/vm/abc/snapshot")[0] == "/vm/{name}/snapshot"
    assert operations.operation("PATCH", "/api/v3/vm") is None
    assert operations.operation("GET", "/vm/abc")[0] == "/vm/{name}"
    assert operations.operation("GET", "/poolstat") is None  # only versioned
