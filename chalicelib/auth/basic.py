"""HTTP Basic credentials and the login flow the token routes need (framework-free).

``LoginService.login(authorization_header, address)`` parses the header, applies the failed-login
limiter, asks the authenticator, and says what to answer:

    OK           -> go on as ``result.user``
    MISSING      -> 401 {"ok": false} + WWW-Authenticate: Basic realm="Authentication required"
    INVALID      -> the same 401, saying the credentials sent were refused
    RATE_LIMITED -> 429 {"ok": false} + Retry-After: result.retry_after
    UNAVAILABLE  -> 503 {"ok": false, "error": result.message}
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib.logs import module_logger

from .base import Authenticator, AuthUnavailable, NamingAuthenticator, acceptable_credentials, canonical_user
from .ratelimit import LoginLimiter, new_attempt

if TYPE_CHECKING:
    from chalicelib.refusals import RefusalLog

logger = module_logger(__name__)

LOGIN_BUSY = "login refused, attempts in flight fill the limit"
LOGIN_LIMITED = "login refused, too many failures"

WWW_AUTHENTICATE = 'Basic realm="Authentication required"'


def sends_basic_auth(header: str | None) -> bool:
    """Whether an ``Authorization`` header value claims the Basic scheme (readable or not)."""
    return isinstance(header, str) and header.strip().partition(" ")[0].lower() == "basic"


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header value, or None.

    The password may contain ':'; the user name may not (RFC 7617). UTF-8, falling back to
    Latin-1 as older clients send. The base64 may come without its ``=`` padding, as vmpooler's
    Rack (``unpack("m")``) reads it: tools that write unpadded base64 (Go's ``RawStdEncoding``,
    ``| tr -d =``) logged in there and were a 401 here. Any other character is still refused."""
    if not header or not isinstance(header, str):
        return None
    scheme, _, encoded = header.strip().partition(" ")
    encoded = encoded.strip()
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, separator, password = text.partition(":")
    if not separator:
        return None
    return user, password


class LoginOutcome(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    """No Basic credentials came with the request."""
    INVALID = "invalid"
    """Basic credentials came and were refused (a wrong password, an unknown user, a header that
    does not decode: one answer, so that it never tells whether the user exists)."""
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    user: str | None = None
    retry_after: int | None = None
    message: str | None = None
    entry_id: str | None = None
    """The stable id of the directory entry the login bound as (``ldap.entry_id``), None when the
    backend has none: saved with the token, so a name given to someone else later is not them."""

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK


class LoginService:
    def __init__(self, authenticator: Authenticator, limiter: LoginLimiter | None = None,
                 refusals: RefusalLog | None = None) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.refusals = refusals
        """Where logins the limits refuse are counted, once a window (chalicelib/refusals.py):
        a caller kept past the limit was logged once per attempt, as often as it sent one."""

    def login(self, authorization: str | None, address: str | None = None) -> LoginResult:
        """Check an Authorization header value for a request from ``address``."""
        if not sends_basic_auth(authorization):
            return LoginResult(LoginOutcome.MISSING)
        credentials = parse_basic_auth(authorization)
        if credentials is None:
            return LoginResult(LoginOutcome.INVALID)
        return self.check(credentials[0], credentials[1], address)

    def _refused(self, reason: str, level: int, retry_after: int) -> None:
        if self.refusals is not None:
            self.refusals.refused(reason, level=level, retry_after=retry_after)
        elif level >= logging.WARNING:
            logger.warning("%s (retry after %ss)", reason, retry_after, stacklevel=2)
        else:
            logger.info("%s (retry after %ss)", reason, retry_after, stacklevel=2)

    def check(self, user: str, password: str, address: str | None = None) -> LoginResult:
        """Reserve an attempt under the limits, then ask the directory: concurrent attempts
        cannot pass the limit together. Credentials no directory is asked about (an empty
        password, a control character in the name...: ``acceptable_credentials``) are refused
        without being counted: they guess nothing, and each counted one kept a counter of its
        user name in Redis for the login window. Those cost no directory round trip, so a caller
        with many addresses (50 each per window; an IPv6 /48 holds 65,536 /64s) sent them as fast
        as the API answers: 750 a second in one process, 200 bytes each for 5 minutes."""
        if not acceptable_credentials(user, password):
            return LoginResult(LoginOutcome.INVALID)
        attempt = new_attempt()
        if self.limiter is not None:
            refusal = self.limiter.reserve(user, address, attempt)
            if refusal is not None:
                if refusal.busy:
                    self._refused(LOGIN_BUSY, logging.INFO, refusal.retry_after)
                    message = "too many logins at once, try again in a moment"
                else:
                    self._refused(LOGIN_LIMITED, logging.WARNING, refusal.retry_after)
                    message = "too many failed logins, try again later"
                return LoginResult(LoginOutcome.RATE_LIMITED, retry_after=refusal.retry_after, message=message)
        try:
            found = self._login_entry(user, password)
        except AuthUnavailable as error:
            if self.limiter is not None:
                # an outage is not a failed login
                self.limiter.settle(user, address, attempt, succeeded=None)
            return LoginResult(LoginOutcome.UNAVAILABLE, message=str(error))
        if self.limiter is not None:
            self.limiter.settle(user, address, attempt, succeeded=found is not None)
        if found is None:
            return LoginResult(LoginOutcome.INVALID)
        name, entry_id = found
        # The directory matched the name case-insensitively (ALICE logs in as alice), or by
        # another of the entry's names: the user owns tokens and VMs under the canonical form of
        # the name the directory gives the entry, so every spelling and every name of it is the
        # one user, with one set of tokens and one limit.
        return LoginResult(LoginOutcome.OK, user=canonical_user(name), entry_id=entry_id)

    def _login_entry(self, user: str, password: str) -> tuple[str, str | None] | None:
        """The backend's name for whom the credentials log in as (the name typed when the backend
        has no names of its own to give) and its entry's stable id (None when it has none), None
        when refused."""
        login_entry = getattr(self.authenticator, "login_entry", None)
        if callable(login_entry):
            found: tuple[str, str | None] | None = login_entry(user, password)
            return found
        if isinstance(self.authenticator, NamingAuthenticator):
            name = self.authenticator.login_name(user, password)
            return None if name is None else (name, None)
        return (user, None) if self.authenticator.authenticate(user, password) else None
