"""Who may change or return a VM, over HTTP (vmpooler accepted any valid token, or none)."""

from __future__ import annotations

import threading

import pytest

from chalicelib.api import vm_tasks
from chalicelib.store import ModifyResult
from tests.auth_api.documents import POOL, document
from tests.harness import Harness, basic
from tests.support import checkout_answers_lost

WWW_AUTHENTICATE = 'Basic realm="Authentication required"'


def tokens(api: Harness, slapd) -> tuple[str, str, str]:
    """Two tokens of alice's and one of bob's."""
    return (api.new_token("alice", slapd.password("alice")), api.new_token("alice", slapd.password("alice")),
            api.new_token("bob", slapd.password("bob")))


def state(api: Harness, vm: str) -> str:
    return api.call("GET", f"/api/v3/vm/{vm}").body[vm]["state"]


def test_another_users_token_cannot_return_the_vm(ldap_api: Harness, slapd):
    alice, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    refused = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob})
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert state(ldap_api, vm) == "running"


def test_another_users_token_cannot_change_the_lifetime(ldap_api: Harness, slapd):
    alice, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    refused = ldap_api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob}, body={"lifetime": 40})
    assert refused.status == 403
    assert ldap_api.call("GET", f"/api/v3/vm/{vm}").body[vm]["lifetime"] == 12


def test_without_a_token_an_owned_vm_is_401(ldap_api: Harness, slapd):
    alice, _, _ = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    for method, body in (("DELETE", None), ("PUT", {"lifetime": 3})):
        reply = ldap_api.call(method, f"/api/v1/vm/{vm}", body=body)
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    # Basic credentials are not a token: the VM routes take X-AUTH-TOKEN only.
    with_password = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers=basic("alice", slapd.password("alice")))
    assert with_password.status == 401
    assert state(ldap_api, vm) == "running"


def test_any_token_of_the_owner_may_change_and_return_it(ldap_api: Harness, slapd):
    alice, alice_again, _ = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    changed = ldap_api.call("PUT", f"/api/v2/vm/{vm}", headers={"X-AUTH-TOKEN": alice_again}, body={"lifetime": 20})
    assert (changed.status, changed.body) == (200, {"ok": True})
    assert ldap_api.call("GET", f"/api/v3/vm/{vm}").body[vm]["lifetime"] == 20
    # Even after the checkout token is deleted, the VM stays alice's.
    ldap_api.call("DELETE", f"/api/v3/token/{alice}", headers=basic("alice", slapd.password("alice")))
    returned = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": alice_again})
    assert (returned.status, returned.body) == (200, {"ok": True})
    assert state(ldap_api, vm) == "destroyed"


def test_a_return_sent_again_is_ok_for_its_owner_only(ldap_api: Harness, slapd):
    """The retry of a return answered 503 ("send the DELETE again", docs/reliability.md
    "Failover") finds the VM returned: ok for whoever may return it (vmfloaty reads only ``ok``,
    and lists a VM answered 404 under "Unable to delete"). Anyone else, and a VM that left
    service for another reason (its lifetime ended), is answered 404 as before: not running."""
    alice, alice_again, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    assert ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": alice}).status == 200
    again = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": alice_again})
    assert (again.status, again.body) == (200, {"ok": True})
    for headers in ({"X-AUTH-TOKEN": bob}, {}):
        others = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers=headers)
        assert (others.status, others.body) == (404, {"ok": False, "error": f"VM {vm} is not running"}), headers

    reaped = ldap_api.checkout(POOL, alice)
    ldap_api.clock.advance(13 * 3600)  # past its 12 hours
    ldap_api.reconcile(POOL)
    assert state(ldap_api, reaped) == "destroyed"
    ended = ldap_api.call("DELETE", f"/api/v3/vm/{reaped}", headers={"X-AUTH-TOKEN": alice})
    assert (ended.status, ended.body["ok"]) == (404, False)


def test_an_invalid_token_is_401_everywhere_and_takes_nothing(ldap_api: Harness, slapd):
    ready = len(ldap_api.services.store.hostnames(POOL, "ready"))
    for bad in ("0" * 32, "not-a-token", "A" * 32):
        headers = {"X-AUTH-TOKEN": bad}
        checkout = ldap_api.call("POST", "/api/v3/vm", headers=headers, body={POOL: 1})
        assert checkout.status == 401 and checkout.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
        assert ldap_api.call("POST", f"/api/v3/vm/{POOL}", headers=headers).status == 401
    assert len(ldap_api.services.store.hostnames(POOL, "ready")) == ready
    vm = ldap_api.checkout(POOL, None)
    assert ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": "0" * 32}).status == 401
    assert state(ldap_api, vm) == "running"


def test_an_invalid_token_is_401_before_the_vm_is_looked_up(ldap_api: Harness, slapd):
    """`PUT` and `DELETE /vm/<host>` check a token sent before they look the VM up: a made-up,
    mistyped or revoked token is a 401 whatever the VM is (docs/auth.md: "an invalid one is 401
    even where none is needed"). Before, a VM not running (unknown, ready, destroyed) answered
    404 first, and the client holding a dead token was not told so."""
    revoked = ldap_api.new_token("alice", slapd.password("alice"))
    ldap_api.call("DELETE", f"/api/v3/token/{revoked}", headers=basic("alice", slapd.password("alice")))
    returned = ldap_api.checkout(POOL, None)
    assert ldap_api.call("DELETE", f"/api/v3/vm/{returned}").status == 200
    ready = ldap_api.services.store.hostnames(POOL, "ready")[0]
    before = ldap_api.redis_state()
    for host in ("no-such-vm", ready, returned):
        for bad in ("0" * 32, "not-a-token", revoked):
            for method, body in (("DELETE", None), ("PUT", {"tags": {"project": "x"}}), ("PUT", {"lifetime": 3})):
                refused = ldap_api.call(method, f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": bad}, body=body)
                assert (refused.status, refused.body) == (401, {"ok": False, "error": "invalid or expired token"}), \
                    (method, host, bad)
                assert refused.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert ldap_api.redis_state() == before
    # Without a token, and with a valid one, a VM not running is still a 404.
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    for headers in ({}, {"X-AUTH-TOKEN": alice}):
        assert ldap_api.call("DELETE", "/api/v3/vm/no-such-vm", headers=headers).status == 404
        assert ldap_api.call("PUT", f"/api/v3/vm/{ready}", headers=headers, body={"tags": {"a": "b"}}).status == 404


@pytest.mark.parametrize("empty", ["", " "], ids=["empty", "blank"])
def test_an_empty_token_is_401_wherever_a_token_is_read(ldap_api: Harness, slapd, empty):
    """`X-AUTH-TOKEN:` with nothing in it is a token sent by mistake (vmfloaty sends the
    `token: ""` of a config as it is), and no token matches it: 401, as vmpooler answers it, on
    the routes where a token is optional too. Before, it was taken for "no token": a checkout went
    through without the user's token (the VM nobody's, its lifetime `vm_lifetime`) and the client
    never learnt its token was missing."""
    headers = {"X-AUTH-TOKEN": empty}
    ready = sorted(ldap_api.services.store.hostnames(POOL, "ready"))
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    created = ldap_api.call("POST", "/api/v3/ondemandvm", headers={"X-AUTH-TOKEN": alice}, body={POOL: "1"})
    request_id = created.body["request_id"]
    vm = ldap_api.checkout(POOL, None)
    before = ldap_api.redis_state()
    for method, path, body in (("POST", "/api/v3/vm", {POOL: 1}), ("POST", f"/api/v3/vm/{POOL}", None),
                               ("PUT", f"/api/v3/vm/{vm}", {"tags": {"project": "x"}}),
                               ("DELETE", f"/api/v3/vm/{vm}", None),
                               ("POST", "/api/v3/ondemandvm", {POOL: "1"}),
                               ("GET", f"/api/v3/ondemandvm/{request_id}", None),
                               ("GET", f"/api/v3/token/{alice}", None)):
        refused = ldap_api.call(method, path, headers=headers, body=body)
        assert (refused.status, refused.body) == (401, {"ok": False, "error": "invalid or expired token"}), path
        assert refused.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert ldap_api.redis_state() == before
    assert set(ready) - {vm} <= set(ldap_api.services.store.hostnames(POOL, "ready"))
    assert state(ldap_api, vm) == "running"


def test_an_invalid_token_on_a_tag_change_is_401_and_changes_nothing(ldap_api: Harness, slapd):
    """Tags need no token (vmpooler's contract), but a token sent is checked as everywhere else.
    Before: `floaty modify <host> --tags ...` with an expired or mistyped token answered 200 and
    tagged the VM, while the same token was a 401 on every other route that reads one."""
    for owner in (None, tokens(ldap_api, slapd)[0]):
        vm = ldap_api.checkout(POOL, owner)
        for body in ({"tags": {"project": "x"}}, {}):
            refused = ldap_api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": "0" * 32}, body=body)
            assert (refused.status, refused.body) == (401, {"ok": False, "error": "invalid or expired token"})
            assert refused.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
        assert ldap_api.call("GET", f"/api/v3/vm/{vm}").body[vm]["tags"] == {}
        assert ldap_api.call("PUT", f"/api/v3/vm/{vm}", body={"tags": {"project": "y"}}).status == 200

def test_a_valid_token_gives_vm_lifetime_auth(ldap_api: Harness, slapd):
    alice, _, _ = tokens(ldap_api, slapd)
    with_token = ldap_api.checkout(POOL, alice)
    without = ldap_api.checkout(POOL, None)
    assert ldap_api.call("GET", f"/api/v3/vm/{with_token}").body[with_token]["lifetime"] == 12
    assert ldap_api.call("GET", f"/api/v3/vm/{without}").body[without]["lifetime"] == 2


def test_lifetime_changes_need_a_token_even_on_an_unowned_vm(ldap_api: Harness, slapd):
    _, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, None)
    assert ldap_api.call("PUT", f"/api/v3/vm/{vm}", body={"lifetime": 5}).status == 401
    # Any user's token may: the VM has no owner. Tags need no token (vmpooler's contract).
    assert ldap_api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob}, body={"lifetime": 5}).status == 200
    assert ldap_api.call("PUT", f"/api/v3/vm/{vm}", body={"tags": {"project": "x"}}).status == 200
    described = ldap_api.call("GET", f"/api/v3/vm/{vm}").body[vm]
    assert (described["lifetime"], described["tags"]) == (5, {"project": "x"})
    # An unowned VM is returned without a token, as in vmpooler.
    assert ldap_api.call("DELETE", f"/api/v3/vm/{vm}").status == 200


def test_lifetime_respects_max_lifetime_upper_limit(ldap_api: Harness, slapd):
    alice, _, _ = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    path, headers = f"/api/v3/vm/{vm}", {"X-AUTH-TOKEN": alice}
    too_long = ldap_api.call("PUT", path, headers=headers, body={"lifetime": 48})
    assert too_long.status == 400
    assert too_long.body == {"ok": False, "failure": [
        "You provided a lifetime (48) that exceeds the configured maximum of 48."]}
    assert ldap_api.call("PUT", path, headers=headers, body={"lifetime": "0"}).body["failure"] == [
        "Lifetime must be a positive integer (got 0)"]
    assert ldap_api.call("PUT", path, headers=headers, body={"lifetime": 47}).status == 200
    assert ldap_api.call("GET", path).body[vm]["lifetime"] == 47


def test_without_auth_tokens_are_ignored(make_api):
    api = make_api(document(None))
    api.fill(POOL)
    vm = api.checkout(POOL, "0" * 32)  # any header, valid or not, is ignored
    assert api.call("GET", f"/api/v3/vm/{vm}").body[vm]["lifetime"] == 2
    assert api.services.store.get_vm(vm).token_user == ""
    assert api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": "junk"}, body={"lifetime": 5}).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{vm}").status == 200


def test_an_ondemand_request_is_deleted_only_by_its_owner(ldap_api: Harness, slapd):
    alice, _, bob = tokens(ldap_api, slapd)
    created = ldap_api.call("POST", "/api/v3/ondemandvm", headers={"X-AUTH-TOKEN": alice}, body={POOL: "1"})
    assert created.status == 201
    request_id = created.body["request_id"]
    refused = ldap_api.call("DELETE", f"/api/v3/ondemandvm/{request_id}", headers={"X-AUTH-TOKEN": bob})
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert ldap_api.call("GET", f"/api/v3/ondemandvm/{request_id}").body.get("message") is None
    deleted = ldap_api.call("DELETE", f"/api/v3/ondemandvm/{request_id}", headers={"X-AUTH-TOKEN": alice})
    assert deleted.status == 200


def test_disks_and_snapshots_only_by_the_owner(ldap_api: Harness, slapd):
    alice, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, alice)
    for path in ("disk/8", "snapshot"):
        refused = ldap_api.call("POST", f"/api/v3/vm/{vm}/{path}", headers={"X-AUTH-TOKEN": bob})
        assert (refused.status, refused.body["ok"]) == (403, False)
        accepted = ldap_api.call("POST", f"/api/v3/vm/{vm}/{path}", headers={"X-AUTH-TOKEN": alice})
        assert accepted.status == 202


def test_disks_and_snapshots_of_an_unowned_vm_need_a_token_any_users(ldap_api: Harness, slapd):
    """docs/auth.md: a VM checked out without a token has no owner, so any valid token may add a
    disk or take a snapshot (vmpooler's ``need_token!``); no token is 401."""
    _, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, None)
    for path in ("disk/8", "snapshot"):
        assert ldap_api.call("POST", f"/api/v3/vm/{vm}/{path}").status == 401
    for path in ("disk/8", "snapshot"):
        assert ldap_api.call("POST", f"/api/v3/vm/{vm}/{path}", headers={"X-AUTH-TOKEN": bob}).status == 202


def test_nobody_changes_a_ready_vm_before_its_user_gets_it(ldap_api: Harness, slapd):
    """Tags or a lifetime put on a ready VM would be on the VM the next user checks out: another
    user's words on their VM. Only a checked-out VM may be changed."""
    _, _, bob = tokens(ldap_api, slapd)
    ready = ldap_api.services.store.hostnames(POOL, "ready")
    for vm in ready:
        tagged = ldap_api.call("PUT", f"/api/v3/vm/{vm}", body={"tags": {"owner": "bob"}})
        assert (tagged.status, tagged.body) == (404, {"ok": False, "error": f"VM {vm} is not running"})
        longer = ldap_api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob}, body={"lifetime": 40})
        assert longer.status == 404
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    for vm in ldap_api.checkout_vms(POOL, len(ready), alice):
        described = ldap_api.call("GET", f"/api/v3/vm/{vm}").body[vm]
        assert (described["tags"], described["lifetime"]) == ({}, 12)


def test_a_change_checked_against_one_checkout_never_lands_on_another(ldap_api: Harness, slapd):
    """The API reads the VM, checks who may change it, then writes: a VM returned meanwhile (and
    one the next checkout took under the same name) is left as it is."""
    _, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, bob)
    seen_as_bobs = ldap_api.services.store.get_vm(vm)
    assert ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob}).status == 200
    store = ldap_api.services.store
    assert store.modify_vm(seen_as_bobs, {"tag:owner": "bob"}, 32, ldap_api.clock.now()) is ModifyResult.NO_VM
    assert store.get_vm(vm).tags == {}
    # The same name checked out again by alice: bob's stale read of it still changes nothing.
    ldap_api.client.hset(f"vmpool:vm:{vm}", mapping={"state": "running", "token_user": "alice",
                                                     "checkout": repr(ldap_api.clock.now() + 1)})
    assert store.modify_vm(seen_as_bobs, {"lifetime": "40"}, 32, ldap_api.clock.now()) is ModifyResult.NO_VM
    assert store.get_vm(vm).lifetime_hours == 12


@pytest.mark.parametrize("route", ["disk/8", "snapshot"])
def test_a_task_checked_against_one_owner_is_never_queued_on_the_next(ldap_api: Harness, slapd, monkeypatch,
                                                                       route: str):
    """bob's POST /vm/<host>/disk (or snapshot) reads the VM as his; before it queues the task, the
    same name is checked out again by alice at the same time (a clock's tick: the checkout times
    alone do not tell the two apart). Before: bob's task was queued on alice's VM (202). Now it
    is a 404 and alice's VM has no task."""
    _, _, bob = tokens(ldap_api, slapd)
    vm = ldap_api.checkout(POOL, bob)
    checked = vm_tasks.may_change

    def taken_by_alice_meanwhile(*args, **kwargs):
        checked(*args, **kwargs)
        ldap_api.client.hset(f"vmpool:vm:{vm}", "token_user", "alice")

    monkeypatch.setattr(vm_tasks, "may_change", taken_by_alice_meanwhile)
    reply = ldap_api.call("POST", f"/api/v3/vm/{vm}/{route}", headers={"X-AUTH-TOKEN": bob})
    assert (reply.status, reply.body) == (404, {"ok": False, "error": f"VM {vm} is not running"})
    assert ldap_api.client.lrange(ldap_api.services.store.keys.vm_tasks(vm), 0, -1) == []


@pytest.mark.parametrize(("caller", "answer"), [
    ("bob", (403, {"ok": False, "error": "VM {host} was checked out by another user"})),
    ("nobody", (401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"})),
    ("alice", (200, {"ok": True})),
])
def test_delete_of_a_vm_whose_checkout_is_not_confirmed_yet(ldap_api: Harness, slapd, monkeypatch, caller, answer):
    """checkout.lua has taken the VM for alice; the API has not confirmed the checkout yet
    (docs/reliability.md, "Redis slower than the client's timeout"). Another caller guessing the
    name gets what they get for any VM not theirs (403 for bob's token, 401 without one), nothing
    changes, and alice is answered with the VM. Her own other token (no real client knows the
    name before the answer) returns it as any VM of hers (lua/move.lua: an unconfirmed checkout
    may be returned): her checkout then finds it gone and answers 503, handing out no VM being
    destroyed."""
    alice, alice_again, bob = tokens(ldap_api, slapd)
    headers = {"bob": {"X-AUTH-TOKEN": bob}, "nobody": {}, "alice": {"X-AUTH-TOKEN": alice_again}}[caller]
    store = ldap_api.services.store
    confirm = store._confirm
    taken: list[str] = []
    guessed: list[tuple[int, object]] = []

    def delete() -> None:
        reply = ldap_api.call("DELETE", f"/api/v3/vm/{taken[0]}", headers=headers)
        guessed.append((reply.status, reply.body))

    def a_delete_first(checkout_id, vms, *args):
        taken.extend(vm.hostname for vm in vms)
        # Another request: its own thread (the app serves one request per thread at a time).
        other = threading.Thread(target=delete)
        other.start()
        other.join()
        return confirm(checkout_id, vms, *args)

    monkeypatch.setattr(store, "_confirm", a_delete_first)
    checkout = ldap_api.call("POST", "/api/v3/vm", body={POOL: 1}, headers={"X-AUTH-TOKEN": alice})
    monkeypatch.undo()
    (host,) = taken
    status, body = answer
    assert guessed == [(status, {key: str(value).format(host=host) if key == "error" else value
                                 for key, value in body.items()})]
    if caller == "alice":
        assert checkout.status == 503
        assert state(ldap_api, host) in ("completed", "destroyed")
        assert host not in ldap_api.call("GET", f"/api/v3/token/{alice}").body[alice]["vms"].get("running", [])
        return
    assert (checkout.status, checkout.body[POOL]["hostname"].split(".")[0]) == (200, host)
    assert state(ldap_api, host) == "running"
    assert store.get_vm(host).token_user == "alice"
    assert ldap_api.call("DELETE", f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": alice}).status == 200


def test_a_return_checked_against_one_checkout_never_returns_the_next(ldap_api: Harness, slapd, monkeypatch):
    """alice's checkout whose answer was lost waits unconfirmed (she sees the VM under GET
    /token/<t>). Her DELETE reads the VM as hers; before it moves it (a frozen Lambda, a slow
    token check), a pass gives the VM back to ready and bob checks it out. Before: her DELETE
    returned bob's VM (bob had a 200 and the hostname, then "not running"). Now it is a 404 and
    the VM stays bob's."""
    alice, _, bob = tokens(ldap_api, slapd)
    store = ldap_api.services.store
    with checkout_answers_lost(store):
        assert ldap_api.call("POST", "/api/v3/vm", body={POOL: 1}, headers={"X-AUTH-TOKEN": alice}).status == 503
    (host,) = ldap_api.call("GET", f"/api/v3/token/{alice}").body[alice]["vms"]["running"]
    ldap_api.checkout_vms(POOL, len(ldap_api.ready(POOL)))  # alice's VM will be the only one ready
    read = store.get_first_vm
    handed: list[str] = []

    def bob_takes_it_meanwhile(hostnames):
        seen = read(hostnames)
        monkeypatch.setattr(store, "get_first_vm", read)
        ldap_api.clock.advance(61)
        assert host in ldap_api.reconcile(POOL).returned
        bobs = threading.Thread(target=lambda: handed.append(ldap_api.checkout(POOL, bob)))
        bobs.start()
        bobs.join()
        return seen

    monkeypatch.setattr(store, "get_first_vm", bob_takes_it_meanwhile)
    returned = ldap_api.call("DELETE", f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": alice})
    assert handed == [host]
    assert (returned.status, returned.body) == (404, {"ok": False, "error": f"VM {host} is not running"})
    assert state(ldap_api, host) == "running"
    assert store.get_vm(host).token_user == "bob"
