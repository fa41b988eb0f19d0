"""API tokens: 32 characters ``[a-z0-9]`` given once to the user; Redis keeps only their SHA-256.

Redis layout (every key under ``vmpool:``)::

    vmpool:token:<sha256 hex of the token>   hash: user, created, last   (ISO-8601 UTC),
                                             entry (the stable id of the user's directory
                                             entry at login, when the directory gives one)
                                             pending ("1" from lua/token_create.lua until
                                             lua/token_confirm.lua counts the token)
    vmpool:user:<user>:tokens                set of the user's token hashes
    vmpool:user:<user>:token_times           the same hashes, scored by when each was made
    vmpool:user:<user>:pending_tokens        the hashes of the user's pending tokens, by when each
                                             was made (an administrator's ``GET /token?user=``)

``POST /token`` counts a user's live tokens in ``token_times`` (those made within the ttl) and
forgets the expired ones there, in its script, without reading the user's tokens: making a token
costs the same whatever ``max_tokens_per_user``.

A Redis dump therefore holds no usable token. A token is found by the Redis key of its hash, so
no token or hash is ever compared byte by byte in Python (nothing to time). A token is identified
in listings by its ``id``: the first 16 hex characters of its SHA-256
(``printf %s "$TOKEN" | sha256sum | cut -c1-16``).

With ``ttl_hours`` a token expires that many hours after it was created: the Redis key gets an
expiry, and ``lookup`` also checks the age against the clock (so a fake clock works in tests).
The ttl is the one configured now, for every token: raising ``token_ttl`` extends the tokens
made before, lowering it shortens them, removing it makes them live until deleted. Each use sets
the key's expiry again, and ``align_expiries`` (the scheduler's tick) sets every token's once a
config with another ttl is in effect, so an unused token's key does not vanish on the old ttl.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import redis as redis_module

from chalicelib.auth.base import other_entry, same_user
from chalicelib.clock import Clock, SystemClock
from chalicelib.store.connection import written_behind_a_lost_reply
from chalicelib.store.deadline import answer_deadline
from chalicelib.store.keys import DEFAULT_PREFIX, KEY_PART, Keys
from chalicelib.store.scripts import registered, script_source
from chalicelib.store.settle import answered_or_settled, settled_done
from chalicelib.store.store import StoreUnavailable, TokenNotDurable
from chalicelib.timestamps import ruby_time

TOKEN_PREFIX = Keys().token("")
"""How the keys of tokens start under the default prefix."""
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 32
TOKEN_PATTERN = re.compile(r"^[a-z0-9]{32}\Z")
ID_LENGTH = 16
ID_PATTERN = re.compile(r"^[0-9a-f]{1,64}\Z")
PENDING_SECONDS = 3600
"""How long the record of a token made but not yet counted (lua/token_create.lua, before
lua/token_confirm.lua) lives, ``token_ttl`` when shorter: a login that failed in between leaves
it, known to nobody. Counting sets the ttl's expiry. A token whose count a failover lost, handed
out by the node before it, is counted when first presented (``lookup``): listed and deletable by
id from then on, and living on the ttl. ``align_expiries`` never lengthens a pending record's."""

class TooManyTokens(Exception):
    """The user has ``max_per_user`` live tokens already; one must be deleted first."""


class DeleteResult(enum.Enum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class TokenRecord:
    """What Redis knows about a token. Never holds the token itself."""

    id: str
    """First 16 hex characters of the token's SHA-256: shown in listings."""
    token_hash: str
    """Full SHA-256 hex: for internal references (a VM records the hash of the token it was
    checked out with, never the token)."""
    user: str
    created: str
    last: str
    expires: str | None = None
    entry_id: str | None = None
    """The stable id of the directory entry its user logged in as (auth/ldap.py ``entry_id``):
    the directory check refuses the token once the name is another entry's. None for a token made
    before ids were saved, or by a directory that gives none (the check goes by the name)."""
    pending: bool = False
    """Made by a login and not counted yet (``TokenStore.list_pending``); ``expires`` is then when
    its record goes."""

    @property
    def created_at(self) -> float | None:
        """When the token was made (epoch seconds): its user had just logged in."""
        return _parse_iso(self.created)

    def public(self) -> dict[str, Any]:
        """The ``{"created", "last"}`` body vmpooler shows (plus ``expires`` when set), each time
        written as vmpooler writes it (Ruby's ``Time#to_s``, ``2027-01-15 08:00:00 +0000``): the
        go-vmpooler client parses them in that layout only, and failed to make a token or list a
        token's VMs on the ISO-8601 Redis keeps."""
        body: dict[str, Any] = {"created": _shown(self.created), "last": _shown(self.last)}
        if self.expires:
            body["expires"] = _shown(self.expires)
        if self.pending:
            body["pending"] = True
        return body


def hash_token(token: str) -> str:
    """SHA-256 hex of a token (a high-entropy random value, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(token_hash: str) -> str:
    return token_hash[:ID_LENGTH]


def is_token_shaped(value: object) -> bool:
    return isinstance(value, str) and bool(TOKEN_PATTERN.match(value))


def is_token_id(value: object) -> bool:
    """Whether ``value`` may name a token by its id (``delete_by_id``): 8 to 64 hex characters."""
    return isinstance(value, str) and len(value) >= 8 and bool(ID_PATTERN.match(value))


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _shown(stored: str) -> str:
    """A time Redis keeps (ISO-8601 UTC) as vmpooler's answers write it; one that does not parse
    as it was kept."""
    moment = _parse_iso(stored)
    return stored if moment is None else ruby_time(moment)


def _parse_iso(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


class TokenStore:
    """Creates, finds, lists and deletes tokens in Redis (a client with decode_responses=True)."""

    def __init__(self, redis: Any, clock: Clock | None = None, ttl_hours: float | None = None,
                 prefix: str = DEFAULT_PREFIX, max_per_user: int = 0,
                 replicated: Callable[[], bool] = lambda: True) -> None:
        if ttl_hours is not None and ttl_hours <= 0:
            raise ValueError("token ttl_hours must be > 0")
        self.redis = redis
        self.clock = clock or SystemClock()
        self.ttl_seconds = None if ttl_hours is None else float(ttl_hours) * 3600.0
        self.keys = Keys(prefix)
        self.max_per_user = max_per_user
        """Live tokens a user may have at once (0: no limit)."""
        self.replicated = replicated
        """Whether every write so far is on the replicas asked for (``Store.writes_replicated``):
        a token is handed out only then, or a failover could lose it. (A deletion is answered
        through ``Store.require_replicated``, as every route's change is: api/tokens.py.)"""
        self._create = registered(redis, script_source("token_create"))
        self._confirm = registered(redis, script_source("token_confirm"))
        self._delete = registered(redis, script_source("token_delete"))
        self._touch = registered(redis, script_source("token_touch"))
        self._expiry = registered(redis, script_source("token_expiry"))
        self._settle = registered(redis, script_source("settle"))

    def _token_key(self, token_hash: str) -> str:
        return self.keys.token(token_hash)

    def _user_key(self, user: str) -> str:
        return self.keys.user_tokens(user)

    def _times_key(self, user: str) -> str:
        return self.keys.user_token_times(user)

    def _pending_key(self, user: str) -> str:
        return self.keys.user_pending_tokens(user)

    def _delete_keys(self, token_hash: str, user: str) -> list[str]:
        """lua/token_delete.lua's keys for user's token: its record and every index naming it
        (the pending one too, so a pending token deleted leaves no hash behind)."""
        return [self._token_key(token_hash), self._user_key(user), self._times_key(user), self._pending_key(user)]

    def create(self, user: str, entry_id: str | None = None) -> str:
        """A new token for user (logged in as the directory entry ``entry_id``, when known).
        The token is returned once and is not stored anywhere.
        Raises TooManyTokens when the user has ``max_per_user`` live tokens, TokenNotDurable
        (the token deleted again) when no replica acknowledged it in time (``replicated``),
        StoreUnavailable (nothing made) when the script reached Redis after the caller's socket
        timeout (store/deadline.py): a late login makes no token nobody would ever see.

        Made pending (lua/token_create.lua), then counted against ``max_per_user`` and listed
        only by lua/token_confirm.lua, whose answer is the only way to the token's return: a
        login that fails at any line before it (its wait for a replica cut short, Redis stalled
        past the socket timeout, the process killed) leaves at most a pending token nobody
        knows, which counts for nothing and whose record expires within PENDING_SECONDS.
        Before, the token counted from the first script on, and a user who met a few failed
        logins was refused new tokens (403) until ``token_ttl``."""
        if not isinstance(user, str) or not user:
            raise ValueError("a token needs a user")
        keys = [self._user_key(user), self._times_key(user), self._pending_key(user)]
        live: list[str] = []  # given only when the script asks (-2): the user's tokens, read once
        while True:
            token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))
            token_hash = hash_token(token)
            key = self._token_key(token_hash)
            now = self.clock.now()
            made = iso(now)
            pending = PENDING_SECONDS if self.ttl_seconds is None else max(1, min(PENDING_SECONDS,
                                                                                  int(self.ttl_seconds)))
            cutoff = "-inf" if self.ttl_seconds is None else repr(now - self.ttl_seconds)
            score = int(_parse_iso(made) or 0)
            # The script refuses an existing hash: the (astronomically unlikely) collision retries.
            created = self._create_settled([key, *keys], [
                user, made, pending, token_hash, self.max_per_user, score, cutoff,
                self._token_key(KEY_PART), answer_deadline(self.redis), entry_id or "", *live])
            if created == -2:
                # The user's tokens were made before token_times counted them (or by an older
                # version): read once, as GET /token lists them (forgetting those past the ttl).
                live = ["read", *(part for record in self.list_for_user(user)
                                  for part in (record.token_hash, str(int(record.created_at or 0))))]
                continue
            if created == -1:
                raise TooManyTokens(user)
            if created == -3:
                raise StoreUnavailable("redis: the token reached Redis after its deadline: not made")
            if created:
                break
        try:
            durable = self.replicated()
        except StoreUnavailable:
            # WAIT's answer lost (a replica slower than the socket timeout): no replica may have
            # the token, and its user, answered 503, never sees it.
            durable = False
        if not durable:
            self._forget(token_hash, user)
            raise TokenNotDurable(f"redis: no replica acknowledged a new token of {user!r} in time")
        self._count(token_hash, user, score, cutoff, made)
        return token

    def _count(self, token_hash: str, user: str, score: int, cutoff: str, made: str) -> None:
        """Count the pending token (lua/token_confirm.lua): from its answer on it is the user's,
        listed and counted. Its answer lost, the token is deleted (written behind the lost reply
        on its connection, so Redis runs the deletion right after the script, however long it
        stalls; else sent anew): the 503 leaves no token counted that the user never saw."""
        keys = self._delete_keys(token_hash, user)  # lua/token_confirm.lua's too
        undo = ("EVAL", self._delete.script, len(keys), *keys, user, token_hash)
        with written_behind_a_lost_reply(undo) as follow_up:
            try:
                counted = int(self._confirm(keys=keys, args=[
                    token_hash, score, cutoff, self.max_per_user, self._seconds_left(made),
                    answer_deadline(self.redis)]))
            except redis_module.RedisError:
                if not follow_up.written:
                    self._forget(token_hash, user)
                raise
        if counted == 1:
            return
        if counted == -1:  # logins at once: the others counted first; the script deleted this one
            raise TooManyTokens(user)
        if counted == -2:
            self._forget(token_hash, user)
            raise StoreUnavailable("redis: the token's count reached Redis after its deadline: not made")
        raise StoreUnavailable("redis: the new token was gone before it was counted: not made")

    def _forget(self, token_hash: str, user: str) -> None:
        """Delete a token its user was not given (a 503 follows), if Redis lets us now: else it
        is left pending, counting for nothing, and expires within PENDING_SECONDS."""
        try:
            self._delete_hash(token_hash, user)
        except redis_module.RedisError:
            pass  # Redis is failing already: the user, answered 503, never learns the token

    def _create_settled(self, keys: list[str], args: list[Any]) -> int:
        """lua/token_create.lua's answer, given its keys but the settled mark. Its answer lost, the
        login is settled (store/settle.py): answered 503, the retry would make a second token,
        counted against ``max_per_user``. Should the settle's answer be lost too, the token (if
        made) is deleted by a deletion written behind it: nobody will ever see it."""
        settled = self.keys.settled(secrets.token_hex(16))
        user, token_hash = args[0], args[3]
        undo = ("EVAL", self._delete.script, 4, *keys[:4], user, token_hash)
        return answered_or_settled(lambda: int(self._create(keys=[*keys, settled], args=args)),
                                   lambda: settled_done(self.redis, self._settle, settled, [undo], made=keys[0]), 1)

    def _record(self, token_hash: str, fields: dict[str, str]) -> TokenRecord | None:
        user = fields.get("user")
        created = fields.get("created")
        if not user or not created:
            return None
        expires = None
        if self.ttl_seconds is not None:
            created_at = _parse_iso(created)
            if created_at is None:
                return None
            expires_at = created_at + self.ttl_seconds
            if self.clock.now() >= expires_at:
                return None
            expires = iso(expires_at)
        return TokenRecord(
            id=token_id(token_hash),
            token_hash=token_hash,
            user=user,
            created=created,
            last=fields.get("last", created),
            expires=expires,
            entry_id=fields.get("entry") or None,
        )

    def _seconds_left(self, created: str) -> int:
        """Seconds until a token made at ``created`` (ISO-8601) expires under the ttl in effect:
        at least 1 (an expired token's key goes at once), 0 when tokens do not expire."""
        if self.ttl_seconds is None:
            return 0
        created_at = _parse_iso(created)
        if created_at is None:
            return 1
        return max(1, int(created_at + self.ttl_seconds - self.clock.now()))

    def _pending_left(self, created: str) -> int:
        """Seconds a pending record made at ``created`` may live from now: what is left of
        PENDING_SECONDS (or of the ttl's, when shorter), at least 1."""
        created_at = _parse_iso(created)
        if created_at is None:
            return 1
        left = max(1, int(created_at + PENDING_SECONDS - self.clock.now()))
        counted = self._seconds_left(created)
        return min(left, counted) if counted else left

    def align_expiries(self, batch: int = 500) -> int:
        """Set every token's Redis expiry for the ttl in effect, once per ttl (``tokens:ttl``
        records the one they were last set for): a token not used since ``token_ttl`` was raised
        would otherwise vanish on the old one (and one made under a ttl since removed would still
        expire). A pending record (made, never counted: lua/token_confirm.lua) keeps at most what
        is left of PENDING_SECONDS (lua/token_expiry.lua): before, it got the ttl's, or none
        without a ttl, and an orphan of a failed login lived as long as a token, or for ever.
        Idempotent, so a tick killed half way is finished by the next. Returns how many
        token records it set."""
        wanted = "none" if self.ttl_seconds is None else repr(self.ttl_seconds)
        if self.redis.get(self.keys.tokens_ttl) == wanted:
            return 0
        set_count = 0
        keys = list(self.redis.scan_iter(match=self._token_key("*"), count=1000))
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hget(key, "created")
            records: list[str] = []
            seconds: list[int] = []
            for key, made in zip(chunk, pipe.execute(), strict=True):
                if made is None:
                    continue  # deleted meanwhile (or not a token record)
                records.append(key)
                seconds += [self._seconds_left(made), self._pending_left(made)]
            if records:
                set_count += int(self._expiry(keys=records, args=seconds))
        self.redis.set(self.keys.tokens_ttl, wanted)
        return set_count

    def lookup(self, token: str, *, touch: bool = True) -> TokenRecord | None:
        """The record of a valid token (and ``last`` set to now), or None.

        Anything not shaped like a token is refused without a Redis call. An expired token is
        deleted."""
        if not is_token_shaped(token):
            return None
        token_hash = hash_token(token)
        key = self._token_key(token_hash)
        fields = self.redis.hgetall(key)
        if not fields:
            return None
        record = self._record(token_hash, fields)
        if record is None:
            if fields.get("user"):
                owner = fields["user"]
                self._delete(keys=self._delete_keys(token_hash, owner), args=[owner, token_hash])
            return None
        if fields.get("pending"):
            self._count_presented(record)
        return self.touch(record) if touch else record

    def _count_presented(self, record: TokenRecord) -> None:
        """Count a pending token someone presented (lua/token_confirm.lua, no limit): its user
        was given it with 200 and a failover lost its count (the only way to hold a pending
        token's value; an orphan of a failed login was given to nobody, so it is never counted).
        From now on it is listed by ``GET /token`` and deleted by its id like any other, and
        lives on the ttl. It counts even past ``max_tokens_per_user``: its user was given it
        within the limit, and another token made meanwhile (this one uncounted) may have filled
        it; refusing it now would break a client that saved it, for a failover it was never told
        of. The limit holds for new logins, which are refused (403) until the user deletes one,
        as after ``max_tokens_per_user`` is lowered. Counted whatever the request's answer (a
        403, a 404, a 503 after this): holding the value is what shows the token was given
        out, not the request succeeding (docs/auth.md, "Tokens")."""
        self._confirm(keys=[self._token_key(record.token_hash), self._user_key(record.user),
                            self._times_key(record.user), self._pending_key(record.user)],
                      args=[record.token_hash, int(record.created_at or 0), "-inf", 0,
                            self._seconds_left(record.created), ""])

    def touch(self, record: TokenRecord) -> TokenRecord | None:
        """The token used now: its ``last`` set to now, its expiry to the ttl in effect. None when
        it was deleted (or expired) since ``record`` was read: the request comes after the delete's
        answer, and is refused as any request with a dead token (it never brings the token back)."""
        now = iso(self.clock.now())
        if self._touch(keys=[self._token_key(record.token_hash)], args=[now, self._seconds_left(record.created)]):
            return dataclasses.replace(record, last=now)
        return None

    def list_for_user(self, user: str) -> list[TokenRecord]:
        """The user's live tokens, oldest first (dangling and expired entries are cleaned up)."""
        return self.list_own(user, None)[0]

    def list_own(self, user: str, entry_id: str | None) -> tuple[list[TokenRecord], int]:
        """``list_for_user`` for the user who has just logged in as the directory entry
        ``entry_id`` (None: unknown), and how many tokens it revoked: those made by another entry
        that held the name before (``other_entry``: a departed person's), refused everywhere
        already (auth/directory_check.py), and not the caller's to see or to count."""
        user_key = self._user_key(user)
        hashes = sorted(self.redis.smembers(user_key))
        if not hashes:
            return [], 0
        pipe = self.redis.pipeline(transaction=False)
        for token_hash in hashes:
            pipe.hgetall(self._token_key(token_hash))
        records: list[TokenRecord] = []
        revoked = 0
        for token_hash, fields in zip(hashes, pipe.execute(), strict=True):
            record = self._record(token_hash, fields) if fields else None
            departed = record is not None and other_entry(record.entry_id, entry_id)
            if record is None or record.user != user or departed:
                deleted = self._delete(keys=self._delete_keys(token_hash, user), args=[user, token_hash])
                revoked += int(departed and int(deleted) == 1)
                continue
            records.append(record)
        records.sort(key=lambda r: (r.created, r.id))
        return records, revoked

    def list_pending(self, user: str) -> list[TokenRecord]:
        """The user's pending tokens (made by a login, not counted: ``create``), oldest first,
        ``expires`` when each record goes. Most are the orphans of failed logins, given to nobody;
        one whose count a failover lost is held by its user, works, and is counted at its first
        use (``lookup``): an administrator revoking a user's tokens sees it and can delete it by
        id before then. Those whose record is gone (expired, counted, deleted) are forgotten."""
        pending_key = self._pending_key(user)
        hashes = self.redis.zrange(pending_key, 0, -1)
        if not hashes:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for token_hash in hashes:
            pipe.hgetall(self._token_key(token_hash))
        records: list[TokenRecord] = []
        gone: list[str] = []
        for token_hash, fields in zip(hashes, pipe.execute(), strict=True):
            record = self._record(token_hash, fields) if fields.get("pending") else None
            if record is None or record.user != user:
                gone.append(token_hash)
                continue
            goes = (record.created_at or 0) + min(PENDING_SECONDS, self.ttl_seconds or PENDING_SECONDS)
            records.append(dataclasses.replace(record, pending=True, expires=iso(goes)))
        if gone:
            self.redis.zrem(pending_key, *gone)
        records.sort(key=lambda r: (r.created, r.id))
        return records

    def delete(self, token: str, user: str) -> DeleteResult:
        """Delete a token if it belongs to user, under any spelling of the name (FORBIDDEN when it
        is someone else's)."""
        if not is_token_shaped(token):
            return DeleteResult.NOT_FOUND
        return self._delete_hash(hash_token(token), user)

    def delete_by_id(self, id_or_prefix: str, user: str) -> DeleteResult:
        """Delete one of the user's own tokens by its listed id (a hash prefix, ``is_token_id``),
        a pending one too (``list_pending``). Only the user's tokens are considered, so this never
        answers FORBIDDEN."""
        if not is_token_id(id_or_prefix):
            return DeleteResult.NOT_FOUND
        held = {*self.redis.smembers(self._user_key(user)), *self.redis.zrange(self._pending_key(user), 0, -1)}
        matches = [h for h in held if h.startswith(id_or_prefix)]
        if len(matches) != 1:
            return DeleteResult.NOT_FOUND
        return self._delete_hash(matches[0], user)

    def _delete_hash(self, token_hash: str, user: str) -> DeleteResult:
        key = self._token_key(token_hash)
        owner = self.redis.hget(key, "user")
        if owner is not None and same_user(owner, user):
            # A token made before names were canonical records its owner as typed ('ALICE'):
            # still alice's. The script deletes it only while it is still that owner's.
            user = owner
        holder = owner if owner is not None else user
        result = int(self._delete(keys=self._delete_keys(token_hash, holder), args=[user, token_hash]))
        if result == 1:
            return DeleteResult.DELETED
        if result == -1:
            return DeleteResult.FORBIDDEN
        return DeleteResult.NOT_FOUND

    def owner(self, token: str) -> str | None:
        """The user a valid token belongs to (without touching ``last``)."""
        record = self.lookup(token, touch=False)
        return record.user if record else None
