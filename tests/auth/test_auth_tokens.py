"""TokenStore: life cycle, hash-only storage, ownership, expiry."""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.auth.tokens import PENDING_SECONDS, DeleteResult, TokenStore, TooManyTokens, hash_token
from chalicelib.clock import FakeClock
from chalicelib.store.store import TokenNotDurable


@pytest.fixture
def store(redis_client, clock) -> TokenStore:
    return TokenStore(redis_client, clock)


def dump(redis_client) -> str:
    """Every key and every value in Redis, as one string."""
    parts = []
    for key in redis_client.scan_iter("*"):
        parts.append(key)
        kind = redis_client.type(key)
        if kind == "hash":
            for field, value in redis_client.hgetall(key).items():
                parts += [field, value]
        elif kind == "set":
            parts += list(redis_client.smembers(key))
        elif kind == "string":
            parts.append(redis_client.get(key))
        elif kind == "list":
            parts += redis_client.lrange(key, 0, -1)
        elif kind == "zset":
            parts += redis_client.zrange(key, 0, -1)
    return "\n".join(parts)


def test_tokens_are_32_lowercase_alphanumerics_and_unique(store):
    tokens = {store.create("alice") for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[a-z0-9]{32}", token) for token in tokens)
    assert any(re.search(r"[0-9]", t) for t in tokens) and any(re.search(r"[a-z]", t) for t in tokens)


def test_redis_holds_only_the_hash(store, redis_client):
    tokens = [store.create("alice") for _ in range(3)] + [store.create("bob")]
    for token in tokens:
        store.lookup(token)
    store.list_for_user("alice")
    text = dump(redis_client)
    for token in tokens:
        assert token not in text
        assert token.upper() not in text.upper()
        assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
        assert f"vmpool:token:{hash_token(token)}" in text
    assert set(redis_client.scan_iter("*")) == {
        *(f"vmpool:token:{hash_token(t)}" for t in tokens),
        "vmpool:user:alice:tokens",
        "vmpool:user:bob:tokens",
        "vmpool:user:alice:token_times",
        "vmpool:user:bob:token_times",
    }


def test_lookup_returns_the_record_and_touches_last(store, clock, redis_client):
    token = store.create("alice")
    record = store.lookup(token)
    assert record is not None
    assert (record.user, record.created, record.last) == ("alice", "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z")
    assert record.id == hash_token(token)[:16] and record.token_hash == hash_token(token)
    assert token not in repr(record)
    clock.advance(90)
    assert store.lookup(token).last == "2027-01-15T08:01:30Z"
    assert redis_client.hget(f"vmpool:token:{hash_token(token)}", "last") == "2027-01-15T08:01:30Z"
    clock.advance(30)
    assert store.lookup(token, touch=False).last == "2027-01-15T08:01:30Z"
    assert store.owner(token) == "alice"


@pytest.mark.parametrize("value", ["", "x" * 32, "A" * 32, "a" * 31, "a" * 33, "*", None, 42, "a" * 31 + "\n"])
def test_lookup_of_garbage_is_none(store, redis_client, value):
    store.create("alice")
    assert store.lookup(value) is None
    assert store.lookup("0" * 32) is None


def test_list_shows_only_the_callers_tokens(store, clock):
    a1 = store.create("alice")
    clock.advance(10)
    a2 = store.create("alice")
    b1 = store.create("bob")
    alice = store.list_for_user("alice")
    assert [r.id for r in alice] == [hash_token(a1)[:16], hash_token(a2)[:16]]
    assert all(r.user == "alice" for r in alice)
    assert [r.id for r in store.list_for_user("bob")] == [hash_token(b1)[:16]]
    assert store.list_for_user("carol") == []
    # Redis keeps ISO-8601; answers write vmpooler's Time#to_s, the only layout go-vmpooler parses.
    assert alice[0].public() == {"created": "2027-01-15 08:00:00 +0000", "last": "2027-01-15 08:00:00 +0000"}


def test_delete_only_by_the_owner(store):
    token = store.create("alice")
    assert store.delete(token, "bob") is DeleteResult.FORBIDDEN
    assert store.lookup(token) is not None
    assert store.delete(token, "ALICE") is DeleteResult.DELETED  # one user, any spelling
    assert store.lookup(token) is None
    assert store.list_for_user("alice") == []
    assert store.delete(token, "alice") is DeleteResult.NOT_FOUND
    assert store.delete("not-a-token", "alice") is DeleteResult.NOT_FOUND


def test_delete_by_listed_id(store):
    mine = store.create("alice")
    theirs = store.create("bob")
    assert store.delete_by_id(hash_token(theirs)[:16], "alice") is DeleteResult.NOT_FOUND
    assert store.delete_by_id("abc", "alice") is DeleteResult.NOT_FOUND  # too short to be an id
    assert store.delete_by_id(hash_token(mine)[:16], "alice") is DeleteResult.DELETED
    assert store.lookup(mine) is None and store.lookup(theirs) is not None


def test_a_deleted_token_is_not_resurrected_by_a_late_touch(store, redis_client):
    token = store.create("alice")
    key = f"vmpool:token:{hash_token(token)}"
    assert store._touch(keys=[key], args=["x", 0]) == 1
    store.delete(token, "alice")
    assert store._touch(keys=[key], args=["x", 0]) == 0
    assert not redis_client.exists(key)


def test_expiry_with_the_clock(redis_client, clock):
    store = TokenStore(redis_client, clock, ttl_hours=2)
    token = store.create("alice")
    key = f"vmpool:token:{hash_token(token)}"
    assert 7190 <= redis_client.ttl(key) <= 7200  # Redis expires it too
    record = store.lookup(token)
    assert record.expires == "2027-01-15T10:00:00Z"
    assert record.public()["expires"] == "2027-01-15 10:00:00 +0000"
    clock.advance(2 * 3600 - 1)
    assert store.lookup(token) is not None
    other = store.create("alice")
    clock.advance(1)
    assert store.lookup(token) is None
    assert not redis_client.exists(key)  # cleaned up
    assert [r.id for r in store.list_for_user("alice")] == [hash_token(other)[:16]]
    clock.advance(2 * 3600)
    assert store.list_for_user("alice") == []
    assert not redis_client.exists("vmpool:user:alice:tokens")


def test_tokens_without_ttl_do_not_expire(store, clock, redis_client):
    token = store.create("alice")
    assert redis_client.ttl(f"vmpool:token:{hash_token(token)}") == -1
    clock.advance(10 * 365 * 86400)
    assert store.lookup(token).user == "alice"


def test_bad_arguments(redis_client):
    with pytest.raises(ValueError):
        TokenStore(redis_client, FakeClock(), ttl_hours=0)
    with pytest.raises(ValueError):
        TokenStore(redis_client, FakeClock()).create("")


def test_user_names_cannot_collide_in_keys(store):
    store.create("a:tokens")
    store.create("a")
    assert [r.user for r in store.list_for_user("a")] == ["a"]
    assert [r.user for r in store.list_for_user("a:tokens")] == ["a:tokens"]


def test_a_token_belongs_to_the_deployment_that_made_it(redis_client, clock):
    """Two services sharing one Redis under different key prefixes do not honour each other's tokens."""
    ours = TokenStore(redis_client, clock, prefix="vmpool-a:")
    theirs = TokenStore(redis_client, clock, prefix="vmpool-b:")
    token = ours.create("alice")
    assert ours.lookup(token) is not None
    assert theirs.lookup(token) is None
    assert theirs.list_for_user("alice") == []


def test_a_token_that_expired_in_redis_frees_its_place_under_the_limit(redis_client, clock):
    """One of the user's tokens expired (its hour passed, and Redis deleted its key as it does):
    the user's sets still named it, yet it no longer counts against ``max_per_user``, and the
    next creation forgets it."""
    limited = TokenStore(redis_client, clock, ttl_hours=1, max_per_user=2)
    first = limited.create("alice")
    clock.advance(1800)
    limited.create("alice")
    with pytest.raises(TooManyTokens):
        limited.create("alice")
    clock.advance(1800)
    redis_client.delete(limited.keys.token(hash_token(first)))
    assert limited.lookup(limited.create("alice")) is not None
    with pytest.raises(TooManyTokens):
        limited.create("alice")
    assert hash_token(first) not in redis_client.smembers(limited.keys.user_tokens("alice"))
    assert redis_client.zscore(limited.keys.user_token_times("alice"), hash_token(first)) is None


def test_tokens_made_before_their_times_were_kept_count_under_the_limit(redis_client, clock):
    """A deployment upgraded with users holding tokens (their set only, no ``token_times``): the
    first creation reads them once and counts them; an expired one among them is forgotten."""
    limited = TokenStore(redis_client, clock, ttl_hours=1, max_per_user=3)
    old = [limited.create("alice") for _ in range(3)]
    clock.advance(1800)
    redis_client.delete(limited.keys.user_token_times("alice"))  # as the version before kept them
    with pytest.raises(TooManyTokens):
        limited.create("alice")
    assert redis_client.zcard(limited.keys.user_token_times("alice")) == 3
    assert limited.delete(old[0], "alice") is DeleteResult.DELETED
    kept = limited.create("alice")
    redis_client.delete(limited.keys.user_token_times("alice"))
    clock.advance(1800)  # the three old ones expire (their keys linger: only the clock says so)
    made = [limited.create("alice"), limited.create("alice")]
    with pytest.raises(TooManyTokens):
        limited.create("alice")
    assert {record.token_hash for record in limited.list_for_user("alice")} == {
        hash_token(token) for token in (kept, *made)}
    assert redis_client.smembers(limited.keys.user_tokens("alice")) == {hash_token(t) for t in (kept, *made)}


def test_the_token_limit_is_exact_when_one_user_creates_and_deletes_at_once(redis_client, clock):
    """30 creations of one user's tokens at once, under a limit of 5, then deletions of each
    (three times over) racing 10 more creations: never more than 5 live tokens, and the user's set
    lists exactly the records that exist."""
    store = TokenStore(redis_client, clock, max_per_user=5)

    def create(_: int) -> str | None:
        try:
            return store.create("alice")
        except TooManyTokens:
            return None

    with ThreadPoolExecutor(30) as pool:
        made = [token for token in pool.map(create, range(30)) if token]
    assert len(made) == 5

    def delete(token: str) -> DeleteResult:
        return store.delete(token, "alice")

    with ThreadPoolExecutor(30) as pool:
        deletions = [pool.submit(delete, token) for token in made * 3]
        creations = [pool.submit(create, index) for index in range(10)]
        deleted = [future.result() for future in deletions]
        created = [future.result() for future in creations]
    assert deleted.count(DeleteResult.DELETED) == 5
    live = {hash_token(token) for token in created if token}
    assert len(live) <= 5
    assert redis_client.smembers("vmpool:user:alice:tokens") == live
    assert {record.token_hash for record in store.list_for_user("alice")} == live


def count_lost(store: TokenStore) -> str:
    """A token of alice's made and answered 200, its count (lua/token_confirm.lua) answered by a
    primary that died before its replica had the count: the new primary has the token pending."""
    count = store._confirm
    store._confirm = lambda keys, args: 1  # answered, then lost with the primary
    try:
        return store.create("alice")
    finally:
        store._confirm = count  # the service's own count from now on


def test_a_token_whose_count_a_failover_lost_is_counted_at_its_first_use(redis_client, clock):
    """Its user, given it with 200, can still use it. Until then it counts for nothing (nobody
    may hold it) and its record would expire within PENDING_SECONDS; its first use counts it:
    before, it stayed unlisted, so GET /token did not show it and DELETE /token/<id> answered
    404, and it could be revoked only by its value."""
    limited = TokenStore(redis_client, clock, ttl_hours=24 * 30, max_per_user=1)
    token = count_lost(limited)
    key = limited.keys.token(hash_token(token))
    assert redis_client.hget(key, "pending") == "1" and 0 < redis_client.ttl(key) <= PENDING_SECONDS
    assert limited.list_for_user("alice") == []  # never presented: counts for nothing
    assert limited.lookup(token) is not None and redis_client.ttl(key) > PENDING_SECONDS
    assert [record.id for record in limited.list_for_user("alice")] == [hash_token(token)[:16]]
    assert not redis_client.hexists(key, "pending")
    with pytest.raises(TooManyTokens):  # it is her one token now
        limited.create("alice")
    assert limited.delete_by_id(hash_token(token)[:16], "alice") is DeleteResult.DELETED
    assert limited.lookup(token) is None
    assert limited.lookup(limited.create("alice")) is not None


def test_a_token_whose_count_a_failover_lost_counts_past_the_limit_once_used(redis_client, clock):
    """alice, her first token's count lost, made another (the first counted for nothing): her
    limit of 1 is full when she uses the first. It keeps working and is listed beside the other,
    each deletable by id; her next login is refused until she deletes one (as after
    max_tokens_per_user is lowered)."""
    limited = TokenStore(redis_client, clock, ttl_hours=24, max_per_user=1)
    lost = count_lost(limited)
    other = limited.create("alice")
    assert limited.lookup(lost, touch=False) is not None  # GET /token/<t>, or any route's X-AUTH-TOKEN
    assert sorted(record.id for record in limited.list_for_user("alice")) == sorted(
        hash_token(token)[:16] for token in (lost, other))
    with pytest.raises(TooManyTokens):
        limited.create("alice")
    assert limited.delete_by_id(hash_token(other)[:16], "alice") is DeleteResult.DELETED
    with pytest.raises(TooManyTokens):  # the one she holds still counts
        limited.create("alice")
    assert limited.lookup(lost) is not None
    assert limited.delete_by_id(hash_token(lost)[:16], "alice") is DeleteResult.DELETED
    assert limited.lookup(limited.create("alice")) is not None


def test_a_pending_token_nobody_presents_is_never_counted(redis_client, clock):
    """An orphan of a failed login (made, never counted, given to nobody): other tokens' uses,
    listings and logins leave it uncounted and pending."""
    limited = TokenStore(redis_client, clock, ttl_hours=24, max_per_user=1)
    orphan = count_lost(limited)
    token = limited.create("alice")
    assert limited.lookup(token) is not None
    assert [record.id for record in limited.list_for_user("alice")] == [hash_token(token)[:16]]
    assert redis_client.hget(limited.keys.token(hash_token(orphan)), "pending") == "1"


def pending_deleted_by_id(redis_client, clock) -> str:
    """An administrator deletes a pending token by the id the listing showed (DELETE
    /token/<id>?user=) before any listing runs again."""
    store = TokenStore(redis_client, clock, ttl_hours=24)
    token_hash = hash_token(count_lost(store))
    assert store.delete_by_id(token_hash[:16], "alice") is DeleteResult.DELETED
    return token_hash


def pending_of_a_login_no_replica_had(redis_client, clock) -> str:
    """A login whose token no replica acknowledged in time (503): the token is deleted."""
    store = TokenStore(redis_client, clock, ttl_hours=24, replicated=lambda: False)
    made = []
    create = store._create
    store._create = lambda keys, args: made.append(args[3]) or create(keys=keys, args=args)  # type: ignore[method-assign]
    with pytest.raises(TokenNotDurable):
        store.create("alice")
    return made[0]


def pending_presented_past_the_ttl(redis_client, clock) -> str:
    """A pending token presented once token_ttl has passed (before Redis expired its record):
    refused and deleted."""
    store = TokenStore(redis_client, clock, ttl_hours=0.5)
    token = count_lost(store)
    clock.advance(1800)
    assert store.lookup(token) is None
    return hash_token(token)


@pytest.mark.parametrize("deleted", [pending_deleted_by_id, pending_of_a_login_no_replica_had,
                                     pending_presented_past_the_ttl])
def test_a_deleted_pending_token_leaves_nothing_in_redis(redis_client, clock, deleted):
    """Every deletion of a pending token takes its hash out of the user's pending index with its
    record: before, lua/token_delete.lua left it there until the next administrator's listing or
    an hour later, so each login refused for want of a replica added a hash to a key nobody was
    told of."""
    token_hash = deleted(redis_client, clock)
    assert token_hash not in dump(redis_client)
    assert not redis_client.exists("vmpool:user:alice:pending_tokens")


@pytest.mark.parametrize("new_ttl_hours", [None, 24 * 30], ids=["ttl-removed", "ttl-raised"])
def test_a_pending_record_keeps_its_short_expiry_when_token_ttl_changes(redis_client, clock, new_ttl_hours):
    """align_expiries (the tick after token_ttl changed) sets the tokens' expiries for the new
    ttl, but an orphan's (pending) stays within PENDING_SECONDS of its making: before, it got the
    new ttl's (30 days) or none at all (no ttl), and lived on though nobody could ever use it."""
    before = TokenStore(redis_client, clock, ttl_hours=24)
    orphan_key = before.keys.token(hash_token(count_lost(before)))
    counted_key = before.keys.token(hash_token(before.create("alice")))
    clock.advance(600)
    after = TokenStore(redis_client, clock, ttl_hours=new_ttl_hours)
    assert after.align_expiries() == 2
    assert 0 < redis_client.ttl(orphan_key) <= PENDING_SECONDS - 600
    assert redis_client.hget(orphan_key, "pending") == "1"
    counted = redis_client.ttl(counted_key)
    assert counted == -1 if new_ttl_hours is None else counted > 24 * 3600


def test_align_expiries_brings_back_a_pending_record_given_no_expiry(redis_client, clock):
    """A pending record an earlier align_expiries made to live for ever (no ttl then) is given
    what is left of its pending life again at the next ttl change."""
    store = TokenStore(redis_client, clock, ttl_hours=24)
    key = store.keys.token(hash_token(count_lost(store)))
    redis_client.persist(key)
    assert TokenStore(redis_client, clock, ttl_hours=48).align_expiries() == 1
    assert 0 < redis_client.ttl(key) <= PENDING_SECONDS
