"""LDAP / Active Directory authentication with ldap3, in every mode vmpooler supports.

Direct bind (no ``service_account_hash``): try a simple bind as ``<user_object>=<user>,<base>`` for
every base x user_object, in the order configured; the first success wins, unless another of those
DNs is an entry the user can see (another person with the same name: ambiguous, refused).

Service account (``service_account_hash: {user_dn, password}``): bind as the service account,
search ``(<user_object>=<user>)`` under every base (subtree), then bind as each entry found with
the user's password. A search that finds several entries is ambiguous and is ignored (logged).

Transport: ``encryption`` is ``plain``, ``simple_tls`` (LDAPS) or ``start_tls`` (the default, as
in vmpooler). Certificates are verified (chain and host name) unless ``verify_certificates: false``;
``ca_file`` (a PEM file) or ``ca_data`` (PEM text) name the CA to trust, else the system store.

The user is named as the directory names the entry the bind found: the value of the first
``user_object`` the entry holds (the one spelt as typed when it holds several), read back after the
bind. A login by another of the entry's names (its cn where uid comes first) or by a spelling the
directory matches and vmpool's ``canonical_user`` does not (Active Directory folds accents and
more) is the same user; an entry that binds under another entry's name (a direct bind trying the
next user_object) is not that user. A direct bind reads the entry as the user just bound; when the
directory lets it read none of them, the name typed stays the user (logged).

Safety: user names are escaped in DNs (RFC 4514) and in filters (RFC 4515); an empty password is
refused before any network traffic (no unauthenticated bind); passwords are sent as their UTF-8
bytes, not through ldap3's SASLprep (see ``_bind``); referrals are not followed; the
service-account password is fetched through ``resolve_secret`` on each use (Powertools caches it).
Backend trouble raises ``AuthUnavailable`` (the API answers 503), never a wrong-password answer.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ldap3 import BASE, NONE, SIMPLE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from chalicelib.logs import module_logger

from .base import ENTRY_ID_ATTRIBUTES as _ENTRY_ID_ATTRIBUTES
from .base import AuthConfigError, AuthUnavailable, acceptable_credentials, canonical_user, other_entry
from .directory_budget import task_deadline
from .ldap_settings import LdapSettings, parse_ldap_settings
from .secrets import SecretConfigError, SecretUnavailable
from .service_refusals import RefusedPasswords

if TYPE_CHECKING:  # not at run time: this module does not import Powertools (chalicelib/logs.py)
    from chalicelib.refusals import RefusalLog

logger = module_logger(__name__)

LOGIN_REFUSED = "LDAP login refused"
"""The reason counted in ``requests refused`` for a login the directory refused (its names: the
user names tried, each cut to 64 characters, at most ``refusals.MAX_KEYS`` a window)."""

# Bind results that mean "these credentials are not valid" (the user gets 401). Anything else
# (busy, unavailable, confidentiality required, protocol errors...) means the backend cannot answer.
_REFUSED_BIND_RESULTS = {
    19,  # constraintViolation (password policy: locked, expired)
    32,  # noSuchObject
    34,  # invalidDNSyntax
    48,  # inappropriateAuthentication
    49,  # invalidCredentials
    50,  # insufficientAccessRights
    53,  # unwillingToPerform (disabled account, ...)
}

_CASE_IGNORE_IA5_MATCH = "1.3.6.1.4.1.1466.109.114.2"
"""caseIgnoreIA5Match (RFC 4517), for memberUid: an IA5 string whose own rule is case-exact."""

# The name of the entry the service-account mode binds as when a user name finds no entry.
_ABSENT_ENTRY = "vmpool-no-such-user"

ENTRY_ID_ATTRIBUTES = _ENTRY_ID_ATTRIBUTES
"""The attributes naming an entry for its whole life, the first one an entry shows used
(OpenLDAP and RFC 4530's entryUUID, Active Directory's objectGUID; where neither is shown, 389
Directory Server's nsUniqueId and FreeIPA's ipaUniqueID), asked for by name with the
user_objects (the operational ones are only sent when asked; a directory ignores a name it does
not know): a name given to another person later is another entry, with another id
(auth/directory_check.py). The order is fixed, so one entry always gives the same id."""

__all__ = ["LdapAuthenticator", "LdapSettings", "parse_ldap_settings"]


def _identity(username: str) -> str:
    """A user name as it may appear in a log line: bounded and printable."""
    return repr(username[:64])


class LdapAuthenticator:
    """Checks user names and passwords against LDAP / Active Directory (see the module doc)."""

    def __init__(
        self,
        settings: LdapSettings,
        resolve_secret: Callable[[Any], str | None] | None = None,
        refusals: RefusedPasswords | None = None,
    ) -> None:
        self.settings = settings
        self.refusal_log: RefusalLog | None = None
        """Where refused logins are counted once a window (set by the service that serves its
        logins, ``Services.logins``); None: a line per refusal. Any caller can send failed logins
        for ever-new names from many addresses (the limits hold each name and address, not
        their number): a line each was a flood of log bytes."""
        self._refusals = refusals
        """The service account's refused password, shared by every process (None: not kept)."""
        if resolve_secret is None:
            from .secrets import resolve_secret as default_resolve

            resolve_secret = default_resolve
        self._resolve_secret = resolve_secret
        self._tls = self._make_tls() if settings.encryption != "plain" else None
        self._server = _DirectoryServer(
            settings.host,
            port=settings.port,
            use_ssl=settings.encryption == "simple_tls",
            tls=self._tls,
            get_info=NONE,
            connect_timeout=settings.connect_timeout,
        )

    def __repr__(self) -> str:
        s = self.settings
        mode = "service account" if s.uses_service_account else "direct bind"
        return f"LdapAuthenticator({s.host}:{s.port}, {s.encryption}, {mode})"

    def _make_tls(self) -> Tls:
        s = self.settings
        try:
            return _StdlibTls(s.host, s.verify_certificates, s.ca_file, s.ca_data)
        except (ssl.SSLError, OSError, ValueError, LDAPException) as error:  # ldap3: a ca_file not found
            key = "ca_file" if s.ca_file else "ca_data" if s.ca_data else "ca_file"
            problem = f"auth.ldap.{key}: cannot load the CA certificates ({type(error).__name__})"
            raise AuthConfigError([problem]) from None

    @property
    def _where(self) -> str:
        return f"LDAP server {self.settings.host}:{self.settings.port}"

    # --- the protocol ----------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> bool:
        return self.login_name(username, password) is not None

    def login_name(self, username: str, password: str) -> str | None:
        """The directory's name for the entry the credentials bind as (see the module doc), None
        when they are refused. Raises AuthUnavailable when the directory cannot answer."""
        entry = self.login_entry(username, password)
        return None if entry is None else entry[0]

    def login_entry(self, username: str, password: str) -> tuple[str, str | None] | None:
        """``login_name``'s name with the entry's stable id (``entry_id``; None when the directory
        shows none), None when the credentials are refused. Raises AuthUnavailable."""
        if not acceptable_credentials(username, password):
            return None
        with self._session("login") as connection:
            if self.settings.uses_service_account:
                found = self._search_and_bind(connection, username, password)
            else:
                found = self._direct_bind(connection, username, password)
        if found is not None:
            logger.info("LDAP login accepted for %s as %s", _identity(username), _identity(found[0]))
        elif self.refusal_log is not None:  # never the password: the name alone, cut
            self.refusal_log.refused(LOGIN_REFUSED, [username[:64]])
        else:
            logger.info("LDAP login refused for %s", _identity(username))
        return found

    @property
    def looks_up_users(self) -> bool:
        """Whether ``has_user`` can ask the directory: only with the service account (a direct
        bind needs the user's password, and the directory may refuse anonymous reads)."""
        return self.settings.uses_service_account

    def has_user(self, username: str) -> bool:
        """Whether ``username`` still names one entry the user could log in as: found under the
        configured bases by the configured user_objects, as a login finds it (none or several:
        False). One service-account bind and the searches, no bind as the user. Raises
        AuthUnavailable when the directory cannot answer, or without a service account."""
        return self.user_entry(username) is not False

    def user_entry(self, username: str) -> str | bool:
        """``has_user``'s answer, with the entry's stable id when the directory shows one: the id
        (``entry_id``) when found with one, True when found without, False when not found."""
        if not self.looks_up_users:
            raise AuthUnavailable("looking up users needs service_account_hash")
        if not acceptable_credentials(username, "-"):
            return False
        with self._session("user check") as connection:
            self._bind_service_account(connection)
            found = self._find_entries(connection, username)
            if len(found) != 1:
                return False
            return entry_id(next(iter(found.values()))) or True

    def member_of_any(self, username: str, groups: Sequence[str], entry: str | None = None) -> bool:
        """Whether the user is a member of one of ``groups`` (group DNs): the user's entry holds
        one of them in ``memberOf``, or a group lists the name in ``memberUid`` (in any case:
        vmpool's names are lower-cased, the directory's may have capitals). Needs the service
        account (to find the user's entry and read the groups); False without one. Raises
        AuthUnavailable when the directory cannot answer.

        A group's ``member`` / ``uniqueMember`` DNs are not read: a directory without referential
        integrity keeps a deleted entry's DN in its groups, and an entry given the same name later
        has that DN, so it inherited the departed person's groups. ``memberOf`` is written on the
        entry itself (OpenLDAP's memberof overlay, 389's and FreeIPA's memberOf plugin, Active
        Directory's back link), when the entry is put in the group: a new entry at an old DN has
        none. ``memberUid`` names a user by name only (RFC 2307): whoever holds the name is the
        member, as on every host reading the group (docs/auth.md); a name no entry holds (or
        several do) is nobody's, and in no group.

        ``entry``: the stable id of the entry the caller's login bound as (None: unknown). When
        the name finds another entry now (the name given to someone else), that entry's groups
        are not the caller's: not a member."""
        if not self.settings.uses_service_account or not acceptable_credentials(username, "-"):
            return False
        with self._session("group check") as connection:
            self._bind_service_account(connection)
            limit = max(1, int(self.settings.receive_timeout))
            # One search of the entry for all groups; memberOf's equality rule is distinguishedName
            # match, so the directory compares the DNs (case, spaces, escapes) as it wrote them.
            wanted = "".join(f"(memberOf={escape_filter_chars(group)})" for group in groups)
            found = self._find_entries(connection, username)
            if not found:
                # No entry holds the name (or several do): nobody is its member, not even through
                # memberUid, which names the name's holder. Before, a memberUid group kept a
                # deleted or renamed person's token an administrator's while the token worked
                # (directory_check_minutes: 0, or until the next check), where memberOf did not.
                return False
            if any(other_entry(entry, entry_id(attributes)) for attributes in found.values()):
                logger.warning("the name %s is another directory entry's now: not in its groups", _identity(username))
                return False
            for dn in found:
                connection.search(dn, f"(|{wanted})", search_scope=BASE, attributes=[], size_limit=1,
                                  time_limit=limit)
                code = (connection.result or {}).get("result")
                if code == 0 and any(item.get("type") == "searchResEntry" for item in connection.response or []):
                    return True
                if code not in (0, 32):  # noSuchObject: the entry went since it was found
                    description = (connection.result or {}).get("description", "unknown")
                    logger.error("%s answered a membership search with %s (%s)", self._where, code, description)
                    raise AuthUnavailable(f"{self._where} could not read the user's groups ({description})")
            name = escape_filter_chars(username)
            # memberUid matches case-exactly (RFC 2307: caseExactIA5Match), and vmpool's user names
            # are lower-cased: an admin listed as memberUid 'Alice' was no admin. Its case-ignoring
            # rule is asked for by OID; a directory that does not know it finds that part undefined
            # (RFC 4511 4.5.1.7.7), and the exact match still holds there.
            search_filter = f"(|(memberUid={name})(memberUid:{_CASE_IGNORE_IA5_MATCH}:={name}))"
            for group in groups:
                connection.search(group, search_filter, search_scope=BASE, attributes=[], size_limit=1,
                                  time_limit=limit)
                code = (connection.result or {}).get("result")
                if code == 0 and any(item.get("type") == "searchResEntry" for item in connection.response or []):
                    return True
                if code == 32:  # noSuchObject: the group does not exist
                    logger.warning("LDAP group %r does not exist on %s", group, self._where)
                elif code == 10:  # referral: held by another server, not followed (no member here)
                    logger.warning("LDAP group %r is a referral to another server on %s: not read", group, self._where)
                elif code != 0:
                    description = (connection.result or {}).get("description", "unknown")
                    logger.error("%s answered a group search with %s (%s)", self._where, code, description)
                    raise AuthUnavailable(f"{self._where} could not read the group ({description})")
        return False

    @contextmanager
    def _session(self, purpose: str) -> Iterator[Connection]:
        """A connection for one task, always unbound; anything unexpected is AuthUnavailable."""
        if self.settings.uses_service_account:
            # Before any connection: a refused service password held costs the directory nothing.
            self._hold_refused_service_password()
        try:
            connection = self._connect()
        except Exception as error:  # noqa: BLE001 - ldap3 raises more than LDAPException on odd servers
            logger.error("%s unreachable: %s", self._where, type(error).__name__)
            raise AuthUnavailable(f"{self._where} is unavailable") from None
        try:
            yield connection
        except AuthUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - any failure is "unavailable", never a 500
            logger.error("%s failed during %s: %s", self._where, purpose, type(error).__name__)
            raise AuthUnavailable(f"{self._where} is unavailable") from None
        finally:
            try:
                connection.unbind()
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass

    # --- steps -----------------------------------------------------------------------------

    def _connect(self) -> Connection:
        connection = Connection(
            self._server,
            authentication=SIMPLE,
            client_strategy=SYNC,
            auto_bind=False,
            auto_referrals=False,
            read_only=True,
            raise_exceptions=False,
            # ldap3 packs it into SO_RCVTIMEO as whole seconds.
            receive_timeout=max(1, math.ceil(self.settings.receive_timeout)),
            return_empty_attributes=False,
        )
        # One deadline for the whole task: each answer may take receive_timeout, but a directory
        # answering each of the task's 6-10 operations just in time made one login take a minute
        # (the API Lambda is killed at 29 s: 504, the attempt left in flight in the limiter).
        # And one for the whole request (directory_budget): its second task (a group check after
        # a user check) ends when its first had to.
        deadline = task_deadline(self.settings.login_timeout)
        if deadline <= time.monotonic():
            raise _RequestBudgetSpent()
        if not self._server.candidate_addresses():
            # ldap3 marks an address it failed to connect to unavailable, shared by every
            # connection of the process, and tries no such address for the next 5 s (wall
            # clock): the directory back after an outage (or after one refused connection),
            # every login and check of the process was a 503 for those seconds without a packet
            # sent, the client's retry after Retry-After: 5 too. With every address so marked,
            # each is tried again; a dead one beside a live one is still skipped.
            self._server.reset_availability()
        with self._server.trying_addresses_until(deadline):
            try:
                connection.open(read_server_info=False)
            except LDAPException:
                # Only with time left: a look-up is not bounded by the deadline (a resolver that
                # does not answer takes its own timeouts), and no new address could be tried.
                if time.monotonic() >= deadline or not self._server.resolve_again():
                    raise
                logger.warning("%s: no address it had reached it; its name now gives other addresses: "
                               "trying them", self._where)
                connection.open(read_server_info=False)
        connection.socket = _DeadlineSocket(connection.socket, deadline, connection.receive_timeout)
        if self.settings.encryption == "start_tls":
            # Raises LDAPStartTLSError (a certificate error included) rather than binding in clear.
            if not connection.start_tls(read_server_info=False):
                raise _StartTlsRefused()
        return connection

    def _bind(self, connection: Connection, dn: str, password: str) -> bool:
        """Bind as dn. True on success, False for refused credentials; AuthUnavailable otherwise.

        The password goes as its UTF-8 bytes, as typed (as vmpooler and OpenLDAP's own tools send
        it): given a str, ldap3 runs it through SASLprep, which refuses some passwords a directory
        holds (Hebrew and Latin letters together) and maps others onto another password (a soft
        hyphen dropped). The directory compares what it holds. Never empty: the callers refuse an
        empty password first."""
        connection.user = dn
        connection.password = password.encode("utf-8")
        if connection.bind(read_server_info=False):
            return True
        code = (connection.result or {}).get("result")
        if code in _REFUSED_BIND_RESULTS:
            return False
        description = (connection.result or {}).get("description", "unknown")
        logger.error("%s answered a bind with %s (%s)", self._where, code, description)
        raise AuthUnavailable(f"{self._where} refused to process the login ({description})")

    def _direct_bind(self, connection: Connection, username: str, password: str) -> tuple[str, str | None] | None:
        rdn_value = escape_rdn(username)
        candidates = [f"{attribute}={rdn_value},{base}"
                      for base in self.settings.bases for attribute in self.settings.user_objects]
        for dn in candidates:
            if self._bind(connection, dn, password):
                # Another entry under another candidate DN is another person with the same name
                # (uid=alice under two bases): whoever bound was vmpool's alice, with her tokens
                # and VMs. Ambiguous, as in the service-account mode: neither logs in.
                own = self._visible_dn(connection, dn)
                others = [other for other in (self._visible_dn(connection, candidate)
                                              for candidate in candidates if candidate != dn)
                          if other is not None and other.lower() != (own or dn).lower()]
                if others:
                    logger.warning("LDAP entries %s all match %s: ambiguous, ignored", [own or dn, *others],
                                   _identity(username))
                    return None
                own_entry = self._read_own_entry(connection, dn)
                return self._entry_name(own_entry, username), entry_id(own_entry)
        return None

    def _visible_dn(self, connection: Connection, dn: str) -> str | None:
        """The DN of the entry at ``dn`` as the directory spells it, None when the bound user sees
        no entry there (none, or one it may not read)."""
        connection.search(dn, "(objectClass=*)", search_scope=BASE, attributes=[], size_limit=1,
                          time_limit=max(1, int(self.settings.receive_timeout)))
        if (connection.result or {}).get("result") != 0:
            return None
        return next((str(item["dn"]) for item in connection.response or []
                     if item.get("type") == "searchResEntry"), None)

    def _read_own_entry(self, connection: Connection, dn: str) -> dict[str, Any]:
        """The user_object attributes of the entry just bound as, read as that user ({} when the
        directory shows none of them: the caller keeps the name typed)."""
        connection.search(dn, "(objectClass=*)", search_scope=BASE, attributes=self._wanted_attributes,
                          size_limit=1, time_limit=max(1, int(self.settings.receive_timeout)))
        code = (connection.result or {}).get("result")
        for item in connection.response or []:
            if code == 0 and item.get("type") == "searchResEntry":
                return _with_raw_ids(item)
        logger.warning("%s let the user bound as %r read none of %s of its entry (result %s): "
                       "the name typed names the user", self._where, dn, list(self.settings.user_objects), code)
        return {}

    def _entry_name(self, attributes: dict[str, Any], username: str) -> str:
        """The name of the entry with these attributes: the value of the first user_object it
        holds, the one that is a spelling of ``username`` when there are several (else the least,
        so that it is always the same); ``username`` when it holds none."""
        by_name = {name.lower(): values for name, values in attributes.items()}
        for attribute in self.settings.user_objects:
            values = by_name.get(attribute.lower())
            names = [value for value in (values if isinstance(values, list) else [values])
                     if isinstance(value, str) and value.strip()]
            if names:
                typed = canonical_user(username)
                return next((name for name in names if canonical_user(name) == typed),
                            min(names, key=canonical_user))
        return username

    def _service_password(self) -> str:
        try:
            password = self._resolve_secret(self.settings.service_account_password)
        except (SecretUnavailable, SecretConfigError) as error:
            logger.error("LDAP service account password unavailable: %s", error)
            raise AuthUnavailable("the LDAP service account password is unavailable") from None
        if not password:
            raise AuthUnavailable("the LDAP service account password is empty")
        return password

    @property
    def _service_account(self) -> str:
        """The service account as its refusals are kept: one account on one directory (the same
        DN elsewhere is another account)."""
        return f"ldap:{self.settings.host}:{self.settings.port}:{self.settings.service_account_dn}"

    def _hold_refused_service_password(self) -> None:
        """AuthUnavailable, without asking the directory, when it refused the service password
        in use within the hold, to any process (``service_refusals.py``): sent again by every
        login and check of every process, a refused password locked the account out. A changed
        password is tried at once."""
        if self._refusals is not None and self._refusals.held(self._service_account, self._service_password()):
            logger.error("%s refused the service account %s less than %s s ago: the same password is not sent "
                         "again before then; check service_account_hash", self._where,
                         self.settings.service_account_dn, self._refusals.hold_seconds)
            raise AuthUnavailable(f"{self._where} refused the service account")

    def _bind_service_account(self, connection: Connection) -> None:
        service_dn = self.settings.service_account_dn
        assert service_dn is not None
        password = self._service_password()
        if not self._bind(connection, service_dn, password):
            if self._refusals is not None:
                self._refusals.refused(self._service_account, password)
            logger.error("%s refused the service account %s: check service_account_hash", self._where, service_dn)
            raise AuthUnavailable(f"{self._where} refused the service account")

    def _find_entries(self, connection: Connection, username: str) -> dict[str, dict[str, Any]]:
        """The one entry named ``username`` under every base and user_object (as the service
        account), by DN with its user_object attributes; none when no entry or several are
        (alice's uid and another person's cn: whoever's password matched would be 'alice')."""
        value = escape_filter_chars(username)
        candidates: dict[str, dict[str, Any]] = {}
        for base in self.settings.bases:
            for attribute in self.settings.user_objects:
                for dn, attributes in self._search(connection, base, f"({attribute}={value})", username):
                    candidates.setdefault(dn, attributes)
        if len(candidates) > 1:
            logger.warning("LDAP entries %s all match %s: ambiguous, ignored", list(candidates), _identity(username))
            return {}
        return candidates

    @property
    def _wanted_attributes(self) -> list[str]:
        """The attributes read of a user's entry: its names and its stable id (operational: only
        returned when asked for by name; a directory without one ignores the name)."""
        return [*self.settings.user_objects, *ENTRY_ID_ATTRIBUTES]

    def _search_and_bind(self, connection: Connection, username: str,
                         password: str) -> tuple[str, str | None] | None:
        self._bind_service_account(connection)
        # Every search ran as the service account; now bind as each entry found.
        found = self._find_entries(connection, username)
        for dn, attributes in found.items():
            if self._bind(connection, dn, password):
                return self._entry_name(attributes, username), entry_id(attributes)
        if not found:
            # No entry has the name (or several have): bind anyway, as an entry that does not
            # exist, so that the login takes the round trips a wrong password takes and a caller
            # timing its logins cannot list the names the directory holds. Never a success.
            self._bind(connection, f"cn={_ABSENT_ENTRY},{self.settings.bases[0]}", password)
        return None

    def _search(self, connection: Connection, base: str, search_filter: str,
                username: str) -> list[tuple[str, dict[str, Any]]]:
        connection.search(
            base,
            search_filter,
            search_scope=SUBTREE,
            attributes=self._wanted_attributes,
            size_limit=2,
            time_limit=max(1, int(self.settings.receive_timeout)),
        )
        code = (connection.result or {}).get("result")
        entries = [
            (item["dn"], _with_raw_ids(item))
            for item in (connection.response or []) if item.get("type") == "searchResEntry"
        ]
        if code == 4 or len(entries) > 1:  # sizeLimitExceeded: the name is not unique
            logger.warning(
                "LDAP search %s under %r matches several entries for %s: ignored",
                search_filter.split("=", 1)[0] + "=...)", base, _identity(username),
            )
            return []
        if code == 32:  # noSuchObject: the base does not exist
            logger.warning("LDAP base %r does not exist on %s", base, self._where)
            return []
        if code == 10:
            # referral: the base is held by another server (another domain of an AD forest).
            # Referrals are not followed: its users are not found, as those under a referral
            # inside a base are not. Before, the other bases' users got 503 too, for every login.
            logger.warning("LDAP base %r is a referral to another server on %s: not searched", base, self._where)
            return []
        if code != 0:
            description = (connection.result or {}).get("description", "unknown")
            logger.error("%s answered a search with %s (%s)", self._where, code, description)
            raise AuthUnavailable(f"{self._where} could not search for the user ({description})")
        return entries


def _with_raw_ids(item: dict[str, Any]) -> dict[str, Any]:
    """A search result entry's attributes, its stable-id attributes as the bytes the directory
    sent (ldap3 formats some by their names, others not, without the schema it does not read)."""
    attributes = dict(item.get("attributes") or {})
    raw = {name.lower(): values for name, values in (item.get("raw_attributes") or {}).items()}
    for name in ENTRY_ID_ATTRIBUTES:
        attributes.pop(name, None)
        if raw.get(name.lower()):
            attributes[name] = raw[name.lower()]
    return attributes


def entry_id(attributes: dict[str, Any]) -> str | None:
    """The entry's stable id, read with ``_with_raw_ids``: ``<attribute>:<uuid>`` of the first of
    ``ENTRY_ID_ATTRIBUTES`` the entry shows (objectGUID: the 16 bytes Active Directory sends,
    little-endian as it shows them; nsUniqueId: 389's four groups of eight hex digits, as a UUID),
    None when the entry shows none (another directory, or one that hides them)."""
    by_name = {name.lower(): values for name, values in attributes.items()}
    for name in ENTRY_ID_ATTRIBUTES:
        values = by_name.get(name.lower())
        value = values[0] if isinstance(values, list) and values else values
        if not isinstance(value, bytes | bytearray) or not value:
            continue
        try:
            if len(value) == 16:
                return f"{name}:{uuid.UUID(bytes_le=bytes(value))}"
            return f"{name}:{uuid.UUID(value.decode('ascii').strip())}"
        except (ValueError, UnicodeDecodeError):
            logger.warning("an LDAP entry's %s is not a UUID: not used to tell entries apart", name)
    return None


_ADDRESSES_TRIED_UNTIL: ContextVar[float | None] = ContextVar("vmpool_ldap_addresses_tried_until", default=None)
"""When the connection being opened in this thread stops trying further addresses (monotonic)."""


class _DirectoryServer(Server):
    """ldap3's Server, for a host name that gives several addresses, or other addresses later.

    Several addresses (an Active Directory domain's name gives every domain controller's, in
    IPv6 and IPv4): ldap3 tries each in turn, waiting ``connect_timeout`` for each, outside the
    task's deadline. With 6 addresses dropping packets (controllers of another site, firewalled)
    a login took 6 x 5 s = 30 s: past the API Lambda's 29 s (a 504, the attempt left in flight
    in the failed-login limiter) and the local front's 30 s watchdog. Now no address is tried once
    the task's deadline has passed (``trying_addresses_until``): the connection, if any, is open
    within ``login_timeout + connect_timeout`` (at most 25 s, ldap_settings), and the task a 503.

    Other addresses later (the directory moved, a failover that changes its DNS record): ldap3
    keeps the addresses the name gave for 300 s, so every login of a warm process was a 503 for
    up to 5 minutes, trying the old, dead address. When no address is reached, the name is
    resolved again (``resolve_again``), and addresses it did not give before are tried at once."""

    def candidate_addresses(self) -> Any:
        candidates = super().candidate_addresses()
        until = _ADDRESSES_TRIED_UNTIL.get()
        return candidates if until is None else _tried_until(candidates, until)

    @contextmanager
    def trying_addresses_until(self, deadline: float) -> Iterator[None]:
        """Inside, a connection being opened in this thread tries no further address after ``deadline``."""
        token = _ADDRESSES_TRIED_UNTIL.set(deadline)
        try:
            yield
        finally:
            _ADDRESSES_TRIED_UNTIL.reset(token)

    def resolve_again(self) -> bool:
        """Forget the addresses the host name gave and look it up again: whether it now gives an
        address it did not give before. The addresses given again keep what ldap3 knows of them
        (one just found unreachable is not tried again at once)."""
        resolved: list[list[Any]] = self._address_info
        before = {tuple(address[:5]): address[5:] for address in resolved}
        self._address_info: list[list[Any]] = []
        after: list[list[Any]] = self.address_info
        for address in after:
            known = before.get(tuple(address[:5]))
            if known is not None:
                address[5:] = known
        return any(tuple(address[:5]) not in before for address in after)


def _tried_until(candidates: list[Any], until: float) -> Iterator[Any]:
    for candidate in candidates:
        if time.monotonic() >= until:
            return
        yield candidate


class _StartTlsRefused(LDAPException):
    pass


class _RequestBudgetSpent(LDAPException):
    """The request's earlier directory tasks took all its ``login_timeout``: no connection made."""


class _StdlibTls(Tls):
    """ldap3's Tls, but the handshake uses one stdlib SSLContext with ``check_hostname`` on.

    ldap3 turns the stdlib host-name check off and runs its own; on Python 3.12+ that falls back
    to a backport that cannot match IP addresses and trusts the certificate's commonName. Here
    the chain and the host name (DNS name or IP address) are checked by OpenSSL itself, the same
    on every Python version, and TLS >= 1.2 is required."""

    def __init__(self, host: str, verify: bool, ca_file: str | None, ca_data: str | None) -> None:
        super().__init__(
            validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            ca_certs_file=ca_file,
            ca_certs_data=ca_data,
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file, cadata=ca_data)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context
        self._server_hostname = host

    def wrap_socket(self, connection, do_handshake=False):
        # StartTLS wraps the socket _connect gave a deadline: TLS goes under that deadline.
        timed = connection.socket if isinstance(connection.socket, _DeadlineSocket) else None
        if timed is not None:
            timed.tighten()
        wrapped = self._context.wrap_socket(
            timed.raw if timed is not None else connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_hostname,
        )
        connection.socket = timed.rewrap(wrapped) if timed is not None else wrapped


class _DeadlineSocket:
    """A connection's socket whose every receive waits at most until one deadline (and at most
    ``receive_timeout``): a directory that answers each operation just in time, or trickles an
    answer a byte at a time, cannot hold one task past ``login_timeout``. ldap3 uses the socket
    through recv, sendall, settimeout, shutdown, close...: all but recv go through as they are."""

    def __init__(self, raw: Any, deadline: float, receive_timeout: float | None) -> None:
        self.raw = raw
        self._deadline = deadline
        self._receive_timeout = receive_timeout or math.inf

    def tighten(self) -> None:
        """Wait at most until the deadline in the next blocking call; socket.timeout once past it."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("login_timeout passed")
        self.raw.settimeout(min(self._receive_timeout, remaining))

    def rewrap(self, raw: Any) -> "_DeadlineSocket":
        return _DeadlineSocket(raw, self._deadline, self._receive_timeout)

    def recv(self, size: int) -> bytes:
        self.tighten()
        data: bytes = self.raw.recv(size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
