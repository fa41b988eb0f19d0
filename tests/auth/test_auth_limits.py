"""Failed-login limiter and the Basic-auth login flow."""

from __future__ import annotations

import base64
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.auth.base import AuthUnavailable
from chalicelib.auth.basic import LoginOutcome, LoginService, parse_basic_auth
from chalicelib.auth.dummy import DummyAuthenticator
from chalicelib.auth.ldap import LdapAuthenticator, parse_ldap_settings
from chalicelib.auth.ratelimit import LoginLimiter, Refusal, new_attempt
from chalicelib.auth.secrets import plain_secret
from chalicelib.config import parse


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def per_user(limit: int) -> dict[str, int]:
    """A user name's limit from one address and from all: tests of how a name is counted."""
    return {"max_per_user": limit, "max_per_user_all_addresses": limit}


def fail(limiter: LoginLimiter, user: str | None, address: str | None) -> None:
    """A failed login as the service counts it: the attempt reserved, then settled as failed."""
    attempt = new_attempt()
    assert limiter.reserve(user, address, attempt) is None
    limiter.settle(user, address, attempt, succeeded=False)


def wait_for(limiter: LoginLimiter, user: str | None, address: str | None) -> int | None:
    """Seconds a new attempt by ``user`` from ``address`` must wait, None when it may go ahead
    (the probing attempt is given back: the directory "could not answer")."""
    attempt = new_attempt()
    refusal = limiter.reserve(user, address, attempt)
    if refusal is None:
        limiter.settle(user, address, attempt, succeeded=None)
        return None
    return refusal.retry_after


def counters(redis_client) -> list[str]:
    """The failed-login counters of names and addresses counted on their own."""
    return [key for key in redis_client.scan_iter("vmpool:login:*")
            if not key.endswith((":in_flight", ":counted")) and ":shared:" not in key and ":attempt:" not in key]


def test_per_user_limit(redis_client):
    limiter = LoginLimiter(redis_client, **per_user(3), max_per_address=100, window_seconds=60)
    for _ in range(2):
        fail(limiter, "alice", "10.0.0.1")
        assert wait_for(limiter, "alice", "10.0.0.1") is None
    fail(limiter, "alice", "10.0.0.2")
    wait = wait_for(limiter, "alice", "10.0.0.3")  # the user is over, whatever the address
    assert wait is not None and 1 <= wait <= 60
    assert wait_for(limiter, "Alice ", "10.0.0.3") == wait  # names are lower-cased
    assert wait_for(limiter, "bob", "10.0.0.1") is None


def test_per_address_limit_and_ipv6_prefix(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=100, max_per_address=3, window_seconds=60)
    for user in ("u1", "u2", "u3"):
        fail(limiter, user, "2001:db8::1")
    assert wait_for(limiter, "u4", "2001:db8::ffff") is not None  # same /64
    assert wait_for(limiter, "u4", "2001:db8:0:1::1") is None
    assert wait_for(limiter, "u4", None) is None
    for user in ("u1", "u2", "u3"):
        fail(limiter, user, "::ffff:192.0.2.1")
    assert wait_for(limiter, "x", "192.0.2.1") is not None


def test_counters_always_expire_and_windows_are_fixed(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=5, max_per_address=5, window_seconds=100)
    fail(limiter, "alice", "10.0.0.1")
    keys = counters(redis_client)
    assert len(keys) == 3  # the (address, user) pair, the user, the address
    assert all(0 < redis_client.ttl(key) <= 100 for key in keys)
    assert all("alice" not in key for key in keys)  # the name is hashed
    for key in keys:
        redis_client.expire(key, 50)
    fail(limiter, "alice", "10.0.0.1")
    assert all(redis_client.ttl(key) <= 50 for key in keys)  # a failure does not extend the window
    redis_client.persist(keys[0])  # a counter that lost its expiry gets one again
    fail(limiter, "alice", "10.0.0.1")
    assert redis_client.ttl(keys[0]) > 0


def test_window_end_lifts_the_limit(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=1, max_per_address=10, window_seconds=60)
    fail(limiter, "alice", "10.0.0.1")
    assert wait_for(limiter, "alice", "10.0.0.1") == 60
    # Every counter ends with the window: Redis expires it then (here: deleted, not waited for).
    ended = counters(redis_client)
    assert len(ended) == 3 and all(0 < redis_client.ttl(key) <= 60 for key in ended)
    redis_client.delete(*ended)
    assert wait_for(limiter, "alice", "10.0.0.1") is None


def test_failures_are_counted_atomically_under_concurrency(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=1000, max_per_address=1000, window_seconds=60,
                           max_per_user_all_addresses=1000)
    threads = [threading.Thread(target=lambda: [fail(limiter, "alice", "10.0.0.1") for _ in range(25)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(redis_client.get(key)) for key in counters(redis_client)) == [200, 200, 200]


def test_from_config(redis_client):
    auth = parse("auth: {provider: dummy, login_attempts_per_user: 4, login_attempts_per_address: 7, "
                 "login_attempts_per_user_all_addresses: 9, login_window_seconds: 30}\n").auth
    limiter = LoginLimiter.from_config(auth, redis_client)
    assert (limiter.max_per_user, limiter.max_per_user_all_addresses, limiter.max_per_address,
            limiter.window_seconds) == (4, 9, 7, 30)
    default = LoginLimiter.from_config(None, redis_client)
    assert (default.max_per_user, default.max_per_user_all_addresses, default.max_per_address,
            default.window_seconds) == (10, 100, 500, 300)
    for zero in ("max_per_user", "max_per_user_all_addresses", "max_per_address"):
        with pytest.raises(ValueError):
            LoginLimiter(redis_client, **{zero: 0})


# --- Basic auth and the login flow --------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        (basic("alice", "pw"), ("alice", "pw")),
        (basic("alice", "p:w:x"), ("alice", "p:w:x")),
        (basic("alice", ""), ("alice", "")),
        ("basic " + base64.b64encode("jürgen:pä".encode()).decode(), ("jürgen", "pä")),
        ("Basic " + base64.b64encode("jürgen:pä".encode("latin-1")).decode(), ("jürgen", "pä")),
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ],
)
def test_parse_basic_auth(header, expected):
    assert parse_basic_auth(header) == expected


class Recording:
    def __init__(self, answer=True, error=None):
        self.answer, self.error, self.calls = answer, error, []

    def authenticate(self, username, password):
        self.calls.append(username)
        if self.error:
            raise self.error
        return self.answer


def test_login_flow(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=2, max_per_address=50, window_seconds=60)
    service = LoginService(DummyAuthenticator(), limiter)
    ok = service.login(basic("alice", "secret"), "10.0.0.1")
    assert ok.ok and ok.user == "alice"
    assert service.login(None, "10.0.0.1").outcome is LoginOutcome.MISSING
    assert service.login(basic("alice", "alice"), "10.0.0.1").outcome is LoginOutcome.INVALID
    assert service.login(basic("alice", "alice"), "10.0.0.1").outcome is LoginOutcome.INVALID
    limited = service.login(basic("alice", "right"), "10.0.0.1")  # even the right password now
    assert limited.outcome is LoginOutcome.RATE_LIMITED and 1 <= limited.retry_after <= 60
    assert service.login(basic("bob", "right"), "10.0.0.1").ok


def test_a_success_gives_its_attempt_back_and_clears_no_failures(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=3, max_per_address=50, window_seconds=60)
    service = LoginService(DummyAuthenticator(), limiter)
    assert not service.check("alice", "alice", "10.0.0.1").ok
    for _ in range(5):
        assert service.check("alice", "pw", "10.0.0.1").ok  # successes cost nothing
    assert not service.check("alice", "alice", "10.0.0.1").ok
    assert service.check("alice", "pw", "10.0.0.1").ok
    assert not service.check("alice", "alice", "10.0.0.1").ok
    assert wait_for(limiter, "alice", "10.0.0.1") == 60  # three failures, whatever came between


def test_unavailable_backend_is_not_a_failed_login(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=1, max_per_address=1, window_seconds=60)
    backend = Recording(error=AuthUnavailable("LDAP server ldap:636 is unavailable"))
    service = LoginService(backend, limiter)
    for _ in range(3):
        result = service.check("alice", "pw", "10.0.0.1")
        assert result.outcome is LoginOutcome.UNAVAILABLE
        assert result.message == "LDAP server ldap:636 is unavailable"
    assert wait_for(limiter, "alice", "10.0.0.1") is None


def test_limited_logins_never_reach_the_backend(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=1, max_per_address=50, window_seconds=60)
    backend = Recording(answer=False)
    service = LoginService(backend, limiter)
    service.check("alice", "x", "10.0.0.1")
    service.check("alice", "y", "10.0.0.1")
    assert backend.calls == ["alice"]


# --- against the real directory, many at once -----------------------------------------------------


class _Gate:
    """Holds every login that reaches the directory until all callers have either reached it or
    been refused: the worst interleaving (every check before any failure is counted), for certain."""

    def __init__(self, inner, callers):
        self.inner, self.callers = inner, callers
        self.lock = threading.Lock()
        self.settled = 0
        self.reached = 0
        self.open = threading.Event()

    def settle(self):
        with self.lock:
            self.settled += 1
            if self.settled == self.callers:
                self.open.set()

    def authenticate(self, username, password):
        with self.lock:
            self.reached += 1
        self.settle()
        assert self.open.wait(20)
        return self.inner.authenticate(username, password)


def _ldap(slapd):
    ldap = slapd.ldap_config()
    ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    return LdapAuthenticator(parse_ldap_settings(ldap), plain_secret)


def test_concurrent_wrong_passwords_reach_ldap_only_up_to_the_limit(redis_client, slapd):
    callers, limit = 40, 5
    gate = _Gate(_ldap(slapd), callers)
    service = LoginService(gate, LoginLimiter(redis_client, **per_user(limit), max_per_address=1000))

    def attempt(index):
        result = service.check("bob", f"wrong-{index}", f"198.51.100.{index}")
        if result.outcome is LoginOutcome.RATE_LIMITED:
            gate.settle()
        return result.outcome

    with ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(attempt, range(callers)))
    assert gate.reached == limit
    assert outcomes.count(LoginOutcome.INVALID) == limit
    assert outcomes.count(LoginOutcome.RATE_LIMITED) == callers - limit
    # bob is locked out now, whatever the password
    assert service.check("bob", slapd.password("bob"), "198.51.100.200").outcome is LoginOutcome.RATE_LIMITED


@pytest.mark.parametrize("look_alike", ["\uff42ob", "BOB", "\uff22\uff2f\uff22"])
def test_a_look_alike_name_shares_the_users_limit(redis_client, slapd, look_alike):
    """The directory binds a fullwidth '\uff42ob' as bob: it must not get a counter of its own."""
    ldap = _ldap(slapd)
    assert ldap.authenticate(look_alike, slapd.password("bob"))  # what makes this matter
    service = LoginService(ldap, LoginLimiter(redis_client, **per_user(3), max_per_address=1000))
    for attempt in range(3):
        assert service.check("bob", f"wrong-{attempt}", "192.0.2.1").outcome is LoginOutcome.INVALID
    result = service.check(look_alike, slapd.password("bob"), "192.0.2.2")
    assert result.outcome is LoginOutcome.RATE_LIMITED


def test_a_success_gives_the_address_its_attempt_back(redis_client):
    limiter = LoginLimiter(redis_client, max_per_user=50, max_per_address=2, window_seconds=60)
    service = LoginService(DummyAuthenticator(), limiter)
    for _ in range(5):
        assert service.check("alice", "pw", "10.0.0.1").ok
    assert not service.check("alice", "alice", "10.0.0.1").ok
    assert service.check("carol", "pw", "10.0.0.1").ok


def test_logins_at_once_with_the_right_password_are_not_failed_logins(redis_client, slapd):
    """Eight CI jobs logging in as bob at once: the limit lets three reach the directory at a time,
    since any of them could be wrong. The others were told 'too many failed logins' and to wait the
    whole window (Retry-After: 60), though no login had failed; they are told to retry in a second,
    and once the three are in, bob has no failure counted."""
    callers, limit, window = 8, 3, 60
    gate = _Gate(_ldap(slapd), callers)
    limiter = LoginLimiter(redis_client, **per_user(limit), max_per_address=1000, window_seconds=window)
    service = LoginService(gate, limiter)

    def attempt(index):
        result = service.check("bob", slapd.password("bob"), f"198.51.100.{index}")
        if result.outcome is LoginOutcome.RATE_LIMITED:
            gate.settle()
        return result

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(attempt, range(callers)))
    assert [r.outcome for r in results].count(LoginOutcome.OK) == limit
    refused = [r for r in results if r.outcome is LoginOutcome.RATE_LIMITED]
    assert len(refused) == callers - limit
    assert {r.retry_after for r in refused} == {1}
    assert wait_for(limiter, "bob", "198.51.100.200") is None
    assert service.check("bob", slapd.password("bob"), "198.51.100.200").ok


def test_a_success_keeps_the_attempts_still_in_flight_reserved(redis_client):
    """A success clears the user's failures, not the reservations of attempts still waiting for
    the directory: those were wiped, so their failures went uncounted and the limit let more
    guesses through than it allows."""
    limiter = LoginLimiter(redis_client, **per_user(3), max_per_address=1000, window_seconds=60)
    guess, herself = new_attempt(), new_attempt()
    assert limiter.reserve("alice", "10.0.0.1", guess) is None  # a guess, still waiting for the directory
    assert limiter.reserve("alice", "10.0.0.2", herself) is None  # alice herself
    limiter.settle("alice", "10.0.0.2", herself, succeeded=True)
    limiter.settle("alice", "10.0.0.1", guess, succeeded=False)  # the guess was wrong: it counts
    for address in ("10.0.0.3", "10.0.0.4"):
        fail(limiter, "alice", address)
    assert limiter.reserve("alice", "10.0.0.5", new_attempt()) == Refusal(60, busy=False)


def test_a_dotted_capital_i_shares_the_users_limit(redis_client, slapd):
    """The directory binds 'al\u0130ce' (a capital I with a dot) as alice, whose failed-login
    counter it did not share: each i in a name doubled the guesses the limit allowed."""
    ldap = _ldap(slapd)
    look_alike = "al\u0130ce"
    assert ldap.authenticate(look_alike, slapd.password("alice"))  # what makes this matter
    service = LoginService(ldap, LoginLimiter(redis_client, **per_user(3), max_per_address=1000))
    for attempt in range(3):
        assert service.check("alice", f"wrong-{attempt}", "192.0.2.1").outcome is LoginOutcome.INVALID
    assert service.check(look_alike, slapd.password("alice"), "192.0.2.2").outcome is LoginOutcome.RATE_LIMITED


class AccentFoldingDirectory:
    """A directory that matches user names as Active Directory matches sAMAccountName: case and
    accents ignored (Microsoft KB 938447), and zero-width spaces and soft hyphens dropped as RFC
    4518 asks. One entry, ``j\u00e9sush``."""

    entry, password = "j\u00e9sush", "right"

    def __init__(self):
        self.calls = []

    @staticmethod
    def _matched(name):
        decomposed = unicodedata.normalize("NFKD", name.casefold())
        return "".join(c for c in decomposed if not unicodedata.combining(c) and c not in "\u200b\u00ad")

    def login_name(self, username, password):
        self.calls.append(username)
        if self._matched(username) == self._matched(self.entry) and password == self.password:
            return self.entry
        return None

    def authenticate(self, username, password):
        return self.login_name(username, password) is not None


SPELLINGS = ["jesush", "J\u00c9SUSH", "j\u00e8sush", "je\u0301sush", "j\u00eas\u00fash", "jes\u200bush",
             "je\u00adsush", "j\u00e9s\u00fcsh", "J\u00cbSUSH", "j\u0113sush"]


def test_accent_and_invisible_spellings_of_one_entry_share_its_failed_login_limit(redis_client):
    """Active Directory binds every spelling here as the entry j\u00e9sush; each had a counter of its
    own (login_key folded case only), so a guesser varying accents had 10 x the limit's guesses
    at one password."""
    directory = AccentFoldingDirectory()
    service = LoginService(directory, LoginLimiter(redis_client, **per_user(3), max_per_address=1000))
    outcomes = [service.check(spelling, f"wrong-{n}", f"192.0.2.{n}").outcome for n, spelling in enumerate(SPELLINGS)]
    assert outcomes == [LoginOutcome.INVALID] * 3 + [LoginOutcome.RATE_LIMITED] * (len(SPELLINGS) - 3)
    assert len(directory.calls) == 3
    # The user is locked out for the window, as a guesser using the one spelling always could.
    assert service.check("j\u00e9sush", "right", "192.0.2.200").outcome is LoginOutcome.RATE_LIMITED


class ControlDroppingDirectory(AccentFoldingDirectory):
    """The accent-folding directory that also maps to nothing the C1 control characters, as RFC
    4518 (2.2) asks (U+0080-U+0084, U+0086-U+009F; U+0085, a line break, to a space)."""

    @staticmethod
    def _matched(name):
        kept = "".join(c for c in name.replace("\u0085", " ") if unicodedata.category(c) != "Cc")
        return AccentFoldingDirectory._matched(kept)


def test_control_character_spellings_of_one_entry_share_its_failed_login_limit(redis_client):
    """A C1 control character (UTF-8 in Basic credentials: ``jes\\u0080ush``) passes
    acceptable_credentials, and a directory following RFC 4518 binds the name as the entry
    without it; login_key kept it, so each of 31 characters at each place in the name was a
    failed-login counter of its own: unlimited guesses at one password."""
    directory = ControlDroppingDirectory()
    service = LoginService(directory, LoginLimiter(redis_client, **per_user(3), max_per_address=1000))
    spellings = ["j\u00e9sush", "j\u0080\u00e9sush", "j\u00e9s\u009fush", "j\u00e9su\u0081sh",
                 "j\u00e9sush\u0090", "j\u00e9\u0084sush"]
    outcomes = [service.check(spelling, f"wrong-{n}", f"192.0.2.{n}").outcome for n, spelling in enumerate(spellings)]
    assert outcomes == [LoginOutcome.INVALID] * 3 + [LoginOutcome.RATE_LIMITED] * (len(spellings) - 3)
    assert len(directory.calls) == 3


def test_the_holder_of_a_merged_name_cannot_reset_guesses_at_the_other(redis_client, slapd):
    """jose and jos\u00e9 are two entries of the directory (OpenLDAP keeps them apart), whose failed
    logins share a counter. A success cleared the counter: jose's holder logging in between
    guesses at jos\u00e9's password had as many guesses as logins."""
    added = [slapd.add_user("jose", "jose-Pass-1"), slapd.add_user("jos\u00e9", "jos\u00e9-Pass-2")]
    try:
        ldap = _ldap(slapd)
        assert ldap.login_name("JOS\u00c9", "jos\u00e9-Pass-2") == "jos\u00e9"  # the directory folds case
        assert ldap.login_name("jose", "jos\u00e9-Pass-2") is None  # not accents: two entries
        service = LoginService(ldap, LoginLimiter(redis_client, **per_user(3), max_per_address=1000))
        outcomes = []
        for attempt in range(6):
            outcomes.append(service.check("jos\u00e9", f"guess-{attempt}", "192.0.2.1").outcome)
            service.check("jose", "jose-Pass-1", "192.0.2.9")
        assert outcomes == [LoginOutcome.INVALID] * 3 + [LoginOutcome.RATE_LIMITED] * 3
    finally:
        for dn in added:
            slapd.remove(dn)
