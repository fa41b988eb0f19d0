"""Fixtures for the API tests: the harness (tests/harness.py) with the API tests' config, its
requests sent as JSON."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from chalicelib.config import build, parse
from tests.api.configs import CONFIG_YAML
from tests.auth.slapd import SlapdServer
from tests.harness import Harness, HarnessFactory, SpecOperations, load_spec


@pytest.fixture(scope="session")
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(scope="session")
def operations(spec: dict[str, Any]) -> SpecOperations:
    return SpecOperations(spec)


@pytest.fixture
def make_stack(make_harness: HarnessFactory) -> Callable[..., Harness]:
    """A harness of config YAML (the API tests' by default), installed as the app's services."""

    def make(config_yaml: str = CONFIG_YAML) -> Harness:
        return make_harness(parse(config_yaml), headers={"Content-Type": "application/json"})

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Harness]) -> Harness:
    """The default config, pools empty."""
    return make_stack(CONFIG_YAML)


@pytest.fixture
def full(stack: Harness) -> Harness:
    """The default config with every pool full of ready VMs."""
    stack.fill()
    return stack


@pytest.fixture
def api(stack: Harness) -> Harness:
    return stack


@pytest.fixture
def client_api(make_harness: HarnessFactory, slapd: SlapdServer) -> Iterator[Harness]:
    """For the real clients' replays (vmfloaty, beaker-vmpooler): pools with a domain, another
    domain and none (aliases debian, windows, centos; linux for two of them), LDAP auth against
    the test slapd (alice, bob...), every pool full."""
    ldap = slapd.ldap_config()
    ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    dummy = {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0, "destroyvm_max_time": 0,
             "createdisk_max_time": 0, "createsnapshot_max_time": 0, "revertsnapshot_max_time": 0}
    doc = {
        "config": {"vm_lifetime": 2, "vm_lifetime_auth": 12, "max_lifetime_upper_limit": 168},
        "providers": {"dummy": dummy},
        "auth": {"provider": "ldap", "ldap": ldap},
        "pools": [
            {"name": "debian-12-x86_64", "alias": ["debian", "linux"], "size": 3, "provider": "dummy",
             "template": "t/debian", "domain": "example.com"},
            {"name": "win-2022-x86_64", "alias": ["windows"], "size": 2, "provider": "dummy",
             "template": "t/win", "domain": "win.example.com"},
            {"name": "centos-9-x86_64", "alias": ["centos", "linux"], "size": 2, "provider": "dummy",
             "template": "t/centos"},
        ],
    }
    api = make_harness(build(doc), headers={})
    api.fill()
    yield api
