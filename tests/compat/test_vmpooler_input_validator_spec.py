"""vmpooler's spec/unit/api/input_validator_spec.rb (its ``InputValidator``, d0020be, December
2025), ported to HTTP checks: each ``it`` calls one validator method directly; here the same value
is sent to the route of vmpooler's v3.rb that calls that method, and the check is what a client
is answered (status, ``ok``, the message the ``it`` looks for) and that a refusal changes nothing.

'#validate_hostname' (GET, PUT, DELETE /vm/:hostname and POST /vm/:hostname/disk/:size call it
before the VM is looked up):
- 'accepts valid hostnames' (``test-host.example.com``, ``host123``: looked up, so a 404 for no
  such VM, never a 400), 'rejects invalid hostnames' (``invalid_host!``: 400 ``Invalid hostname
  format``), 'rejects hostnames that are too long' (300 characters: 400 ``Hostname too long``):
  test_hostnames_are_checked_before_any_lookup.
- 'rejects empty hostnames': no route of either service takes an empty hostname: ``GET /vm/`` is
  the pool list, and ``PUT`` or ``DELETE /vm/`` is vmpooler's ``404 {"ok": false}`` for no route,
  ours the ``405`` (with ``Allow``) of a method the route does not have (docs/compatibility.md,
  "Checked and left as they are"): test_an_empty_hostname_names_no_vm.

'#validate_pool_name' (POST /vm's body):
- 'accepts valid pool names', 'rejects invalid pool names' (``invalid pool!``), 'rejects pool names
  that are too long' (150 characters: ``Pool name too long``; fixed here, it was ``Invalid pool
  name format``): test_pool_names_in_a_checkout_body; the same names in a checkout's path
  (``POST /vm/<name>``, which vmpooler does not validate) with the same words:
  test_pool_names_in_a_checkout_path_are_answered_as_in_a_body.

'#validate_tag' (PUT /vm/:hostname's tags; vmpooler answers each refusal in ``failure``):
- 'accepts valid tags', 'rejects tags with invalid keys', 'rejects tags with invalid characters in
  value' (``value<script>``), 'rejects tags that are too long': test_tags_are_checked_one_by_one.

'#validate_vm_count' (POST /vm's counts):
- 'accepts valid VM counts' (5, ``"10"``), 'rejects counts less than 1', 'rejects counts greater
  than 100', 'rejects non-integer values': test_vm_counts_in_a_checkout_body.

'#validate_disk_size' (POST /vm/:hostname/disk/:size):
- 'accepts valid disk sizes' (50, ``"100"``), 'rejects sizes less than 1', 'rejects sizes greater
  than 2048': test_disk_sizes. vmpooler answers ``Disk size must be at least 1`` / ``at most
  2048``; ours says ``disk size must be a whole number of GB from 1 to 2048`` (the ``it``s check
  ``ok`` only).

'#validate_lifetime':
- 'accepts valid lifetimes' (24, ``"48"``): test_lifetimes_vmpooler_never_checks_against_a_week.
- 'rejects lifetimes greater than 168 hours (1 week)': no route of vmpooler's calls
  ``validate_lifetime``: its PUT /vm/:hostname reads the lifetime with ``to_i`` and bounds it by
  ``max_lifetime_upper_limit`` only, so a lifetime of 200 is taken there, and here
  (test_lifetimes_vmpooler_never_checks_against_a_week; the limit:
  tests/api/test_errors.py::test_lifetime_limit_is_only_enforced_when_configured).

'#sanitize_json_body' (POST /vm and PUT /vm/:hostname read their body with it):
- 'parses valid JSON', 'rejects invalid JSON' (``Invalid JSON: ...``), 'rejects non-object JSON'
  (``Request body must be a JSON object``): test_json_bodies.
- 'rejects deeply nested JSON' (``Request body too complex``) and 'rejects bodies that are too
  large' (over 10,240 characters: ``Request body too large``): deliberately different
  (docs/compatibility.md, "We deliberately differ"): we read bodies up to 64 KiB (a 413 beyond)
  and any nesting the parser reads, and check each value on its own, so the nested body is a 400
  naming what is wrong with it (``VM count must be a valid integer``, ``Unknown argument a.``)
  and the 20,000-character one a 400 for its unknown key (test_json_bodies). A 20 KB body of
  tags a client means (beaker's long tags), which vmpooler refuses, is taken:
  test_a_body_of_many_tags_over_vmpoolers_10_kb_is_taken.

'#validation_error?' ('returns true for error responses', 'returns false for successful
responses'): vmpooler's internal test of its own ``{"ok" => false, "error" => ...}`` shape; over
HTTP it is every refusal above being ``{"ok": false, "error": ...}`` (or ``failure``) and every
success ``"ok": true``, which each test here checks.
"""

from __future__ import annotations

import json

import pytest

from tests.compat.api_spec_support import missing_tests, vmpooler_stack
from tests.harness import Harness, HarnessFactory

POOLS = [{"name": "centos-7-x86_64", "size": 16}, {"name": "ubuntu-2204", "size": 2}]


@pytest.fixture
def pooler(make_harness: HarnessFactory) -> Harness:
    harness = vmpooler_stack(make_harness, POOLS)
    harness.fill(rounds=20)
    return harness


def test_hostnames_are_checked_before_any_lookup(pooler: Harness) -> None:
    host = pooler.checkout("centos-7-x86_64")
    # A valid name is looked up: the VM by its FQDN, an unknown one a 404.
    assert pooler.get(f"/api/v3/vm/{host}.example.com").status == 200
    for valid in ("test-host.example.com", "host123"):
        for method, path in (("GET", f"/api/v3/vm/{valid}"), ("DELETE", f"/api/v3/vm/{valid}"),
                             ("POST", f"/api/v3/vm/{valid}/disk/8")):
            reply = pooler.request(method, path)
            assert (reply.status, reply.json["ok"]) == (404, False), (method, path, reply.raw)
        assert pooler.put(f"/api/v3/vm/{valid}", {"lifetime": 2}).status == 404
    before = pooler.redis_state()
    for bad, message in (("invalid_host!", "Invalid hostname format"), ("a" * 300, "Hostname too long")):
        for method, path, body in (("GET", f"/api/v3/vm/{bad}", None), ("PUT", f"/api/v3/vm/{bad}", {"lifetime": 2}),
                                   ("DELETE", f"/api/v3/vm/{bad}", None), ("POST", f"/api/v3/vm/{bad}/disk/8", None)):
            assert pooler.answer(method, path, body) == (400, {"ok": False, "error": message}), (method, bad)
    assert pooler.redis_state() == before


def test_pool_names_in_a_checkout_body(pooler: Harness) -> None:
    status, answer = pooler.answer("POST", "/api/v3/vm", {"centos-7-x86_64": "1", "ubuntu-2204": "1"})
    assert status == 200 and list(answer) == ["ok", "centos-7-x86_64", "ubuntu-2204"]
    before = pooler.redis_state()
    assert pooler.answer("POST", "/api/v3/vm", {"invalid pool!": "1"}) == (
        400, {"ok": False, "error": "Invalid pool name format"})
    # vmpooler's MAX_POOL_NAME_LENGTH is 100: a longer name is "too long", not badly formed.
    assert pooler.answer("POST", "/api/v3/vm", {"a" * 150: "1"}) == (400, {"ok": False, "error": "Pool name too long"})
    assert pooler.answer("POST", "/api/v3/vm", {"centos-7-x86_64": "1", "a" * 101: "1"}) == (
        400, {"ok": False, "error": "Pool name too long"})
    assert pooler.answer("POST", "/api/v3/vm", {"": "1"}) == (400, {"ok": False, "error": "Pool name is required"})
    # An on-demand request's names are read alike (vmpooler checks none there: a 404 bad_templates).
    assert pooler.answer("POST", "/api/v3/ondemandvm", {"a" * 150: "1"}) == (
        400, {"ok": False, "error": "Pool name too long"})
    assert pooler.redis_state() == before
    # 100 characters is a name: looked up, and no pool has it.
    status, answer = pooler.answer("POST", "/api/v3/vm", {"a" * 100: "1"})
    assert (status, answer["ok"]) == (404, False)


def test_pool_names_in_a_checkout_path_are_answered_as_in_a_body(pooler: Harness) -> None:
    """``POST /vm/<name>`` (and ``/ondemandvm/<name>``) names its pools in the path: the same name
    is refused with the same words as in a body. A 150-character name was ``Invalid pool name
    format`` in a path while the body said ``Pool name too long``, sending a user looking for a
    bad character in a name that had none."""
    before = pooler.redis_state()
    too_long = (400, {"ok": False, "error": "Pool name too long"})
    bad_format = (400, {"ok": False, "error": "Invalid pool name format"})
    for route in ("/api/v3/vm", "/api/v3/ondemandvm"):
        assert pooler.answer("POST", f"{route}/{'a' * 150}") == too_long, route
        assert pooler.answer("POST", f"{route}/centos-7-x86_64+{'a' * 101}") == too_long, route
        # The first bad name is the one answered for, as in a body.
        assert pooler.answer("POST", f"{route}/invalid%21+{'a' * 150}") == bad_format, route
        assert pooler.answer("POST", f"{route}/{'a' * 150}+invalid%21") == too_long, route
        assert pooler.answer("POST", f"{route}/centos-7-x86_64++centos-7-x86_64") == bad_format, route
    assert pooler.redis_state() == before
    status, answer = pooler.answer("POST", f"/api/v3/vm/{'a' * 100}")
    assert (status, answer["ok"]) == (404, False)


def test_tags_are_checked_one_by_one(pooler: Harness) -> None:
    host = pooler.checkout("centos-7-x86_64")
    tags = {"project": "test-123", "owner": "user@example.com"}
    assert pooler.answer("PUT", f"/api/v3/vm/{host}", {"tags": tags}) == (200, {"ok": True})
    assert pooler.describe(host)["tags"] == tags
    before = pooler.redis_state()
    for bad, message in (({"invalid key!": "value"}, "Invalid tag key format"),
                         ({"key": "value<script>"}, "Tag value contains invalid characters"),
                         ({"key": "a" * 300}, "Tag value too long")):
        assert pooler.answer("PUT", f"/api/v3/vm/{host}", {"tags": bad}) == (400, {"ok": False, "failure": [message]})
    assert pooler.redis_state() == before


def test_vm_counts_in_a_checkout_body(pooler: Harness) -> None:
    status, answer = pooler.answer("POST", "/api/v3/vm", {"centos-7-x86_64": 5})
    assert status == 200 and len(answer["centos-7-x86_64"]["hostname"]) == 5
    status, answer = pooler.answer("POST", "/api/v3/vm", {"centos-7-x86_64": "10"})
    assert status == 200 and len(answer["centos-7-x86_64"]["hostname"]) == 10
    before = pooler.redis_state()
    for count, message in ((0, "VM count must be at least 1"), (150, "VM count must be at most 100"),
                           ("abc", "VM count must be a valid integer")):
        assert pooler.answer("POST", "/api/v3/vm", {"ubuntu-2204": count}) == (400, {"ok": False, "error": message})
    assert pooler.redis_state() == before


def test_disk_sizes(pooler: Harness) -> None:
    host = pooler.checkout("centos-7-x86_64")
    for size in ("50", "100"):
        assert pooler.answer("POST", f"/api/v3/vm/{host}/disk/{size}") == (
            202, {"ok": True, host: {"disk": f"+{size}gb"}})
    before = pooler.redis_state()
    for size in ("0", "3000"):
        status, answer = pooler.answer("POST", f"/api/v3/vm/{host}/disk/{size}")
        assert (status, answer["ok"]) == (400, False) and "2048" in answer["error"]
    assert pooler.redis_state() == before


def test_lifetimes_vmpooler_never_checks_against_a_week(pooler: Harness) -> None:
    host = pooler.checkout("centos-7-x86_64")
    for lifetime, hours in ((24, 24), ("48", 48), (200, 200)):
        assert pooler.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": lifetime}) == (200, {"ok": True})
        assert pooler.describe(host)["lifetime"] == hours


def test_json_bodies(pooler: Harness) -> None:
    status, answer = pooler.answer("POST", "/api/v3/vm", raw=b'{"ubuntu-2204": "1"}')
    assert status == 200 and answer["ok"] is True
    host = pooler.checkout("centos-7-x86_64")
    before = pooler.redis_state()
    for path in ("/api/v3/vm", f"/api/v3/vm/{host}"):
        method = "POST" if path == "/api/v3/vm" else "PUT"
        status, answer = pooler.answer(method, path, raw=b"{invalid}")
        assert (status, answer["ok"]) == (400, False) and answer["error"].startswith("Invalid JSON"), answer
        assert pooler.answer(method, path, raw=b'["array"]') == (
            400, {"ok": False, "error": "Request body must be a JSON object"})
    # Deliberately different: what is wrong is named instead of "too complex" / "too large".
    deep = b'{"a":{"b":{"c":{"d":{"e":{"f":"too deep"}}}}}}'
    assert pooler.answer("POST", "/api/v3/vm", raw=deep) == (
        400, {"ok": False, "error": "VM count must be a valid integer"})
    assert pooler.answer("PUT", f"/api/v3/vm/{host}", raw=deep) == (
        400, {"ok": False, "failure": ["Unknown argument a."]})
    large = b'{"data":"' + b"a" * 20000 + b'"}'
    assert pooler.answer("PUT", f"/api/v3/vm/{host}", raw=large) == (
        400, {"ok": False, "failure": ["Unknown argument data."]})
    assert pooler.redis_state() == before


def test_an_empty_hostname_names_no_vm(pooler: Harness) -> None:
    assert pooler.answer("GET", "/api/v3/vm/") == (200, ["centos-7-x86_64", "ubuntu-2204"])
    before = pooler.redis_state()
    for method in ("PUT", "DELETE"):
        reply = pooler.request(method, "/api/v3/vm/", {"lifetime": 2} if method == "PUT" else None)
        assert (reply.status, reply.json["ok"], reply.headers["Allow"]) == (405, False, "GET, HEAD, POST"), method
    assert pooler.redis_state() == before


def test_a_body_of_many_tags_over_vmpoolers_10_kb_is_taken(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, POOLS, {"max_tags_per_vm": 64})
    pooler.fill(rounds=20)
    host = pooler.checkout("centos-7-x86_64")
    tags = {f"tag{n:02}": "v" * 250 for n in range(40)}
    assert len(json.dumps({"tags": tags})) > 10_240
    assert pooler.answer("PUT", f"/api/v3/vm/{host}", {"tags": tags}) == (200, {"ok": True})
    assert pooler.describe(host)["tags"] == tags


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []
