"""A stage whose config manages DNS records in Route 53 lets its reconcile role (and only it)
change records in those hosted zones, and nowhere else."""

from __future__ import annotations

import dataclasses
import json
import re
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


LONGEST_REAL_KEY = "arn:aws:kms:ap-southeast-2:123456789012:key/mrk-0123456789abcdef0123456789abcdef"
"""A multi-region key of the longest region name: as long as a real key ARN gets."""


def _kms_policy_as_iam_stores_it(keys: list[str], region: str) -> str:
    """The full stack's ``SecretsKmsDecryptPolicy`` document with its parameter and region
    resolved, as IAM counts it (no whitespace): one more inline policy of every role."""
    from infra import template

    text = json.dumps(template.secrets_kms_policy()["Properties"]["PolicyDocument"], separators=(",", ":"))
    text = re.sub(r'\{"Fn::Sub":("[^"]*")\}', r"\1", text).replace("${AWS::Region}", region)
    text = text.replace("${AWS::URLSuffix}", sync_config.partition_of_region(region).url_suffix)
    return text.replace('{"Ref":"SecretsKmsKeyArns"}', json.dumps(keys, separators=(",", ":")))


def _largest_accepted(tmp_path: Path, low: int, high: int, kms_keys: list[str] | None = None) -> int:
    """The most route53 zones (20-character IDs, as Route 53 makes them) the reconcile role's
    policy is written with (``kms_keys``: the ``chalice deploy`` path's)."""
    while low < high:
        middle = (low + high + 1) // 2
        try:
            sync_config.policy(_stage_with_zones(tmp_path, *(f"Z{n:020d}" for n in range(middle))), "reconcile",
                               kms_keys)
            low = middle
        except sync_config.PolicyTooLarge:
            high = middle - 1
    return low


def test_a_policy_keeps_room_for_the_secrets_kms_statement_at_iams_real_limit(tmp_path: Path) -> None:
    """IAM takes 10,240 characters of inline policy per role, the KMS policy the full stack
    attaches to every role (``SecretsKmsKeyArns``) counted. Before, the check left no room for it:
    a reconcile policy of 10,200 characters (about 170 zones) was written and packaged, and the
    deploy that named the secrets' keys failed in CloudFormation, minutes in, and rolled back."""
    zones = _largest_accepted(tmp_path, 100, 250)
    stage = _stage_with_zones(tmp_path, *(f"Z{n:020d}" for n in range(zones)))
    document = sync_config.policy(stage, "reconcile")
    own = len(json.dumps(sync_config._at_longest(stage, sync_config.stack_policy(stage, document)),
                         separators=(",", ":")))  # as the full stack's role has it, its ARNs at their longest
    kms = len(_kms_policy_as_iam_stores_it([LONGEST_REAL_KEY] * sync_config.MAX_SECRETS_KMS_KEYS, "ap-southeast-2"))
    assert own + kms <= sync_config.MAX_INLINE_POLICY_CHARACTERS, (zones, own, kms)
    one_more = tmp_path / "one-more"
    one_more.mkdir()
    with pytest.raises(sync_config.PolicyTooLarge, match="room kept for the secrets' KMS statement"):
        sync_config.policy(_stage_with_zones(one_more, *(f"Z{n:020d}" for n in range(zones + 1))), "reconcile")
    # The chalice deploy path puts the statement in the role's one policy: the keys fit there too;
    # keys of many regions (a kms:ViaService pair each) are checked as they are, and refused here.
    keys = [LONGEST_REAL_KEY.replace("0123", f"{n:04d}") for n in range(sync_config.MAX_SECRETS_KMS_KEYS)]
    (tmp_path / "chalice").mkdir()
    stage = _stage_with_zones(tmp_path / "chalice", *(f"Z{n:020d}" for n in range(
        _largest_accepted(tmp_path / "chalice", zones, 250, keys))))
    with_keys = sync_config.policy(stage, "reconcile", keys)
    assert len(json.dumps(with_keys, separators=(",", ":"))) <= sync_config.MAX_INLINE_POLICY_CHARACTERS
    with pytest.raises(sync_config.PolicyTooLarge):
        sync_config.policy(stage, "reconcile", [key.replace("ap-southeast-2", f"ap-southeast-{n}")
                                                for n, key in enumerate(keys)])


def test_more_kms_keys_than_the_policies_keep_room_for_are_refused() -> None:
    keys = [LONGEST_REAL_KEY.replace("0123", f"{n:04d}") for n in range(sync_config.MAX_SECRETS_KMS_KEYS + 1)]
    with pytest.raises(sync_config.BadKmsKey, match=f"at most {sync_config.MAX_SECRETS_KMS_KEYS}"):
        sync_config.kms_key_regions(keys)
    too_long = "arn:aws:kms:eu-west-1:123456789012:alias/" + "a" * 65
    with pytest.raises(sync_config.BadKmsKey, match="not a KMS key ARN"):
        sync_config.kms_key_regions([too_long])
    assert sync_config.kms_key_regions(keys[:-1]) == ["ap-southeast-2"]


def test_the_stack_parameter_takes_each_key_only_as_long_as_the_policies_keep_room_for() -> None:
    """CloudFormation checks each ``SecretsKmsKeyArns`` member against the parameter's pattern
    (before the change set is made): the one ``kms_key_regions`` checks."""
    from infra import template

    for infra_only in (False, True):
        parameter = template.build(STAGES["dev"], infra_only=infra_only)["Parameters"]["SecretsKmsKeyArns"]
        pattern = re.compile(parameter["AllowedPattern"])
        assert pattern.fullmatch(parameter["Default"]) and pattern.fullmatch(LONGEST_REAL_KEY)
        assert not pattern.fullmatch("arn:aws:kms:eu-west-1:123456789012:alias/" + "a" * 65)
        assert not pattern.fullmatch("my-key")
        assert str(sync_config.MAX_SECRETS_KMS_KEYS) in parameter["ConstraintDescription"]


def test_packagings_checks_load_each_config_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make package`` checks the given config (``--granted``) and writes or checks the stages'
    policy files (``--check``): each file is loaded once. A load of 2,000 pools takes a second or
    more of CPU; before, ``--granted`` loaded the given file twice and ``--check`` the stages'
    file six times (once per stage and role)."""
    from chalicelib import config as config_module

    loads: list[str] = []
    load = config_module.load

    def counted(environ: dict[str, str] | None = None) -> config_module.Config:
        loads.append(str(Path((environ or {})[config_module.CONFIG_FILE_ENV]).resolve()))
        return load(environ)

    monkeypatch.setattr(config_module, "load", counted)
    given = tmp_path / "vmpool.yaml"
    given.write_text(CONFIG.replace("route53", "dynamic-dns"))
    assert sync_config.main(["--granted", "dev", str(given)]) == 0
    own = str((sync_config.ROOT / STAGES["dev"].config_file).resolve())
    assert sorted(loads) == sorted([str(given.resolve()), own])
    loads.clear()
    sync_config.rendered_files()
    assert loads == [own]  # both stages package the same file
