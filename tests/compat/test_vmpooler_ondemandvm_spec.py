"""vmpooler's spec/integration/api/v3/ondemandvm_spec.rb (/ondemandvm), ported.

Its config: ``max_ondemand_instances_per_request`` 50, ``backend_weight`` {compute1: 5,
compute2: 0}, pools pool1 (clone target compute1), pool2 (compute2) and pool3 (compute1), all of
size 0 with the domain of dns config 'mock' (example.com), aliases poolone -> pool1 and pool2 ->
pool1 (an alias with the name of another pool), no auth. Each ``it``, and where it is checked:

POST /ondemandvm
- 'generates a request_id when none is provided' (201 ``{"ok": true, "request_id": <uuid>}``) and
  'uses a configured platform to fulfill a ondemand request' (an alias):
  tests/ondemand/test_ondemand_requests.py::test_full_life_built_ready_checked_out_and_deleted
- 'sets the platform string in redis ... using weight' (pool2 is built in pool1, pool2's weight
  being 0) and, with compute1's weight 0 too, 'sets the platform string ... selected platforms'
  (pool1 still built in pool1): test_a_request_is_built_in_the_pool_backend_weight_chooses below
- 'should reject the request with a message' (403, the maximum named):
  tests/ondemand/test_ondemand_requests.py::test_over_the_limit_is_a_403_naming_the_maximum
- 'uses the given request_id when provided', 'returns 409 conflict error when the request_id has
  been used' (``{"ok": false, "request_id", "message"}``):
  tests/ondemand/test_ondemand_requests.py::test_duplicate_request_id_is_a_409_and_changes_nothing
- 'sets the token and user' (with auth): the request is its owner's,
  tests/auth_api/test_admins_and_privacy.py::test_an_ondemand_request_is_seen_by_its_owner_only
- 'returns the bad template' (404 ``bad_templates``) and 'returns 400 and a message when JSON is
  invalid': tests/ondemand/test_ondemand_requests.py::test_bad_requests_leave_redis_unchanged

GET /ondemandvm/:requestid
- 'returns 404 with message when request is not found':
  tests/ondemand/test_ondemand_requests.py::test_bad_requests_leave_redis_unchanged
- 'returns 202 while the request is waiting' (ready/pending counts as strings), 'returns 200 with
  hostnames when the request is ready' (FQDNs, always a list), 'returns a message that the request
  has been deleted': tests/ondemand/test_ondemand_requests.py::test_full_life_built_ready_checked_out_and_deleted
- 'returns a message that the request has failed' (naming ondemand_request_ttl):
  tests/ondemand/test_ondemand_requests.py::test_request_fails_after_its_ttl_and_its_vms_are_destroyed

DELETE /ondemandvm/:requestid
- 'returns 404 with message when request is not found': test_deleting_an_unknown_request_is_a_404_naming_it below
- 'returns 200 for a deleted request', 'moves allocated instances to the completed queue':
  tests/ondemand/test_ondemand_requests.py::test_full_life_built_ready_checked_out_and_deleted

Not in the spec, vmpooler's code: a body naming no pool (none, or ``null``) is a 404
(test_a_body_naming_no_pool_is_vmpoolers_no_payload_404_and_changes_nothing below). How long a
request id answers (its pool_manager's ``request_expired?`` and ``check_ondemand_request_ready``):
a request not ready ``ondemand_request_ttl`` minutes after it was made answers 200 ``ready:
false`` naming that setting, for ``data_ttl`` hours, as there; then it is the 404 of an unknown
id and its id may be used again (test_a_request_past_its_ttl_fails_and_is_forgotten_data_ttl_later
below). A ready request answers 30 days after it became ready, as there, and longer while its VMs
may run (``data_ttl`` past their lifetimes' end; vmpooler renews nothing):
tests/ondemand/test_ondemand_ready_kept.py::test_a_ready_request_answers_30_days_after_it_became_ready_then_is_forgotten.

vmpooler's Redis layout, checked as what a client sees of it (its spec mocks Redis calls):
'creates a provisioning request in redis' (its zadd: the request waits, then is built),
'sets a platform string in redis for the request to indicate selected platforms' (its hset of
``poolone:pool1:1``: answered under poolone, one VM, built in pool1), 'marks the request hash for
expiration in two weeks' (its expire on DELETE: the deleted request still answers, its id still
taken, until Redis forgets it data_ttl later) and 'deletes the set tracking instances allocated
for the request' (its del: no VM listed under the request once deleted):
test_a_request_is_queued_named_by_its_alias_emptied_by_delete_and_kept_as_deleted below. The two
weighted 'sets the platform string' ``it``s are ported as what a client sees of them: the pool
the VM is built in.

Deliberately different (docs/auth.md, docs/compatibility.md): with ``:auth:`` a request is
seen and deleted by its owner only
(tests/auth_api/test_ownership.py::test_an_ondemand_request_is_deleted_only_by_its_owner), and
``max_ondemand_instances_per_request`` bounds the whole request, not each pool of it.
"""

from __future__ import annotations

import uuid

import pytest

from tests.compat.api_spec_support import missing_tests, vmpooler_stack
from tests.harness import Harness, HarnessFactory

POOLS = [
    {"name": "pool1", "size": 0, "clone_target": "compute1", "dns_plugin": "mock", "alias": ["poolone", "pool2"]},
    {"name": "pool2", "size": 0, "clone_target": "compute2", "dns_plugin": "mock"},
    {"name": "pool3", "size": 0, "clone_target": "compute1", "dns_plugin": "mock"},
]
DNS_CONFIGS = {"mock": {"dns_class": "mock", "domain": "example.com"}}
"""The spec's: a class we ship no plugin for gives the pools their domain and manages no record."""


def pooler_weighing(make_harness: HarnessFactory, weights: dict[str, int]) -> Harness:
    """The spec's service, with its ``backend_weight``."""
    config = {"site_name": "test pooler", "vm_lifetime_auth": 2, "max_ondemand_instances_per_request": 50,
              "backend_weight": weights}
    return vmpooler_stack(make_harness, POOLS, config, dns_configs=DNS_CONFIGS)


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []


# its 'sets the platform string in redis ... using weight' (requested pool2, built in pool1) and,
# 'with a backend of 0 weight', '... to indicate the selected platforms' (pool1 built in pool1).
@pytest.mark.parametrize("requested, weights", [
    ("pool2", {"compute1": 5, "compute2": 0}),
    ("pool1", {"compute1": 0, "compute2": 0}),
], ids=["weighted", "weight-0"])
def test_a_request_is_built_in_the_pool_backend_weight_chooses(
    make_harness: HarnessFactory, requested: str, weights: dict[str, int]
) -> None:
    pooler = pooler_weighing(make_harness, weights)
    created = pooler.post("/api/v3/ondemandvm", {requested: "1"})
    assert created.status == 201
    pooler.run_passes()
    shown = pooler.get(f"/api/v3/ondemandvm/{created.json['request_id']}")
    assert shown.status == 200
    (hostname,) = shown.json[requested]["hostname"]
    assert hostname.endswith(".example.com")
    assert pooler.describe(hostname.split(".")[0])["template"] == "pool1"


# it 'returns 404 with message when request is not found' (DELETE)
def test_deleting_an_unknown_request_is_a_404_naming_it(make_harness: HarnessFactory) -> None:
    pooler = pooler_weighing(make_harness, {"compute1": 5, "compute2": 0})
    request_id = str(uuid.UUID(int=42))
    assert pooler.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (
        404, {"ok": False, "message": f"no request found for request_id '{request_id}'"})


# (no spec) a body naming no pool, which vmpooler's code answers two ways (docs/compatibility.md)
@pytest.mark.parametrize("body", [b"", b"null"], ids=["no body", "null"])
def test_a_body_naming_no_pool_is_vmpoolers_no_payload_404_and_changes_nothing(make_harness: HarnessFactory,
                                                                               body: bytes) -> None:
    """``null`` is vmpooler's "no payload" branch (404); no body at all is the same answer here
    (vmpooler's ``JSON.parse("")`` raises: its 400), as ``POST /vm`` with none is in both."""
    pooler = pooler_weighing(make_harness, {"compute1": 5, "compute2": 0})
    before = pooler.redis_state()
    assert pooler.answer("POST", "/api/v3/ondemandvm", raw=body) == (404, {"ok": False, "message": "no pool requested"})
    if not body:
        assert pooler.answer("POST", "/api/v3/vm", raw=body) == (404, {"ok": False, "error": "no pool requested"})
    assert pooler.redis_state() == before


# The four ``it``s that check vmpooler's Redis layout through mocks, as what a client sees of them:
# 'creates a provisioning request in redis' (its zadd to the queue the manager builds from),
# 'sets a platform string in redis ... selected platforms' (its hset of ``poolone:pool1:1``),
# 'deletes the set tracking instances allocated for the request' (its del) and 'marks the request
# hash for expiration in two weeks' (its expire, on DELETE).
def test_a_request_is_queued_named_by_its_alias_emptied_by_delete_and_kept_as_deleted(
    make_harness: HarnessFactory,
) -> None:
    pooler = pooler_weighing(make_harness, {"compute1": 5, "compute2": 0})
    created = pooler.post("/api/v3/ondemandvm", {"poolone": "1"})
    assert created.status == 201
    request_id = created.json["request_id"]
    path = f"/api/v3/ondemandvm/{request_id}"

    # Queued: waiting at once, under the name asked for, one VM; the next passes build it.
    assert pooler.answer("GET", path) == (
        202, {"ok": True, "request_id": request_id, "ready": False, "poolone": {"ready": "0", "pending": "1"}})
    pooler.run_passes()
    # The platform string ``poolone:pool1:1``: asked as poolone, one VM, built in pool1.
    status, ready = pooler.answer("GET", path)
    assert status == 200 and set(ready) == {"ok", "request_id", "ready", "poolone"}
    (hostname,) = ready["poolone"]["hostname"]
    vm = hostname.split(".")[0]
    assert (pooler.describe(vm)["template"], pooler.describe(vm)["state"]) == ("pool1", "running")

    # DELETE empties the request: no VM listed under it any more, and the VM leaves service.
    pooler.client.persist(pooler.store.keys.ondemand(request_id))  # so the expiry below is the DELETE's
    assert pooler.answer("DELETE", path) == (200, {"ok": True})
    deleted = (200, {"ok": True, "request_id": request_id, "ready": False, "message": "The request has been deleted"})
    assert pooler.answer("GET", path) == deleted
    pooler.run_passes()
    assert pooler.describe(vm)["state"] == "destroyed"
    assert pooler.answer("GET", path) == deleted

    # Kept, deleted, for a while: its id is still taken (vmpooler's 409), and Redis forgets the
    # request data_ttl after the DELETE (168 hours; vmpooler: 1,296,000 s, 15 days), then a 404.
    assert pooler.answer("POST", "/api/v3/ondemandvm", {"pool3": "1", "request_id": request_id}) == (
        409, {"ok": False, "message": f"request_id '{request_id}' has already been created", "request_id": request_id})
    data_ttl = pooler.store.data_ttl_seconds
    assert data_ttl == 168 * 3600
    assert data_ttl - 60 < pooler.client.ttl(pooler.store.keys.ondemand(request_id)) <= data_ttl
    pooler.client.delete(pooler.store.keys.ondemand(request_id))  # what the expiry does
    unknown = {"ok": False, "message": f"no request found for request_id '{request_id}'"}
    assert pooler.answer("GET", path) == (404, unknown)


def test_a_request_past_its_ttl_fails_and_is_forgotten_data_ttl_later(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 0, "vmready_fail_percent": 100}])
    request_id = pooler.post("/api/v3/ondemandvm", {"pool1": "1"}).json["request_id"]
    path = f"/api/v3/ondemandvm/{request_id}"
    pooler.reconcile("pool1")
    assert pooler.answer("GET", path) == (
        202, {"ok": True, "request_id": request_id, "ready": False, "pool1": {"ready": "0", "pending": "1"}})
    ttl_minutes = pooler.config.service.ondemand_request_ttl
    assert ttl_minutes == 5  # vmpooler's default
    pooler.clock.advance(ttl_minutes * 60 + 1)
    pooler.reconcile("pool1")
    message = "The request failed to provision instances within the configured ondemand_request_ttl '5'"
    failed = (200, {"ok": True, "request_id": request_id, "ready": False, "message": message})
    assert pooler.answer("GET", path) == failed
    # Kept data_ttl hours, as vmpooler's request_expired? keeps it; the id is still taken meanwhile.
    data_ttl = pooler.store.data_ttl_seconds
    assert data_ttl - 60 < pooler.client.ttl(pooler.store.keys.ondemand(request_id)) <= data_ttl
    assert pooler.answer("POST", "/api/v3/ondemandvm", {"pool1": "1", "request_id": request_id})[0] == 409
    assert pooler.answer("GET", path) == failed
    pooler.client.delete(pooler.store.keys.ondemand(request_id))  # what the expiry does
    unknown = {"ok": False, "message": f"no request found for request_id '{request_id}'"}
    assert pooler.answer("GET", path) == (404, unknown)
    assert pooler.answer("DELETE", path)[0] == 404
    assert pooler.answer("POST", "/api/v3/ondemandvm", {"pool1": "1", "request_id": request_id}) == (
        201, {"ok": True, "request_id": request_id})
