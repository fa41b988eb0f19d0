"""The ``:auth: :ldap:`` settings: a model validated once when the config loads
(chalicelib/config.py) and handed to ``LdapAuthenticator`` as it is.

The value types are the config's (chalicelib/config_fields.py), so an LDAP key reads and fails
like any other key (``auth.ldap.port: must be an integer <= 65535, got 70000``); the checks that
are LDAP's own (a bare host name, DNs, attribute names, a CA file that exists) are here. vmpooler's
spellings are understood: Ruby-symbol keys and values (``:encryption: :start_tls``) and its
``encryption: {method:, tls_options: {ca_file:, verify_mode:}}`` form. Importing this module loads
no ldap3: DNs are checked with ldap3's parser only when there are DNs to check.

Every problem is reported at once with its key path; unknown keys are logged and ignored, so a
vmpooler config keeps working. Secrets are never put into a message.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping, Optional

from chalicelib.config_fields import (
    Alias,
    BlockReader,
    Bool,
    SecretValue,
    SettingsModel,
    bounded,
    checked_by,
    invalid,
    number,
    one_of,
    secret,
    show,
)
from chalicelib.logs import module_logger

from .base import AuthConfigError
from .directory_budget import REQUEST_DIRECTORY_SECONDS
from .secrets import Secret, SecretReference

logger = module_logger(__name__)

ENCRYPTIONS = ("plain", "simple_tls", "start_tls")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}\Z")


def _valid_dn(value: str) -> bool:
    from ldap3.utils.dn import parse_dn  # ldap3 costs ~80 ms to import: only with an LDAP config

    try:
        parse_dn(value)
    except Exception:  # noqa: BLE001 - parse_dn raises more than LDAPInvalidDnError on odd text
        return False
    return True


def _names(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        invalid(f"must be {what} or a list of them")
    return tuple(item.strip() for item in items)


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        invalid("is required (a host name or IP address)")
    host = value.strip()
    if "://" in host or "/" in host or any(char.isspace() for char in host):
        invalid(f"must be a bare host name (use port and encryption), got {show(value)}")
    return host


MAX_BASES = 10
MAX_USER_OBJECTS = 5
"""A login tries every ``user_object`` under every ``base`` (a bind or a search each): at most 50
directory round trips, whatever the config's format. Before, any number loaded: 100 bases of 5
user_objects made each login 500 binds, 1.3 s against a slapd on the same machine (0.08 s at 10
bases); at 40 ms a round trip, the login's whole 20 s deadline (a 503)."""


def _at_most(items: tuple[str, ...], most: int, what: str) -> tuple[str, ...]:
    if len(items) > most:
        invalid(f"at most {most} {what} (a login tries each), got {len(items):,}")
    return items


def _dns(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        _at_most(tuple(value), MAX_BASES, "bases")  # counted before each is parsed as a DN
    bases = _names(value, "a DN")
    for base in bases:
        if not _valid_dn(base):
            invalid(f"not a valid DN: {show(base)}")
    return bases


def _dn(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or not _valid_dn(value):
        invalid("is required (a valid DN)")
    return value.strip()


def _attributes(value: Any) -> tuple[str, ...]:
    attributes = _at_most(_names(value, "an attribute name"), MAX_USER_OBJECTS, "user_objects")
    for attribute in attributes:
        if not ATTRIBUTE_NAME.match(attribute):
            invalid(f"not an attribute name: {show(attribute)}")
    return attributes


def _file_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        invalid("must be a file path")
    return value


def _ca_file(value: Any) -> str:
    _file_path(value)
    if not os.path.isfile(value):
        invalid(f"no such file: {show(value)}")
    return value


def _pem(value: Any) -> str:
    if not isinstance(value, str) or "BEGIN CERTIFICATE" not in value:
        invalid("must be PEM text (-----BEGIN CERTIFICATE-----...)")
    return value


def _seconds(value: Any) -> float:
    seconds: float = number()(value)
    if seconds <= 0:
        invalid(f"must be a number of seconds > 0, got {show(value)}")
    return seconds


def _password(value: Any) -> Secret | SecretReference:
    if value == "":
        invalid("is required")
    return secret(value)


Seconds = Annotated[float, checked_by(_seconds)]


@dataclass(frozen=True, kw_only=True)
class ServiceAccount(SettingsModel):
    """``service_account_hash``: bind as this entry to search for users."""

    user_dn: Annotated[str, checked_by(_dn)]
    password: Annotated[SecretValue, checked_by(_password)] = field(repr=False)
    """A secret string or a secret reference (chalicelib.auth.secrets); resolved on each use."""


@dataclass(frozen=True, kw_only=True)
class LdapSettings(SettingsModel):
    """The validated ``:auth: :ldap:`` block."""

    host: Annotated[str, checked_by(_host)]
    port: Annotated[int, bounded(1, 65535)] = 0
    """0 when not written: 636 with simple_tls, else 389 (set after validation)."""
    bases: Annotated[tuple[str, ...], checked_by(_dns), Alias("base")]
    user_objects: Annotated[tuple[str, ...], checked_by(_attributes), Alias("user_object")] = ("uid",)
    encryption: Annotated[str, one_of(*ENCRYPTIONS)] = "start_tls"
    ca_file: Optional[Annotated[str, checked_by(_ca_file, trusted=_file_path)]] = None
    """The file is looked for where the config is validated; a function reading its canonical
    form (which carries the file's certificates in ca_data, config.canonical) holds the path alone."""
    ca_data: Optional[Annotated[str, checked_by(_pem)]] = None
    verify_certificates: Bool = True
    connect_timeout: Seconds = 5.0
    receive_timeout: Seconds = 10.0
    login_timeout: Seconds = 20.0
    """The most one login (or one user or group check) may take in all, every answer included:
    under the API Lambda's 29 s."""
    service_account_hash: Optional[ServiceAccount] = None

    def __post_init__(self) -> None:
        if self.port == 0:
            object.__setattr__(self, "port", 636 if self.encryption == "simple_tls" else 389)

    @property
    def service_account_dn(self) -> str | None:
        return self.service_account_hash.user_dn if self.service_account_hash else None

    @property
    def service_account_password(self) -> Secret | SecretReference | None:
        return self.service_account_hash.password if self.service_account_hash else None

    @property
    def uses_service_account(self) -> bool:
        return self.service_account_hash is not None


def _bare(value: Any) -> Any:
    """vmpooler's Ruby-flavoured spelling made plain: ``:key`` keys at every level."""
    if isinstance(value, Mapping):
        return {str(key).lstrip(":"): _bare(item) for key, item in value.items()}
    return value


def _vmpooler_encryption(raw: dict[str, Any], reader: BlockReader, path: str) -> dict[str, Any]:
    """vmpooler's ``encryption: {method: :start_tls, tls_options: {ca_file:, verify_mode:}}`` as
    our flat keys (keys written at the top level win)."""
    encryption = raw.get("encryption")
    if not isinstance(encryption, dict):
        return raw
    flat = {**raw, "encryption": encryption.get("method")}
    tls_options = encryption.get("tls_options") or {}
    if not isinstance(tls_options, dict):
        reader.problems.append(f"{path}.encryption.tls_options: must be a mapping")
        return flat
    if "ca_file" in tls_options and raw.get("ca_file") is None:
        flat["ca_file"] = tls_options["ca_file"]
    if "verify_mode" in tls_options and raw.get("verify_certificates") is None:
        # Ruby OpenSSL: verify_mode 0 = VERIFY_NONE.
        flat["verify_certificates"] = str(tls_options["verify_mode"]).strip() not in (
            "0", "VERIFY_NONE", "OpenSSL::SSL::VERIFY_NONE")
    return flat


def parse_ldap_settings(raw: Mapping[str, Any] | None, path: str = "auth.ldap") -> LdapSettings:
    """Validate the raw ``ldap`` block. Raises AuthConfigError listing every problem.

    Unknown keys are logged and ignored (as config.py does), so a vmpooler config keeps working.
    Secrets are never put into a message."""
    if raw is None:
        raise AuthConfigError([f"{path}: is required when auth.provider is ldap"])
    if not isinstance(raw, Mapping):
        raise AuthConfigError([f"{path}: must be a mapping"])
    reader = BlockReader()
    block = _vmpooler_encryption(_bare(raw), reader, path)
    service_account = block.get("service_account_hash")
    if isinstance(service_account, dict):
        # Checked on its own for its key paths and unknown keys; LdapSettings then holds it.
        account = reader.model(service_account, ServiceAccount, f"{path}.service_account_hash")
        block["service_account_hash"] = account
        if account is None:
            block.pop("service_account_hash")
    elif service_account is not None:
        reader.problems.append(f"{path}.service_account_hash: must be a mapping with user_dn and password")
        block.pop("service_account_hash")
    settings = reader.model(block, LdapSettings, path)
    for warning in reader.warnings:
        logger.warning("%s", warning)
    if settings is not None and settings.connect_timeout + settings.login_timeout > REQUEST_DIRECTORY_SECONDS:
        reader.problems.append(
            f"{path}.login_timeout: connect_timeout ({settings.connect_timeout:g} s) + login_timeout "
            f"({settings.login_timeout:g} s) is over {REQUEST_DIRECTORY_SECONDS:g} s, the most one request may "
            "spend on the directory (the local front's watchdog ends a request's loop at 30 s, the API Lambda "
            "is killed at 29 s); lower either")
    if reader.problems or settings is None:
        raise AuthConfigError(reader.problems)
    if settings.encryption == "plain":
        logger.warning(
            "%s.encryption is plain: passwords cross the network in clear text; use start_tls or simple_tls",
            path,
        )
    elif not settings.verify_certificates:
        logger.warning("%s.verify_certificates is false: the LDAP server is not authenticated", path)
    return settings
