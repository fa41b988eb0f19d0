"""The primary endpoint's name still pointing at the demoted node for a while after a failover
(DNS is updated after the roles swap; a client resolves it again only when it reconnects): every
write there is refused with ``READONLY``, reconnecting reaches the same node again. Every route
answers a JSON 503 to retry meanwhile (never a 500), and once the name points at the new primary
the same warm function answers as usual, with no restart. Nothing found (checked on every route
that writes, and the reads a dashboard makes, which the demoted node serves)."""

from __future__ import annotations

import base64
from typing import Any

from chalicelib.services import Services
from chalicelib.store.connection import FAILOVER_RECONNECT_SECONDS
from tests.chaos.lambda_api import call, serving_fixture
from tests.chaos.test_failover_reconcile import reconcile
from tests.redis_pair import RedisPair

POOL = "ha"
CONFIG = f"""
:config: {{experimental_features: true}}
:redis: {{socket_timeout: 2.0, replica_ack_timeout: 300}}
:auth: {{provider: dummy}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}}
:pools:
  - {{name: {POOL}, size: 3, provider: dummy}}
"""
BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:right password").decode()}

api = serving_fixture(CONFIG)


def test_every_change_answers_503_while_the_endpoint_names_the_demoted_node_then_200(
        redis_pair: RedisPair, api: Services) -> None:
    pool = api.pool(POOL)
    assert pool is not None
    for _ in range(3):
        reconcile(api)
    status, answer = call("POST", "/api/v3/token", "/api/v3/token", headers=BASIC)
    assert status == 200, answer
    token = {"X-AUTH-TOKEN": answer["token"]}
    status, answer = call("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{POOL}", {"name": POOL}, headers=token)
    assert status == 200, answer
    host = answer[POOL]["hostname"]
    redis_pair.wait_synced()

    def requests() -> list[tuple[str, tuple[int, Any]]]:
        vm = {"name": host}
        return [
            ("checkout", call("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{POOL}", {"name": POOL}, headers=token)),
            ("checkout body", call("POST", "/api/v3/vm", "/api/v3/vm", body={POOL: 1}, headers=token)),
            ("put", call("PUT", "/api/v3/vm/{name}", f"/api/v3/vm/{host}", vm, {"lifetime": 3}, token)),
            ("tags", call("PUT", "/api/v3/vm/{name}", f"/api/v3/vm/{host}", vm, {"tags": {"a": "b"}}, token)),
            ("disk", call("POST", "/api/v3/vm/{name}/disk/{size}", f"/api/v3/vm/{host}/disk/8",
                          {**vm, "size": "8"}, headers=token)),
            ("snapshot", call("POST", "/api/v3/vm/{name}/snapshot", f"/api/v3/vm/{host}/snapshot", vm,
                              headers=token)),
            ("token", call("POST", "/api/v3/token", "/api/v3/token", headers=BASIC)),
            ("tokens", call("GET", "/api/v3/token", "/api/v3/token", headers=BASIC)),
            ("ondemand", call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 1}, headers=token)),
            ("status", call("GET", "/api/v3/status", "/api/v3/status")),
            ("summary", call("GET", "/api/v3/summary", "/api/v3/summary")),
            ("vm", call("GET", "/api/v3/vm/{name}", f"/api/v3/vm/{host}", vm)),
            ("poolsize", call("POST", "/api/v3/config/poolsize", "/api/v3/config/poolsize", body={POOL: 2},
                              headers=token)),
            ("return", call("DELETE", "/api/v3/vm/{name}", f"/api/v3/vm/{host}", vm, headers=token)),
        ]

    epoch, now = api.client.connection_pool.connection_kwargs["failover_epoch"], [0.0]
    epoch.monotonic = lambda: now[0]  # the client reconnects at most once per FAILOVER_RECONNECT_SECONDS
    redis_pair.swap_with_replicaof(move_endpoint=False)  # the endpoint names the demoted node
    stale = dict(requests())
    reads = {"status", "summary", "vm"}  # served by the demoted node, a moment stale
    assert {name: answer for name, answer in stale.items() if answer[0] != (200 if name in reads else 503)} == {}
    assert all(answer[1]["ok"] is False and "again" in answer[1]["error"]
               for name, answer in stale.items() if name not in reads)

    redis_pair.endpoint.point_at(redis_pair.primary.port)  # the name updated: the same warm function
    now[0] += FAILOVER_RECONNECT_SECONDS  # reconnects at the next READONLY
    fresh = dict(requests())
    assert {name: answer for name, answer in fresh.items() if not 200 <= answer[0] < 300
            and name != "poolsize"} == {}, fresh
    assert fresh["poolsize"][0] == 403  # alice is no administrator: the answer past Redis
