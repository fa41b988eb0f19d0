"""One vCenter session per (server, port, user), kept at module level across warm invocations.

vmpooler users hit vCenter's session limits because every pool or worker logged in on its own.
Here a Lambda container logs in once and reuses the session for every pool and every invocation;
the session is checked when it has been idle for a while (vCenter expires idle sessions) and
re-established when vCenter says it is gone. Every SOAP call goes through one counting wrapper,
so tests and metrics can see how many calls a pass costs.

Transport failures (vCenter down, timeouts, TLS errors) become ``ProviderError`` and drop the
cached connection, so the next call starts afresh instead of hanging on a dead socket.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import math
import secrets
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from xml.parsers.expat import ExpatError

from pyVmomi import SoapStubAdapter, VmomiSupport, vim, vmodl

from chalicelib.auth.secrets import plain_secret
from chalicelib.auth.service_refusals import RefusedPasswords
from chalicelib.config import ProviderConfig, ServiceConfig
from chalicelib.logs import module_logger
from chalicelib.providers.base import AnswerLost, ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere.config import split_host_port, vsphere_settings

log = module_logger(__name__)

SESSION_CHECK_AFTER_IDLE_SECONDS = 300.0
"""A session unused for this long is checked before use (vCenter's default idle expiry is 30
minutes; checking every call would double the calls of a pass)."""

LOGIN_RETRY_SECONDS = 300.0
"""How long a process does not try a password vCenter refused again (as the same user): a wrong
password, or one rotated in the directory but not in the config, locks the service account out
after a few refusals (vCenter SSO's default: 5 within 180 s, locked for 300 s; Active Directory
alike), and every pass of every pool tried it once more. A changed password is tried at once."""

def starts_work(method: str) -> bool:
    """Whether a SOAP method starts work vCenter goes on with after answering: a task (every
    ``*_Task`` method: clone, reconfigure, snapshot, power, destroy, relocate) or its cancel. An
    operation that sent one is not run again after a re-login (``Connection.run``): the task's
    effect may not show yet, and the operation would start it again. Synchronous changes
    (MarkAsTemplate, MarkAsVirtualMachine, CreateFolder) are done when answered, so the operation
    run again sees them and does not make them again (template preparation reads the template's
    state first, ``inventory.ensure_folder`` finds the folder)."""
    return method.endswith("_Task") or method == "CancelTask"


T = TypeVar("T")

# Errors that mean "could not talk to vCenter" rather than "vCenter said no".
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # socket errors, refused, timeouts, TLS (ssl.SSLError is an OSError)
    http.client.HTTPException,
    ElementTree.ParseError,
    ExpatError,  # an answer that is not SOAP (a proxy's HTML error page with status 500)
)

STALE_SOCKET_ERRORS: tuple[type[BaseException], ...] = (
    ssl.SSLEOFError,  # TLS: the peer closed the socket (what a restarted vCenter's old socket gives)
    ssl.SSLZeroReturnError,
    ConnectionResetError,  # http.client.RemoteDisconnected among them
    BrokenPipeError,
    ConnectionAbortedError,
)
"""A kept socket the other end has closed (vCenter restarted, a load balancer's idle cut): not a
timeout, and no sign vCenter is unwell. A read on a connection kept from an earlier call is made
again, once, on a fresh one (``with_connection``'s ``read_only``)."""


PEM_BEGIN = "-----BEGIN "
"""A ``ca_bundle`` holding this is PEM text, not a file's path."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a vCenter. The password is kept out of repr and equality."""

    host: str
    port: int
    username: str
    password: str = field(repr=False, compare=False)
    insecure: bool = False
    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    call_timeout: float = 60.0

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.username)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_config(cls, config: ProviderConfig, password: str | None,
                    service: ServiceConfig | None = None) -> "Endpoint":
        """Read server (``host``, ``host:port`` or ``[v6]:port``), port, credentials, TLS and
        timeouts from a provider block (``service``: the ``:config:`` section, whose
        ``vsphere_timeout`` a block without a call timeout of its own takes)."""
        settings = vsphere_settings(config.settings)
        server = settings.server or ""
        if not server:
            raise ProviderError(f"provider {config.name}: no server configured")
        host, port = split_host_port(server, settings.port)
        username = settings.username
        if not username:
            raise ProviderError(f"provider {config.name}: no username configured")
        return cls(
            host=host,
            port=port,
            username=username,
            password=password if password is not None else (plain_secret(settings.password) or ""),
            insecure=settings.insecure,
            ca_bundle=settings.ca_bundle,
            connect_timeout=settings.connect_timeout,
            call_timeout=settings.call_seconds(service),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verify the certificate unless ``insecure``; trust ``ca_bundle`` when given: a PEM file,
        or its certificates as PEM text (what the canonical config carries to the Lambdas, which
        have no such file: chalicelib.config.carried_ca)."""
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        pem_text = self.ca_bundle is not None and PEM_BEGIN in self.ca_bundle
        try:
            if pem_text:
                return ssl.create_default_context(cadata=self.ca_bundle)
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ValueError) as error:  # missing, unreadable, not PEM (ssl.SSLError is an OSError)
            detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
            named = "(PEM text)" if pem_text else self.ca_bundle
            raise ProviderError(f"cannot use ca_bundle {named}: {detail}", FailureKind.CONNECTION) from None


def describe_fault(fault: BaseException) -> str:
    """A vCenter fault as one line: its type, its message and the details that say what was
    wrong (vcsim's messages are often just the type, so the details matter)."""
    name = getattr(fault, "_wsdlName", None) or type(fault).__name__
    message = getattr(fault, "msg", None) or ""
    if not message:
        for item in getattr(fault, "faultMessage", None) or []:
            message = getattr(item, "message", "") or ""
            if message:
                break
    details = []
    for attribute in ("invalidProperty", "name", "obj", "property", "requestedState", "existingState", "datastore"):
        value = getattr(fault, attribute, None)
        if value:
            value = getattr(value, "_moId", value)
            details.append(f"{attribute}={value}")
    text = name
    if message and message not in (name, f"*types.{name}"):
        text += f": {message}"
    if details:
        text += f" ({', '.join(details)})"
    return text


_FAULT_KINDS: dict[type[BaseException], FailureKind] = {
    vim.fault.NoPermission: FailureKind.PERMISSION,  # NotAuthenticated among its subclasses
    vim.fault.InvalidLogin: FailureKind.PERMISSION,  # PasswordExpired, InvalidClientCertificate
    vim.fault.InsufficientResourcesFault: FailureKind.CAPACITY,  # host, cluster, storage variants
    vim.fault.NoDiskSpace: FailureKind.CAPACITY,
    vim.fault.Timedout: FailureKind.TIMEOUT,
    vim.fault.HostConnectFault: FailureKind.CONNECTION,
    # Subclasses of HostConnectFault that are a refusal of rights, not a host out of reach: an
    # operator must grant them, the network is fine (and retrying cannot help).
    vim.fault.NoPermissionOnHost: FailureKind.PERMISSION,
    vim.fault.GatewayToHostAuthFault: FailureKind.PERMISSION,
    # vCenter answered, but the host the call needs does not (disconnected, not responding, its
    # agent unreachable): not vCenter out of reach (``connection`` stops the pass's other calls).
    vmodl.fault.HostCommunication: FailureKind.HOST,  # HostNotConnected, HostNotReachable
    # The port group's distributed switch belongs to an extension (NSX...) that alone may change
    # it: a refusal of rights an operator settles, not a passing fault.
    vim.fault.DvsNotAuthorized: FailureKind.PERMISSION,
}
"""vCenter fault types and the kind of failure each is, with their subclasses: a subclass listed
too has its own kind (``fault_kind`` walks a fault's MRO, most specific first)."""


def fault_kind(fault: BaseException) -> FailureKind:
    """The kind of failure a vCenter fault is, by its most specific type listed in
    ``_FAULT_KINDS`` (NoPermission and its subclasses, InsufficientResourcesFault and its
    host/cluster/vApp variants...; NoPermissionOnHost a permission failure though a
    HostConnectFault)."""
    for cls in type(fault).__mro__:
        kind = _FAULT_KINDS.get(cls)
        if kind is not None:
            return kind
    return FailureKind.OTHER


class Connection:
    """A logged-in ServiceInstance and the per-session caches that go with it."""

    def __init__(self, endpoint: Endpoint, counter: Callable[[], None],
                 refusals: RefusedPasswords | None = None) -> None:
        self.endpoint = endpoint
        self._count = counter
        self.refusals = refusals
        """Passwords vCenter refused, shared by every process through Redis (None: this
        process's memory only)."""
        self.stub: Any = None
        self.content: Any = None
        self.last_used = 0.0
        self.cache: dict[str, Any] = {}
        """Session-scoped lookups (container views per folder, host names, datacenter)."""
        self.changed: str | None = None
        """The last method vCenter accepted during the current ``run`` that ``starts_work``."""

    # -- establishing ------------------------------------------------------------------------

    def open(self, session_id: str | None = None) -> None:
        """Connect and log in, within connect_timeout for reaching the server. ``session_id``:
        the session of a connection dropped on a transport failure, taken up again when vCenter
        still has it (a new login each time would leave one session behind per failed pass, up
        to vCenter's session limit, until they expire idle)."""
        endpoint = self.endpoint
        # Probe first: pyVmomi's own connect has no connect timeout, and a black-holed
        # vCenter address must fail a pass in seconds, not minutes.
        try:
            socket.create_connection((endpoint.host, endpoint.port), timeout=endpoint.connect_timeout).close()
        except OSError as error:
            raise ProviderError(f"cannot reach vCenter at {endpoint.address}: {error}",
                                FailureKind.CONNECTION) from None
        context = endpoint.ssl_context()
        version = self._api_version(context)
        stub = SoapStubAdapter(
            host=endpoint.host,
            port=endpoint.port,
            version=version,
            sslContext=context,
            httpConnectionTimeout=endpoint.call_timeout,
            connectionPoolTimeout=-1,
        )
        original = stub.InvokeMethod

        def counted(mo: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
            self._count()
            result = original(mo, info, *args, **kwargs)
            if starts_work(info.wsdlName):
                self.changed = info.wsdlName
            return result

        # Every method call and property read of every object made from this stub ends here.
        stub.InvokeMethod = counted  # type: ignore[method-assign]  # deliberate: this stub's calls only
        self.stub = stub
        instance = vim.ServiceInstance("ServiceInstance", stub)
        self.content = instance.RetrieveContent()
        if not (session_id and self._resume(session_id)):
            self.login()

    def _resume(self, session_id: str) -> bool:
        """Whether the session ``session_id`` is still alive on vCenter (it is then used)."""
        self.stub.SetSessionId(session_id)
        try:
            alive = self.content.sessionManager.currentSession is not None
        except vmodl.MethodFault:  # NotAuthenticated: it expired meanwhile
            alive = False
        if alive:
            self.cache.clear()
            self.last_used = time.monotonic()
        else:
            self.stub.SetSessionId(None)
        return alive

    def _api_version(self, context: ssl.SSLContext) -> str:
        """The newest API version both pyVmomi and this vCenter speak (vimServiceVersions.xml)."""
        endpoint = self.endpoint
        connection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, context=context, timeout=endpoint.connect_timeout
        )
        try:
            connection.request("GET", "/sdk/vimServiceVersions.xml")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        offered: set[str] = set()
        if response.status == 200:
            root = ElementTree.fromstring(body)
            for namespace in root.findall("namespace"):
                if namespace.findtext("name") == "urn:vim25":
                    offered.add(namespace.findtext("version") or "")
                    offered.update(v.text or "" for v in namespace.findall("priorVersions/version"))
        for version in VmomiSupport.GetServiceVersions("vim25"):
            if VmomiSupport.versionIdMap.get(version) in offered:
                return version
        return "vim.version.version11"  # vSphere 6.5: the oldest vCenter vmpooler supports

    def login(self) -> None:
        """Log in with the endpoint's password, unless vCenter refused that password to this
        process less than LOGIN_RETRY_SECONDS ago (``hold_refused_login``)."""
        hold_refused_login(self.endpoint, self.refusals)
        try:
            self.content.sessionManager.Login(self.endpoint.username, self.endpoint.password, None)
        except vim.fault.InvalidLogin:
            _refused_logins[self.endpoint.key] = (time.monotonic(), _fingerprint(self.endpoint))
            if self.refusals is not None:
                self.refusals.refused(_account(self.endpoint), self.endpoint.password)
            raise ProviderError(
                f"vCenter at {self.endpoint.address} refused the login of {self.endpoint.username}",
                FailureKind.PERMISSION,
            ) from None
        _refused_logins.pop(self.endpoint.key, None)
        if self.refusals is not None:
            self.refusals.forgive(_account(self.endpoint), self.endpoint.password)
        self.cache.clear()  # views and other session objects died with the old session
        self.last_used = time.monotonic()

    def logout(self) -> None:
        """End the session (vCenter side). The connection logs in again when next used."""
        try:
            self.content.sessionManager.Logout()
        except vmodl.MethodFault:
            pass
        except TRANSPORT_ERRORS:
            pass

    def close(self) -> None:
        if self.stub is not None:
            try:
                self.stub.DropConnections()
            except Exception:  # noqa: BLE001 - closing a dead connection must not fail
                pass

    # -- using -----------------------------------------------------------------------------------

    def ensure_session(self) -> None:
        """Log in again when an idle session has expired on the vCenter side."""
        if time.monotonic() - self.last_used < SESSION_CHECK_AFTER_IDLE_SECONDS:
            return
        try:
            current = self.content.sessionManager.currentSession
        except vim.fault.NotAuthenticated:
            current = None
        if current is None:
            log.info("vCenter session at %s expired; logging in again", self.endpoint.address)
            self.login()

    def run(self, operation: Callable[["Connection"], T]) -> T:
        """Run ``operation``; when vCenter says the session is gone, log in and run it once more
        (NotAuthenticated means vCenter did nothing with that call, so running it again is safe)
        unless an earlier call of the operation started a task (``starts_work``: a clone, a disk,
        a snapshot): then AnswerLost, as when that call's answer is lost. Before, a
        session ended between starting a task and reading its queue time (an admin terminating
        the service account's sessions, say) had the operation run again whole: the task was
        started twice (a second disk on the user's VM, a second snapshot, a second clone of a
        name, whose task then failed and took the first clone's VM with it)."""
        self.ensure_session()
        self.changed = None
        try:
            result = operation(self)
        except vim.fault.NotAuthenticated:
            changed, self.changed = self.changed, None
            log.info("vCenter session at %s was ended; logging in again", self.endpoint.address)
            self.login()
            if changed is not None:
                raise AnswerLost(
                    f"vCenter at {self.endpoint.address} ended the session after {changed} was sent, before its "
                    f"answer was read: not sent again (vCenter may have done it)", FailureKind.CONNECTION) from None
            result = operation(self)
        self.last_used = time.monotonic()
        return result


# --- the module-level cache -----------------------------------------------------------------

_connections: dict[tuple[str, int, str], Connection] = {}
_dropped_sessions: dict[tuple[str, int, str], str] = {}
"""The session of each connection dropped on a transport failure, for the next to take up."""
_calls: dict[tuple[str, int, str], int] = {}
_unreachable: dict[tuple[str, int, str], tuple[float, ProviderError]] = {}
"""The last failure to reach each vCenter (or a call timing out), and when it ended (monotonic)."""
_refused_logins: dict[tuple[str, int, str], tuple[float, bytes]] = {}
"""When vCenter last refused each (host, port, user) a login, and a keyed digest of the password
it refused (never the password: the digest's key lives and dies with the process)."""
_FINGERPRINT_KEY = secrets.token_bytes(32)
_lock = threading.RLock()


def _fingerprint(endpoint: Endpoint) -> bytes:
    return hmac.new(_FINGERPRINT_KEY, endpoint.password.encode(), hashlib.sha256).digest()


def _account(endpoint: Endpoint) -> str:
    """The account a refusal is kept for in Redis (``RefusedPasswords``)."""
    return f"vsphere:{endpoint.host}:{endpoint.port}:{endpoint.username}"


def hold_refused_login(endpoint: Endpoint, refusals: RefusedPasswords | None = None) -> None:
    """Raise the PERMISSION failure vCenter gave, without asking it again, when it refused this
    endpoint's password (same user, same password) less than LOGIN_RETRY_SECONDS ago. Before,
    each pass of each pool sent the refused password once more (ten pools, one pass each: ten
    refusals in a second), and vCenter or the directory behind it locked the account out, for
    this deployment and for anything else using it, until well after the password was fixed."""
    refused = _refused_logins.get(endpoint.key)
    ago = math.inf if refused is None else time.monotonic() - refused[0]
    if refused is not None and hmac.compare_digest(refused[1], _fingerprint(endpoint)) and ago < LOGIN_RETRY_SECONDS:
        raise ProviderError(
            f"vCenter at {endpoint.address} refused the login of {endpoint.username} {ago:.0f} s ago: the same "
            f"password is not tried again for {LOGIN_RETRY_SECONDS:.0f} s (repeated refusals lock the account out); "
            f"a changed password is tried at once", FailureKind.PERMISSION)
    if refusals is not None and refusals.held(_account(endpoint), endpoint.password):
        # Refused to another process (each manager container had a memory of its own: N warm
        # containers sent N refusals per interval, enough to lock the account out).
        raise ProviderError(
            f"vCenter at {endpoint.address} refused the login of {endpoint.username} less than "
            f"{refusals.hold_seconds} s ago (to another process): the same password is not tried again before "
            f"then (repeated refusals lock the account out); a changed password is tried at once",
            FailureKind.PERMISSION)


def call_count(endpoint: Endpoint) -> int:
    """SOAP calls made to this vCenter as this user by this process, across reconnects."""
    return _calls.get(endpoint.key, 0)


def _counter(key: tuple[str, int, str]) -> Callable[[], None]:
    def count() -> None:
        _calls[key] = _calls.get(key, 0) + 1

    return count


def drop(endpoint: Endpoint, keep_session: bool = False) -> None:
    """Forget the cached connection, so the next use connects afresh: logging in again, or, with
    ``keep_session`` (a transport failure: the socket is in doubt, not the session), taking up
    the same vCenter session if vCenter still has it."""
    with _lock:
        connection = _connections.pop(endpoint.key, None)
        _dropped_sessions.pop(endpoint.key, None)
        if keep_session and connection is not None and connection.stub is not None and connection.stub.GetSessionId():
            _dropped_sessions[endpoint.key] = connection.stub.GetSessionId()
    if connection is not None:
        connection.close()


def forget_server(host: str, port: int) -> None:
    """Forget every cached connection, kept session and recent failure for ``host:port``, whoever
    logged in: the server there is a new one (its sockets and sessions are not those cached)."""
    with _lock:
        keys = [key for key in (*_connections, *_dropped_sessions, *_unreachable, *_refused_logins)
                if key[:2] == (host, port)]
        stale = [_connections.pop(key) for key in keys if key in _connections]
        for key in keys:
            _dropped_sessions.pop(key, None)
            _unreachable.pop(key, None)
            _refused_logins.pop(key, None)
    for connection in stale:
        connection.close()


def cached(endpoint: Endpoint) -> Connection | None:
    """The cached connection for this endpoint, if any (for tests and diagnostics)."""
    return _connections.get(endpoint.key)


def scrub(text: str, endpoint: Endpoint) -> str:
    """Remove the password from a message, should any library ever echo it."""
    if endpoint.password and len(endpoint.password) >= 3:
        text = text.replace(endpoint.password, "***")
    return text


def _open(endpoint: Endpoint, refusals: RefusedPasswords | None = None) -> Connection:
    """The cached connection to ``endpoint``, connected (taking up a dropped session) when there
    is none. Called with ``_lock`` held."""
    connection = _connections.get(endpoint.key)
    if connection is not None:
        # The newest settings win, so a rotated password is used at the next re-login.
        connection.endpoint = endpoint
        return connection
    hold_refused_login(endpoint, refusals)  # no socket, no session for a password vCenter just refused
    connection = Connection(endpoint, _counter(endpoint.key), refusals)
    try:
        connection.open(_dropped_sessions.pop(endpoint.key, None))
    except BaseException:
        connection.close()
        raise
    _connections[endpoint.key] = connection
    return connection


def with_connection(endpoint: Endpoint, operation: Callable[[Connection], T], what: str,
                    read_only: bool = False, refusals: RefusedPasswords | None = None) -> T:
    """Run ``operation`` on the shared connection, turning every failure into ProviderError.

    ``what`` names the action for messages ("list vmpool/pool-a"). A vCenter fault keeps the
    connection; a transport failure drops it so the next call reconnects.

    ``read_only``: ``operation`` changes nothing in vCenter, so when the socket kept from an
    earlier call turns out closed by the other end (vCenter restarted: every warm process's
    first call failed on it) it is run again, once, on a fresh connection. Never an operation
    that starts a task: vCenter may have done it before the socket broke.

    Calls wait for one another (the passes of a consumer's batch run at once, on one
    connection). A call that waited while another could not reach vCenter or timed out fails
    with that failure, not tried: against a hung vCenter the passes waiting would otherwise each
    spend a timeout in turn (ten passes: call_timeout and nine connect_timeouts, the batch's time
    twice over). A call made after that failure tries again.

    ``refusals``: where a password vCenter refused is kept for every process (Redis), so that no
    process sends it again within the hold (``hold_refused_login``).
    """
    asked = time.monotonic()
    with _lock:
        failed = _unreachable.get(endpoint.key)
        if failed is not None and failed[0] >= asked:
            raise ProviderError(f"{what}: not tried, another call just failed: {failed[1]}", failed[1].kind)
        try:
            kept = endpoint.key in _connections
            try:
                return _open(endpoint, refusals).run(operation)
            except STALE_SOCKET_ERRORS as error:
                if not (read_only and kept):
                    raise
                log.info("vCenter at %s closed the kept connection (%s); reading again on a fresh one",
                         endpoint.address, type(error).__name__)
                drop(endpoint, keep_session=True)
                return _open(endpoint, refusals).run(operation)
        except ProviderError as error:
            scrubbed = error.reworded(scrub(str(error), endpoint))
            if error.kind in (FailureKind.CONNECTION, FailureKind.TIMEOUT) and not isinstance(error, AnswerLost):
                # from open(): not reached (an AnswerLost of run: reached, the session ended)
                _unreachable[endpoint.key] = (time.monotonic(), scrubbed)
            raise scrubbed from None
        except vmodl.MethodFault as fault:
            raise ProviderError(scrub(f"{what}: vCenter said {describe_fault(fault)}", endpoint),
                                fault_kind(fault)) from None
        except TRANSPORT_ERRORS as error:
            drop(endpoint, keep_session=True)
            detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            kind = FailureKind.TIMEOUT if isinstance(error, TimeoutError) else FailureKind.CONNECTION
            reason = scrub(f"cannot talk to vCenter at {endpoint.address} ({detail})", endpoint)
            _unreachable[endpoint.key] = (time.monotonic(), ProviderError(reason, kind))
            raise ProviderError(f"{what}: {reason}", kind) from None
