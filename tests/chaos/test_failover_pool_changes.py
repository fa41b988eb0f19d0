"""An administrator's runtime pool change (``POST /config/poolsize``, ``/config/pooltemplate``,
``/poolreset``) answered while the replica lagged, then a failover that lost the primary's last
writes (the harness of tests/chaos/test_failover_lost_writes.py).

Before, these answered 201 once the primary had them and waited for no replica: the promoted
replica had the pool as before, silently. A template replaced (a patched image) went back to the
old one, whose VMs were cloned and handed out again; a reset (drain the pools' VMs) never
happened; a size set to 0 (a pool drained for maintenance) refilled. Now each answer that says
a change was made (or, to its retry, that it holds) waits for a replica; without one in time
it is a 503 saying the change was made and to send it again.
"""

from __future__ import annotations

import base64
from typing import Any, Iterator

import pytest

from chalicelib.store import Store
from chalicelib.store.pool_overrides import PoolOverride, PoolOverrides
from tests.chaos import lambda_api
from tests.chaos.test_failover_lost_writes import promised
from tests.redis_pair import RedisPair

POOL = "ha"
CONFIG = f"""
:config: {{experimental_features: true}}
:redis: {{socket_timeout: 5.0, replica_ack_timeout: 1000}}
:auth: {{provider: dummy, admins: [alice]}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: {POOL}, size: 2, provider: dummy, template: images/old}}
"""
CHANGES = {
    "size": ("/api/v3/config/poolsize", {POOL: 0}),
    "template": ("/api/v3/config/pooltemplate", {POOL: "images/patched"}),
    "reset": ("/api/v3/poolreset", {POOL: 1}),
}


def made(name: str, override: PoolOverride) -> bool:
    """Whether ``override`` holds the change ``name``."""
    return {"size": override.size == 0, "template": override.template == "images/patched",
            "reset": override.reset_at is not None}[name]


def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return lambda_api.call(method, path, path, body=body, headers=headers)


@pytest.fixture
def admin(redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The API function on the pair's endpoint, waiting for a replica as in AWS Lambda, and an
    administrator's token (replicated)."""
    services = lambda_api.serving(redis_pair, monkeypatch, CONFIG)
    basic = "Basic " + base64.b64encode(b"alice:right password").decode()
    status, answer = call("POST", "/api/v3/token", headers={"Authorization": basic})
    assert status == 200, answer
    redis_pair.wait_synced()
    yield {"X-AUTH-TOKEN": answer["token"]}
    services.client.close()


def override_on(pair: RedisPair, node: str) -> PoolOverride:
    """The pool's overrides as the ``primary`` or the ``replica`` holds them."""
    client = RedisPair.client(pair.primary if node == "primary" else pair.replica)
    try:
        return PoolOverrides(Store(client)).get(POOL)
    finally:
        client.close()


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_pool_change_answered_201_is_on_the_new_primary(
        redis_pair: RedisPair, admin: dict[str, str], name: str) -> None:
    redis_pair.link.hold()
    status, answer = call("POST", *CHANGES[name], headers=admin)
    redis_pair.kill_primary_and_promote()

    if not promised(status, answer, 201):
        return
    override = override_on(redis_pair, "primary")
    assert made(name, override), f"the pool's {name} was answered 201, then lost with the primary: {override}"


@pytest.mark.parametrize("name", ["template", "reset"])  # a size's path is a template's
def test_a_pool_change_no_replica_acknowledged_is_answered_503_and_its_retry_once_replicated(
        redis_pair: RedisPair, admin: dict[str, str], name: str) -> None:
    redis_pair.link.hold()
    status, answer = call("POST", *CHANGES[name], headers=admin)
    assert status == 503 and answer["ok"] is False and "again" in answer["error"], answer
    assert made(name, override_on(redis_pair, "primary")), "the change stays made on the primary"
    assert call("POST", *CHANGES[name], headers=admin)[0] == 503, "the retry, while no replica has the change"

    redis_pair.link.release()
    redis_pair.wait_synced()
    assert call("POST", *CHANGES[name], headers=admin)[0] in (200, 201)
    assert made(name, override_on(redis_pair, "replica"))
