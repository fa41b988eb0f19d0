"""The config the Lambdas load: the canonical JSON packaging and config-push write from a
validated YAML (chalicelib/config.py ``canonical``), built again without pydantic or yaml
(``from_canonical``, config_fields.TrustedReader). It must give the config the YAML gives, and a
canonical file edited into the wrong shape must be refused with its key path, never crash."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from chalicelib.clock import FakeClock
from chalicelib.config import ConfigError, canonical, canonical_json, from_text, load, parse
from chalicelib.config_source import REFRESH_SECONDS, ConfigSource, next_generation, object_generation
from tests.core.test_config import VMPOOLER_YAML

ROOT = Path(__file__).resolve().parents[2]

SIZED_AND_SECRET = """\
config: {domain: example.com, backend_weight: {a: 1, b: 2.5}, vm_lifetime: 4}
redis: {password: {secret: prod/redis, key: token}}
providers:
  dummy: {createvm_max_time: 2, createvm_fail_kind: capacity, seed: 7}
  vs: {provider_class: vsphere, server: vc, username: u, password: hunter2-vc, ready_check: tools}
dns_configs:
  aws: {dns_class: route53, domain: aws.example.com, hosted_zone_id: Z1, ttl: 30}
  dyn: {dns_class: dynamic-dns, server: 10.0.0.1, tsig_key_name: k, tsig_secret: hunter2-tsig}
  other: {dns_class: gcp, domain: gcp.example.com}
rate_limits: {vm_creation: {limit: 5, period: 60}, bogus: {limit: 1}}
tagfilter: {url: '(.*)\\/'}
pools:
  - name: p
    size: '2'
    provider: dummy
    alias: linux
    dns_plugin: aws
    createvm_fail_percent: 5
    sizing:
      timezone: Europe/Berlin
      schedule: [{days: [mon, tue], start: '08:00', end: '18:00', size: 4}]
      demand: {min: 1, max: 9}
  - {name: q, size: 1, provider: vs, template: t, alias: [linux, x], ready_port: 2222, mystery: 1}
auth:
  provider: ldap
  admins: [alice]
  ldap:
    host: ldap.example.com
    base: ['ou=users,dc=example,dc=com']
    user_object: uid
    encryption: {method: start_tls, tls_options: {verify_mode: 0}}
    service_account_hash: {user_dn: 'cn=svc,dc=example,dc=com', password: {ssm: /ldap/pw}}
"""

SAMPLES: dict[str, Callable[[], str]] = {
    "vmpool.yaml.example": lambda: (ROOT / "vmpool.yaml.example").read_text(),
    "packaged chalicelib/vmpool.yaml": lambda: (ROOT / "chalicelib" / "vmpool.yaml").read_text(),
    "vmpooler's YAML": lambda: VMPOOLER_YAML,
    "every kind of value": lambda: SIZED_AND_SECRET,
}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_yaml_validated_then_canonical_json_builds_the_same_config(sample: str) -> None:
    validated = parse(SAMPLES[sample]())
    text = canonical_json(validated)

    built = from_text(text, "packaged")

    assert built == validated
    assert built.warnings == validated.warnings
    assert canonical_json(built) == text  # stable: a config pushed twice is the same object


def test_the_canonical_form_keeps_every_kind_of_value_typed() -> None:
    built = from_text(canonical_json(parse(SIZED_AND_SECRET)))

    assert built.redis.password is not None and built.redis.password.describe() == (
        "Secrets Manager secret 'prod/redis' (key 'token')")  # type: ignore[union-attr]
    vsphere = built.providers["vs"].settings
    assert vsphere.password.get_secret_value() == "hunter2-vc"  # type: ignore[attr-defined]
    assert "hunter2" not in repr(built) and "hunter2" not in str(built)
    pool = built.pools[0]
    assert (pool.size, pool.alias, pool.domain, pool.settings["alias"]) == (2, ("linux",), "aws.example.com", "linux")
    assert pool.sizing is not None and pool.sizing.timezone == "Europe/Berlin" and pool.sizing.demand.max == 9
    assert built.service.backend_weight == {"a": 1.0, "b": 2.5} and built.service.vm_lifetime_auth == 4
    assert built.auth is not None and built.auth.ldap is not None
    assert built.auth.ldap.bases == ("ou=users,dc=example,dc=com",) and built.auth.ldap.port == 389
    assert built.auth.ldap.verify_certificates is False
    assert built.auth.ldap.service_account_password.describe() == "SSM parameter '/ldap/pw'"  # type: ignore[union-attr]
    assert dict(built.rate_limits) == {"vm_creation": {"limit": 5, "period": 60}}
    assert any("mystery" in warning for warning in built.warnings)  # the validation's warnings travel


def edited(change: Callable[[dict[str, Any]], None]) -> str:
    document = canonical(parse(SIZED_AND_SECRET))
    change(document)
    return json.dumps(document)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


@pytest.mark.parametrize("change, problem", [
    # The messages are the YAML's: one set of checks, whatever the format.
    (_set("pools.0.size", "five"), 'pools[0].size: must be an integer >= 0, got "five"'),
    (_set("pools.1.ready_port", "twenty-two"), 'pools[1].ready_port: must be an integer >= 1, got "twenty-two"'),
    (_set("config.task_limit", True), "config.task_limit: must be an integer >= 1, got True"),
    (_set("config.allowed_tags", {"a": 1}), "config.allowed_tags: must be a string, got {'a': 1}"),
    (_set("config.colour", "blue"), "config.colour: unknown key"),
    (_set("redis.password", ["x"]), "redis.password: must be a string or a secret reference, got list"),
    (_set("redis.password", {"vault": "x"}), "redis.password: a secret reference must be"),
    (_set("pools.0.sizing", {"schedule": "always"}), "pools[0].sizing: schedule: must be a list of windows"),
    (_set("auth.ldap.service_account_hash", {"user_dn": "cn=x"}),
     "auth.ldap.service_account_hash.password: is required"),
    (lambda document: document["pools"][0].pop("name"), "pools[0].name: is required"),
    (_set("providers.dummy.provider_class", "xen"), 'providers.dummy.provider_class: must be one of vsphere, dummy'),
    (_set("extra", {}), "extra: not a section of the canonical config"),
    (_set("vmpool_config_format", 2), "packaged: not a canonical vmpool config of format 1"),
    (_set("warnings", "none"), "packaged: warnings: must be a list of strings"),
])
def test_a_canonical_file_of_the_wrong_shape_is_refused_with_its_key_path(
        change: Callable[[dict[str, Any]], None], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_text(edited(change), "packaged")

    assert any(found.startswith(problem) for found in raised.value.problems), raised.value.problems


@pytest.mark.parametrize("length", [200, 201, 1_000_000])
def test_the_site_name_bound_holds_whatever_the_configs_format(length: int) -> None:
    """``site_name`` is at most 200 characters in YAML, and in the canonical JSON a function
    builds (an object put in the bucket by another tool or by hand): the same answer either way.
    Before, the canonical form skipped the bound, and a name of a million characters went on every
    dashboard page three times."""
    yaml = f"config: {{site_name: {'x' * length}}}\npools: [{{name: a, size: 1, provider: dummy}}]\n"
    document = {**canonical(parse("pools: [{name: a, size: 1, provider: dummy}]"))}
    document["config"] = {**document["config"], "site_name": "x" * length}
    answers = []
    for text in (yaml, json.dumps(document)):
        try:
            answers.append(len(from_text(text).service.site_name))
        except ConfigError as error:
            answers.append(error.problems)
    expected = length if length <= 200 else [f"config.site_name: must be at most 200 characters, got {length:,}"]
    assert answers == [expected, expected]


@pytest.mark.parametrize("section, key, value", [("pools", "size", 10_001), ("pools", "size", -1),
                                                  ("pools", "ready_ttl", 0), ("config", "task_limit", 0),
                                                  ("config", "check_loop_delay_min", 0.01)])
def test_a_numbers_bounds_hold_whatever_the_configs_format(section: str, key: str, value: float) -> None:
    """A number outside its bounds is refused with the same problem from YAML and from the
    canonical JSON a function builds (an object put in the bucket by another tool or by hand).
    Before, the canonical form checked the type alone: a pool of size 10**9 was built as it came."""
    document = canonical(parse("pools: [{name: a, size: 1, provider: dummy}]"))
    if section == "pools":
        yaml = f"pools: [{{name: a, provider: dummy, {'' if key == 'size' else 'size: 1, '}{key}: {value}}}]\n"
        document["pools"] = [{**document["pools"][0], key: value}]
    else:
        yaml = f"config: {{{key}: {value}}}\npools: [{{name: a, size: 1, provider: dummy}}]\n"
        document["config"] = {**document["config"], key: value}
    problems = []
    for text in (yaml, json.dumps(document)):
        with pytest.raises(ConfigError) as refused:
            from_text(text)
        problems.append([problem for problem in refused.value.problems if key in problem])
    assert problems[0] and problems[1] == problems[0]


def test_a_pushed_dns_timeout_over_the_bound_added_later_still_loads() -> None:
    """A DNS plugin's ``timeout`` over 10 s is refused where a config is validated, but a canonical
    object pushed before that bound keeps loading (docs/deploy.md, "Configs a newer release
    refuses"), with its lower bound held."""
    document = canonical(parse("dns_configs: {d: {dns_class: dynamic-dns, domain: x.example.com}}\n"
                               "pools: [{name: a, size: 1, provider: dummy, dns_plugin: d}]"))
    document["dns_configs"]["d"]["timeout"] = 30
    assert from_text(json.dumps(document)).dns_configs["d"].settings.timeout == 30
    document["dns_configs"]["d"]["timeout"] = 0.0
    with pytest.raises(ConfigError, match=r"dns_configs\.d\.timeout: must be a finite number >= 0\.1"):
        from_text(json.dumps(document))


def test_json_without_the_format_key_is_read_as_the_yaml_it_also_is() -> None:
    config = from_text(json.dumps({"pools": [{"name": "p", "size": 1, "provider": "dummy"}]}))

    assert config.pool_names == ("p",)


def test_load_reads_the_canonical_file_the_environment_names(tmp_path: Path) -> None:
    packaged = tmp_path / "vmpool.yaml"
    packaged.write_text(canonical_json(parse(VMPOOLER_YAML)))

    assert load({"VMPOOL_CONFIG_FILE": str(packaged)}) == parse(VMPOOLER_YAML)
    assert load({"VMPOOL_CONFIG": packaged.read_text()}) == parse(VMPOOLER_YAML)


def test_a_wrong_canonical_object_in_the_bucket_keeps_the_last_good_config() -> None:
    clock = FakeClock()
    initial = parse("pools: [{name: a, size: 1, provider: dummy}]")
    good = canonical(parse("pools: [{name: a, size: 1, provider: dummy}, {name: b, size: 2, provider: dummy}]"))
    objects = iter([json.dumps({**good, "pools": [{"name": "a", "size": "one"}]}), json.dumps(good)])
    source = ConfigSource(initial, lambda etag: (next(objects), f"etag-{clock.monotonic()}"), clock)

    assert source.current() is initial  # refused: the last good one stays
    clock.advance(REFRESH_SECONDS)
    assert source.current().pool_names == ("a", "b")


def test_an_object_of_the_text_in_use_is_not_built_again_but_takes_its_new_generation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same canonical text pushed again (a new ETag and Last-Modified) is the config in use:
    reused, not built, with the generation of the object; another text is built."""
    from chalicelib import config_source
    from chalicelib.config import text_digest

    text = canonical_json(parse("pools: [{name: a, size: 1, provider: dummy}]"))
    initial = from_text(text)
    builds: list[str] = []
    real = config_source.from_canonical
    monkeypatch.setattr(config_source, "from_canonical", lambda document, source: builds.append(source) or real(
        document, source))
    clock = FakeClock()
    objects = iter([(text, "etag-1", 100.0), (text, "etag-2", 200.0), (text.replace('"a"', '"b"'), "etag-3", 300.0)])
    source = ConfigSource(initial, lambda etag: next(objects), clock, initial_digest=text_digest(text))

    first = source.current()
    assert (first.pool_names, first.generation, builds) == (("a",), 100.0, [])
    assert first == dataclasses.replace(initial, generation=100.0)
    clock.advance(REFRESH_SECONDS)
    assert (source.current().generation, builds) == (200.0, [])
    clock.advance(REFRESH_SECONDS)
    assert (source.current().pool_names, source.current().generation, len(builds)) == (("b",), 300.0, 1)


WRITTEN = datetime.datetime(2026, 12, 6, 15, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(("metadata", "generation"), [
    (None, WRITTEN.timestamp()),  # written by an older release, or by hand: its Last-Modified, as before
    ({"generation": repr(WRITTEN.timestamp() + 0.25)}, WRITTEN.timestamp() + 0.25),  # config-push's, within its second
    ({"generation": repr(WRITTEN.timestamp() - 60)}, WRITTEN.timestamp()),  # an older version copied over: the copy
    ({"generation": "soon"}, WRITTEN.timestamp()),
    ({"generation": "nan"}, WRITTEN.timestamp()),
    ({"generation": "1e300"}, WRITTEN.timestamp()),  # would stay the newest for ever
], ids=["none", "pushed", "copied", "garbage", "nan", "far-ahead"])
def test_a_config_objects_generation_is_its_push_or_when_s3_wrote_it(metadata: dict[str, str] | None,
                                                                      generation: float) -> None:
    assert object_generation(WRITTEN, metadata) == generation
    assert next_generation(generation, WRITTEN.timestamp() - 3600) > generation  # a pusher's clock behind


def test_the_canonical_json_is_ascii_and_the_same_bytes_in_every_process() -> None:
    """What packaging and config-push write for a config with text past ASCII (a site name in
    German, a snowman, a character outside the BMP): 7-bit ASCII, escapes in JSON's ``\\uXXXX``
    form, so its bytes are its characters (the 16 MiB a push allows is what a function reads),
    read back to the same config, and the same bytes from a process of another hash seed (an
    unchanged config pushed again is the config in use: no function builds it again)."""
    import subprocess
    import sys

    yaml = "config: {site_name: 'Pööl ☃ \U0001F600'}\npools: [{name: a, size: 1, provider: dummy}]\n"
    text = canonical_json(parse(yaml))

    assert text.isascii() and len(text.encode("utf-8")) == len(text)
    assert '"site_name":"P\\u00f6\\u00f6l \\u2603 \\ud83d\\ude00"' in text
    assert from_text(text).service.site_name == "Pööl ☃ \U0001F600"
    script = ("import sys; from chalicelib.config import canonical_json, parse; "
              "sys.stdout.write(canonical_json(parse(sys.stdin.read())))")
    other = subprocess.run([sys.executable, "-c", script], input=yaml, capture_output=True, text=True, check=True,
                           cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert other == text
