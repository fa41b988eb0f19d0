"""GET /status flags a pool whose new VMs wait on their DNS records (Route 53 refusing them: moto,
IAM's AccessDenied answered by a hook). Before, /status flagged clone failures only: such a pool
showed pending VMs and looked as if it were refilling until they timed out."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from chalicelib.answer_sizes import STATUS_REASON_CHARACTERS
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker
from chalicelib.manager.dns_records import waiting_note
from tests.dns.test_dns_records import dns_of, make_dns_world
from tests.dns.test_dns_route53_calls import ACCOUNT, DOMAIN
from tests.dns.test_dns_route53_denied import DeniedNames
from tests.harness import HarnessFactory


def test_a_pool_whose_vms_wait_on_dns_is_flagged_in_status_with_why_until_they_are_published(
        make_harness: HarnessFactory, route53: tuple[Any, str]) -> None:
    _, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}, size=2)
    world.passes("dns", 1)  # the clones
    pending = sorted(world.hosts("dns", "pending"))
    assert len(pending) == 2
    denied = DeniedNames(dns_of(world).client, set(pending))  # the role may change none of them
    world.passes("dns", 1)

    entry = world.get("/api/v3/status").json["pools"]["dns"]
    assert entry["pending"] == 2 and entry["dns_waiting"] == 2
    reason = entry["dns_waiting_reason"]
    assert reason.startswith("DNS record not created: route53 create") and "AccessDenied" in reason, reason
    assert len(reason) <= STATUS_REASON_CHARACTERS and ACCOUNT not in reason and "arn:" not in reason
    assert "clone_failures" not in entry  # not a clone failure: its clones went well

    # IAM lets the role change them: published, ready, and the flag is gone with the next pass.
    denied.denied = set()
    world.passes("dns", 10)
    assert world.hosts("dns", "ready") == set(pending)
    entry = world.get("/api/v3/status").json["pools"]["dns"]
    assert "dns_waiting" not in entry and "dns_waiting_reason" not in entry


def test_the_reason_status_shows_is_one_line_cut_and_names_no_arn() -> None:
    """One line, no ARN, at most 120 characters JSON sends as one byte each: /status's widest
    answer (answer_sizes.status_answer, what a config is checked against) counts as much."""
    said = (f'DNS record not created: InvalidInput: Role arn:aws:iam::{ACCOUNT}:role/r\nmay "not" \\ \u202e\u00e9'
            + "x" * 500)
    count, shown = waiting_note({"vm-1": said, "vm-2": "another reason"})
    assert count == 2
    assert shown.startswith("DNS record not created: InvalidInput: Role (ARN withheld) may 'not' ? ??xxx")
    assert len(shown) == STATUS_REASON_CHARACTERS and shown.endswith("...")
    assert len(json.dumps(shown)) == len(shown) + 2  # nothing escaped
    assert waiting_note({}) == (0, "")


class DroppedQueue:
    """The tick's queue: what it sends is not looked at here."""

    def send(self, messages: Any, budget_seconds: float | None = None) -> None:
        return None


def config_text(dns_configs: dict[str, Any], plugin: str) -> str:
    """make_dns_world's config with these ``:dns_configs:`` entries, its pool on ``plugin``."""
    return yaml.safe_dump({
        "config": {"timeout": 10, "task_limit": 10},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": dns_configs,
        "pools": [{"name": "dns", "size": 2, "provider": "dummy", "dns_plugin": plugin}],
    })


@pytest.mark.parametrize("change", ["entry made unmanaged", "pool given another entry"])
def test_a_pool_whose_records_are_no_longer_published_loses_its_dns_flag_at_the_next_tick(
        make_harness: HarnessFactory, route53: tuple[Any, str], change: str) -> None:
    """Its VMs waited on Route 53 when its DNS entry was made one that publishes nothing (records
    left to DHCP), or the pool was given such an entry: no pass of it notes its DNS waiting any
    more, so none cleared the flag, and /status showed it for good (the pool still names a plugin)."""
    _, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}, size=2)
    world.passes("dns", 1)
    DeniedNames(dns_of(world).client, set(world.hosts("dns", "pending")))
    world.passes("dns", 1)
    assert world.get("/api/v3/status").json["pools"]["dns"]["dns_waiting"] == 2

    unmanaged = {"dns_class": "dynamic-dns", "domain": DOMAIN}  # no server: records are not ours
    config = world.config
    if change == "entry made unmanaged":
        text = config_text({"zone": unmanaged}, "zone")
    else:
        text = config_text({"zone": {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone},
                                   "dhcp": unmanaged}, "dhcp")
    world.services.use_config(parse(text))
    assert world.config is not config
    world.passes("dns", 1)
    Ticker().tick(world.services, DroppedQueue())
    entry = world.get("/api/v3/status").json["pools"]["dns"]
    assert "dns_waiting" not in entry and "dns_waiting_reason" not in entry
