"""A CA file named in the config reaches the Lambdas: packaging and ``make config-push`` write the
config as canonical JSON, which carries the file's PEM text, not its path on the machine that
validated it (the functions have no such file).

Before, the path travelled: ``make run`` trusted the CA, while in AWS every LDAP login with a
``ca_file`` answered 503 (ldap3 could not find the file) and every pass of a vSphere provider with
a ``ca_bundle`` failed (``cannot use ca_bundle /etc/vmpool/ca.pem: No such file or directory``):
its pools never filled. Each test validates a config where the file is, makes it canonical as
packaging does, removes the file, and uses the config built from that text as a Lambda does."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

from chalicelib.clock import SystemClock
from chalicelib.config import Config, build, canonical_json, from_text
from chalicelib.providers.vsphere import connection as vsphere_connection
from chalicelib.providers.vsphere.provider import VSphereProvider
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import CLIENT_IP, document
from tests.harness import HarnessFactory
from tests.vsphere.vcsim import VcsimServer, vcsim_document


def shipped(document_: dict[str, Any], *files: Path) -> Config:
    """The config as a Lambda builds it: validated where ``files`` are, written as canonical JSON
    (packaging, config-push), then read where they are not."""
    text = canonical_json(build(document_))
    for file in files:
        file.unlink()
    return from_text(text, "vmpool.json")


def test_an_ldap_ca_file_reaches_the_lambda(slapd: SlapdServer, make_harness: HarnessFactory, tmp_path: Path) -> None:
    ca_file = tmp_path / "corp-ca.pem"
    shutil.copy(slapd.ca_file, ca_file)
    ldap = slapd.ldap_config(ca_file=str(ca_file))
    ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    config = shipped(document({"provider": "ldap", "ldap": ldap}), ca_file)

    api = make_harness(config, client_ip=CLIENT_IP)
    basic = base64.b64encode(f"alice:{slapd.password('alice')}".encode()).decode()
    answer = api.post("/api/v3/token", headers={"Authorization": f"Basic {basic}"})
    assert answer.status == 200, answer.raw
    assert answer.json["ok"] is True and len(answer.json["token"]) == 32


def test_a_vsphere_ca_bundle_reaches_the_lambda(vcsim: VcsimServer, tmp_path: Path) -> None:
    bundle = tmp_path / "vcenter-ca.pem"
    shutil.copy(vcsim.cert_path, bundle)
    config = shipped(vcsim_document(vcsim, [{"name": "carried-ca", "size": 1, "folder": "carried-ca"}],
                                    provider={"ca_bundle": str(bundle)}), bundle)

    provider = VSphereProvider(config.providers["vsphere"], config.service, SystemClock())
    vsphere_connection.drop(provider.endpoint)  # a connection of its own, verified with the carried CA
    assert provider.list_vms(config.pools[0]) == []
    assert str(bundle) not in canonical_json(config)


def test_an_ldap_ca_file_missing_in_the_lambda_is_an_outage_not_a_500(slapd: SlapdServer, make_harness: HarnessFactory,
                                                                      tmp_path: Path) -> None:
    """A canonical config that still names a file the function lacks (pushed before the file's
    text travelled with it): logins answer 503, as any authentication outage, not 500."""
    ca_file = tmp_path / "corp-ca.pem"
    shutil.copy(slapd.ca_file, ca_file)
    validated = build(document({"provider": "ldap", "ldap": slapd.ldap_config(ca_file=str(ca_file))}))
    ca_file.unlink()
    config = from_text(canonical_json(validated), "vmpool.json")
    assert config.auth is not None and config.auth.ldap is not None and config.auth.ldap.ca_file == str(ca_file)

    api = make_harness(config, client_ip=CLIENT_IP)
    basic = base64.b64encode(f"alice:{slapd.password('alice')}".encode()).decode()
    answer = api.post("/api/v3/token", headers={"Authorization": f"Basic {basic}"})
    assert answer.status == 503, answer.raw
