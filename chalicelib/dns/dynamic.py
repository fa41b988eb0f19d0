"""``dynamic-dns``: RFC 2136 dynamic updates to the zone's primary server, signed with TSIG.

vmpooler's ``dynamic-dns`` means "the VMs register themselves; manage nothing". That is what an
entry without ``server`` still means here. With ``server``, vmpool sends the updates itself::

    server: 10.0.0.53          # the zone's primary (an address or a name)
    port: 53
    zone:                      # the zone to update (default: the entry's domain)
    tsig_key_name: vmpool-key  # TSIG key (as named.conf's ``key`` block)
    tsig_secret: <base64>      # or {secret: name[, key: k]} / {ssm: name}
    tsig_algorithm: hmac-sha256
    ttl: 60
    timeout: 5                 # seconds per exchange (at most 10)

Updates and lookups go over TCP to the server itself (no caching resolver in between), so a
lookup right after an update sees it. A VM's IPv4 address is an A record, its IPv6 address an
AAAA record (a dual-stack VM has both); one update sends the families whose address changed.
"""

import functools
import socket
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Sequence, TypeVar

from chalicelib.config_fields import DnsName, Port, SecretValue, Str, bounded, one_of
from chalicelib.dns.base import (
    ADDRESS_TYPES,
    DnsConfig,
    DnsEntryRejected,
    DnsError,
    DnsPlugin,
    DnsRejected,
    DnsSettings,
    DnsTimeout,
    DnsUnavailable,
    record_changes,
)

RECORDS_PER_UPDATE = 50
"""Names one batched update (``create_many``, ``delete_many``) carries at most: RFC 2136 takes
many records a message, and 50 names (each up to an A and an AAAA record and a prerequisite) keep
it far below the 64 KB of a TCP message."""


class _Refused(DnsRejected):
    """REFUSED to an update of the entry's zone: a refusal of the entry as a whole (a key the
    zone's ``allow-update`` does not name), or of one of the update's names (an ``update-policy``
    that denies the key that name: BIND refuses the whole update for it). ``_refusal`` tells
    which."""


T = TypeVar("T")

LOOKUPS_IN_FLIGHT = 50
"""Lookups ``addresses_many`` writes on the connection before it reads their answers: 50 queries
and their answers (about 100 bytes each) stay far below the sockets' buffers."""

WILDCARD_PROBE = "_vmpool-wildcard-probe"
"""A name no VM has (no hostname holds ``_``), looked up with each ``addresses_many``: what it
leads to is what a wildcard record of the domain (``*.<domain>``) makes the server answer for
every name that holds no record of its own. A name leading exactly there holds nothing of its
own: it is free (before, a zone with a wildcard record had every new name refused as already in
DNS, and its pools never cloned)."""

TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass(frozen=True, kw_only=True)
class DynamicDnsSettings(DnsSettings):
    """A ``dynamic-dns`` entry. Without ``server`` vmpool manages nothing (the VMs register
    themselves, as in vmpooler); with it, RFC 2136 updates signed with the TSIG key."""

    server: Optional[Str] = None
    port: Port = 53
    zone: Optional[DnsName] = None
    tsig_key_name: Optional[DnsName] = None
    tsig_secret: Optional[SecretValue] = field(default=None, repr=False)
    tsig_algorithm: Annotated[str, one_of(*TSIG_ALGORITHMS)] = "hmac-sha256"
    ttl: Annotated[int, bounded(1, 604800)] = 60
    timeout: DnsTimeout = 5.0


class DynamicDns(DnsPlugin):
    """RFC 2136 updates of one zone on one server."""

    def __init__(self, config: DnsConfig, tsig_secret: str | None = None) -> None:
        import dns.name
        import dns.tsigkeyring

        super().__init__(config)
        settings = config.settings
        assert isinstance(settings, DynamicDnsSettings), "the registry builds DynamicDns for dynamic-dns entries only"
        self.server = str(settings.server)
        self.port = settings.port
        self.zone = dns.name.from_text(settings.zone or self.domain or ".")
        self.ttl = settings.ttl
        self.timeout = settings.timeout
        key_name = settings.tsig_key_name
        self._keyring: Any = None
        self._key_name: Any = None
        self._algorithm = settings.tsig_algorithm
        self._key_error: str | None = None
        if key_name and tsig_secret:
            try:
                self._keyring = dns.tsigkeyring.from_text({str(key_name): tsig_secret})
            except (ValueError, TypeError):  # binascii.Error: a secret (from SSM, say) that is not base64
                # Every call fails with this, so the passes record it and go on; the message never
                # shows the secret (nor the decoder's words about it).
                self._key_error = f"dns {self.name}: tsig_secret is not a valid base64 key"
            self._key_name = dns.name.from_text(str(key_name))
        self._address: str | None = None
        # Passes of several pools run at once in threads (manager/dispatch.py) and share the
        # entry's plugin: each thread has its own connection, so their exchanges never interleave.
        self._connections = threading.local()
        self.connections_opened = 0
        """TCP connections this plugin opened to the server (the bench and tests read it)."""

    def _server_address(self) -> str:
        """The server's IP address (dnspython talks to addresses), looked up once."""
        if self._address is None:
            try:
                found = socket.getaddrinfo(self.server, self.port, proto=socket.IPPROTO_TCP)
            except OSError as error:
                raise DnsUnavailable(
                    f"dns server {self.server}: cannot resolve its address ({error.strerror})") from None
            self._address = str(found[0][4][0])
        return self._address

    def _exchange(self, what: str, message: Any, refusals: dict[int, str] | None = None,
                  entry_wide: bool = True) -> Any:
        """Send one message over TCP; transport failures and refusals become typed DnsErrors
        (``refusals``: what an answer code means for this message, when it says more than its name).
        A refused key, and NOTAUTH to an update of the entry's own zone (``entry_wide``; not a
        former domain's parent zone, nor a lookup: a server may refuse queries, by its
        ``allow-query``, and take updates), refuse the entry as a whole: DnsEntryRejected. REFUSED
        to an update of the entry's zone may be the entry's or one name's: _Refused (``_refusal``)."""
        import dns.rcode

        response = self._sent(what, functools.partial(self._send, message))
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            meaning = (refusals or {}).get(rcode)
            # NOTAUTH: the server is not the zone's primary, or refused the key; REFUSED: it does not
            # serve the zone, or the key may not update it. Names and addresses do not change that.
            # An update-policy denying the key one name of the update answers REFUSED too: told
            # apart by ``_refusal``.
            refused = DnsEntryRejected if entry_wide and rcode == dns.rcode.NOTAUTH \
                else _Refused if entry_wide and rcode == dns.rcode.REFUSED else DnsRejected
            raise refused(f"dns {what}: " + (meaning or f"the server answered {dns.rcode.to_text(rcode)}"))
        return response

    def _sent(self, what: str, send: Callable[[], T]) -> T:
        """``send()`` (``_send``, ``_send_many``), its transport failures typed: no answer or a
        broken connection DnsUnavailable, a TSIG key the server rejects DnsEntryRejected."""
        import dns.exception
        import dns.tsig

        try:
            return send()
        except (dns.exception.Timeout, TimeoutError):
            raise DnsUnavailable(
                f"dns {what}: {self.server}:{self.port} did not answer within {self.timeout:g} s") from None
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadTime) as error:
            raise DnsEntryRejected(f"dns {what}: the server rejected the TSIG key ({type(error).__name__})") from None
        except (OSError, EOFError, dns.exception.DNSException) as error:
            raise DnsUnavailable(f"dns {what}: {self.server}:{self.port}: {type(error).__name__}") from None

    def _send(self, message: Any) -> Any:
        """``_send_many`` of one message."""
        return self._send_many([message])[0]

    def _send_many(self, messages: Sequence[Any]) -> list[Any]:
        """Send ``message`` and read its answer over the TCP connection the plugin keeps to the
        server for this thread (opened on first use, kept for the calls after it: a pass publishing 200 VMs opens
        one connection, not 200). A connection the server closed meanwhile (BIND closes one idle
        for 30 s; a Lambda frozen between invocations finds it gone) fails the first exchange on
        it: that one is sent again once on a new connection (updates replace or delete records,
        so one the server applied before closing applies again to the same result). Any other
        failure closes the connection: a late answer never reads as the next message's."""
        for attempt in (1, 2):
            connection: socket.socket | None = getattr(self._connections, "connection", None)
            reused = connection is not None
            if connection is None:
                connection = socket.create_connection((self._server_address(), self.port), timeout=self.timeout)
                connection.setblocking(False)  # dnspython waits for it with the exchange's timeout
                self._connections.connection = connection
                self.connections_opened += 1
            try:
                return self._pipelined(connection, messages)
            except (ConnectionError, EOFError) as error:
                self.close()
                if not reused or attempt == 2:
                    raise error
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _pipelined(self, connection: socket.socket, messages: Sequence[Any]) -> list[Any]:
        """Write every message on ``connection``, then read their answers (in the order the
        server sends them: BIND answers pipelined queries as each is resolved), each matched to
        its message by ID and question: n messages cost one round trip, not n. Within
        ``timeout`` for the lot."""
        import time

        import dns.exception
        import dns.query

        if len(messages) == 1:  # one message: dnspython's exchange (a signed answer checked with its MAC)
            return [dns.query.tcp(messages[0], self._server_address(), timeout=self.timeout, port=self.port,
                                  sock=connection)]
        assert all(message.keyring is None for message in messages), \
            "signed messages go one a call: an answer's TSIG is checked with its request's MAC"
        expiration = time.time() + self.timeout
        by_id: dict[int, int] = {}
        for index, message in enumerate(messages):
            while message.id in by_id:  # IDs tell the answers apart: each unique on the connection
                message.id = (message.id + 1) % 65536
            by_id[message.id] = index
        for message in messages:
            dns.query.send_tcp(connection, message, expiration)
        answers: list[Any] = [None] * len(messages)
        for _ in messages:
            answer = dns.query.receive_tcp(connection, expiration)[0]
            index = by_id.pop(answer.id, -1)
            if index < 0 or not messages[index].is_response(answer):
                raise dns.exception.FormError("an answer to no message sent")
            answers[index] = answer
        return answers

    def close(self) -> None:
        """Close this thread's connection to the server, if one is open (its next call opens another)."""
        connection = getattr(self._connections, "connection", None)
        self._connections.connection = None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                pass

    def _update(self, zone: Any = None) -> Any:
        """An update of ``zone`` (default the entry's), signed with the entry's key."""
        import dns.update

        if self._key_error is not None:
            raise DnsEntryRejected(self._key_error)
        zone = zone or self.zone
        if self._keyring is None:
            return dns.update.UpdateMessage(zone)
        return dns.update.UpdateMessage(zone, keyring=self._keyring, keyname=self._key_name,
                                        keyalgorithm=self._algorithm)

    def _name(self, what: str, hostname: str, fqdn: str | None = None) -> Any:
        """The name (``fqdn``, default ``hostname.domain``) as dnspython holds it; DnsRejected
        (never dnspython's own exceptions, which would end the reconcile pass) when it cannot be
        a DNS name."""
        import dns.exception
        import dns.name

        try:
            return dns.name.from_text(fqdn or self.fqdn(hostname))
        except dns.exception.DNSException as error:
            raise DnsRejected(f"dns {what}: not a valid DNS name ({type(error).__name__})") from None

    def _refusal(self, refused: _Refused) -> DnsRejected:
        """What a REFUSED update of the entry's zone was refused for. An empty update (no record:
        no ``update-policy`` rule to deny, and BIND applies nothing, writes no journal) is sent:
        refused too, the server refuses the entry (its key may not update the zone: raised as
        DnsEntryRejected, as a NOTAUTH or a bad key are); taken, it was one of the update's names
        (returned: the name's own refusal, or for a batch, some name's)."""
        try:
            self._exchange(f"update {self.zone.to_text(omit_final_dot=True)}", self._update())
        except _Refused:
            raise DnsEntryRejected(str(refused)) from None
        return refused

    def _send_batches(self, records: Sequence[tuple[str, str, Callable[[Any], None]]],
                      max_refusals: int | None = None,
                      refusals: dict[int, str] | None = None) -> dict[str, DnsError | None]:
        """Send ``records`` (hostname, what it is, a function adding its prerequisites and changes
        to an update) to the entry's zone, ``RECORDS_PER_UPDATE`` to an update. An update the
        server refuses (for one record it cannot take: a name an ``update-policy`` denies the key,
        a name another holds as an alias, a name outside the zone) is sent again one record a
        message, so one name never fails the others; a refusal of the entry as a whole, or no
        answer, is raised (``_exchange``, ``_refusal``). Returns each record sent: None when
        applied, else the name's DnsRejected; after ``max_refusals`` of those the rest is not sent
        (absent from the answer)."""
        outcome: dict[str, DnsError | None] = {}
        refused = 0

        def send(what: str, chunk: Sequence[tuple[str, str, Callable[[Any], None]]]) -> None:
            update = self._update()
            for _, _, add in chunk:
                add(update)
            self._exchange(what, update, refusals)

        for start in range(0, len(records), RECORDS_PER_UPDATE):
            chunk = records[start:start + RECORDS_PER_UPDATE]
            if max_refusals is not None and refused >= max_refusals:
                break
            try:
                send(chunk[0][1] if len(chunk) == 1 else f"{chunk[0][1].split()[0]} {len(chunk)} names", chunk)
            except _Refused as refusal:
                failure: DnsRejected = self._refusal(refusal)  # the entry's: raised
            except (DnsUnavailable, DnsEntryRejected):
                raise
            except DnsRejected as error:
                failure = error
            else:
                outcome.update({hostname: None for hostname, _, _ in chunk})
                continue
            if len(chunk) == 1:
                outcome[chunk[0][0]], refused = failure, refused + 1
                continue
            # One record a message: the server takes the entry (``_refusal``), so a REFUSED one
            # is its name's.
            for record in chunk:
                if max_refusals is not None and refused >= max_refusals:
                    return outcome
                try:
                    send(record[1], [record])
                except (DnsUnavailable, DnsEntryRejected):
                    raise
                except DnsRejected as error:
                    outcome[record[0]], refused = error, refused + 1
                    continue
                outcome[record[0]] = None
        return outcome

    def create_or_replace(self, hostname: str, addresses: str | Sequence[str], published: str | None = None) -> None:
        error = self.create_many([(hostname, addresses, published)])[hostname]
        if error is not None:
            raise error

    def create_many(self, records: Sequence[tuple[str, str | Sequence[str], str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """The creates go ``RECORDS_PER_UPDATE`` to one update (``_send_batches``): a pool of
        200 publishing its VMs sends 4 updates (4 journal writes and zone serials), not 200."""
        import dns.rcode

        outcome: dict[str, DnsError | None] = {}
        batch: list[tuple[str, str, Callable[[Any], None]]] = []
        for hostname, addresses, published in records:
            what = f"create {self.fqdn(hostname)}"
            try:
                replaced, deleted = record_changes(f"dns {what}", addresses, published)
                name = self._name(what, hostname)
            except DnsError as error:
                outcome[hostname] = error
                continue
            batch.append((hostname, what, functools.partial(self._add_create, name, replaced, deleted)))
        outcome.update(self._send_batches(batch, max_refusals, refusals={
            dns.rcode.YXRRSET: "the name has a CNAME record (not vmpool's): it cannot have an A record"}))
        return outcome

    def _add_create(self, name: Any, replaced: dict[str, str], deleted: list[str], update: Any) -> None:
        """Add the create of ``name``'s records (``record_changes``: ``replaced``, ``deleted``)
        to ``update``."""
        # A server ignores an A record added at an alias's name and still answers NOERROR
        # (RFC 2136 3.4.2.2): the VM would be taken as published while its name leads elsewhere.
        # The prerequisite makes the server refuse the update instead (YXRRSET).
        update.absent(name, "CNAME")
        for rdtype, address in replaced.items():  # a family whose address did not change is not sent
            update.replace(name, self.ttl, rdtype, address)
        for rdtype in deleted:  # vmpool's address of a family the VM no longer has goes
            update.delete(name, rdtype)

    @staticmethod
    def _add_delete(name: Any, update: Any) -> None:
        """Add the delete of ``name``'s A and AAAA records to ``update``."""
        for rdtype in ADDRESS_TYPES:
            update.delete(name, rdtype)

    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        error = self.delete_many([(hostname, fqdn)]).get(hostname)
        if error is not None:
            raise error

    def delete_many(self, names: Sequence[tuple[str, str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """The deletes of names in the entry's zone go ``RECORDS_PER_UPDATE`` to one update
        (``_send_batches``): a backlog of 50 is one message and one journal write, not 50. A name
        published under the entry's former domain may be outside its zone now (the zone defaults
        to the domain): then the former domain, its parent, was the zone; those are sent one by
        one there, and their refusals are not the entry's."""
        outcome: dict[str, DnsError | None] = {}
        batch: list[tuple[str, str, Callable[[Any], None]]] = []
        alone: list[tuple[str, str, Any]] = []
        for hostname, fqdn in names:
            what = f"delete {fqdn or self.fqdn(hostname)}"
            try:
                name = self._name(what, hostname, fqdn)
            except DnsError as error:
                outcome[hostname] = error
                continue
            if name.is_subdomain(self.zone):
                batch.append((hostname, what, functools.partial(self._add_delete, name)))
            else:
                alone.append((hostname, what, name))

        def refusals_left() -> int | None:
            refused = sum(1 for error in outcome.values() if error is not None)
            return None if max_refusals is None else max_refusals - refused

        left = refusals_left()
        if left is None or left > 0:
            outcome.update(self._send_batches(batch, left))
        for hostname, what, name in alone:
            left = refusals_left()
            if left is not None and left <= 0:
                break
            update = self._update(name.parent())
            self._add_delete(name, update)
            try:
                self._exchange(what, update, entry_wide=False)
            except (DnsUnavailable, DnsEntryRejected):
                raise
            except DnsError as error:
                outcome[hostname] = error
                continue
            outcome[hostname] = None
        return outcome

    def addresses_many(self, hostnames: Sequence[str]) -> dict[str, list[str] | DnsError]:
        """``addresses`` of each name, ``LOOKUPS_IN_FLIGHT`` queries written on the kept connection
        before their answers are read (``_pipelined``): a pass checking 200 new names waits 4 round
        trips for their A questions (and one a 50 names that exist for their AAAA questions), not
        200 to 400. A failure of the server (no answer) is raised; a name that cannot
        be one, or a question the server refuses, is that name's."""
        import dns.message
        import dns.rdatatype

        outcome: dict[str, list[str] | DnsError] = {}
        names: dict[str, Any] = {}
        for hostname in hostnames:
            try:
                names[hostname] = self._name(f"look up {self.fqdn(hostname)}", hostname)
            except DnsError as error:
                outcome[hostname] = error
        probing = bool(names) and bool(self.domain) and WILDCARD_PROBE not in names
        if probing:
            names[WILDCARD_PROBE] = self._name("look up a name no VM has", WILDCARD_PROBE)
        found: dict[str, list[str]] = {hostname: [] for hostname in names}
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            asked = [hostname for hostname in names if hostname != WILDCARD_PROBE]
            chunks = [asked[start:start + LOOKUPS_IN_FLIGHT] for start in range(0, len(asked), LOOKUPS_IN_FLIGHT)]
            if WILDCARD_PROBE in names:  # with the first chunk: no round trip of its own
                chunks = [[WILDCARD_PROBE, *(chunks[0] if chunks else [])], *chunks[1:]]
            for chunk in chunks:
                shown = [hostname for hostname in chunk if hostname != WILDCARD_PROBE] or chunk
                what = f"look up {self.fqdn(shown[0])}" if len(shown) == 1 else f"look up {len(shown)} names"
                queries = [dns.message.make_query(names[hostname], rdtype) for hostname in chunk]
                answers = self._sent(what, functools.partial(self._send_many, queries))
                for hostname, answer in zip(chunk, answers, strict=True):
                    try:
                        done = self._read_lookup(f"look up {self.fqdn(hostname)}", names[hostname], rdtype,
                                                 answer, found[hostname])
                    except DnsError as error:
                        outcome[hostname], done = error, True
                    if done:
                        outcome.setdefault(hostname, found[hostname])
                        del names[hostname]  # answered: no AAAA question
        outcome.update({hostname: found[hostname] for hostname in names})
        wildcard = outcome.pop(WILDCARD_PROBE, None) if probing else None
        if isinstance(wildcard, list) and wildcard:
            # What a wildcard record answers for any name: not a record of the name's own.
            outcome.update({hostname: [] for hostname, leads in outcome.items()
                            if isinstance(leads, list) and sorted(leads) == sorted(wildcard)})
        return {hostname: outcome[hostname] for hostname in hostnames}

    @staticmethod
    def _read_lookup(what: str, name: Any, rdtype: Any, response: Any, found: list[str]) -> bool:
        """Read the answer to a lookup's question (``rdtype`` at ``name``) into ``found``: True
        when it settles the lookup (an alias: ``found`` holds its target; no such name), False
        when the next question is still to ask. DnsRejected for an answer code other than
        NOERROR and NXDOMAIN (a server refusing queries)."""
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype

        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsRejected(f"dns {what}: the server answered {dns.rcode.to_text(rcode)}")
        alias = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if alias is not None:  # the answer to either question: the name is an alias
            found[:] = [f"{item.target.to_text(omit_final_dot=True)} (CNAME)" for item in alias]
            return True
        if rcode == dns.rcode.NXDOMAIN:
            return True  # no record of any type at the name
        held = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        found.extend(item.address for item in held or ())
        return False

    def addresses(self, hostname: str) -> list[str]:
        found = self.addresses_many([hostname])[hostname]
        if isinstance(found, DnsError):
            raise found
        return found
