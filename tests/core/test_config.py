"""Config loading: vmpooler's YAML as it is, precise error messages, where the config comes from."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import config as config_module
from chalicelib.config import ConfigError, parse
from chalicelib.config_fields import is_ignored

REPO_ROOT = Path(__file__).resolve().parents[2]

# A vmpooler config in vmpooler's own spelling (Ruby-symbol keys), with every key the contract
# page names for each section.
VMPOOLER_YAML = """\
---
:config:
  site_name: 'vmpooler'
  logfile: '/var/log/vmpooler.log'
  task_limit: 12
  timeout: 20
  timeout_notification: 7
  ready_ttl: 90
  vm_lifetime: 6
  vm_lifetime_auth: 48
  max_lifetime_upper_limit: 336
  prefix: 'ci-'
  domain: 'example.com'
  allowed_tags:
    - 'project'
    - 'owner'
  experimental_features: true
  purge_unconfigured_resources: true
  create_folders: true
  create_linked_clones: false
  create_template_delta_disks: true
  manage_host_selection: true
  utilization_limit: 80
  max_ondemand_instances_per_request: 20
  ondemand_request_ttl: 10
  max_vm_retries: 4
  check_loop_delay_min: 3
  check_loop_delay_max: 30
  check_loop_delay_decay: 1.5

:redis:
  server: 'redis.example.com'
  port: 6380
  password: 'redis-secret'
  data_ttl: 72

:auth:
  :provider: 'ldap'
  :ldap:
    :host: 'ldap.example.com'
    :port: 636
    :base: ['ou=users,dc=example,dc=com', 'ou=admins,dc=example,dc=com']
    :user_object: ['uid', 'cn']
    :encryption: 'simple_tls'
    :service_account_hash:
      :user_dn: 'cn=svc,dc=example,dc=com'
      :password: 'svc-secret'

:providers:
  :vsphere:
    server: 'vcenter.example.com'
    username: 'vmpooler'
    password: 'vc-secret'
    insecure: true
    datacenter: 'DC1'

:tagfilter:
  url: '(.*)\\/'

:dns_configs:
  :infra:
    dns_class: 'dynamic-dns'
    domain: 'infra.example.net'

:pools:
  - name: 'debian-12-x86_64'
    alias: ['debian', 'linux']
    template: 'templates/debian-12-x86_64'
    folder: 'vmpooler/debian-12-x86_64'
    pool: 'cluster1/Resources/ci'
    datastore: 'vmstorage'
    size: 5
    provider: 'vsphere'
    dns_plugin: 'infra'
    clone_target: 'cluster1'
    timeout: 10
    ready_ttl: 30
    network: 'VM Network'
    datacenter: 'DC2'
    create_linked_clone: true
  - name: 'centos-9-x86_64'
    alias: 'linux'
    template: 'templates/centos-9-x86_64'
    folder: 'vmpooler/centos-9-x86_64'
    size: '3'
    domain: 'centos.example.org'
  - name: 'win-2022-x86_64'
    template: 'templates/win-2022-x86_64'
    folder: 'vmpooler/win-2022-x86_64'
    size: 0
"""


def test_vmpooler_config_loads_with_every_key_of_the_contract() -> None:
    config = parse(VMPOOLER_YAML)

    assert config.warnings == ()
    service = config.service
    assert (service.task_limit, service.timeout, service.timeout_notification, service.ready_ttl) == (12, 20, 7, 90)
    assert (service.vm_lifetime, service.vm_lifetime_auth, service.max_lifetime_upper_limit) == (6, 48, 336)
    assert (service.prefix, service.domain, service.allowed_tags) == ("ci-", "example.com", ("project", "owner"))
    assert service.experimental_features and service.purge_unconfigured_resources and service.create_folders
    assert not service.create_linked_clones and service.create_template_delta_disks
    assert service.manage_host_selection and service.utilization_limit == 80
    assert (
        service.max_ondemand_instances_per_request, service.ondemand_request_ttl, service.max_vm_retries
    ) == (20, 10, 4)
    assert (
        service.check_loop_delay_min, service.check_loop_delay_max, service.check_loop_delay_decay
    ) == (3.0, 30.0, 1.5)

    redis = config.redis
    assert (redis.server, redis.port, redis.password.get_secret_value(), redis.data_ttl_hours) == (
        "redis.example.com", 6380, "redis-secret", 72
    )
    assert "redis-secret" not in repr(config)  # secrets are Secret (auth/secrets.py): never printed

    # The LDAP block is parsed once, at load, into the settings the authenticator uses.
    assert config.auth is not None and config.auth.provider == "ldap"
    ldap = config.auth.ldap
    assert ldap is not None
    assert ldap.host == "ldap.example.com" and ldap.port == 636
    assert ldap.bases == ("ou=users,dc=example,dc=com", "ou=admins,dc=example,dc=com")
    assert ldap.user_objects == ("uid", "cn") and ldap.encryption == "simple_tls"
    assert ldap.service_account_dn == "cn=svc,dc=example,dc=com"
    assert ldap.service_account_password.get_secret_value() == "svc-secret"

    vsphere = config.providers["vsphere"]
    assert vsphere.provider_class == "vsphere"
    settings = vsphere.settings
    assert (settings.server, settings.username, settings.password.get_secret_value()) == (
        "vcenter.example.com", "vmpooler", "vc-secret"
    )
    assert settings.insecure is True and settings.datacenter == "DC1"

    assert dict(config.tagfilter) == {"url": "(.*)\\/"}

    assert config.pool_names == ("debian-12-x86_64", "centos-9-x86_64", "win-2022-x86_64")
    debian = config.pool("debian-12-x86_64")
    assert debian is not None
    assert (debian.template, debian.folder, debian.size, debian.provider) == (
        "templates/debian-12-x86_64", "vmpooler/debian-12-x86_64", 5, "vsphere")
    assert debian.alias == ("debian", "linux")
    assert (debian.timeout_minutes, debian.ready_ttl_minutes) == (10, 30)
    for key, value in {"resource_pool": "cluster1/Resources/ci", "datastore": "vmstorage",
                       "clone_target": "cluster1", "network": "VM Network", "datacenter": "DC2",
                       "create_linked_clone": True}.items():
        assert getattr(debian, key) == value, key
    centos = config.pool("centos-9-x86_64")
    assert centos is not None
    assert centos.size == 3 and centos.alias == ("linux",)
    # A pool without its own timeouts takes the service's.
    assert (centos.timeout_minutes, centos.ready_ttl_minutes) == (20, 90)
    assert config.pool("win-2022-x86_64").size == 0


def test_plain_spelling_loads_the_same_as_ruby_symbols() -> None:
    plain = VMPOOLER_YAML.replace("\n:", "\n").replace("  :", "  ").replace("    :", "    ")
    assert ":pools:" not in plain and "\npools:" in plain

    assert parse(plain) == parse(VMPOOLER_YAML)


# Every key vmpooler's own vmpooler.yaml.example documents (github.com/puppetlabs/vmpooler), by
# the block it goes in. vmpool either uses it or accepts it without effect, listed with its reason
# in vmpool.yaml.example; "unknown key" is for typos, not for vmpooler's own keys.
VMPOOLER_EXAMPLE_KEYS = {
    "config": (
        "site_name logfile clone_target task_limit ondemand_clone_limit timeout timeout_notification max_vm_retries "
        "vm_checktime vm_lifetime vm_lifetime_auth allowed_tags prefix migration_limit max_tries retry_factor "
        "check_loop_delay_min check_loop_delay_max check_loop_delay_decay circuit_breaker_enabled "
        "circuit_breaker_failure_threshold circuit_breaker_timeout circuit_breaker_half_open_attempts "
        "adaptive_timeout_enabled connection_pool_timeout_min connection_pool_timeout_max "
        "connection_pool_timeout_initial connection_pool_monitor_enabled connection_pool_monitor_interval "
        "manage_host_selection create_folders create_template_delta_disks host_selection_max_age utilization_limit "
        "experimental_features purge_unconfigured_folders purge_unconfigured_resources backend_weight usage_stats "
        "request_logger max_lifetime_upper_limit extra_config max_ondemand_instances_per_request "
        "ondemand_request_ttl ready_ttl "
        # vmpooler.yml.example (its dead-letter queue, auto-purge and health checks, December 2025)
        "dlq_enabled dlq_ttl dlq_max_entries purge_enabled purge_interval purge_dry_run max_pending_age "
        "max_ready_age max_completed_age max_orphaned_age max_request_age health_check_enabled "
        "health_check_interval health_thresholds"
    ),
    # bin/vmpooler reads connection_pool_size and connection_pool_timeout, which its example spells
    # redis_connection_pool_size and redis_connection_pool_timeout.
    "redis": "server username password data_ttl redis_connection_pool_size redis_connection_pool_timeout "
             "reconnect_attempts connection_pool_size connection_pool_timeout dlq_enabled dlq_ttl dlq_max_entries",
    "providers.vsphere": (
        "provider_class purge_unconfigured_folders purge_unconfigured_resources folder_whitelist resources_allowlist "
        "skip_dns_check_before_creating_vm server username password insecure datacenter circuit_breaker_enabled "
        "circuit_breaker_failure_threshold circuit_breaker_timeout circuit_breaker_half_open_attempts "
        "adaptive_timeout_enabled connection_pool_timeout_min connection_pool_timeout_max "
        "connection_pool_timeout_initial connection_pool_size connection_pool_timeout"
    ),
    "providers.dummy": (
        "filename connection_pool_size connection_pool_timeout migratevm_couldmove_percent migratevm_max_time "
        "migratevm_fail_percent getvm_poweroff_percent getvm_rename_percent createvm_max_time createvm_fail_percent "
        "createdisk_max_time createdisk_fail_percent createsnapshot_max_time createsnapshot_fail_percent "
        "revertsnapshot_max_time revertsnapshot_fail_percent destroyvm_max_shutdown_time destroyvm_max_time "
        "destroyvm_fail_percent vmready_fail_percent"
    ),
    "pools": (
        "name alias template size provider dns_plugin clone_target timeout ready_ttl check_loop_delay_min "
        "check_loop_delay_max check_loop_delay_decay folder datastore datacenter snapshot_mainMem_ioBlockPages "
        "snapshot_mainMem_iowait"
    ),
}
# vmpooler's top-level sections of metrics backends (vmpool's metrics are CloudWatch EMF).
VMPOOLER_EXAMPLE_SECTIONS = ("statsd", "graphite", "prometheus", "graphs", "tracing")
EXAMPLE_VALUES: dict[str, Any] = {
    "provider_class": "vsphere", "allowed_tags": ["project"], "backend_weight": {"cluster1": 1},
    "folder_whitelist": ["keep"], "resources_allowlist": ["keep"], "check_loop_delay_decay": 2.0,
    "utilization_limit": 90, "prefix": "ci-", "clone_target": "cluster1", "datastore": "vmstorage",
    "datacenter": "DC1", "extra_config": None, "dns_plugin": None, "alias": ["a"], "template": "t/x",
    "folder": "f", "name": "p", "provider": "vsphere", "size": 1, "server": "vc.example.com", "username": "u",
    "password": "p", "insecure": False, "filename": "/tmp/dummy-backing.yaml", "logfile": "/var/log/vmpooler.log",
    "site_name": "vmpooler", "snapshot_mainMem_ioBlockPages": "2048", "snapshot_mainMem_iowait": "0",
}

BOOLEAN, BOOLEAN_KEYS = True, ("enabled", "folders", "resources", "vm", "selection", "disks", "features")


def _with_key(where: str, key: str) -> str:
    document: dict[str, Any] = {
        "config": {}, "redis": {},
        "providers": {"vsphere": {"server": "vc.example.com"}, "dummy": {}},
        "pools": [{"name": "p", "template": "t/x", "folder": "f", "size": 1, "provider": "vsphere"}],
    }
    block: Any = document["pools"][0] if where == "pools" else document
    for part in where.split(".") if where != "pools" else ():
        block = block[part]
    block[key] = EXAMPLE_VALUES.get(key, BOOLEAN if key.endswith(BOOLEAN_KEYS) else 1)
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    "where, key", [(where, key) for where, keys in VMPOOLER_EXAMPLE_KEYS.items() for key in keys.split()]
)
def test_every_key_vmpoolers_example_documents_loads_without_a_warning(where: str, key: str) -> None:
    """vmpooler's example loaded with "unknown key" warnings for keys it documents (its own
    ``snapshot_mainMem_iowait`` among them), and a config naming them was told they were typos."""
    assert parse(_with_key(where, key)).warnings == ()


@pytest.mark.parametrize("section", VMPOOLER_EXAMPLE_SECTIONS)
def test_vmpoolers_metrics_sections_load_without_a_warning(section: str) -> None:
    """vmpooler's example configures ``:prometheus:``, which was an "unknown section"."""
    assert parse(f":{section}:\n  server: metrics.example.com\n").warnings == ()


def test_defaults_are_vmpoolers() -> None:
    config = parse("pools:\n  - {name: p, size: 1, provider: dummy}\n")
    service = config.service
    assert (service.task_limit, service.timeout, service.timeout_notification, service.ready_ttl) == (10, 15, 5, 60)
    assert (service.vm_lifetime, service.vm_lifetime_auth) == (24, 24)
    assert (
        service.max_ondemand_instances_per_request, service.ondemand_request_ttl, service.max_vm_retries
    ) == (10, 5, 3)
    assert (
        service.check_loop_delay_min, service.check_loop_delay_max, service.check_loop_delay_decay
    ) == (5.0, 60.0, 2.0)
    assert config.redis.data_ttl_hours == 168 and config.redis.port == 6379
    assert config.auth is None


def test_error_names_key_path_and_problem() -> None:
    yaml_text = """\
pools:
  - {name: a, size: 1, provider: dummy}
  - {name: b, size: 1, provider: dummy}
  - {name: c, size: five, provider: dummy}
"""
    with pytest.raises(ConfigError) as raised:
        parse(yaml_text)

    assert raised.value.problems == ['pools[2].size: must be an integer >= 0, got "five"']
    assert 'pools[2].size: must be an integer >= 0, got "five"' in str(raised.value)


def test_an_integer_written_in_other_digits_than_ascii_is_refused() -> None:
    """Text integers are vmpooler's ``to_i``: ASCII digits only. ``\\d`` matched Arabic-Indic and
    fullwidth digits too, and int() read them: a size of "\u0661\u0660" loaded as 10."""
    for digits in ("\u0661\u0660", "\uff11\uff10"):
        with pytest.raises(ConfigError) as raised:
            parse(f"pools:\n  - {{name: a, size: '{digits}', provider: dummy}}\n")
        assert raised.value.problems == [f'pools[0].size: must be an integer >= 0, got "{digits}"']


def test_every_problem_is_listed_at_once() -> None:
    yaml_text = """\
:config:
  task_limit: 0
  vm_lifetime: lots
  experimental_features: maybe
:redis:
  port: 70000
:pools:
  - {name: a, size: -1, provider: dummy}
  - {name: a, size: 2, provider: nowhere}
  - {size: 1, provider: dummy}
  - {name: "bad name!", size: 1, provider: dummy}
  - {name: v, size: 1, provider: vsphere}
  - just-a-string
:tagfilter:
  url: '(['
"""
    with pytest.raises(ConfigError) as raised:
        parse(yaml_text)

    assert sorted(raised.value.problems) == sorted([
        "config.task_limit: must be an integer >= 1, got 0",
        'config.vm_lifetime: must be an integer >= 1, got "lots"',
        'config.experimental_features: must be true or false, got "maybe"',
        "redis.port: must be an integer <= 65535, got 70000",
        "pools[0].size: must be an integer >= 0, got -1",
        'pools[1].name: duplicate pool name "a"',
        'pools[1].provider: no provider named "nowhere" in providers',
        "pools[2].name: is required",
        'pools[3].name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, got "bad name!"',
        "pools[4].template: is required for a vsphere pool",
        'pools[5]: must be a mapping, got "just-a-string"',
        "tagfilter.url: must be a regular expression (unterminated character set at position 1)",
    ])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{{{", "config: not valid YAML"),
        ("- a\n- b\n", "config: must be a YAML mapping at the top level"),
        ("pools: {name: p}\n", 'pools: must be a list of pools, got {\'name\': \'p\'}'),
        ("providers: [dummy]\n", "providers: must be a mapping, got ['dummy']"),
        ("pools:\n  - {name: p, size: 1, provider: dummy, dns_plugin: nope}\n",
         'pools[0].dns_plugin: no dns_configs entry named "nope"'),
        ("providers:\n  mine: {provider_class: xen}\n",
         'providers.mine.provider_class: must be one of vsphere, dummy, got "xen"'),
        ("auth: {ldap: {}}\n", "auth.provider: is required"),
    ],
)
def test_malformed_sections_are_refused_with_their_path(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text)

    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


def test_unknown_keys_warn_and_do_not_fail() -> None:
    config = parse("""\
:config:
  task_limit: 3
  shiny_new_option: 1
:pools:
  - name: p
    size: 2
    provider: dummy
    colour: blue
:graphite:
  server: graphite.example.com
:mystery_section:
  a: 1
""")

    assert config.service.task_limit == 3
    assert config.pool("p").size == 2
    assert sorted(config.warnings) == sorted([
        "config.shiny_new_option: unknown key, ignored",
        "pools[0].colour: unknown key, ignored",
        "mystery_section: unknown section, ignored",
    ])


def test_aliases_resolve_to_their_pools_and_a_pool_name_also_to_pools_aliased_so() -> None:
    config = parse("""\
pools:
  - {name: debian, size: 1, provider: dummy, alias: [linux, any]}
  - {name: centos, size: 1, provider: dummy, alias: [linux, debian]}
  - {name: windows, size: 1, provider: dummy, alias: any}
""")

    # vmpooler serves a name that is a pool and another pool's alias from both, the pool first.
    assert config.resolve("debian") == ("debian", "centos")
    assert config.resolve("windows") == ("windows",)
    assert config.resolve("linux") == ("debian", "centos")
    assert config.resolve("any") == ("debian", "windows")
    assert config.resolve("nothing") == ()
    assert config.aliases_of("centos") == ("linux", "debian")


class _ComparedName(str):
    """A pool name that counts how often it is compared with another string."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _ComparedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_config_of_many_pools_sharing_an_alias_is_built_in_time_linear_in_its_pools() -> None:
    """Each build (every cold start, every refresh of a pushed config, twice each) indexed an
    alias's pools by searching a list before each append: 10,000 pools aliased ``linux`` cost
    50 million comparisons, 3.5 s more of each build (a canonical build went from 1.7 s to
    6.4 s), inside the request that found the pushed config. Counted here, not timed."""
    one = parse("pools:\n  - {name: p, size: 1, provider: dummy, alias: [linux, linux, any]}\n")
    template = one.pools[0]
    pools = tuple(dataclasses.replace(template, name=_ComparedName(f"p{n}")) for n in range(2000))
    _ComparedName.comparisons = 0

    config = dataclasses.replace(one, pools=pools)

    assert _ComparedName.comparisons < 10 * len(pools), _ComparedName.comparisons
    assert config.resolve("linux") == tuple(f"p{n}" for n in range(2000))  # each once, in order
    assert config.resolve("any") == config.resolve("linux")


def test_pool_domain_comes_from_pool_then_dns_config_then_provider_then_service() -> None:
    """The provider block's ``domain`` is vmpooler 2.x's (a 2.x config's VMs were answered as
    bare names when it was ignored); it yields to the pool's and the dns_plugin's."""
    config = parse("""\
config: {domain: example.com}
providers:
  gce: {provider_class: dummy, domain: gce.example.com}
dns_configs:
  infra: {dns_class: dynamic-dns, domain: infra.example.net}
pools:
  - {name: own, size: 1, provider: dummy, domain: own.example.org, dns_plugin: infra}
  - {name: dns, size: 1, provider: gce, dns_plugin: infra}
  - {name: from-provider, size: 1, provider: gce}
  - {name: own-over-provider, size: 1, provider: gce, domain: own.example.org}
  - {name: plain, size: 1, provider: dummy}
""")

    assert config.pool("own").domain == "own.example.org"
    assert config.pool("dns").domain == "infra.example.net"
    assert config.pool("from-provider").domain == "gce.example.com"
    assert config.pool("own-over-provider").domain == "own.example.org"
    assert config.pool("plain").domain == "example.com"
    assert config.warnings == ()


def test_pool_and_provider_settings_override_in_order() -> None:
    config = parse("""\
providers:
  fake: {provider_class: dummy, createvm_max_time: 30, boot_time: 5, seed: 7}
pools:
  - {name: slow, size: 1, provider: fake, createvm_max_time: 90}
  - {name: normal, size: 1, provider: fake}
""")
    provider = config.providers["fake"]

    assert provider.provider_class == "dummy"
    assert provider.pool_setting(config.pool("slow"), "createvm_max_time") == 90
    assert provider.pool_setting(config.pool("normal"), "createvm_max_time") == 30
    assert provider.pool_setting(config.pool("normal"), "destroyvm_max_time", 0) == 0
    assert provider.settings.seed == 7


SMALL = "pools:\n  - {{name: {name}, size: 1, provider: dummy}}\n"


def test_raw_yaml_beats_file_beats_packaged_default(tmp_path: Path) -> None:
    config_file = tmp_path / "vmpool.yaml"
    config_file.write_text(SMALL.format(name="from-file"))

    assert config_module.load({
        "VMPOOL_CONFIG": SMALL.format(name="from-env"), "VMPOOL_CONFIG_FILE": str(config_file),
    }).pool_names == ("from-env",)
    assert config_module.load({"VMPOOL_CONFIG_FILE": str(config_file)}).pool_names == ("from-file",)
    loaded = config_module.load({"VMPOOL_CONFIG": "", "VMPOOL_CONFIG_FILE": str(config_file)})
    assert loaded.pool_names == ("from-file",)

    default = config_module.load({})
    assert default.pool_names == config_module.parse(config_module.DEFAULT_CONFIG_FILE.read_text()).pool_names
    assert default.pool_names  # the packaged default serves something out of the box
    assert default.warnings == ()
    assert all(default.provider_for(pool).provider_class == "dummy" for pool in default.pools)


def test_unreadable_file_and_invalid_raw_yaml_name_their_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as raised:
        config_module.load({"VMPOOL_CONFIG_FILE": str(missing)})
    assert raised.value.problems == [f"{missing}: cannot read: No such file or directory"]

    with pytest.raises(ConfigError) as raised:
        config_module.load({"VMPOOL_CONFIG": "pools: [{name: p, size: many, provider: dummy}]"})
    assert raised.value.problems == ['pools[0].size: must be an integer >= 0, got "many"']

    with pytest.raises(ConfigError) as raised:
        config_module.load({"VMPOOL_CONFIG": "{{{"})
    assert raised.value.problems[0].startswith("VMPOOL_CONFIG: not valid YAML")


def test_the_service_refuses_to_start_on_an_invalid_config(tmp_path: Path) -> None:
    from chalicelib.services import Services

    with pytest.raises(ConfigError) as raised:
        Services.from_environment({"VMPOOL_CONFIG": "pools: [{name: p, size: -3, provider: dummy}]"})
    assert raised.value.problems == ["pools[0].size: must be an integer >= 0, got -3"]


def test_repository_example_config_loads() -> None:
    example = REPO_ROOT / "vmpool.yaml.example"  # a deleted example fails here (FileNotFoundError)

    config = parse(example.read_text(), str(example))

    assert config.warnings == ()
    assert config.pools


# vmpooler dummy keys accepted (as numbers) for compatibility that have no effect here: there is
# no VM rename. The example does not document them.
NOT_DOCUMENTED = {"getvm_rename_percent"}


def _model(name: str) -> Any:
    """A settings model by where it lives: the service's sections, each provider's, each plugin's."""
    from chalicelib.dns.base import DnsSettings
    from chalicelib.providers.dummy_config import DummySettings
    from chalicelib.providers.vsphere.config import VSphereSettings

    return {"ServiceConfig": config_module.ServiceConfig, "RedisConfig": config_module.RedisConfig,
            "PoolSettings": config_module.PoolSettings, "AuthConfig": config_module.AuthConfig,
            "DnsSettings": DnsSettings, "DummySettings": DummySettings, "VSphereSettings": VSphereSettings}[name]


@pytest.mark.parametrize(
    "model", ["ServiceConfig", "RedisConfig", "PoolSettings", "AuthConfig", "DnsSettings", "DummySettings",
              "VSphereSettings"]
)
def test_example_config_documents_every_key_that_does_something(model: str) -> None:
    example = REPO_ROOT / "vmpool.yaml.example"  # a deleted example fails here (FileNotFoundError)
    text = example.read_text()
    settings = _model(model)

    undocumented = [
        name for name in settings.keys()
        if not is_ignored(settings, settings.keys()[name]) and name not in NOT_DOCUMENTED
        and not re.search(rf"(^|[\s#,:]){re.escape(name)}\s*:", text, re.MULTILINE)
    ]

    assert undocumented == []


# --- the messages of typical mistakes, word for word (pydantic validates; the words are ours) ----


@pytest.mark.parametrize(
    "text, problems",
    [
        ("pools:\n  - {name: p, size: '5 VMs', provider: dummy}\n",
         ['pools[0].size: must be an integer >= 0, got "5 VMs"']),
        ("pools:\n  - {size: 2, provider: dummy}\n", ["pools[0].name: is required"]),
        ("pools:\n  - {name: p, size: 1, provider: xen}\n",
         ['pools[0].provider: no provider named "xen" in providers']),
        ("providers:\n  mine: {provider_class: xen}\n",
         ['providers.mine.provider_class: must be one of vsphere, dummy, got "xen"']),
        ("config: {task_limit: ten}\npools:\n  - {name: p, size: 1, provider: dummy, createvm_max_time: slow}\n",
         ['config.task_limit: must be an integer >= 1, got "ten"',
          'pools[0].createvm_max_time: must be a number, got "slow"']),
        ("providers:\n  dummy: {boot_time: [1]}\n", ["providers.dummy.boot_time: must be a number, got [1]"]),
        ("dns_configs:\n  aws: {dns_class: route53, domain: example.com}\n",
         ["dns_configs.aws.hosted_zone_id: is required"]),
        ("redis: {password: {vault: x}}\n",
         [("redis.password: a secret reference must be {secret: <name or ARN>[, key: <json key>]} or "
           "{ssm: <parameter name>}")]),
        ("auth: {provider: kerberos}\n", ['auth.provider: must be one of ldap, dummy, got "kerberos"']),
    ],
)
def test_typical_mistakes_read_as_before(text: str, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text)

    assert raised.value.problems == problems


def test_a_secret_never_shows_in_a_message_or_a_repr() -> None:
    config = parse("redis: {password: hunter2-redis}\nproviders:\n  vsphere: {server: vc, username: u, "
                   "password: hunter2-vc}\npools:\n  - {name: p, size: 1, template: t}\n")
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)

    with pytest.raises(ConfigError) as raised:
        parse("redis: {password: [hunter2-list]}\n")
    assert raised.value.problems == ["redis.password: must be a string or a secret reference, got list"]


@pytest.mark.parametrize("field", ["pool", "provider"])
def test_a_name_ending_in_a_line_break_is_refused(field: str) -> None:
    """``$`` matches before a final line break; a pool or provider name names Redis keys and
    must be exactly its pattern's shape."""
    pool_name, provider_name = ('"p1\\n"', "dummy") if field == "pool" else ("p1", '"dummy\\n"')
    text = f":providers:\n  {provider_name}: {{}}\n:pools:\n  - {{name: {pool_name}, size: 1, provider: dummy}}\n"
    with pytest.raises(ConfigError) as raised:
        parse(text)
    assert "must match" in str(raised.value)


DIRECT_BIND = "auth: {provider: ldap, ldap: {host: ldap.example.com, base: 'ou=users,dc=example,dc=com'%s}%s}\n"
SERVICE_ACCOUNT = ", service_account_hash: {user_dn: 'cn=svc,dc=example,dc=com', password: pw}"


@pytest.mark.parametrize(
    ("auth", "config", "warned"),
    [
        (DIRECT_BIND % ("", ""), "", True),
        (DIRECT_BIND % ("", ", directory_check_minutes: 5"), "", True),
        (DIRECT_BIND % ("", ""), "config: {token_ttl: 24}\n", False),
        (DIRECT_BIND % ("", ", directory_check_minutes: 0"), "", False),
        (DIRECT_BIND % (SERVICE_ACCOUNT, ""), "", False),
        ("auth: {provider: dummy}\n", "", False),
    ],
    ids=["direct-bind", "direct-bind-checks-asked", "token-ttl", "checks-off", "service-account", "dummy"],
)
def test_a_direct_bind_config_whose_tokens_nothing_rechecks_loads_with_a_warning(
        auth: str, config: str, warned: bool) -> None:
    """Direct bind cannot look a user up, so a user removed from the directory kept their tokens
    for ever with the checks configured (by default) and not a word said: the operator is told at
    load, and told how to make it stop (a service account, token_ttl, or checks off to say so)."""
    loaded = parse(auth + config + "pools: [{name: p, size: 1, provider: dummy}]\n")
    warnings = [warning for warning in loaded.warnings if warning.startswith("auth.directory_check_minutes")]
    assert len(warnings) == (1 if warned else 0), loaded.warnings
    if warned:
        assert "service_account_hash" in warnings[0] and "token_ttl" in warnings[0]


def test_tag_bounds_whose_day_would_not_fit_one_summary_are_refused() -> None:
    """Each of the two took up to 10,000, but a day counting 100 x 100 of the longest tags no longer
    fits one /summary answer, which then refused today's statistics all day: such a config is now
    refused at load, saying why (the day at the most it accepts: tests/api/test_status_summary.py)."""
    pools = "pools: [{name: p, size: 1, provider: dummy}]\n"
    with pytest.raises(ConfigError) as raised:
        parse("config: {max_tag_names_per_day: 100, max_tag_values_per_day: 100}\n" + pools)
    assert raised.value.problems == [
        ("config.max_tag_names_per_day (100) and config.max_tag_values_per_day (100): a day would count up to "
        "10201 tags with '(other)', more than one /summary answer holds; (names + 1) x (values + 1) must be at "
        "most 6400")]
    accepted = parse("config: {max_tag_names_per_day: 63, max_tag_values_per_day: 99}\n" + pools)
    assert (accepted.service.max_tag_names_per_day, accepted.service.max_tag_values_per_day) == (63, 99)


def test_a_replica_wait_longer_than_the_socket_timeout_is_warned_about() -> None:
    """A checkout that waits for a replica (WAIT) longer than its client waits for any answer
    loses the answer instead of learning the replica was slow: the operator is told."""
    slow = parse(":redis: {server: r, socket_timeout: 0.5, replica_ack_timeout: 800}\n")
    assert slow.warnings == (("redis.replica_ack_timeout: 800 ms is not below socket_timeout (0.5 s): "
                              "a checkout waiting that long for a replica times out first"),)
    no_replicas = parse(":redis: {server: r, socket_timeout: 0.5, replica_ack_timeout: 800, min_replica_acks: 0}\n")
    assert no_replicas.warnings == ()
    assert parse(":redis: {server: r}\n").warnings == ()  # 500 ms under 2 s


@pytest.mark.parametrize(("seconds", "shown"), [("31", "31"), ("25.5", "25.5"), (".inf", "inf")])
def test_a_redis_socket_timeout_past_the_loop_watchdog_is_refused(seconds: str, shown: str) -> None:
    """A Redis wait over 25 s would have the local stack's loop counted stuck (30 s) while the
    first request to find Redis stopped waits on it: refused at load, naming the bound."""
    with pytest.raises(ConfigError) as raised:
        parse(f"redis: {{socket_timeout: {seconds}}}\npools: []\n")

    assert raised.value.problems == [f"redis.socket_timeout: must be a finite number from 0.01 to 25, got {shown}"]


def test_a_redis_socket_timeout_of_25_s_loads() -> None:
    assert parse("redis: {socket_timeout: 25}\npools: []\n").redis.socket_timeout == 25.0


def test_a_site_name_longer_than_the_page_shows_is_refused_with_its_length() -> None:
    """``site_name`` had no bound: the page shows it three times (tab title, header, tooltip),
    and 10,000 characters of it were 30,000 of every page load. At most 200, said clearly."""
    most = "n" * config_module.SITE_NAME_MOST_CHARACTERS
    assert parse(f"config: {{site_name: {most}}}\npools: []\n").service.site_name == most
    with pytest.raises(ConfigError) as raised:
        parse(f"config: {{site_name: {'n' * 10_000}}}\npools: []\n")
    assert "config.site_name: must be at most 200 characters, got 10,000" in str(raised.value)


def test_an_ondemand_request_size_no_limit_lets_fit_is_warned_about() -> None:
    """A request ``max_ondemand_instances_per_request`` allows but the VMs one may hold never fit is
    always refused (403): the operator is told at load, naming the smaller limit."""
    pools = "pools: [{name: p, size: 1, provider: dummy}]\n"
    per_user = parse("config: {max_ondemand_instances_per_request: 150}\n" + pools)
    assert per_user.warnings == (("config.max_ondemand_instances_per_request: 150 is more than "
                                  "config.max_running_vms_per_user (100): an on-demand request of more than 100 "
                                  "VMs is always refused (403); set it to at most 100"),)
    service = parse("config: {max_ondemand_instances_per_request: 10, max_running_vms: 6}\n" + pools)
    assert service.warnings == (("config.max_ondemand_instances_per_request: 10 is more than "
                                 "config.max_running_vms (6): an on-demand request of more than 6 "
                                 "VMs is always refused (403); set it to at most 6"),)
    assert parse("config: {max_ondemand_instances_per_request: 100}\n" + pools).warnings == ()
