"""LdapAuthenticator against a real slapd: both bind modes, TLS, injection, outages."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
import uuid

import pytest
import yaml

from chalicelib.auth import build_authenticator
from chalicelib.auth.base import AuthConfigError, AuthUnavailable
from chalicelib.auth.dummy import DummyAuthenticator
from chalicelib.auth.ldap import LdapAuthenticator, parse_ldap_settings
from chalicelib.auth.secrets import SecretReference, SecretUnavailable, plain_secret
from chalicelib.config import ConfigError, parse
from tests.auth.slapd import BASE, PEOPLE_OU, USERS_OU, SlapdServer
from tests.support import connects_recorded

ALL_USERS = ("alice", "comma,user", "bob", "carol")


def direct(slapd: SlapdServer, **overrides) -> LdapAuthenticator:
    return LdapAuthenticator(parse_ldap_settings(slapd.ldap_config(**overrides)))


def with_service_account(slapd: SlapdServer, password=None, resolve=None, **overrides) -> LdapAuthenticator:
    config = slapd.ldap_config(
        service_account_hash={"user_dn": slapd.service_dn, "password": password or slapd.service_password},
        **overrides,
    )
    return LdapAuthenticator(parse_ldap_settings(config), resolve)


MODES = {
    "direct": lambda slapd, **kw: direct(slapd, **kw),
    "service": lambda slapd, **kw: with_service_account(slapd, **kw),
}


# --- both modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", ALL_USERS)
def test_every_user_logs_in_across_bases_and_user_objects(slapd, mode, user):
    auth = MODES[mode](slapd)
    assert auth.authenticate(user, slapd.password(user)) is True


@pytest.mark.parametrize("mode", MODES)
def test_wrong_password_unknown_user_and_other_users_password(slapd, mode):
    auth = MODES[mode](slapd)
    assert auth.authenticate("alice", "wrong") is False
    assert auth.authenticate("alice", slapd.password("bob")) is False
    assert auth.authenticate("nobody", "whatever") is False
    assert auth.authenticate("ALICE", "wrong") is False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("password", ["", None])
def test_empty_password_is_refused_without_asking_the_server(slapd, mode, password, closed_port):
    # Pointing at a closed port proves no connection is attempted: no AuthUnavailable.
    auth = MODES[mode](slapd, port=closed_port)
    assert auth.authenticate("alice", password) is False
    assert auth.authenticate("", "x") is False
    assert auth.authenticate("   ", "x") is False
    assert auth.authenticate("ali\x00ce", "x") is False


def test_empty_password_would_be_an_anonymous_bind_on_the_server(slapd):
    """Why the empty password must be refused: slapd (like AD) treats a DN with no password as an
    unauthenticated bind rather than a failure; ldap3 itself sends it if asked."""
    from ldap3 import ANONYMOUS, Connection, Server

    connection = Connection(Server(slapd.host, port=slapd.port), authentication=ANONYMOUS)
    assert connection.bind() is True  # anonymous binds succeed: only our check stops them
    connection.unbind()


def test_direct_bind_tries_only_the_configured_bases_and_user_objects(slapd):
    only_users_uid = direct(slapd, base=slapd.users_base, user_object="uid")
    assert only_users_uid.authenticate("alice", slapd.password("alice")) is True
    assert only_users_uid.authenticate("bob", slapd.password("bob")) is False  # bob is cn= under people
    only_people_cn = direct(slapd, base=[slapd.people_base], user_object=["cn"])
    assert only_people_cn.authenticate("bob", slapd.password("bob")) is True
    assert only_people_cn.authenticate("alice", slapd.password("alice")) is False


def test_service_account_finds_users_by_attribute_whatever_their_dn(slapd):
    # bob's DN is cn=bob,...; the search on uid finds it anyway.
    auth = with_service_account(slapd, base=slapd.base, user_object="uid")
    assert auth.authenticate("bob", slapd.password("bob")) is True
    assert auth.authenticate("alice", slapd.password("alice")) is True
    only_people = with_service_account(slapd, base=slapd.people_base, user_object="uid")
    assert only_people.authenticate("alice", slapd.password("alice")) is False


@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_name_costs_the_directory_what_a_wrong_password_does(mode):
    # A caller timing its logins must not learn which names exist: a name no entry has (or
    # several have) makes the server do what a known name with a wrong password makes it do.
    with SlapdServer(log_level="stats") as slapd:
        auth = MODES[mode](slapd)
        seen = {}
        for name in ("alice", "nobody-here"):
            start = slapd.log_size()
            assert auth.authenticate(name, "wrong") is False
            seen[name] = [kind for kind in slapd.operations(start) if kind in ("BIND", "SRCH")]
        assert seen["nobody-here"] == seen["alice"]
        assert seen["alice"].count("BIND") >= 2  # the service account's or every DN tried


def test_service_account_ignores_ambiguous_matches(slapd, caplog):
    # Every user entry has objectClass inetOrgPerson: a search on it matches several entries.
    auth = with_service_account(slapd, base=slapd.base, user_object="objectClass")
    with caplog.at_level(logging.WARNING):
        assert auth.authenticate("inetOrgPerson", slapd.password("alice")) is False
    assert "several entries" in caplog.text


def test_missing_base_is_skipped_in_service_mode(slapd):
    auth = with_service_account(slapd, base=["ou=gone,dc=example,dc=com", slapd.users_base])
    assert auth.authenticate("alice", slapd.password("alice")) is True


@pytest.mark.parametrize("mode", MODES)
def test_one_name_under_two_bases_is_two_people_and_neither_logs_in(mode, caplog):
    """uid=alice under ou=users and another person's uid=alice under ou=people, each with a
    password: in a direct bind the second alice bound under ou=people and was vmpool's alice
    (alice's tokens and VMs). Ambiguous in both modes: neither logs in; other users still do."""
    other = (f"dn: uid=alice,{PEOPLE_OU}\nobjectClass: inetOrgPerson\nuid: alice\ncn: other alice\n"
             "sn: a\nuserPassword: other-alice-Pass\n")
    with SlapdServer(extra_ldif=other) as directory:
        auth = MODES[mode](directory)
        with caplog.at_level(logging.WARNING):
            assert auth.login_name("alice", "other-alice-Pass") is None
            assert auth.login_name("alice", directory.password("alice")) is None
        assert "ambiguous" in caplog.text
        assert auth.login_name("bob", directory.password("bob")) == "bob"
        # The same base written twice is one entry, not two.
        twice = MODES[mode](directory, base=[directory.users_base, directory.users_base.upper()])
        assert twice.login_name("comma,user", directory.password("comma,user")) == "comma,user"


def test_a_base_or_group_held_by_another_server_is_skipped_not_an_outage(caplog):
    """A base (or admin group) that is a referral (another domain of an AD forest, a subtree moved
    to another server) is not followed, as a referral inside a base is not: the users of the other
    bases log in. Before, every login was 503 (and every group check) while it was configured."""
    referral = (f"dn: ou=elsewhere,{BASE}\nobjectClass: referral\nobjectClass: extensibleObject\n"
                "ou: elsewhere\nref: ldap://ldap.other.example/ou=elsewhere,dc=other\n")
    with SlapdServer(extra_ldif=referral) as directory:
        auth = with_service_account(directory, base=[f"ou=elsewhere,{BASE}", f"ou=x,ou=elsewhere,{BASE}",
                                                     directory.users_base])
        with caplog.at_level(logging.WARNING):
            assert auth.authenticate("alice", directory.password("alice")) is True
        assert "is a referral to another server" in caplog.text
        assert auth.authenticate("alice", "wrong") is False
        assert auth.has_user("alice") is True
        assert auth.member_of_any("alice", [f"cn=admins,ou=elsewhere,{BASE}", directory.posix_admin_group]) is True
        assert auth.member_of_any("alice", [f"cn=admins,ou=elsewhere,{BASE}"]) is False


# --- injection -----------------------------------------------------------------------------------

INJECTIONS = ["*", "*)(uid=*", "alic*", "*)(|(uid=*", "alice)(uid=*", "\\2a", "alice,ou=users",
              "admin,ou=x", "uid=alice,ou=users,dc=example,dc=com", "alice+cn=alice", "#alice", " alice"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_strings_never_log_in(slapd, mode, name):
    auth = MODES[mode](slapd, base=[slapd.base, slapd.users_base, slapd.people_base])
    for user in ALL_USERS:
        assert auth.authenticate(name, slapd.password(user)) is False


def test_dn_injection_would_have_worked_without_escaping(slapd):
    """With base dc=example,dc=com, 'alice,ou=users' unescaped is alice's real DN."""
    from ldap3 import Connection, Server

    raw_dn = "uid=" + "alice,ou=users" + "," + slapd.base
    assert raw_dn == slapd.dn("alice")
    connection = Connection(Server(slapd.host, port=slapd.port), user=raw_dn, password=slapd.password("alice"))
    assert connection.bind() is True
    connection.unbind()
    auth = direct(slapd, base=slapd.base, user_object="uid", encryption="plain")
    assert auth.authenticate("alice,ou=users", slapd.password("alice")) is False


def test_filter_injection_would_have_worked_without_escaping(slapd):
    """'alic*' unescaped finds alice; escaped it finds nothing."""
    from ldap3 import Connection, Server

    connection = Connection(Server(slapd.host, port=slapd.port), user=slapd.service_dn,
                            password=slapd.service_password, auto_bind=True)
    connection.search(slapd.base, "(uid=alic*)", attributes=[])
    assert [entry["dn"] for entry in connection.response if entry["type"] == "searchResEntry"] == [slapd.dn("alice")]
    connection.unbind()
    auth = with_service_account(slapd, base=slapd.base, user_object="uid")
    assert auth.authenticate("alic*", slapd.password("alice")) is False


@pytest.mark.parametrize("mode", MODES)
def test_special_characters_in_a_real_name_work(slapd, mode):
    auth = MODES[mode](slapd)
    assert auth.authenticate("comma,user", slapd.password("comma,user")) is True
    assert auth.authenticate("comma", slapd.password("comma,user")) is False


# --- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", ["plain", "start_tls", "simple_tls"])
def test_each_encryption_works_with_the_test_ca(slapd, encryption):
    port = slapd.ldaps_port if encryption == "simple_tls" else slapd.port
    for mode in MODES:
        auth = MODES[mode](slapd, encryption=encryption, port=port)
        assert auth.authenticate("bob", slapd.password("bob")) is True
        assert auth.authenticate("bob", "nope") is False


def test_host_name_with_sni(slapd):
    auth = direct(slapd, host="localhost", encryption="simple_tls", port=slapd.ldaps_port)
    try:
        assert auth.authenticate("alice", slapd.password("alice")) is True
    except AuthUnavailable:  # pragma: no cover - localhost resolving to ::1 only
        pytest.skip("localhost does not reach 127.0.0.1 here")


@pytest.mark.parametrize("encryption", ["start_tls", "simple_tls"])
def test_untrusted_ca_is_refused(slapd, encryption):
    port = slapd.ldaps_port if encryption == "simple_tls" else slapd.port
    rogue = direct(slapd, encryption=encryption, port=port, ca_file=str(slapd.rogue_ca_file))
    with pytest.raises(AuthUnavailable):
        rogue.authenticate("alice", slapd.password("alice"))
    config = slapd.ldap_config(encryption=encryption, port=port)
    del config["ca_file"]  # the system store does not know the test CA
    with pytest.raises(AuthUnavailable):
        LdapAuthenticator(parse_ldap_settings(config)).authenticate("alice", slapd.password("alice"))


def test_certificate_for_another_name_is_refused(slapd):
    """A certificate from the trusted CA, but for another host: refused before any bind is sent."""
    import ssl

    cert, key = slapd.certificate_for("DNS:other.example.com", "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve():
            raw, _ = listener.accept()
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(2)
                    while data := conn.recv(4096):
                        received.append(data)
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        auth = direct(slapd, port=port, encryption="simple_tls", receive_timeout=1)
        with pytest.raises(AuthUnavailable):
            auth.authenticate("alice", "very-secret-password")
        thread.join(3)
    assert b"very-secret-password" not in b"".join(received)


def test_verification_is_on_by_default_and_can_be_turned_off(slapd, caplog):
    assert parse_ldap_settings({"host": "h", "base": "dc=x"}).verify_certificates is True
    assert parse_ldap_settings({"host": "h", "base": "dc=x"}).encryption == "start_tls"
    with caplog.at_level(logging.WARNING):
        auth = direct(slapd, ca_file=str(slapd.rogue_ca_file), verify_certificates=False)
    assert "not authenticated" in caplog.text
    assert auth.authenticate("alice", slapd.password("alice")) is True


def test_unloadable_ca_is_a_config_error(slapd, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(AuthConfigError, match=r"auth\.ldap\.ca_file: cannot load"):
        direct(slapd, ca_file=str(bad))
    with pytest.raises(AuthConfigError, match=r"auth\.ldap\.ca_data: cannot load"):
        config = slapd.ldap_config(ca_data="-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        del config["ca_file"]
        LdapAuthenticator(parse_ldap_settings(config))


def test_ca_data_inline(slapd):
    config = slapd.ldap_config()
    config["ca_data"] = open(config.pop("ca_file")).read()
    assert LdapAuthenticator(parse_ldap_settings(config)).authenticate("carol", slapd.password("carol")) is True


# extendedResponse to message 1 with resultCode protocolError (2): "no StartTLS here".
STARTTLS_REFUSED = bytes.fromhex("300c02010178070a010204000400")


@pytest.mark.parametrize("answer", [STARTTLS_REFUSED, b"HTTP/1.1 400 Bad Request\r\n\r\n", b"0\x03\x02\x01\x01"])
def test_start_tls_against_a_plain_only_or_broken_server_is_unavailable_not_clear_text(answer):
    """A server that does not speak StartTLS (or LDAP) must not get the password in clear."""
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                try:
                    while data := conn.recv(4096):
                        received.append(data)
                        conn.sendall(answer)
                except OSError:
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        auth = LdapAuthenticator(parse_ldap_settings(
            {"host": "127.0.0.1", "port": port, "base": "dc=x", "encryption": "start_tls", "receive_timeout": 1}
        ))
        with pytest.raises(AuthUnavailable):
            auth.authenticate("alice", "very-secret-password")
        thread.join(3)
    assert b"very-secret-password" not in b"".join(received)


# --- outages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_server_down_is_unavailable_quickly(slapd, mode, closed_port, monkeypatch):
    """A directory that refuses connections: a 503 after one connection refused, waiting out none
    of the login's timeouts."""
    auth = MODES[mode](slapd, port=closed_port, connect_timeout=10, receive_timeout=10, login_timeout=15)
    tried = connects_recorded(monkeypatch)
    started = time.monotonic()
    with pytest.raises(AuthUnavailable) as raised:
        auth.authenticate("alice", slapd.password("alice"))
    took = time.monotonic() - started
    assert tried == ["127.0.0.1"]  # not connected to again (and again) until the deadline
    # A guard against waiting, not a speed: a refused connection ends at once (a few ms), and
    # each timeout here is 10 s or more, so a loaded machine has seconds to spare while a login
    # that waited any timeout out (or its retries, counted above, until the deadline) fails.
    assert took < 10, f"the login took {took:.1f} s"
    assert slapd.password("alice") not in str(raised.value)


def test_silent_server_hits_the_receive_timeout():
    with socket.socket() as listener:  # accepts TCP (backlog) but never answers LDAP
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        auth = LdapAuthenticator(parse_ldap_settings(
            {"host": "127.0.0.1", "port": port, "base": "dc=x", "encryption": "plain",
             "connect_timeout": 1, "receive_timeout": 1, "login_timeout": 24}
        ))
        started = time.monotonic()
        with pytest.raises(AuthUnavailable):
            auth.authenticate("alice", "pw")
        took = time.monotonic() - started
        # A guard against waiting for an answer that never comes, not a speed: the receive
        # timeout (1 s) ends it; without it the login's deadline (24 s) would. 12 s is room for a
        # loaded machine and still tells the two apart.
        assert took < 12, f"the login took {took:.1f} s: not ended by its receive_timeout"


def test_wrong_service_account_password_is_unavailable_not_a_wrong_user_password(slapd, caplog):
    auth = with_service_account(slapd, password="not-the-service-password")
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthUnavailable):
        auth.authenticate("alice", slapd.password("alice"))
    assert "service account" in caplog.text
    assert "not-the-service-password" not in caplog.text
    assert slapd.password("alice") not in caplog.text


def test_service_account_password_from_a_secret_reference(slapd):
    reference = {"secret": "vmpool/ldap", "key": "password"}
    calls = []

    def resolve(value):
        calls.append(value)
        if value == SecretReference("secretsmanager", "vmpool/ldap", "password"):
            return slapd.service_password
        return plain_secret(value)

    auth = with_service_account(slapd, password=reference, resolve=resolve)
    assert auth.authenticate("alice", slapd.password("alice")) is True
    assert calls == [SecretReference("secretsmanager", "vmpool/ldap", "password")]

    def broken(value):
        raise SecretUnavailable("cannot fetch Secrets Manager secret 'vmpool/ldap': AccessDenied")

    auth = with_service_account(slapd, password=reference, resolve=broken)
    with pytest.raises(AuthUnavailable, match="service account password"):
        auth.authenticate("alice", slapd.password("alice"))


def test_no_password_in_logs_or_repr(slapd, caplog):
    auth = with_service_account(slapd)
    with caplog.at_level(logging.DEBUG):
        auth.authenticate("alice", slapd.password("alice"))
        auth.authenticate("alice", "wrong-password-xyz")
    for secret in (slapd.service_password, slapd.password("alice"), "wrong-password-xyz"):
        assert secret not in caplog.text
        assert secret not in repr(auth)
        assert secret not in repr(auth.settings)


# --- configuration -------------------------------------------------------------------------------


def test_config_errors_name_each_key():
    with pytest.raises(AuthConfigError) as raised:
        parse_ldap_settings({
            "host": "ldaps://ad.example.com", "port": "seventy", "base": ["dc=ok", "not a dn"],
            "user_object": "uid)(cn", "encryption": "tls", "ca_file": "/nonexistent/ca.pem",
            "verify_certificates": "maybe", "connect_timeout": 0,
            "service_account_hash": {"user_dn": "cn=svc"},
        })
    text = "\n".join(raised.value.problems)
    for key in ("auth.ldap.host", "auth.ldap.port", "auth.ldap.base", "auth.ldap.user_object",
                "auth.ldap.encryption", "auth.ldap.ca_file", "auth.ldap.verify_certificates",
                "auth.ldap.connect_timeout", "auth.ldap.service_account_hash.password"):
        assert key in text, key
    with pytest.raises(AuthConfigError, match=r"auth\.ldap\.host: is required"):
        parse_ldap_settings({"base": "dc=x"})
    with pytest.raises(AuthConfigError, match=r"auth\.ldap: is required"):
        parse_ldap_settings(None)
    with pytest.raises(AuthConfigError, match="secret reference"):
        parse_ldap_settings({"host": "h", "base": "dc=x",
                             "service_account_hash": {"user_dn": "cn=svc,dc=x", "password": {"vault": "x"}}})


def test_vmpooler_style_config_is_understood(slapd):
    settings = parse_ldap_settings({
        ":host": "ldap.example.com", ":base": "ou=users,dc=example,dc=com", ":user_object": "uid",
        ":encryption": {":method": ":simple_tls", ":tls_options": {":ca_file": str(slapd.ca_file)}},
    })
    assert (settings.encryption, settings.port, settings.ca_file) == ("simple_tls", 636, str(slapd.ca_file))
    assert settings.bases == ("ou=users,dc=example,dc=com",) and settings.user_objects == ("uid",)
    assert parse_ldap_settings({"host": "h", "base": "dc=x", "encryption": ":plain"}).port == 389
    assert parse_ldap_settings({"host": "h", "base": "dc=x"}).user_objects == ("uid",)


def test_factory(slapd, caplog):
    assert build_authenticator(None, None) is None
    with caplog.at_level(logging.WARNING):
        dummy = build_authenticator(parse("auth: {provider: dummy}\n").auth, None)
    assert isinstance(dummy, DummyAuthenticator)
    assert "development only" in caplog.text
    ldap = build_authenticator(parse(yaml.safe_dump({"auth": {"provider": "ldap", "ldap": slapd.ldap_config()}})).auth,
                               None)
    assert isinstance(ldap, LdapAuthenticator)
    assert ldap.authenticate("alice", slapd.password("alice"))
    # A missing LDAP block is refused when the config loads, not at the first login.
    with pytest.raises(ConfigError, match=r"auth\.ldap: is required when auth\.provider is ldap"):
        parse("auth: {provider: ldap}\n")
    with pytest.raises(ConfigError, match=r"auth\.provider: must be one of ldap, dummy"):
        parse("auth: {provider: kerberos}\n")


def test_dummy_follows_vmpooler():
    dummy = DummyAuthenticator()
    assert dummy.authenticate("alice", "anything") is True
    assert dummy.authenticate("alice", "alice") is False
    assert dummy.authenticate("alice", "") is False
    assert dummy.authenticate("", "x") is False


def test_a_password_without_a_utf8_form_is_refused_without_asking_the_server(slapd, closed_port):
    auth = with_service_account(slapd, port=closed_port)  # nothing listens: no AuthUnavailable
    assert auth.authenticate("alice", "pass\udc80word") is False
    assert auth.authenticate("ali\udc80ce", "x") is False


# Letters and look-alikes that directories map in different ways: case (old and new to Unicode),
# compatibility characters OpenLDAP maps and some it does not, canonical singletons, spaces.
LOOK_ALIKE_LETTERS = (
    "a", "A", "c", "C", "1", "s", "\u00df", "\u1e9e", "\u0130", "i", "\u03a3", "\u03c3", "\u03c2",
    "\u2102", "\u1d9c", "\u1d43", "\u24b6", "\u24d0", "\U0001d41a", "\U0001d622", "\U0001d7cf",
    "\uff41", "\uff21", "\uff43", "\u212a", "k", "\ufad2", "\u3b9d", "\u2c6f", "\u0250", "\u2c6d",
    "\u0251", "\u30bf", "\uff80", "\u00e9", "e\u0301", "\u01c4", "\u01c6", "d\u017e", " ", "  ",
    "\u3000", "\u00a0",
    # RFC 4518 maps these to nothing (or to a space); OpenLDAP keeps them, and so does vmpool.
    "\u200b", "\u00ad", "\u200c", "\u200d", "\u2060", "\ufeff", "\u034f", "\u180b", "\ufe00", "\ufffc",
    "\u1806", "\u2028", "\u2029", "\u200e", "\u202e", "\u0085", "\u0080", "\u009f", "\ufe0f", "\U000e0001",
)


def test_vmpool_merges_two_spellings_exactly_when_the_directory_does():
    """For every name that logs in (acceptable_credentials) and every entry, the directory matches
    the name to the entry exactly when their canonical names are equal: never one person another
    (a merge), never one person two vmpool users (a split). Merges were account takeovers
    (ali\u2102e, ali\u1d9ce as alice); splits multiplied one user's limits (john  doe)."""
    from ldap3 import Connection, Server
    from ldap3.utils.conv import escape_filter_chars

    from chalicelib.auth.base import acceptable_credentials, canonical_user

    names = sorted({f"q{letter}z" for letter in LOOK_ALIKE_LETTERS})
    entries = "\n".join(f"dn: cn=entry{index},{USERS_OU}\nobjectClass: inetOrgPerson\ncn: entry{index}\nsn: x\n"
                        f"uid:: {base64.b64encode(name.encode()).decode()}\n" for index, name in enumerate(names))
    accepted = [name for name in names if acceptable_credentials(name, "x")]
    assert "qaz" in accepted
    with SlapdServer(extra_ldif=entries) as directory:
        connection = Connection(Server(directory.url), directory.service_dn, directory.service_password,
                                auto_bind=True)
        for typed in accepted:
            connection.search(USERS_OU, f"(uid={escape_filter_chars(typed)})", attributes=["cn"])
            matched = {names[int(str(entry.cn).removeprefix("entry"))] for entry in connection.entries}
            same = {name for name in accepted if canonical_user(name) == canonical_user(typed)}
            assert matched & set(accepted) == same, typed


@pytest.mark.parametrize("mode", MODES)
def test_the_login_name_is_the_one_the_directory_gives_the_entry(slapd, mode):
    """``login_name`` is the entry's own name (its first user_object), not the spelling or the
    other name typed: ALICE is alice, and with a service account alice's cn ('alice cn') is alice
    too. bob's entry (``cn=bob``) holds uid bob."""
    auth = MODES[mode](slapd)
    assert auth.login_name("ALICE", slapd.password("alice")) == "alice"
    assert auth.login_name("Bob", slapd.password("bob")) == "bob"
    assert auth.login_name("alice", "wrong") is None
    if mode == "service":
        assert auth.login_name("alice cn", slapd.password("alice")) == "alice"


def test_an_entry_with_several_names_is_named_by_the_one_typed_else_the_least():
    """An entry with two uids is named by the one typed (each was its user before: no token
    changes hands), and by the least when logging in by another attribute."""
    entry = (f"dn: uid=zoe,{USERS_OU}\nobjectClass: inetOrgPerson\nuid: zoe\nuid: Anna\ncn: zoe cn\n"
             "sn: z\nuserPassword: zoe-Pass-9\n")
    with SlapdServer(extra_ldif=entry) as directory:
        auth = with_service_account(directory)
        assert [auth.login_name(name, "zoe-Pass-9") for name in ("zoe", "ANNA", "zoe cn")] == ["zoe", "Anna", "Anna"]


def test_an_active_directory_objectguid_names_the_entry_as_ad_shows_it():
    """Active Directory sends objectGUID as 16 bytes, little-endian in its first three fields: the
    id saved with a token is the GUID AD's tools show, so two entries of one name differ."""
    from chalicelib.auth.ldap import entry_id

    guid = uuid.UUID("5f8b2c3a-1d4e-4a6b-9c7d-0e1f2a3b4c5d")
    assert entry_id({"objectGUID": [guid.bytes_le]}) == f"objectGUID:{guid}"
    assert entry_id({"entryUUID": [str(guid).encode()]}) == f"entryUUID:{guid}"
    assert entry_id({"uid": ["alice"]}) is None
    assert entry_id({"entryUUID": [b"not-a-uuid"]}) is None


def test_389_and_freeipa_entry_ids_name_the_entry_where_entryuuid_is_not_shown():
    """389 Directory Server without its entryUUID plugin shows nsUniqueId (four groups of eight
    hex digits), FreeIPA ipaUniqueID (a UUID): a name given to a newcomer there is told apart too.
    Before, such an entry had no id (tokens and VMs went by the name). entryUUID and objectGUID
    still come first, so an entry's id does not change where they are shown."""
    from chalicelib.auth.ldap import ENTRY_ID_ATTRIBUTES, entry_id

    assert entry_id({"nsUniqueId": [b"66446001-1dd211b2-8a9ed8d2-2ba0e2d3"]}) == (
        "nsUniqueId:66446001-1dd2-11b2-8a9e-d8d22ba0e2d3")
    ipa = uuid.UUID("0b8f3e2a-5c1d-11ee-9a4b-525400123456")
    assert entry_id({"ipaUniqueID": [str(ipa).encode()], "nsUniqueId": [b"66446001-1dd211b2-8a9ed8d2-2ba0e2d3"]}) == (
        "nsUniqueId:66446001-1dd2-11b2-8a9e-d8d22ba0e2d3")
    assert entry_id({"ipaUniqueID": [str(ipa).encode()]}) == f"ipaUniqueID:{ipa}"
    assert entry_id({"entryUUID": [str(ipa).encode()], "nsUniqueId": [b"66446001-1dd211b2-8a9ed8d2-2ba0e2d3"]}) == (
        f"entryUUID:{ipa}")
    assert ENTRY_ID_ATTRIBUTES[:2] == ("entryUUID", "objectGUID")
