"""vmpooler's spec/integration/api/v3/vm_hostname_spec.rb ('/vm/:hostname': PUT, DELETE, snapshot,
revert), ported to HTTP checks (tests/compat/pooler.py says how).

Its ``testhost`` is a bare VM hash (``create_vm``) in no pool and no state, which vmpooler let
anyone tag, extend and snapshot. Ours must be checked out: here ``testhost`` is a VM of pool1
checked out without a token (see "Deliberately different").

Each ``it`` and where it is checked:

PUT /vm/:hostname
- 'allows tags to be set', 'skips empty tags': tests/api/test_vm_routes.py::
  test_tags_are_stored_filtered_and_counted.
- '(tagfilter configured) correctly filters tags', "doesn't eat tags not matching filter":
  test_tagfilter_keeps_the_capture_or_the_whole_value.
- 'does not set tags if request body format is invalid' (``{"tags":{"tested"}}``, not JSON):
  tests/api/test_errors.py::test_error_answers_and_changes_nothing (``'{"lifetime": '``: 400,
  nothing changed).
- '(allowed_tags configured) fails if specified tag is not in allowed_tags array': test_errors.py
  (``{"lifetime": 5, "tags": {"project": "ci", "colour": "red"}}``: 400, not even the allowed tag
  or the lifetime is set).
- '(auth not configured) allows VM lifetime to be modified without a token':
  test_vm_routes.py::test_change_lifetime; 'does not allow a lifetime to be 0': test_errors.py
  (``{"lifetime": 0}``) and tests/auth_api/test_ownership.py::test_lifetime_respects_max_lifetime_upper_limit
  (``"0"``); 'does not enforce a lifetime' (20000 without ``max_lifetime_upper_limit``):
  test_errors.py::test_lifetime_limit_is_only_enforced_when_configured; 'does not allow a lifetime
  to be initially past config max_lifetime_upper_limit': test_errors.py (168 with a limit of 168).
- '(auth configured) allows VM lifetime to be modified with a token', 'does not allows VM
  lifetime to be modified without a token': test_ownership.py::
  test_lifetime_changes_need_a_token_even_on_an_unowned_vm.

DELETE /vm/:hostname
- '(auth not configured) does not delete a non-existant VM': test_errors.py (DELETE nosuchvm:
  404); 'deletes an existing VM': test_vm_routes.py::test_return_a_vm.
- '(auth configured) (checked-out without token) deletes a VM without supplying a token':
  test_ownership.py::test_lifetime_changes_need_a_token_even_on_an_unowned_vm; '(checked-out with
  token) fails to delete a VM without supplying a token': test_ownership.py::
  test_without_a_token_an_owned_vm_is_401; 'deletes a VM when token is supplied':
  test_ownership.py::test_any_token_of_the_owner_may_change_and_return_it.

POST /vm/:hostname/snapshot and /vm/:hostname/snapshot/:snapshot
- '(auth not configured) creates a snapshot', 'reverts to a snapshot', 'fails if the specified
  snapshot does not exist': tests/ondemand/test_vm_tasks.py::test_snapshot_and_revert_round_trip.
- '(auth configured)' 'returns a 401 if not authed' (both routes), 'creates a snapshot if
  authed', 'fails if authed and the specified snapshot does not exist', 'reverts to a snapshot if
  authed': test_snapshots_with_auth_need_a_token_first.

Deliberately different (docs/api.md, "Changes"; docs/compatibility.md):
- PUT, snapshot and revert act on a checked-out VM only; a ready or unknown one is a 404
  (vmpooler changed any VM hash it had, so tags put on a ready VM were on the next user's VM):
  test_ownership.py::test_nobody_changes_a_ready_vm_before_its_user_gets_it,
  test_vm_tasks.py::test_unknown_or_not_running_vms.
- With auth, a VM checked out with a token is changed and returned only with a token of the same
  user (vmpooler took any valid token): test_ownership.py.
- The snapshot id is 32 hexadecimal characters (vmpooler: 32 of ``[a-z0-9]``, starting with a
  letter); clients only echo it back.

Skipped, internal to vmpooler's Redis: the ``tag:<name>`` and ``snapshot:<id>`` fields of the VM
hash and the ``vmpooler__tasks__snapshot``/``snapshot-revert`` sets the spec reads (here the
queued task shows in GET /vm once the pass has run it); the spec's commented-out "does not allow a
lifetime to be extended past config 168".
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.compat.pooler import PoolerFactory, pooler_document, request_checkout, short, token_header
from tests.harness import Harness


def vm_hostname_spec_document(**options: Any) -> dict[str, Any]:
    """The spec's config: pool1 (one ready VM here) and pool2, ``poolone`` an alias of pool1."""
    pools = [{"name": "pool1", "size": 1, "alias": "poolone"}, {"name": "pool2", "size": 0}]
    return pooler_document(pools, {}, **options)


def checked_out_testhost(pooler: Harness) -> str:
    """The spec's ``testhost``: here pool1's VM, checked out without a token."""
    reply = request_checkout(pooler, [("pool1", 1)], "body")
    assert reply.status == 200, reply.json
    return short(reply.json["pool1"]["hostname"])


@pytest.mark.parametrize(("sent", "kept"), [
    ("foo.com/something.html", "foo.com"),  # 'correctly filters tags'
    ("foo.com", "foo.com"),  # "doesn't eat tags not matching filter"
])
def test_tagfilter_keeps_the_capture_or_the_whole_value(make_pooler: PoolerFactory, sent: str, kept: str) -> None:
    """'(tagfilter configured)': ``url`` filtered by ``(.*)\\/`` keeps what precedes the last
    slash, and a value without one whole."""
    document = vm_hostname_spec_document()
    document["tagfilter"] = {"url": r"(.*)\/"}
    pooler = make_pooler(document)
    host = checked_out_testhost(pooler)
    reply = pooler.put(f"/api/v3/vm/{host}", {"tags": {"url": sent}})
    assert (reply.status, reply.json) == (200, {"ok": True})
    assert pooler.describe(host)["tags"] == {"url": kept}


def test_snapshots_with_auth_need_a_token_first(make_pooler: PoolerFactory) -> None:
    """'(auth configured)': without a token both routes are 401, even for a VM that does not exist
    (the token is checked before the VM), and nothing is queued; with one, a snapshot is 202 with
    a 32-character id, a revert to it 202, and a revert to a snapshot the VM never had 404."""
    pooler = make_pooler(vm_hostname_spec_document(auth=True))
    host = checked_out_testhost(pooler)
    before = pooler.redis_state()
    for target in ("/api/v3/vm/testhost/snapshot", f"/api/v3/vm/{host}/snapshot",
                   "/api/v3/vm/testhost/snapshot/testsnapshot", f"/api/v3/vm/{host}/snapshot/testsnapshot"):
        refused = pooler.post(target)
        assert (refused.status, refused.json["ok"]) == (401, False), target
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="Authentication required"'
    assert pooler.redis_state() == before

    headers = token_header(pooler)
    unknown = pooler.post(f"/api/v3/vm/{host}/snapshot/testsnapshot", headers=headers)
    assert (unknown.status, unknown.json["ok"]) == (404, False)
    taken = pooler.post(f"/api/v3/vm/{host}/snapshot", headers=headers)
    assert taken.status == 202 and list(taken.json) == ["ok", host]
    snapshot = taken.json[host]["snapshot"]
    assert taken.json == {"ok": True, host: {"snapshot": snapshot}} and len(snapshot) == 32
    reverted = pooler.post(f"/api/v3/vm/{host}/snapshot/{snapshot}", headers=headers)
    assert (reverted.status, reverted.json) == (202, {"ok": True})
    pooler.run_passes("pool1", seconds=61)
    assert pooler.describe(host)["snapshots"] == [snapshot]
