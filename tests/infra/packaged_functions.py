"""Runs inside infra.lambda_sandbox (the Lambda Python, the unpacked deployment zip and the
runtime's SDK, nothing else): what each packaged function does on a cold start and a first
invocation. Prints one JSON object; test_package.py starts it and checks what it found.

    argv: (none)                      the cold import only
          VSPHERE_POOL DUMMY_POOL     and then each function once (pools of VMPOOL_CONFIG_FILE)
          --slow-batch MS POOL...     one consumer batch of those pools with MS milliseconds left

Not imported by pytest: a script the sandboxed interpreter runs (stdlib + the zip only)."""

from __future__ import annotations

import json
import pkgutil
import sys
import uuid
from typing import Any

LAZY = ("pyVmomi", "ldap3", "aws_xray_sdk", "dns", "redis.asyncio.client", "importlib.metadata._meta",
        "chalicelib.manager.dispatch", "chalicelib.providers.base", "yaml", "pydantic")
"""Modules the API function's cold import must not load (the first vSphere pass, LDAP login,
traced stage or DNS update loads its own; the tick and the consumer load the reconcile code;
redis-py's asyncio client and importlib.metadata wait for a first use that never comes:
chalicelib/deferred_imports.py; the packaged config is canonical JSON, read without yaml or
pydantic, which the zip does not even carry)."""

CONFIG_LIBRARIES = ("yaml", "pydantic")


class Context:
    function_name = "vmpool-dev-fn"
    memory_limit_in_mb = 512
    aws_request_id = "sandbox"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:vmpool-dev-fn"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def api_event(method: str, resource: str, path: str, params: dict[str, str] | None = None,
              query: dict[str, str] | None = None, body: str | None = None, base64_body: bool = False,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway (REST, proxy) event as Lambda hands it to the API function (``body`` as
    the event carries it: base64 text when ``base64_body``)."""
    multi = {k: [v] for k, v in (query or {}).items()} or None
    return {"resource": resource, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()} if headers is not None else None,
            "queryStringParameters": query, "multiValueQueryStringParameters": multi, "pathParameters": params,
            "stageVariables": None, "body": body, "isBase64Encoded": base64_body,
            "requestContext": {"resourcePath": resource, "httpMethod": method, "requestId": str(uuid.uuid4()),
                               "path": path, "identity": {"sourceIp": "10.0.0.1"}}}


def reconcile(app: Any, *pools: str, poison: tuple[str, ...] = ()) -> dict[str, Any]:
    """The consumer's answer to a batch of one message per pool (and the ``poison`` bodies)."""
    records = [{"messageId": str(uuid.uuid4()), "receiptHandle": "r", "body": body,
                "attributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:vmpool-dev-reconcile"}
               for body in [*(json.dumps({"pool": pool}) for pool in pools), *poison]]
    answer: dict[str, Any] = app.reconcile({"Records": records}, Context())
    return answer


def main(vsphere_pool: str | None = None, dummy_pool: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    import app

    found["loaded_by_cold_import"] = sorted(name for name in LAZY if name in sys.modules)
    found["tracer"] = type(sys.modules["chalicelib.observability"].tracer).__name__
    if vsphere_pool is None:
        return found

    status = app.app(api_event("GET", "/api/v3/status", "/api/v3/status", query={"view": "pools"}), Context())
    found["status_code"] = status["statusCode"]
    # Hostile input gets the answers app.py gives it (tests/api/test_gateway_events.py): a body
    # marked base64 that is not is a 400 JSON.
    not_base64 = api_event("POST", "/api/v3/vm", "/api/v3/vm", body="{not base64}", base64_body=True)
    unreadable = app.app(not_base64, Context())
    found["unreadable_body"] = [unreadable["statusCode"], json.loads(unreadable["body"])["ok"]]

    tick = app.tick({"version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events",
                     "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
                     "resources": [], "detail": {}}, Context())
    found["tick"] = tick

    # The tick's messages are delayed (each pool by its own offset): the consumer gets them as
    # the event source would, one batch holding both pools.
    # With a poison message (nested past the JSON parser's depth): dropped alone.
    found["reconcile"] = reconcile(app, vsphere_pool, dummy_pool, poison=("[" * 5000,))

    services = app.services()
    found["vsphere_vms"] = [vm.name for vm in services.provider("vsphere").list_vms(services.pool(vsphere_pool))]
    status = app.app(api_event("GET", "/api/v3/status", "/api/v3/status", query={"view": "pools"}), Context())
    found["pools"] = json.loads(status["body"])["pools"]
    checkout = api_event("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{dummy_pool}", params={"name": dummy_pool})
    for _ in range(5):  # the dummy pool's clones are instant: ready within a pass or two
        found["checkout_status"] = app.app(checkout, Context())["statusCode"]
        if found["checkout_status"] == 200:
            break
        found["later_passes"] = found.get("later_passes", []) + [reconcile(app, dummy_pool)]

    # The config's dynamic-dns entry (a real BIND): an RFC 2136 update signed with TSIG, a look
    # up and a delete through the trimmed dnspython.
    plugin = services.dns_plugin_named("bind")
    if plugin is not None:
        plugin.create_or_replace("sandbox-vm", "10.0.0.7")
        found["dns_published"] = plugin.addresses("sandbox-vm")
        plugin.delete("sandbox-vm")
        found["dns_after_delete"] = plugin.addresses("sandbox-vm")

    # Every function ran and loaded the config (canonical JSON): neither YAML nor pydantic.
    found["config_libraries_loaded"] = sorted(name for name in CONFIG_LIBRARIES if name in sys.modules)
    import chalicelib

    failed = {}
    for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
        try:
            __import__(module.name)
        except Exception as error:  # noqa: BLE001 - reported, the test names the module
            failed[module.name] = repr(error)
    found["module_import_failures"] = failed
    from chalicelib.config import ConfigError, from_text

    try:  # a YAML config reaching a Lambda is refused with a message naming config-push
        from_text("pools: []\n", "VMPOOL_CONFIG")
        found["yaml_config"] = "accepted"
    except ConfigError as error:
        found["yaml_config"] = str(error)
    import redis.utils

    found["c_extensions"] = {"hiredis": bool(redis.utils.HIREDIS_AVAILABLE)}
    import importlib.metadata

    # The wheels' METADATA keep their headers only: what importlib.metadata reads.
    found["versions"] = {name: importlib.metadata.version(name) for name in ("redis", "aws-lambda-powertools")}
    found["redis_version"] = redis.__version__
    import zoneinfo

    zoneinfo.reset_tzpath(to=[])  # as on Lambda, whose image has no /usr/share/zoneinfo: tzdata's copy
    found["time_zone"] = str(zoneinfo.ZoneInfo("America/Argentina/Buenos_Aires"))
    return found


def slow_batch(pools: list[str], remaining_ms: int) -> dict[str, Any]:
    """The consumer's answer to a batch of one message per pool, invoked as Lambda invokes it
    with ``remaining_ms`` left (the context counts down), and how long it took: whatever the
    pools' passes wait on, it must answer before its time runs out, naming what it left undone."""
    import os
    import time

    import app

    deadline = time.monotonic() + remaining_ms / 1000

    class CountingDown(Context):
        def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
            return max(0, int((deadline - time.monotonic()) * 1000))

    records = [{"messageId": f"m-{pool}", "receiptHandle": "r", "body": json.dumps({"pool": pool}),
                "attributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:vmpool-dev-reconcile"} for pool in pools]
    started = time.monotonic()
    answer: dict[str, Any] = app.reconcile({"Records": records}, CountingDown())
    found = {"answer": answer, "seconds": round(time.monotonic() - started, 3),
             "left_ms": CountingDown().get_remaining_time_in_millis()}
    print(json.dumps(found))
    sys.stdout.flush()
    # The passes it gave up on still wait in their threads (a vCenter that never answers): Lambda
    # freezes them with the environment; this process must not wait for them at exit.
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--slow-batch"]:
        slow_batch(sys.argv[3:], int(sys.argv[2]))
    print(json.dumps(main(*sys.argv[1:3])))
