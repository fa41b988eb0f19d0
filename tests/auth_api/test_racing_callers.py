"""Two callers with different identities sent at once, released together by a barrier, round
after round: what each is told and what the store holds agree (the deterministic interleavings,
between any two Redis operations, are in tests/chaos/test_api_crash_points.py)."""

from __future__ import annotations

from functools import partial

from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import Harness, HarnessFactory, at_once, basic

ROUNDS = 25


def tokens(api: Harness) -> tuple[str, str]:
    return api.new_token("alice", "alice-pw"), api.new_token("bob", "bob-pw")


def test_the_owner_and_another_user_return_a_vm_at_once(make_api: HarnessFactory) -> None:
    """Only the owner's DELETE returns it (200); the other's is refused (403, or 404 once it was
    returned), whichever Redis ran first."""
    api = make_api(document({"provider": "dummy"}))
    alice, bob = tokens(api)
    for _ in range(ROUNDS):
        api.fill(POOL)
        host = api.checkout(POOL, alice)
        mine, theirs = at_once(partial(api.delete, f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": alice}),
                               partial(api.delete, f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": bob}))
        assert mine.status == 200 and theirs.status in (403, 404), (mine.raw, theirs.raw)
        assert api.state_of(host) == "completed"


def test_two_users_ask_for_the_last_ready_vm_at_once(make_api: HarnessFactory) -> None:
    """Exactly one gets it, recorded as that one's; the other is told 503 and holds nothing."""
    api = make_api(document({"provider": "dummy"}, pools=[
        {"name": POOL, "size": 1, "provider": "dummy", "template": "t/debian"}]))
    alice, bob = tokens(api)
    for _ in range(ROUNDS):
        api.fill(POOL)
        replies = at_once(partial(api.post, f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": alice}),
                          partial(api.post, f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": bob}))
        assert sorted(reply.status for reply in replies) == [200, 503], [reply.raw for reply in replies]
        winner = 0 if replies[0].status == 200 else 1
        host = replies[winner].json[POOL]["hostname"].split(".")[0]
        assert api.store.get_vm(host).raw.get("token_user") == ("alice", "bob")[winner]
        assert api.delete(f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": (alice, bob)[winner]}).status == 200


def test_a_token_deleted_while_it_returns_a_vm(make_api: HarnessFactory) -> None:
    """DELETE /token/<t> and a DELETE /vm made with it at once: once the token's delete has
    answered, the VM's return either happened before it (200) or not at all (401)."""
    api = make_api(document({"provider": "dummy"}))
    for _ in range(ROUNDS):
        api.fill(POOL)
        token = api.new_token("alice", "alice-pw")
        host = api.checkout(POOL, token)
        returned, deleted = at_once(partial(api.delete, f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": token}),
                                    partial(api.delete, f"/api/v3/token/{token}", headers=basic("alice", "alice-pw")))
        assert deleted.status == 200, deleted.raw
        assert returned.status in (200, 401), returned.raw
        assert api.state_of(host) == ("completed" if returned.status == 200 else "running")


def test_two_deletes_of_one_token_at_once(make_api: HarnessFactory) -> None:
    """The owner's DELETE /token/<t> sent twice at once (a retry racing its first try), and the
    owner's and an administrator's at once: exactly one 200, the other a 404 (never a 403 nor two
    200s), the token gone, and the owner's place under ``max_tokens_per_user`` given back once."""
    api = make_api(document({"provider": "dummy", "admins": ["root"]}, config={"max_tokens_per_user": 2}))
    owner, admin = basic("alice", "alice-pw"), basic("root", "root-pw")
    for round_number in range(ROUNDS):
        token = api.new_token("alice", "alice-pw")
        second = owner if round_number % 2 else admin
        replies = at_once(partial(api.delete, f"/api/v3/token/{token}", headers=owner),
                          partial(api.delete, f"/api/v3/token/{token}", headers=second))
        assert sorted(reply.status for reply in replies) == [200, 404], [reply.raw for reply in replies]
        assert api.get(f"/api/v3/token/{token}").status == 404
        assert api.get("/api/v3/token", headers=owner).status == 404, "alice holds no token"
    kept = [api.new_token("alice", "alice-pw") for _ in range(2)]  # the limit, whole again
    assert api.post("/api/v3/token", headers=owner).status == 403
    assert {reply.status for reply in [api.delete(f"/api/v3/token/{token}", headers=owner) for token in kept]} == {200}


def test_a_token_deleted_while_its_owner_extends_a_vm_another_user_returns(make_api: HarnessFactory) -> None:
    """Three at once on alice's VM: alice extends it with her token, bob returns it with his, and
    alice deletes the token her PUT is made with. Bob's return is never a 200 and never moves the
    VM; alice's change lands (200, lifetime 5) only when it ran before the deletion (else 401),
    and the VM stays hers, running."""
    api = make_api(document({"provider": "dummy"}))
    bob = api.new_token("bob", "bob-pw")
    for _ in range(ROUNDS):
        api.fill(POOL)
        keeper = api.new_token("alice", "alice-pw")
        token = api.new_token("alice", "alice-pw")
        host = api.checkout(POOL, keeper)
        extended, returned, deleted = at_once(
            partial(api.put, f"/api/v3/vm/{host}", {"lifetime": 5}, headers={"X-AUTH-TOKEN": token}),
            partial(api.delete, f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": bob}),
            partial(api.delete, f"/api/v3/token/{token}", headers=basic("alice", "alice-pw")))
        assert deleted.status == 200, deleted.raw
        assert returned.status == 403, returned.raw
        assert extended.status in (200, 401), extended.raw
        assert api.state_of(host) == "running"
        assert api.describe(host)["lifetime"] == (5 if extended.status == 200 else 12)
        assert api.store.get_vm(host).raw.get("token_user") == "alice"
        assert api.delete(f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": keeper}).status == 200
        assert api.delete(f"/api/v3/token/{keeper}", headers=basic("alice", "alice-pw")).status == 200


def test_two_users_choose_one_on_demand_request_id_at_once(make_api: HarnessFactory) -> None:
    """Two users open on-demand requests under one ``request_id`` at once: one is made (201), the
    other told the id is taken (409); the loser may neither read the winner's request (403) nor
    end it, even while its owner ends it at the same moment. Checked, holds."""
    api = make_api(document({"provider": "dummy"}))
    alice, bob = tokens(api)
    for round_number in range(ROUNDS):
        request_id = f"ci-job-{round_number}"
        first, second = at_once(*[partial(api.post, "/api/v3/ondemandvm", {OTHER_POOL: 1, "request_id": request_id},
                                          headers={"X-AUTH-TOKEN": token}) for token in (alice, bob)])
        assert sorted((first.status, second.status)) == [201, 409], (first.raw, second.raw)
        winner, loser = (alice, bob) if first.status == 201 else (bob, alice)
        assert api.get(f"/api/v3/ondemandvm/{request_id}", headers={"X-AUTH-TOKEN": loser}).status == 403
        path = f"/api/v3/ondemandvm/{request_id}"
        refused, ended = at_once(partial(api.delete, path, headers={"X-AUTH-TOKEN": loser}),
                                 partial(api.delete, path, headers={"X-AUTH-TOKEN": winner}))
        assert refused.status == 403 and ended.status == 200, (refused.raw, ended.raw)
