"""The ``:auth: :ldap:`` settings, validated once when the config loads (chalicelib/config.py)
and handed to ``LdapAuthenticator`` as they are. Importing this module loads no ldap3: DNs are
checked with ldap3's parser only when there are DNs to check (an LDAP config), so a service
without LDAP never imports it.

Every problem is reported at once with its key path; unknown keys are logged and ignored, so a
vmpooler config keeps working. Secrets are never put into a message."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import SecretStr

from .base import AuthConfigError
from .secrets import SecretConfigError, SecretReference, check_secret_value, parse_reference

logger = logging.getLogger(__name__)

ENCRYPTIONS = ("plain", "simple_tls", "start_tls")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")

KNOWN_KEYS = (
    "host", "port", "base", "user_object", "encryption", "service_account_hash", "ca_file",
    "ca_data", "verify_certificates", "connect_timeout", "receive_timeout",
)


@dataclass(frozen=True)
class LdapSettings:
    """The validated ``:auth: :ldap:`` mapping."""

    host: str
    port: int
    bases: tuple[str, ...]
    user_objects: tuple[str, ...]
    encryption: str = "start_tls"
    ca_file: str | None = None
    ca_data: str | None = None
    verify_certificates: bool = True
    connect_timeout: float = 5.0
    receive_timeout: float = 10.0
    service_account_dn: str | None = None
    service_account_password: SecretStr | SecretReference | None = field(default=None, repr=False)
    """A secret string or a secret reference (see chalicelib.auth.secrets); resolved on use."""

    @property
    def uses_service_account(self) -> bool:
        return self.service_account_dn is not None


def _strip_symbol(value: Any) -> Any:
    # vmpooler configs are Ruby-flavoured: ``encryption: :start_tls``.
    return value.lstrip(":") if isinstance(value, str) else value


def _string_list(value: Any) -> list[str] | None:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        return None
    return [item.strip() for item in items]


def _valid_dn(value: str) -> bool:
    from ldap3.utils.dn import parse_dn  # ldap3 costs ~80 ms to import: only with an LDAP config

    try:
        parse_dn(value)
    except Exception:  # noqa: BLE001 - parse_dn raises more than LDAPInvalidDnError on odd text
        return False
    return True


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    return None


def parse_ldap_settings(raw: Mapping[str, Any] | None, path: str = "auth.ldap") -> LdapSettings:
    """Validate the raw ``ldap`` mapping. Raises AuthConfigError listing every problem.

    Unknown keys are logged and ignored (as config.py does), so a vmpooler config keeps working.
    Secrets are never put into a message."""
    problems: list[str] = []
    if raw is None:
        raise AuthConfigError([f"{path}: is required when auth.provider is ldap"])
    if not isinstance(raw, Mapping):
        raise AuthConfigError([f"{path}: must be a mapping"])
    raw = {str(key).lstrip(":"): value for key, value in raw.items()}
    for key in raw:
        if key not in KNOWN_KEYS:
            logger.warning("%s.%s: unknown key, ignored", path, key)

    host = raw.get("host")
    if not isinstance(host, str) or not host.strip():
        problems.append(f"{path}.host: is required (a host name or IP address)")
        host = ""
    elif "://" in host or "/" in host or any(char.isspace() for char in host.strip()):
        problems.append(f"{path}.host: must be a bare host name (use port and encryption), got {host!r}")
    host = host.strip() if isinstance(host, str) else ""

    encryption_raw = raw.get("encryption")
    tls_options: Mapping[str, Any] = {}
    if isinstance(encryption_raw, Mapping):  # vmpooler: {method: :start_tls, tls_options: {...}}
        enc = {str(k).lstrip(":"): v for k, v in encryption_raw.items()}
        tls_options = enc.get("tls_options") or {}
        if not isinstance(tls_options, Mapping):
            problems.append(f"{path}.encryption.tls_options: must be a mapping")
            tls_options = {}
        tls_options = {str(k).lstrip(":"): v for k, v in tls_options.items()}
        encryption_raw = enc.get("method")
    encryption = _strip_symbol(encryption_raw) if encryption_raw is not None else "start_tls"
    if encryption not in ENCRYPTIONS:
        problems.append(f"{path}.encryption: must be one of {', '.join(ENCRYPTIONS)}, got {encryption_raw!r}")
        encryption = "start_tls"

    port_raw = raw.get("port")
    if port_raw is None:
        port = 636 if encryption == "simple_tls" else 389
    else:
        parsed: int | None = None
        if isinstance(port_raw, int) and not isinstance(port_raw, bool):
            parsed = port_raw
        elif isinstance(port_raw, str) and port_raw.strip().isdigit():
            parsed = int(port_raw)
        if parsed is None or not 1 <= parsed <= 65535:
            problems.append(f"{path}.port: must be an integer between 1 and 65535, got {port_raw!r}")
            parsed = 389
        port = parsed

    bases = _string_list(raw.get("base"))
    if bases is None:
        problems.append(f"{path}.base: is required (a DN or a list of DNs)")
        bases = []
    for base in bases:
        if not _valid_dn(base):
            problems.append(f"{path}.base: not a valid DN: {base!r}")

    user_objects_raw = raw.get("user_object", "uid")
    user_objects = _string_list(user_objects_raw)
    if user_objects is None:
        problems.append(f"{path}.user_object: must be an attribute name or a list of them")
        user_objects = []
    for attribute in user_objects:
        if not ATTRIBUTE_NAME.match(attribute):
            problems.append(f"{path}.user_object: not an attribute name: {attribute!r}")

    ca_file = raw.get("ca_file", tls_options.get("ca_file"))
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file:
            problems.append(f"{path}.ca_file: must be a file path")
            ca_file = None
        elif not os.path.isfile(ca_file):
            problems.append(f"{path}.ca_file: no such file: {ca_file!r}")
    ca_data = raw.get("ca_data")
    if ca_data is not None and (not isinstance(ca_data, str) or "BEGIN CERTIFICATE" not in ca_data):
        problems.append(f"{path}.ca_data: must be PEM text (-----BEGIN CERTIFICATE-----...)")
        ca_data = None

    verify_raw = raw.get("verify_certificates", True)
    if "verify_mode" in tls_options and "verify_certificates" not in raw:
        # Ruby OpenSSL: verify_mode 0 = VERIFY_NONE.
        verify_raw = str(tls_options["verify_mode"]).strip() not in ("0", "VERIFY_NONE", "OpenSSL::SSL::VERIFY_NONE")
    verify = _boolean(verify_raw)
    if verify is None:
        problems.append(f"{path}.verify_certificates: must be true or false, got {verify_raw!r}")
        verify = True

    timeouts: dict[str, float] = {}
    for key, default in (("connect_timeout", 5.0), ("receive_timeout", 10.0)):
        value = raw.get(key, default)
        number = _positive_number(value)
        if number is None:
            problems.append(f"{path}.{key}: must be a number of seconds > 0, got {value!r}")
            number = default
        timeouts[key] = number

    service_dn = None
    service_password = None
    service = raw.get("service_account_hash")
    if service is not None:
        if not isinstance(service, Mapping):
            problems.append(f"{path}.service_account_hash: must be a mapping with user_dn and password")
        else:
            service = {str(k).lstrip(":"): v for k, v in service.items()}
            service_dn = service.get("user_dn")
            if not isinstance(service_dn, str) or not service_dn.strip() or not _valid_dn(service_dn):
                problems.append(f"{path}.service_account_hash.user_dn: is required (a valid DN)")
                service_dn = None
            service_password = service.get("password")
            if service_password is None or service_password == "":
                problems.append(f"{path}.service_account_hash.password: is required")
            else:
                try:
                    check_secret_value(service_password)
                except SecretConfigError as error:
                    problems.append(f"{path}.service_account_hash.password: {error}")
            for key in service:
                if key not in ("user_dn", "password"):
                    logger.warning("%s.service_account_hash.%s: unknown key, ignored", path, key)

    if problems:
        raise AuthConfigError(problems)

    settings = LdapSettings(
        host=host,
        port=port,
        bases=tuple(bases),
        user_objects=tuple(user_objects),
        encryption=encryption,
        ca_file=ca_file,
        ca_data=ca_data,
        verify_certificates=verify,
        connect_timeout=timeouts["connect_timeout"],
        receive_timeout=timeouts["receive_timeout"],
        service_account_dn=service_dn.strip() if service_dn else None,
        service_account_password=_secret(service_password),
    )
    if encryption == "plain":
        logger.warning(
            "%s.encryption is plain: passwords cross the network in clear text; use start_tls or simple_tls",
            path,
        )
    elif not verify:
        logger.warning("%s.verify_certificates is false: the LDAP server is not authenticated", path)
    return settings




def _secret(value: Any) -> SecretStr | SecretReference | None:
    """A checked password value as the settings keep it: never printed, references unresolved."""
    if value is None or isinstance(value, (SecretStr, SecretReference)):
        return value
    reference = parse_reference(value)
    return reference if reference is not None else SecretStr(str(value))
