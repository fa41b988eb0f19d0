"""A private OpenLDAP ``slapd`` for the tests, with a test CA and TLS listeners.

``SlapdServer`` writes a slapd.conf (mdb backend, modules from /usr/lib/ldap), seeds the directory
with ``slapadd`` and starts slapd on free loopback ports: one plain/StartTLS listener (``url``)
and one LDAPS listener (``ldaps_url``). Certificates come from a CA made with the openssl CLI at
start; ``ca_file`` trusts it, ``rogue_ca_file`` is another CA that must be refused.

Directory layout (``dc=example,dc=com``)::

    cn=svc,dc=example,dc=com                  service account (may search, see users)
    ou=users:   uid=alice, uid=comma\\,user    (uid in the DN)
                uid=straße, uid=strasse     (two users whose names Unicode case folding merges;
                                             LDAP keeps them apart)
                uid=dana                    (a password of Hebrew and Latin letters)
    ou=people:  cn=bob (uid: bob), cn=carol (uid: carol)   (cn in the DN)
    ou=groups:  cn=vmpool-admins (groupOfNames: carol's DN),
                cn=vmpool-posix-admins (posixGroup: memberUid Alice)

The memberof overlay keeps each member's ``memberOf`` (what vmpool reads for ``admin_groups``);
no refint overlay: a deleted entry's DN stays in the groups that named it, as on many directories
(``add_member``, ``remove_member``).

The ``slapd`` session fixture (tests/conftest.py) runs one for every folder that needs it.

Needs the Debian packages ``slapd`` and ``ldap-utils`` (and ``openssl``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.processes import PORT_TRIES, stop_process
from tests.support import free_ports, port_in_use

BASE = "dc=example,dc=com"
USERS_OU = f"ou=users,{BASE}"
PEOPLE_OU = f"ou=people,{BASE}"
SERVICE_DN = f"cn=svc,{BASE}"
SERVICE_PASSWORD = "svc-Secret-42"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PASSWORD = "root-Secret-43"
"""The directory's administrator: tests add and remove entries as it (``add_user``, ``remove``)."""
RELAX_CONTROL = "1.3.6.1.4.1.4203.666.5.12"
"""OpenLDAP's Relax Rules control: lets the administrator set an entry's entryUUID."""

# user name -> (DN, password). The user name is what a client types (uid for every entry).
USERS: dict[str, tuple[str, str]] = {
    "alice": (f"uid=alice,{USERS_OU}", "alice-Pass-1"),
    "comma,user": (f"uid=comma\\,user,{USERS_OU}", "comma-Pass-2"),
    "bob": (f"cn=bob,{PEOPLE_OU}", "bob-Pass-3"),
    "carol": (f"cn=carol,{PEOPLE_OU}", "carol-Pass-4"),
    "stra\u00dfe": (f"uid=stra\u00dfe,{USERS_OU}", "sharp-s-Pass-5"),
    "strasse": (f"uid=strasse,{USERS_OU}", "double-s-Pass-6"),
    "dana": (f"uid=dana,{USERS_OU}", "\u05e9\u05dc\u05d5\u05dd-dana-7"),
}

GROUPS_OU = f"ou=groups,{BASE}"
ADMIN_GROUP = f"cn=vmpool-admins,{GROUPS_OU}"
POSIX_ADMIN_GROUP = f"cn=vmpool-posix-admins,{GROUPS_OU}"
"""An RFC 2307 group naming its member ``Alice`` (memberUid matches case-exactly; alice's uid is
lower-case, and vmpool's user names are)."""
"""A groupOfNames whose only member is carol."""

SLAPD_BINARY_CANDIDATES = ("/usr/sbin/slapd", "/usr/lib/slapd")
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = "/etc/ldap/schema"


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA made with the openssl CLI: (certificate, key)."""
    key = directory / f"{name}.key"
    cert = directory / f"{name}.pem"
    _run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN=vmpool test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])
    return cert, key


def make_server_cert(
    directory: Path, ca_cert: Path, ca_key: Path, names: str = "IP:127.0.0.1,DNS:localhost", stem: str = "server"
) -> tuple[Path, Path]:
    """A server certificate for ``names`` (subjectAltName syntax) signed by the CA: (certificate, key)."""
    key = directory / f"{stem}.key"
    csr = directory / f"{stem}.csr"
    cert = directory / f"{stem}.pem"
    ext = directory / f"{stem}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={names}\n"
    )
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
          "-subj", "/CN=localhost"])
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
          "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert)])
    return cert, key


def _seed_ldif() -> str:
    entries = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {USERS_OU}\nobjectClass: organizationalUnit\nou: users\n",
        f"dn: {PEOPLE_OU}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS_OU}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {ADMIN_GROUP}\nobjectClass: groupOfNames\ncn: vmpool-admins\nmember: {USERS['carol'][0]}\n",
        (f"dn: {POSIX_ADMIN_GROUP}\nobjectClass: posixGroup\ncn: vmpool-posix-admins\ngidNumber: 5000\n"
         "memberUid: Alice\n"),
        (f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
         f"cn: svc\nuserPassword: {SERVICE_PASSWORD}\n"),
    ]
    for user, (dn, password) in USERS.items():
        rdn_attr = dn.split("=", 1)[0]
        cn = user if rdn_attr == "cn" else f"{user} cn"
        # slapadd runs no overlay: the memberOf the memberof overlay would have written is seeded.
        member_of = f"memberOf: {ADMIN_GROUP}\n" if user == "carol" else ""
        entries.append(
            f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {cn}\nsn: {user}\n"
            f"userPassword:: {base64.b64encode(password.encode()).decode()}\n{member_of}"
        )
    return "\n".join(entries)


@dataclass
class SlapdServer:
    """A slapd child process on loopback. Use as a context manager or call start()/stop()."""

    port: int = 0
    ldaps_port: int = 0
    """Its two ports: distinct free ones when not given (free_port() twice may return one port
    twice, and slapd then exits at start, neither port held by anyone: no start on fresh ones)."""
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vmpool-slapd-")))
    process: subprocess.Popen | None = None
    extra_ldif: str = ""
    """More entries (LDIF) to seed, for a test's own directory."""
    log_level: str = "none"
    """slapd's ``loglevel``: ``stats`` writes every operation to the log (see ``operations``)."""

    base = BASE
    users_base = USERS_OU
    people_base = PEOPLE_OU
    service_dn = SERVICE_DN
    service_password = SERVICE_PASSWORD
    users = USERS
    admin_group = ADMIN_GROUP
    posix_admin_group = POSIX_ADMIN_GROUP

    def __post_init__(self) -> None:
        chosen = iter(free_ports(2))
        self.port = self.port or next(chosen)
        self.ldaps_port = self.ldaps_port or next(chosen)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """Plain LDAP (also offers StartTLS)."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def certificate_for(self, names: str, stem: str) -> tuple[Path, Path]:
        """Another certificate from the test CA (e.g. for a name the server is not reached by)."""
        return make_server_cert(self.directory / "certs", self.ca_file, self.ca_key, names, stem)

    def password(self, user: str) -> str:
        return self.users[user][1]

    def dn(self, user: str) -> str:
        return self.users[user][0]

    def ldap_config(self, **overrides) -> dict:
        """An ``:auth: ldap:`` mapping for this server (StartTLS with the test CA by default)."""
        config = {
            "host": self.host,
            "port": self.port,
            "base": [self.users_base, self.people_base],
            "user_object": ["uid", "cn"],
            "encryption": "start_tls",
            "ca_file": str(self.ca_file),
            "connect_timeout": 2,
            "receive_timeout": 5,
        }
        config.update(overrides)
        return config

    def service_account_config(self, **overrides) -> dict:
        """``ldap_config`` in service-account mode: users are looked up bound as the service account."""
        config = self.ldap_config(**overrides)
        config["service_account_hash"] = {"user_dn": self.service_dn, "password": self.service_password}
        return config

    def start(self, timeout: float = 15.0) -> "SlapdServer":
        binary = next((b for b in SLAPD_BINARY_CANDIDATES if os.path.exists(b)), shutil.which("slapd"))
        if binary is None:
            raise RuntimeError("slapd is not installed (apt-get install -y slapd ldap-utils)")
        slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
        certs = self.directory / "certs"
        data = self.directory / "data"
        certs.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        self.ca_file, self.ca_key = make_ca(certs, "ca")
        ca_key = self.ca_key
        self.rogue_ca_file, _ = make_ca(certs, "rogue-ca")
        self.server_cert, self.server_key = make_server_cert(certs, self.ca_file, ca_key)

        conf = self.directory / "slapd.conf"
        conf.write_text(
            "\n".join([
                f"include {SCHEMA_DIR}/core.schema",
                f"include {SCHEMA_DIR}/cosine.schema",
                f"include {SCHEMA_DIR}/inetorgperson.schema",
                f"include {SCHEMA_DIR}/nis.schema",
                f"pidfile {self.directory}/slapd.pid",
                f"argsfile {self.directory}/slapd.args",
                f"modulepath {MODULE_PATH}",
                "moduleload back_mdb",
                "moduleload memberof",
                f"TLSCACertificateFile {self.ca_file}",
                f"TLSCertificateFile {self.server_cert}",
                f"TLSCertificateKeyFile {self.server_key}",
                f"loglevel {self.log_level}",
                "database mdb",
                "maxsize 10485760",
                f"suffix \"{BASE}\"",
                f"rootdn \"{ROOT_DN}\"",
                f"rootpw {ROOT_PASSWORD}",
                f"directory {data}",
                # Members' memberOf kept by the directory; no refint: groups keep deleted DNs.
                "overlay memberof",
                # Passwords: only for binding. Everything else: bound users only (no anonymous
                # search, so the service-account mode really needs its account).
                "access to attrs=userPassword by anonymous auth by self read by * none",
                "access to * by users read by * none",
                "",
            ])
        )
        _run([slapadd, "-f", str(conf), "-b", BASE], input=_seed_ldif() + "\n" + self.extra_ldif)
        # Its ports were free when chosen, but another process may take one before slapd binds
        # it: slapd then exits (saying nothing at log level none), and it starts on fresh ones.
        self._binary, self._conf = binary, conf
        for attempt in range(1, PORT_TRIES + 1):
            try:
                self._launch(binary, conf, timeout)
                return self
            except RuntimeError:
                stop_process(self.process)
                self.process = None
                self.log_file.close()
                if attempt == PORT_TRIES or not any(map(port_in_use, (self.port, self.ldaps_port))):
                    self.stop()
                    raise
                self.port, self.ldaps_port = free_ports(2)
        raise AssertionError("unreachable: the last try returns or raises")

    def _launch(self, binary: str, conf: Path, timeout: float) -> None:
        """slapd on this server's ports, answering on both; RuntimeError with its log if it exits
        or does not answer within ``timeout``."""
        listen = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        self.log_file = open(self.directory / "slapd.log", "wb")
        self.process = subprocess.Popen(
            [binary, "-f", str(conf), "-h", listen, "-d", "0" if self.log_level == "none" else self.log_level],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._answers() and self.process.poll() is None:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "slapd.log").read_text(errors="replace")
                raise RuntimeError(f"slapd did not start on port {self.port}:\n{log[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: the directory's data stays for ``relaunch``."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.log_file.close()

    def relaunch(self, timeout: float = 15.0) -> None:
        """Start the killed slapd again on its ports, with its data."""
        self._launch(self._binary, self._conf, timeout)

    def _as_administrator(self) -> Any:
        from ldap3 import Connection, Server

        return Connection(Server(self.host, port=self.port), user=ROOT_DN, password=ROOT_PASSWORD,
                          auto_bind=True, raise_exceptions=True)

    def add_user(self, user: str, password: str, base: str = USERS_OU, entry_uuid: str | None = None) -> str:
        """A new entry ``uid=<user>,<base>`` (for a test that removes it again); its DN. The
        directory gives it a new entryUUID, unless ``entry_uuid`` (an entry restored from a
        backup keeps its own: slapadd, or an add with the Relax control as here)."""
        dn = f"uid={user},{base}"
        attributes = {"uid": user, "cn": f"{user} cn", "sn": user, "userPassword": password}
        controls = None
        if entry_uuid is not None:
            attributes["entryUUID"] = entry_uuid
            controls = [(RELAX_CONTROL, True, None)]
        with self._as_administrator() as connection:
            connection.add(dn, ["inetOrgPerson"], attributes, controls=controls)
        return dn

    def entry_uuid(self, dn: str) -> str:
        """The entry's entryUUID (an operational attribute: asked for by name)."""
        with self._as_administrator() as connection:
            connection.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["entryUUID"])
            return str(connection.response[0]["raw_attributes"]["entryUUID"][0].decode())

    def rename(self, dn: str, uid: str) -> str:
        """Give the entry at ``dn`` the uid ``uid`` (a modrdn: the same entry, its entryUUID kept,
        the old uid value gone), as an operator renaming a user does; its new DN."""
        with self._as_administrator() as connection:
            connection.modify_dn(dn, f"uid={uid}", delete_old_dn=True)
        return f"uid={uid},{dn.split(',', 1)[1]}"

    def set_password(self, dn: str, password: str) -> None:
        """Replace an entry's password, as an operator disabling an account without removing it does."""
        from ldap3 import MODIFY_REPLACE

        with self._as_administrator() as connection:
            connection.modify(dn, {"userPassword": [(MODIFY_REPLACE, [password])]})

    def add_member(self, group: str, dn: str) -> None:
        """Add ``dn`` to the groupOfNames ``group`` (the overlay writes the entry's memberOf)."""
        from ldap3 import MODIFY_ADD

        with self._as_administrator() as connection:
            connection.modify(group, {"member": [(MODIFY_ADD, [dn])]})

    def add_posix_group(self, cn: str, member_uids: list[str]) -> str:
        """A new RFC 2307 posixGroup ``cn=<cn>`` under ou=groups naming these ``memberUid`` values
        (for a test that removes it again); its DN."""
        dn = f"cn={cn},{GROUPS_OU}"
        with self._as_administrator() as connection:
            connection.add(dn, ["posixGroup"], {"cn": cn, "gidNumber": 5001, "memberUid": member_uids})
        return dn

    def remove_member(self, group: str, dn: str) -> None:
        """Take ``dn`` out of the groupOfNames ``group`` (not a member: nothing)."""
        from ldap3 import MODIFY_DELETE
        from ldap3.core.exceptions import LDAPNoSuchAttributeResult

        with self._as_administrator() as connection:
            try:
                connection.modify(group, {"member": [(MODIFY_DELETE, [dn])]})
            except LDAPNoSuchAttributeResult:
                pass

    def members(self, group: str) -> list[str]:
        """The DNs the groupOfNames ``group`` lists, lower-cased."""
        with self._as_administrator() as connection:
            connection.search(group, "(objectClass=*)", search_scope="BASE", attributes=["member"])
            return [str(dn).lower() for dn in connection.response[0]["attributes"].get("member", [])]

    def remove(self, dn: str) -> None:
        """Delete an entry, as an operator removing a departed user does (gone already: nothing)."""
        from ldap3.core.exceptions import LDAPNoSuchObjectResult

        with self._as_administrator() as connection:
            try:
                connection.delete(dn)
            except LDAPNoSuchObjectResult:
                pass

    def log_size(self) -> int:
        """Bytes of the log written so far (mark where an action's operations start)."""
        return (self.directory / "slapd.log").stat().st_size

    def operations(self, since: int = 0) -> list[str]:
        """The kinds of the operations the server logged after byte ``since``, in order
        (``BIND``, ``SRCH``, ``UNBIND``...): needs ``log_level="stats"``."""
        text = (self.directory / "slapd.log").read_bytes()[since:].decode(errors="replace")
        kinds: dict[tuple[str, str], str] = {}
        for match in re.finditer(r"conn=(\d+) op=(\d+) ([A-Z]+)", text):
            kinds.setdefault((match[1], match[2]), match[3])
        return list(kinds.values())

    def _answers(self) -> bool:
        for port in (self.port, self.ldaps_port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if getattr(self, "log_file", None):
            self.log_file.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "SlapdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
