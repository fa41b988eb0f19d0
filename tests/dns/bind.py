"""A private BIND 9 (``named``) for the tests: one primary zone that accepts RFC 2136 updates
signed with a TSIG key, on 127.0.0.1 and a free port (UDP and TCP).

    with BindServer() as server:
        server.port, server.zone, server.key_name, server.key_secret
        server.addresses("host.vms.example.test")   # what the server answers now
        server.stop(); server.start()                # same port and zone data (its journal)
        server.refuse_updates_of(["host-a", ...])    # an update-policy denying those names

Needs the Debian package ``bind9`` (``/usr/sbin/named``).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from local.processes import PORT_TRIES, PortHold, stop_process
from tests.support import listening_pids

NAMED = "/usr/sbin/named"
ZONE = "vms.example.test"
KEY_NAME = "vmpool-key"
ANSWER_SECONDS = 10.0
"""How long a test waits for one answer of a running named: a safety net, never the time a test
is about. named writes and fsyncs its journal twice per update: at 90 MB/s of other writes on
the test machine's disk an update took up to 1 s (0.3 s on a CPU-starved machine), and the 2 s
this was made a healthy pass lose its DNS service now and then, and the VMs it was to publish
stayed pending past the passes a test counts. A test about a server that does not answer sets
its own short timeout (a paused or unreachable server)."""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class _PortTaken(RuntimeError):
    """named could not bind its port: another process holds it."""


class BindServer:
    """named in the foreground with its own directory, config and zone."""

    def __init__(self) -> None:
        self.refused_names: list[str] = []
        """Names (in the zone) whose records the key may not change (``refuse_updates_of``)."""
        self.directory = Path(tempfile.mkdtemp(prefix="named-"))
        self.port = free_port()
        self.zone = ZONE
        self.key_name = KEY_NAME
        self.key_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._port_hold = PortHold()
        """Its TCP port, held from its choice to the ``with`` block's end, beside named's own
        listener: kept while named is down, stopped or killed (tests of a DNS outage), until it
        starts again on it."""
        self._port_hold.hold(self.port)
        self._write_files()

    def _write_files(self, zone_data: bool = True) -> None:
        d = self.directory
        (d / "named.conf").write_text(f"""\
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{self.key_name}" {{
    algorithm hmac-sha256;
    secret "{self.key_secret}";
}};
zone "{self.zone}" {{
    type primary;
    file "{d}/zone.db";
    {self._update_rules()}
    allow-transfer {{ key "{self.key_name}"; }};
}};
""")
        if not zone_data:
            return  # its zone file and journal hold what the updates made
        (d / "zone.db").write_text(f"""\
$TTL 60
@   IN SOA ns.{self.zone}. admin.{self.zone}. (1 60 60 600 60)
@   IN NS  ns.{self.zone}.
ns  IN A   127.0.0.1
""")

    def _update_rules(self) -> str:
        """The zone's update rules: the key may update every name (``allow-update``), or, with
        ``refused_names``, an ``update-policy`` that denies it those names and grants it the rest
        (BIND answers REFUSED to a whole update holding one record it denies)."""
        if not self.refused_names:
            return f'allow-update {{ key "{self.key_name}"; }};'
        denied = "".join(f'deny "{self.key_name}" name {name}.{self.zone}. ANY; '
                         for name in self.refused_names)
        return f'update-policy {{ {denied}grant "{self.key_name}" zonesub ANY; }};'

    def refuse_updates_of(self, hostnames: list[str]) -> None:
        """From now on, refuse the key's updates of these names (in the zone; [] lifts it): an
        operator's ``update-policy`` allowing vmpool only some names. named is restarted on its
        port with the new config, its zone data kept."""
        self.refused_names = list(hostnames)
        self.stop()
        self._write_files(zone_data=False)
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        """Start named and wait until it answers for the zone. At its first start, again on a fresh
        port if another process took this one after it was chosen (named then serves without it,
        saying "address in use"); a restart keeps its port, as its callers expect."""
        first = not self._started
        for attempt in range(1, PORT_TRIES + 1):
            try:
                self._launch(timeout)
                self._started = True
                return
            except _PortTaken:
                if not first or attempt == PORT_TRIES:
                    raise
                self._port_hold.release()
                self.port = free_port()
                self._port_hold.hold(self.port)
                self._write_files()

    def _launch(self, timeout: float) -> None:
        """named on this server's port, answering for the zone; RuntimeError with its log if not
        within ``timeout`` (_PortTaken if its port was in use)."""
        log_path = self.directory / "named.log"
        since = log_path.stat().st_size if log_path.exists() else 0  # a restart's log follows the last's
        self.process = subprocess.Popen(
            [NAMED, "-g", "-c", str(self.directory / "named.conf"), "-n", "1"],
            stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None or b"address in use" in log_path.read_bytes()[since:]:
                break
            try:
                answer = dns.query.tcp(dns.message.make_query(self.zone, "SOA"), "127.0.0.1",
                                       port=self.port, timeout=0.5)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    if self._alone_on_port():
                        return
                    break  # _PortTaken below
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.1)
        log = log_path.read_bytes()[since:].decode(errors="replace")[-2000:]
        shared = self.process.poll() is None and not self._alone_on_port()
        self.stop()
        failure = _PortTaken if "address in use" in log or shared else RuntimeError
        raise failure(f"named did not start on port {self.port}:\n{log}")

    def _alone_on_port(self) -> bool:
        """Whether our named, and no other process, serves its port (TCP and UDP). named binds
        with SO_REUSEPORT: another named (another test's or helper's, same zone name) that took
        the port after it was chosen shares it silently, each answering a share of the queries,
        the other's refusing our TSIG key; before, a start ended at the first SOA answer,
        whichever named gave it."""
        assert self.process is not None
        return listening_pids(self.port, udp=True) == {self.process.pid}

    def kill(self) -> None:
        """Kill named with SIGKILL (an outage with no goodbye: nothing flushed, connections
        reset); ``start`` brings it back on its port."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Stop named; its TCP port stays held (``PortHold``) until it starts again on it or the
        ``with`` block ends."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def addresses(self, fqdn: str, rdtype: str = "A") -> list[str]:
        """The A (or ``rdtype``: AAAA) records the server holds for ``fqdn`` now."""
        answer = dns.query.tcp(dns.message.make_query(fqdn, rdtype), "127.0.0.1", port=self.port,
                               timeout=ANSWER_SECONDS)
        found = answer.get_rrset(answer.answer, dns.name.from_text(fqdn), dns.rdataclass.IN,
                                 dns.rdatatype.from_text(rdtype))
        return sorted(item.address for item in found) if found is not None else []

    def _update(self) -> Any:
        import dns.tsigkeyring
        import dns.update

        keyring = dns.tsigkeyring.from_text({self.key_name: self.key_secret})
        return dns.update.UpdateMessage(self.zone, keyring=keyring, keyname=self.key_name,
                                        keyalgorithm="hmac-sha256")

    def add_record(self, fqdn: str, rdtype: str, value: str) -> None:
        """Add a record as someone other than vmpool would (an operator, DHCP, a guest)."""
        update = self._update()
        update.add(dns.name.from_text(fqdn), 60, rdtype, value)
        answer = dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=ANSWER_SECONDS)
        assert answer.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(answer.rcode())

    def clear_records(self) -> None:
        """Delete every A, AAAA and CNAME record but the server's own, so that a test starts from
        an empty zone (hostnames are drawn from 900 word names: one a test left would be refused
        as stale)."""
        import dns.tsigkeyring
        import dns.zone

        keyring = dns.tsigkeyring.from_text({self.key_name: self.key_secret})
        zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", self.zone, port=self.port, keyring=keyring,
                                               keyname=self.key_name, keyalgorithm="hmac-sha256",
                                               timeout=ANSWER_SECONDS))
        update = self._update()
        cleared = False
        for name, node in zone.nodes.items():
            if str(name) in ("@", "ns"):
                continue
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
                if node.get_rdataset(dns.rdataclass.IN, rdtype):
                    update.delete(name, rdtype)
                    cleared = True
        if cleared:
            dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=ANSWER_SECONDS)

    def dns_config(self, name: str = "bind", **overrides: Any) -> dict[str, Any]:
        """A ``:dns_configs:`` entry for this server."""
        return {
            "dns_class": "dynamic-dns", "domain": self.zone, "server": "127.0.0.1", "port": self.port,
            "tsig_key_name": self.key_name, "tsig_secret": self.key_secret, "timeout": ANSWER_SECONDS,
            **overrides,
        }

    def __enter__(self) -> "BindServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._port_hold.release()
        shutil.rmtree(self.directory, ignore_errors=True)
