"""Whether a token's user is still in the directory, asked at most every few minutes.

A token proves that its user logged in once. An operator who removes a departed employee from
LDAP (or moves the entry out of the configured bases) expects the tokens to stop working too:
so each use of a token looks at the directory's last answer about its user, kept in Redis
(``dircheck:<user hash>``, store/keys.py), and asks the directory again once that answer is
``directory_check_minutes`` old. No request binds as the user; a check is one service-account bind
and the searches a login makes, shared by every API process through Redis.

When the directory cannot answer, the last answer stands: a user found (or whose token was
made: a login finds the user) within the last ``directory_outage_grace_minutes`` keeps working
(CI jobs holding tokens do not stop with LDAP), a user found missing stays refused. Past the
grace, or with no answer to go by, the token cannot be vouched for and the API answers 503
(never 401: nobody said the user was removed).
A failed question is asked again after ``RETRY_SECONDS`` only while the last answer stands (after
``UNKNOWN_RETRY_SECONDS``, the client's retry, when there is none), so an outage does not make
every request wait for the directory's timeout; and when an answer gets old, one request claims the
question (``CLAIM_SECONDS``) while the user's other requests go by the last answer, so a user's
many requests at once do not each bind to the directory. A user with no answer kept has none to
go by: the requests of one process then wait for the one question it asks (``_shared_question``).

A successful login records the user as present (the directory has just said so).

A user name may later be given to another person (a new entry, same uid). So that the departed
person's tokens do not act as the new one, a token saves the stable id of the entry its login
bound as (OpenLDAP's entryUUID, Active Directory's objectGUID: ``TokenRecord.entry_id``), each
answer keeps the id of the entry found (``entry``), and a token whose id is not the one found is
refused as its user's removal is (REMOVED). A token without an id (made before ids were saved)
or an answer without one (a directory that gives none) goes by the name only, as before.
"""

from __future__ import annotations

import enum
import hashlib
import threading
import time
from typing import Any, Callable

from chalicelib.clock import Clock
from chalicelib.logs import module_logger
from chalicelib.store.keys import DEFAULT_PREFIX, Keys
from chalicelib.store.records import finite_number
from chalicelib.store.scripts import registered, script_source

from .base import AuthConfigError, AuthUnavailable, other_entry
from .directory_budget import task_deadline

logger = module_logger(__name__)

RETRY_SECONDS = 60.0
"""After the directory failed to answer about a user, how long the last answer is used before
asking again (while within the grace)."""

UNKNOWN_RETRY_SECONDS = 5.0
"""After the directory failed to answer about a user with no answer to go by (the request a 503
with ``Retry-After: 5``), how soon it is asked again: at the client's retry, one request at a
time (the claim). Before, not for ``RETRY_SECONDS``: once the directory was back, the user's
requests were 503 for up to a minute, each retry told to come back in 5 s."""


CLAIM_SECONDS = 30.0
"""How long one request's claim on asking the directory about a user holds (others go by the last
answer meanwhile); past it, a claimant killed mid-question is replaced."""


class Standing(enum.Enum):
    """What the directory (or its last answer) says about a token's user."""

    PRESENT = "present"
    REMOVED = "removed"
    UNKNOWN = "unknown"
    """No answer to go by: the directory cannot answer, and its last good answer is older than
    the grace (or there is none)."""


def user_hash(user: str) -> str:
    """The part of the record's key naming ``user`` (a name may hold ``:``; hashed, as in the
    other per-user keys)."""
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:32]


class _Question:
    """One question about a user under way in this process, and its answer once it came."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.found: bool | str = False
        self.failure: str | None = None
        self.waiting = 0
        """The other requests waiting for it."""


class DirectoryCheck:
    """Looks a token's user up in the directory at most every ``interval_minutes``.

    ``lookup`` answers whether the directory still has the user: False when not, the stable id
    of the entry found (``ldap.entry_id``) or True when found without one (raising
    AuthUnavailable when it cannot tell); None, or an interval of 0, turns the check off (every
    user is PRESENT)."""

    def __init__(self, redis: Any, clock: Clock, lookup: Callable[[str], bool | str] | None, *,
                 interval_minutes: int, grace_minutes: int, prefix: str = DEFAULT_PREFIX,
                 wait_seconds: float = 30.0, task_seconds: float | None = None) -> None:
        self.redis = redis
        self.clock = clock
        self.lookup = lookup if interval_minutes > 0 else None
        self.interval = interval_minutes * 60.0
        self.grace = grace_minutes * 60.0
        self.keys = Keys(prefix)
        self._answer = registered(redis, script_source("directory_answer"))
        self._claim = registered(redis, script_source("directory_claim"))
        self.wait_seconds = wait_seconds
        """How long a request waits for the answer another request of this process is getting
        about the same user (``_shared_question``): at least what one question may take."""
        self.task_seconds = wait_seconds if task_seconds is None else task_seconds
        """The directory's ``login_timeout``: a request's wait for another's answer is directory
        work of that request, under its one deadline (``directory_budget``)."""
        self._questions: dict[str, _Question] = {}
        self._questions_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.lookup is not None

    def _key(self, user: str) -> str:
        return self.keys.directory_check(user_hash(user))

    @property
    def _record_ttl(self) -> int:
        """A record is of use while its answer is fresh or, for a present user, within the grace."""
        return max(60, int(self.interval + self.grace))

    def _record(self, user: str, asked: float, present: bool | None, entry_id: str | None = None) -> None:
        flag = "" if present is None else "1" if present else "0"
        self._answer(keys=[self._key(user)], args=[repr(asked), flag, self._record_ttl, entry_id or ""])

    def logged_in(self, user: str, asked: float | None = None, entry_id: str | None = None) -> None:
        """The directory has accepted ``user``'s password: it is there, as the entry ``entry_id``
        (when known), as of ``asked``, when the login began (default now). Recorded as of then,
        not as of the login's end: an answer about the user recorded meanwhile (the entry removed
        while the login was under way) is the later one and stands (lua/directory_answer.lua
        keeps the later question's answer)."""
        if self.enabled:
            self._record(user, self.clock.now() if asked is None else asked, True, entry_id)

    def waiting(self, user: str) -> int:
        """How many requests of this process wait for the answer to the question about ``user``
        another is asking (0 when none is asked)."""
        with self._questions_lock:
            question = self._questions.get(user)
            return 0 if question is None else question.waiting

    def _shared_question(self, user: str, now: float) -> bool | str:
        """``lookup``'s answer about ``user``, recorded in Redis, asked once however many of this
        process's requests need it at once: the first asks, the others wait for its answer (at
        most ``wait_seconds``, then AuthUnavailable: answered as during an outage, by the last
        answer if any). A user with no answer
        kept has no last answer to go by while one is asked (the Redis claim serves only those
        with one), so each request asked: 16 at once were 16 binds and searches."""
        with self._questions_lock:
            question = self._questions.get(user)
            asking = question is None
            if question is None:
                question = self._questions[user] = _Question()
            else:
                question.waiting += 1
        if not asking:
            wait = min(self.wait_seconds, task_deadline(self.task_seconds) - time.monotonic())
            if not question.answered.wait(max(wait, 0.0)):
                raise AuthUnavailable("the directory's answer about the user, asked by another request, "
                                      "did not come in time")
            if question.failure is not None:
                raise AuthUnavailable(question.failure)
            return question.found
        try:
            question.found = self._ask(user, now)
        except Exception as error:
            question.failure = str(error) or type(error).__name__
            raise
        finally:
            with self._questions_lock:
                del self._questions[user]
            question.answered.set()
        return question.found

    def _ask(self, user: str, now: float) -> bool | str:
        """Ask the directory about ``user`` now and record its answer (a failure too)."""
        assert self.lookup is not None
        try:
            found = self.lookup(user)
        except (AuthUnavailable, AuthConfigError):
            self._record(user, now, None)
            raise
        self._record(user, now, bool(found), found if isinstance(found, str) else None)
        if not found:
            logger.warning("a token's user is no longer in the directory: its tokens are refused",
                           extra={"user": user})
        return found

    def standing(self, user: str, logged_in_at: float | None = None, entry_id: str | None = None) -> Standing:
        """PRESENT, REMOVED or UNKNOWN (see the module doc) for a token of ``user`` made at
        ``logged_in_at`` (its creation: the user had just logged in, an answer as good as a
        lookup's) as the directory entry ``entry_id`` (None: unknown, the name alone decides).
        REMOVED too when the directory's entry of that name is another one. Redis errors
        propagate (503)."""
        if self.lookup is None:
            return Standing.PRESENT
        now = self.clock.now()
        fields = self.redis.hgetall(self._key(user))
        asked, good, failed = (finite_number(fields.get(name)) for name in ("asked", "good", "failed"))
        present = fields.get("present")
        if logged_in_at is not None and (good is None or logged_in_at > good):
            good = logged_in_at

        def answered(found: bool, found_entry: str | None) -> Standing:
            if not found:
                return Standing.REMOVED
            if other_entry(entry_id, found_entry):
                # The name is another entry's now (given to someone else): not this token's user.
                return Standing.REMOVED
            return Standing.PRESENT

        kept_entry = fields.get("entry") or None

        def last_answer() -> Standing:
            if present == "0":
                return Standing.REMOVED
            if good is not None and now - good <= self.grace:
                return answered(True, kept_entry)
            return Standing.UNKNOWN

        if asked is not None and present in ("0", "1") and now - asked < self.interval:
            return answered(present == "1", kept_entry)
        retrying = failed is not None and now - failed < RETRY_SECONDS
        if failed is not None and retrying:
            standing = last_answer()
            if standing is not Standing.UNKNOWN or now - failed < UNKNOWN_RETRY_SECONDS:
                return standing
            # Nothing to go by (a 503 either way): asked again at the client's retry, so the
            # directory back is the user back.
        if (present in ("0", "1") or retrying) and not self._claim(
                keys=[self._key(user)], args=[repr(now), CLAIM_SECONDS, self._record_ttl, fields.get("asked") or ""]):
            # Another request is asking right now (its answer comes in a moment), or has just
            # answered (the record read is that old answer).
            return last_answer() if retrying else answered(present == "1", kept_entry)
        try:
            found = self._shared_question(user, now)
        except (AuthUnavailable, AuthConfigError) as error:  # an unreadable CA file: an outage too
            standing = last_answer()
            logger.warning("directory check of a token's user failed; %s",
                           "the last answer stands" if standing is not Standing.UNKNOWN else "no answer to go by",
                           extra={"user": user, "error": str(error)})
            return standing
        found_entry = found if isinstance(found, str) else None
        standing = answered(bool(found), found_entry)
        if found and standing is Standing.REMOVED:
            logger.warning("a token's user name is another directory entry's now: the token is refused",
                           extra={"user": user})
        return standing
