"""vmpooler's ``POST /vm/:template`` and ``POST /ondemandvm/:template`` path forms, as its
``extract_templates_from_query_params`` reads them (lib/vmpooler/api/v3.rb, 3.9.1): Ruby's
``params[:template].split('+')``, which drops trailing empty parts.

- ``debian+centos+`` (a script that writes a ``+`` after each pool) is ``debian`` and ``centos``
  there, and is served here the same (it was a ``400 Invalid pool name format``).
- ``+debian`` and ``debian++centos`` keep an empty part, which vmpooler looks up as the pool
  ``""`` (404); here they stay a 400 naming the mistake, and change nothing.
"""

from __future__ import annotations

import pytest

from tests.compat.pooler import PoolerFactory, pooler_document, short


@pytest.fixture
def pooler(make_pooler: PoolerFactory):
    document = pooler_document([{"name": "pool1", "size": 2, "dns_plugin": "example"},
                                {"name": "pool2", "size": 1, "dns_plugin": "example"}], {"example": "example.com"})
    return make_pooler(document)


@pytest.mark.parametrize("segment", ["pool1+pool2+", "pool1+pool2+++"])
def test_trailing_pluses_in_a_checkout_path_are_dropped_as_vmpooler_drops_them(pooler, segment: str) -> None:
    reply = pooler.post(f"/api/v3/vm/{segment}")
    assert reply.status == 200, reply.json
    assert list(reply.json) == ["ok", "pool1", "pool2"]
    for pool in ("pool1", "pool2"):
        hostname = reply.json[pool]["hostname"]
        assert hostname.endswith(".example.com")
        vm = pooler.describe(short(hostname))
        assert (vm["template"], vm["state"]) == (pool, "running")


def test_trailing_pluses_in_an_ondemand_path_are_dropped_as_vmpooler_drops_them(pooler) -> None:
    reply = pooler.post("/api/v3/ondemandvm/pool1+pool1+")
    assert reply.status == 201, reply.json
    request_id = reply.json["request_id"]
    shown = pooler.get(f"/api/v3/ondemandvm/{request_id}")
    assert shown.json["request_id"] == request_id
    assert shown.json["pool1"] == {"ready": "0", "pending": "2"}, shown.json


@pytest.mark.parametrize("route", ["vm", "ondemandvm"])
@pytest.mark.parametrize("segment", ["+pool1", "pool1++pool2", "+", "+++"])
def test_an_empty_name_before_another_is_still_refused_and_changes_nothing(pooler, route: str, segment: str) -> None:
    before = pooler.redis_state()
    reply = pooler.post(f"/api/v3/{route}/{segment}")
    assert (reply.status, reply.json) == (400, {"ok": False, "error": "Invalid pool name format"})
    assert pooler.redis_state() == before
