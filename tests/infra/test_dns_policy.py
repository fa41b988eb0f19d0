"""A stage whose config manages DNS records in Route 53 lets its reconcile role (and only it)
change records in those hosted zones, and nowhere else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
