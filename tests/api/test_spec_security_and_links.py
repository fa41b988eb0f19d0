"""docs/openapi.yaml says who may call each operation, which value each path parameter takes, and
where an answer leads, as the service has it: a client generated from the spec sends no token to a
deployment without ``:auth:`` (it needs none), sends one where ``:auth:`` requires it, and can
follow a token, an on-demand request id and a VM's own answer to the routes that take them.

Every operation of the spec is asked without any credentials, on a deployment without ``:auth:``
and on one with it; a checkout/tag/return session then runs driven by the spec alone (its path
templates, parameter schemas and links), every request checked against the spec before it is
sent and every answer after (the harness checks answers).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from openapi_schema_validator import OAS30Validator

from chalicelib.config import parse
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness, basic

HTTP_METHODS = ("get", "put", "post", "delete")
AUTH_YAML = ":auth:\n  :provider: dummy\n"
EXPERIMENTAL = CONFIG_YAML.replace(":config:\n", ":config:\n  experimental_features: true\n", 1)
USER = ("alice", "alice-password")


def resolve(node: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        section, name = node["$ref"].split("/")[-2:]
        node = spec["components"][section][name]
    return node


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in spec["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS]


def path_parameters(spec: dict[str, Any], path: str, operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The operation's path parameters by name, its own overriding its path's (as OpenAPI says)."""
    found: dict[str, dict[str, Any]] = {}
    for node in [*spec["paths"][path].get("parameters", []), *operation.get("parameters", [])]:
        parameter = resolve(node, spec)
        if parameter["in"] == "path":
            found[parameter["name"]] = parameter
    return found


def target(spec: dict[str, Any], method: str, path: str, values: dict[str, str]) -> str:
    """The operation's URL, each path parameter the value of ``values`` named after its
    parameter's component (``Hostname``, ``PoolNames``...) or, failing that, its name; each
    value checked against its parameter's schema first, as a generated client does."""
    operation = spec["paths"][path][method.lower()]
    refs = {resolve(node, spec)["name"]: node.get("$ref", "").rsplit("/", 1)[-1]
            for node in [*spec["paths"][path].get("parameters", []), *operation.get("parameters", [])]}
    filled: dict[str, str] = {}
    for name, parameter in path_parameters(spec, path, operation).items():
        value = values.get(refs.get(name, ""), values.get(name))
        assert value is not None, (method, path, name)
        OAS30Validator(parameter["schema"]).validate(int(value) if parameter["schema"].get("type") == "integer"
                                                     else value)
        filled[name] = value
    prefix = "" if operation.get("x-unversioned-only") else "/api/v3"
    return prefix + re.sub(r"\{(\w+)\}", lambda found: filled[found.group(1)], path)


def asks_credentials(operation: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the spec lets the operation be called without any credentials."""
    return {} not in operation.get("security", spec.get("security", [{}]))


def session_values(api: Harness, token: str | None = None) -> dict[str, str]:
    """A value for every path parameter: a running VM, a pool, an on-demand request the service
    drew an id for."""
    api.fill("pool1")
    hostname = api.checkout("pool1")
    headers = {"X-AUTH-TOKEN": token} if token else None
    ondemand = api.post("/api/v3/ondemandvm", {"pool2": 1}, headers=headers)
    assert ondemand.status == 201, ondemand.json
    return {"Hostname": hostname, "PoolNames": "pool1", "RequestId": ondemand.json["request_id"], "Pool": "pool1",
            "size": "8", "snapshot": "0" * 32, "section": "boot", "key": "x", "token": "0" * 32}


def request_body(method: str, path: str) -> Any:
    """A body that gets each operation past its body checks to its credentials: ``{}`` asks no
    change (``POST /vm``'s is a 404 when no token is sent, as vmpooler's; a dead token sent is a
    401 first)."""
    if (method, path) == ("POST", "/vm"):
        return {"pool1": 1}
    return {} if method in ("POST", "PUT") else None


def call_without_credentials(api: Harness, spec: dict[str, Any], values: dict[str, str]) -> dict[str, int]:
    """Each operation's status asked with no token and no Basic credentials (the dashboard's
    aside: public, and not JSON); the deletions last, so the VM and the request are still there
    for the others."""
    statuses = {}
    for method, path, operation in sorted(operations(spec), key=lambda found: found[0] == "DELETE"):
        if operation.get("x-unversioned-only"):
            continue
        statuses[f"{method} {path}"] = api.request(method, target(spec, method, path, values),
                                                   request_body(method, path)).status
    return statuses


def test_without_auth_only_the_token_routes_ask_credentials(
        make_stack: Callable[..., Harness], spec: dict[str, Any]) -> None:
    """Before: disks, snapshots, runtime config and on-demand demanded a token (`TokenAuth` alone),
    so a generated client refused to call them on a deployment that needs none."""
    api = make_stack(EXPERIMENTAL)
    statuses = call_without_credentials(api, spec, session_values(api))
    for method, path, operation in operations(spec):
        if operation.get("x-unversioned-only"):
            continue
        status = statuses[f"{method} {path}"]
        assert status != 401, (method, path)
        if asks_credentials(operation, spec):
            assert status == 404, f"{method} {path} answers {status} without credentials, the spec asks some"


def test_with_auth_the_spec_says_which_operations_need_a_token(
        make_harness: Callable[..., Harness], spec: dict[str, Any]) -> None:
    api = make_harness(parse(EXPERIMENTAL + AUTH_YAML), headers={"Content-Type": "application/json"})
    token = api.new_token(*USER)
    statuses = call_without_credentials(api, spec, session_values(api, token))
    for method, path, operation in operations(spec):
        if operation.get("x-unversioned-only"):
            continue
        status = statuses[f"{method} {path}"]
        needs = asks_credentials(operation, spec) or operation.get("x-auth-token") == "required"
        assert (status == 401) == needs, f"{method} {path} answers {status} without credentials; the spec: {needs}"
        assert operation.get("x-auth-token") in (None, "required", "optional"), (method, path)
        if operation.get("x-auth-token"):
            assert {"TokenAuth": []} in operation["security"], (method, path)


@pytest.mark.parametrize("value, pools, hostname", [
    ("pool1+pool1+linux", True, False), ("pool1", True, True), ("ABC123.one.example.com", True, True),
    ("a_b", True, False), ("..", True, False), ("-abc", True, False), ("a" * 64, True, False),
    ("pool/1", False, False), ("pool 1", False, False), ("x" * 254, False, False),
])
def test_each_vm_operation_declares_the_name_it_takes(
        spec: dict[str, Any], value: str, pools: bool, hostname: bool) -> None:
    """Before: one untyped ``name`` for POST (pool names) and GET/PUT/DELETE (a hostname)."""
    names = {operation["operationId"]: path_parameters(spec, "/vm/{name}", operation)["name"]["schema"]
             for _, path, operation in operations(spec) if path == "/vm/{name}"}
    assert OAS30Validator(names["checkoutFromPath"]).is_valid(value) is pools
    for operation_id in ("describeVm", "modifyVm", "returnVm"):
        assert OAS30Validator(names[operation_id]).is_valid(value) is hostname, operation_id


def follow(spec: dict[str, Any], operation_id: str, status: int, name: str) -> dict[str, Any]:
    """The link ``name`` of the operation's ``status`` answer."""
    (operation,) = [op for _, _, op in operations(spec) if op["operationId"] == operation_id]
    link = resolve(operation["responses"][str(status)], spec)["links"][name]
    return dict(link)


def evaluate(expression: str, request_path: dict[str, str], body: Any) -> str:
    """An OpenAPI runtime expression of the two kinds the spec uses."""
    if expression.startswith("$request.path."):
        return request_path[expression.removeprefix("$request.path.")]
    pointer = expression.removeprefix("$response.body#/")
    value = body
    for part in pointer.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return str(value)


def test_a_spec_driven_client_checks_out_tags_and_returns_a_vm(
        make_harness: Callable[..., Harness], spec: dict[str, Any]) -> None:
    """GET /vm -> (link) POST /vm/{pool} -> hostname as the spec's description says -> GET /vm/{name}
    -> (links) PUT and DELETE; then a token's link and an on-demand request's, on a deployment
    with ``:auth:``."""
    api = make_harness(parse(CONFIG_YAML + AUTH_YAML), headers={"Content-Type": "application/json"})
    api.fill("pool1")
    token = api.new_token(*USER)
    auth = {"X-AUTH-TOKEN": token}

    pools = api.get(target(spec, "GET", "/vm", {})).json
    link = follow(spec, "listPools", 200, "checkoutFromPath")
    pool = evaluate(link["parameters"]["name"], {}, pools)
    checked_out = api.post(target(spec, "POST", "/vm/{name}", {"PoolNames": pool}), headers=auth)
    assert checked_out.status == 200, checked_out.json
    hostname = checked_out.json[pool]["hostname"]  # keyed by the name asked: no link can say it

    shown = api.get(target(spec, "GET", "/vm/{name}", {"Hostname": hostname}), headers=auth)
    assert shown.status == 200 and shown.json[hostname.split(".")[0]]["state"] == "running"
    request_path = {"name": hostname}
    modify = follow(spec, "describeVm", 200, "modifyVm")
    assert modify["operationId"] == "modifyVm"
    tagged = api.put(target(spec, "PUT", "/vm/{name}", {"Hostname": evaluate(modify["parameters"]["name"], request_path,
                                                                                shown.json)}),
                     {"tags": {"project": "ci"}}, headers=auth)
    assert tagged.status == 200, tagged.json
    assert api.get(f"/api/v3/vm/{hostname}").json[hostname.split(".")[0]]["tags"] == {"project": "ci"}
    give_back = follow(spec, "describeVm", 200, "returnVm")
    returned = api.delete(target(spec, "DELETE", "/vm/{name}", {"Hostname": evaluate(
        give_back["parameters"]["name"], request_path, shown.json)}), headers=auth)
    assert returned.status == 200, returned.json

    made = api.post(target(spec, "POST", "/token", {}), headers=basic(*USER))
    describe = follow(spec, "createToken", 200, "describeToken")
    token_status = api.get(target(spec, "GET", "/token/{token}",
                                  {"token": evaluate(describe["parameters"]["token"], {}, made.json)}))
    assert token_status.status == 200, token_status.json

    ondemand = api.post(target(spec, "POST", "/ondemandvm/{name}", {"PoolNames": "pool2"}), headers=auth)
    assert ondemand.status == 201, ondemand.json
    poll = follow(spec, "requestOndemandFromPath", 201, "ondemandStatus")
    polled = api.get(target(spec, "GET", "/ondemandvm/{name}",
                            {"RequestId": evaluate(poll["parameters"]["name"], {}, ondemand.json)}), headers=auth)
    assert polled.status in (200, 202), polled.json



def test_with_auth_a_dead_token_is_refused_where_the_spec_says_one_is_read(
        make_harness: Callable[..., Harness], spec: dict[str, Any]) -> None:
    """A client sending its expired token to every operation is told 401 exactly where the spec
    lists a credential (and a 401 answer), and is served where it lists none."""
    api = make_harness(parse(EXPERIMENTAL + AUTH_YAML), headers={"Content-Type": "application/json"})
    values = session_values(api, api.new_token(*USER))
    for method, path, operation in sorted(operations(spec), key=lambda found: found[0] == "DELETE"):
        if operation.get("x-unversioned-only"):
            continue
        reply = api.request(method, target(spec, method, path, values), request_body(method, path),
                            headers={"X-AUTH-TOKEN": "0" * 32})
        reads = any(alternative for alternative in operation.get("security", spec["security"]))
        assert (reply.status == 401) == reads, f"{method} {path} answers {reply.status}; spec reads a token: {reads}"
        assert not reads or "401" in operation["responses"], (method, path)


def test_every_link_names_an_operation_and_its_path_parameters(spec: dict[str, Any]) -> None:
    """A link to a missing operation or parameter is dropped by a stateful tool without a word."""
    by_id = {operation["operationId"]: (path, operation) for _, path, operation in operations(spec)}
    links = 0
    for _, _, operation in operations(spec):
        for answer in operation["responses"].values():
            for name, link in resolve(answer, spec).get("links", {}).items():
                links += 1
                path, linked = by_id[link["operationId"]]
                assert set(link["parameters"]) <= set(path_parameters(spec, path, linked)), name
                for expression in link["parameters"].values():
                    assert re.fullmatch(r"\$request\.path\.\w+|\$response\.body#(/\w+)+", expression), expression
    assert links >= 10


@pytest.mark.parametrize("request_id", ["ci-42", "run:7.a_b", "a" * 100, "a" * 101, "-42", "a b", "a/b", "", "é"])
def test_the_spec_takes_the_request_ids_the_service_takes(spec: dict[str, Any], request_id: str) -> None:
    """Before: any string as a chosen ``request_id`` (the service answers 400 to most)."""
    from chalicelib.api.ondemand import REQUEST_ID_PATTERN

    served = REQUEST_ID_PATTERN.match(request_id) is not None
    body = spec["components"]["schemas"]["OndemandRequest"]["properties"]["request_id"]
    assert OAS30Validator(body).is_valid(request_id) is served
    assert OAS30Validator(spec["components"]["parameters"]["RequestId"]["schema"]).is_valid(request_id) is served
