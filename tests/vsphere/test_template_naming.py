"""A template two pools spell differently is one template: prepared once (docs/vsphere.md,
"Template preparation")."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.store import Store
from chalicelib.store.templates import DONE, TemplateStore
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, make_setup

OPTION = {"create_template_delta_disks": True}


def one_pass(setup: Setup, store: Store, pool: PoolConfig, clock: FakeClock) -> PassReport:
    return reconcile_pool(store, setup.provider, pool, clock, setup.service)


def test_pools_naming_the_default_datacenter_or_not_prepare_their_template_once(
        vcsim_dir: Path, redis_client: redis.Redis) -> None:
    """Two pools on one template, one naming the default datacenter DC0, one leaving it unset,
    their first passes at once (making the template a VM takes vCenter a second): one record,
    one delta layer, and both pools clone. Before, each recorded the template under its own
    spelling (``DC0/vm/templates/t``, ``templates/t``), took a lease of its own, and both
    prepared it."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"slow-mark-{secrets.token_hex(3)}.pem",
                     method_delays={"MarkAsVirtualMachine": 1.0}) as server:
        setup = make_setup(server, service=OPTION)
        explicit = setup.pool(template=TEMPLATE, datacenter=DATACENTER)
        unset = setup.pool(template=TEMPLATE)
        disks = (admin.template_state(setup.provider, f"{DATACENTER}/vm/{TEMPLATE}") or (False, []))[1]
        assert disks and set(disks) == {0}
        store, clock = Store(redis_client, prefix=f"naming-{secrets.token_hex(3)}:"), FakeClock()
        started: dict[str, list[str]] = {explicit.name: [], unset.name: []}
        with ThreadPoolExecutor(2) as threads:
            for _ in range(4):
                clock.advance(60)
                reports = list(threads.map(lambda pool: one_pass(setup, store, pool, clock), (explicit, unset)))
                for pool, report in zip((explicit, unset), reports, strict=True):
                    started[pool.name] += report.clones_started
        assert TemplateStore(store).all() == {f"vsphere:{TEMPLATE}": DONE}
        assert admin.template_state(setup.provider, f"{DATACENTER}/vm/{TEMPLATE}") == (True, [1] * len(disks))
        assert all(len(names) == 1 for names in started.values()), started


def test_a_pass_whose_claim_another_pass_made_first_leaves_the_template_to_it(
        private_vcsim: VcsimServer, redis_client: redis.Redis) -> None:
    """A pass planning a preparation while another (its lease run out) recorded one first: the
    first recorded is the preparation; the late pass neither records nor drives its own."""
    setup = make_setup(private_vcsim, service=OPTION)
    pool = setup.pool()
    store, clock = Store(redis_client, prefix=f"claim-{secrets.token_hex(3)}:"), FakeClock()
    templates = TemplateStore(store)
    key = f"vsphere:{setup.provider.template_name(pool)}"
    read: list[str] = []
    planning = setup.provider.prepare_template
    reading = setup.provider.task_status

    def prepare_while_another_records(planned_pool: PoolConfig) -> Any:
        planned = planning(planned_pool)
        assert planned is not None and templates.started(key, "template:other-pass")
        return planned

    def task_status(ref: str) -> Any:
        read.append(ref)
        return reading(ref)

    setup.provider.prepare_template = prepare_while_another_records  # type: ignore[method-assign]
    setup.provider.task_status = task_status  # type: ignore[method-assign]
    report = one_pass(setup, store, pool, clock)
    assert report.clones_started == [] and read == []
    assert templates.state(key) == "template:other-pass"
    assert admin.template_state(setup.provider, f"{DATACENTER}/vm/{TEMPLATE}") == (True, [0])
