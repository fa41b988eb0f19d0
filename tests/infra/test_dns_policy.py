"""A stage whose config manages DNS records in Route 53 lets its reconcile role (and only it)
change records in those hosted zones, and nowhere else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chalicelib.config import ConfigError
from infra import sync_config
from infra.sync_config import STAGES

CONFIG = """\
dns_configs:
  aws: {dns_class: route53, domain: vms.example.com, hosted_zone_id: /hostedzone/Z111}
  other: {dns_class: route53, domain: b.example.com, hosted_zone_id: Z222}
  dhcp: {dns_class: dynamic-dns, domain: c.example.com}
pools:
  - {name: p, size: 1, provider: dummy, dns_plugin: aws}
"""


def route53_statements(policy: dict) -> list[dict]:
    return [s for s in policy["Statement"] if any(a.startswith("route53:") for a in s["Action"])]


def test_route53_zones_of_the_config_are_granted_to_the_reconcile_role(tmp_path: Path) -> None:
    config = tmp_path / "vmpool.yaml"
    config.write_text(CONFIG)
    stage = dataclasses.replace(STAGES["dev"], config_file=str(config))
    [statement] = route53_statements(sync_config.policy(stage, "reconcile"))
    assert statement["Action"] == ["route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"]
    assert statement["Resource"] == ["arn:aws:route53:::hostedzone/Z111", "arn:aws:route53:::hostedzone/Z222"]
    for role in ("api", "tick"):
        assert route53_statements(sync_config.policy(stage, role)) == []
    assert route53_statements(sync_config.policy(STAGES["dev"], "reconcile")) == []  # no route53 entry


def _stage_with_zones(tmp_path: Path, *zones: str) -> sync_config.Stage:
    entries = "\n".join(f"  z{n}: {{dns_class: route53, domain: z{n}.example.com, hosted_zone_id: '{zone}'}}"
                        for n, zone in enumerate(zones))
    config = tmp_path / "vmpool.yaml"
    config.write_text(f"dns_configs:\n{entries}\npools:\n  - {{name: p, size: 1, provider: dummy}}\n")
    return dataclasses.replace(STAGES["dev"], config_file=str(config))


@pytest.mark.parametrize("zone", ["*", "Z1*", "Z1/../*", "z111 ", ""])
def test_a_hosted_zone_id_that_is_not_one_is_refused_by_the_config(tmp_path: Path, zone: str) -> None:
    """The zone goes into the reconcile role's IAM policy as it is written: ``*`` granted every
    zone of the account (a wildcard no test looked for: it is in a resource, not an action)."""
    stage = _stage_with_zones(tmp_path, zone)
    with pytest.raises(ConfigError, match="hosted_zone_id"):
        sync_config.policy(stage, "reconcile")


def test_a_policy_over_iams_inline_limit_is_refused_when_the_files_are_written(tmp_path: Path) -> None:
    """200 route53 entries made a reconcile policy of about 11,600 characters: IAM takes 10,240
    per role, so the deploy failed in CloudFormation, minutes in, and rolled back."""
    stage = _stage_with_zones(tmp_path, *(f"Z{n:020d}" for n in range(200)))
    with pytest.raises(sync_config.PolicyTooLarge, match="10240"):
        sync_config.policy(stage, "reconcile")
    assert len(json.dumps(sync_config.policy(STAGES["prod"], "reconcile"), separators=(",", ":"))) < 10_240


def test_packaging_a_config_naming_a_zone_the_stage_does_not_grant_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``VMPOOL_CONFIG_FILE=my.yaml make package`` packages my.yaml, but the stage's IAM policy
    grants the zones of its own config file: a zone only my.yaml names would make every pass's
    DNS change fail (AccessDenied), so infra/package.sh asks this first and stops."""
    config = tmp_path / "vmpool.yaml"
    config.write_text(CONFIG)
    assert sync_config.main(["--granted", "dev", str(config)]) == 1
    error = capsys.readouterr().err
    assert "Z111, Z222" in error and STAGES["dev"].config_file in error
    config.write_text(CONFIG.replace("dns_class: route53", "dns_class: dynamic-dns"))
    assert sync_config.main(["--granted", "dev", str(config)]) == 0


def test_packaging_a_config_naming_secrets_the_stage_may_not_read_warns_of_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """infra/package.sh asks the same of every packaged config (the stage's own file too): a
    provider password in ``vmpool/vcenter`` (vmpool.yaml.example's name before) was packaged
    without a word, and every reconcile pass of its pools failed on AccessDenied until a push.
    A warning, not a refusal: both stages package chalicelib/vmpool.yaml, whose secrets may be
    one stage's only (make config-push refuses them)."""
    config = tmp_path / "vmpool.yaml"
    config.write_text(":providers:\n  :vsphere: {server: vc, username: u, password: {secret: vmpool/vcenter}}\n"
                      ":pools:\n  - {name: p, size: 1, provider: vsphere, template: t}\n")
    assert sync_config.main(["--granted", "dev", str(config)]) == 0
    error = capsys.readouterr().err
    assert "warning" in error and "providers.vsphere.password: Secrets Manager secret 'vmpool/vcenter'" in error
    config.write_text(config.read_text().replace("vmpool/vcenter", "vmpool/dev/vsphere"))
    assert sync_config.main(["--granted", "dev", str(config)]) == 0
    assert capsys.readouterr().err == ""
    assert sync_config.main(["--granted", "prod", str(config)]) == 0
    assert "vmpool/dev/vsphere" in capsys.readouterr().err
    assert sync_config.main(["--granted", "prod", str(sync_config.ROOT / "vmpool.yaml.example")]) == 0
    assert capsys.readouterr().err == ""
