"""What vmpooler's clients send that its Ruby reads and Python did not (thirtieth round).

Paths: ``POST /vm/:template`` and ``POST /ondemandvm/:template`` (lib/vmpooler/api/v3.rb, 3.9.1,
``extract_templates_from_query_params``) read their names with Ruby's
``params[:template].split('+')``, which drops trailing empty parts.

- ``pool1+pool2+`` (a script that writes a ``+`` after each pool) is ``pool1`` and ``pool2``
  there, and is served here the same (it was a ``400 Invalid pool name format``).
- ``+pool1`` and ``pool1++pool2`` keep an empty part, which vmpooler looks up as the pool ``""``
  (404); here they stay a 400 naming the mistake, and change nothing.

Basic credentials: Rack 2.2's ``Basic::Request#credentials`` decodes with ``unpack("m")``, which
needs no ``=`` padding; unpadded base64 was a 401 here.
"""

from __future__ import annotations

import base64

import pytest

from tests.compat.pooler import PoolerFactory, pooler_document, short
from tests.harness import Harness


@pytest.fixture
def pooler(make_pooler: PoolerFactory) -> Harness:
    document = pooler_document([{"name": "pool1", "size": 2, "dns_plugin": "example"},
                                {"name": "pool2", "size": 1, "dns_plugin": "example"}], {"example": "example.com"})
    return make_pooler(document)


@pytest.mark.parametrize("segment", ["pool1+pool2+", "pool1+pool2+++"])
def test_trailing_pluses_in_a_checkout_path_are_dropped_as_vmpooler_drops_them(pooler: Harness, segment: str) -> None:
    reply = pooler.post(f"/api/v3/vm/{segment}")
    assert reply.status == 200, reply.json
    assert list(reply.json) == ["ok", "pool1", "pool2"]
    for pool in ("pool1", "pool2"):
        hostname = reply.json[pool]["hostname"]
        assert hostname.endswith(".example.com")
        vm = pooler.describe(short(hostname))
        assert (vm["template"], vm["state"]) == (pool, "running")


def test_trailing_pluses_in_an_ondemand_path_are_dropped_as_vmpooler_drops_them(pooler: Harness) -> None:
    reply = pooler.post("/api/v3/ondemandvm/pool1+pool1+")
    assert reply.status == 201, reply.json
    request_id = reply.json["request_id"]
    shown = pooler.get(f"/api/v3/ondemandvm/{request_id}")
    assert shown.json["request_id"] == request_id
    assert shown.json["pool1"] == {"ready": "0", "pending": "2"}, shown.json


def test_an_empty_name_before_another_is_still_refused_and_changes_nothing(pooler: Harness) -> None:
    """Trailing ``+`` served, an empty name elsewhere is still the 400 (vmpooler: 404 for ``""``)."""
    assert pooler.post("/api/v3/vm/pool1+").status == 200
    for route in ("vm", "ondemandvm"):
        for segment in ("+pool1", "pool1++pool2", "+", "+++"):
            before = pooler.redis_state()
            reply = pooler.post(f"/api/v3/{route}/{segment}")
            assert (reply.status, reply.json) == (400, {"ok": False, "error": "Invalid pool name format"}), segment
            assert pooler.redis_state() == before


# --- Basic credentials as vmpooler's Rack reads them ---------------------------------------------


@pytest.fixture
def authed(make_pooler: PoolerFactory) -> Harness:
    return make_pooler(pooler_document([{"name": "pool1", "size": 0}], {}, auth=True), fill=False)


@pytest.mark.parametrize("credentials", ["alice:pw", "alice:pass"])
def test_basic_credentials_without_base64_padding_log_in_as_in_vmpooler(authed: Harness, credentials: str) -> None:
    """Rack's ``Basic::Request#credentials`` decodes with ``unpack("m")``, which needs no ``=``
    padding; a script whose base64 tool leaves it off got a token from vmpooler and a 401 here.
    (The two need one and two ``=``.)"""
    unpadded = base64.b64encode(credentials.encode()).decode().rstrip("=")
    reply = authed.post("/api/v3/token", headers={"Authorization": f"Basic {unpadded}"})
    assert reply.status == 200, reply.json
    token = reply.json["token"]
    assert authed.get(f"/api/v3/token/{token}").json[token]["user"] == "alice"


def test_basic_credentials_that_are_not_base64_are_still_refused(authed: Harness) -> None:
    """Only the padding may be left off: another character, a length no base64 has, a space
    inside or padding past the end is still the 401 with the challenge, and no token is made."""
    assert authed.post("/api/v3/token", headers={"Authorization": "Basic YWxpY2U6cHc"}).status == 200
    for encoded in ("YWxpY2U6cHc!", "YWxpY2U6c", "YWxp Y2U6cHc=", "YWxpY2U6cHc==="):
        before = authed.redis_state()
        reply = authed.post("/api/v3/token", headers={"Authorization": f"Basic {encoded}"})
        assert (reply.status, reply.json["ok"]) == (401, False), encoded
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="Authentication required"'
        assert authed.redis_state() == before
