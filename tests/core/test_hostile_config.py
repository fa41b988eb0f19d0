"""A config file an operator could paste, however hostile: each is refused with one clear
ConfigError naming the problem (never a traceback, a crash of the interpreter, minutes of CPU or
gigabytes of memory), wherever a config is accepted (``parse``: make run, config-push,
packaging; ``from_text``: what a Lambda reads, and a refresh from the bucket)."""

from __future__ import annotations

import json

import pytest

from chalicelib import config as config_module
from chalicelib.clock import FakeClock
from chalicelib.config import ConfigError, from_text, parse
from chalicelib.config_source import ConfigSource

HEAD = ":providers:\n  :dummy:\n    provider_class: dummy\n:pools:\n"
POOL = "  - name: {name}\n    size: 1\n    provider: dummy\n"


def problems_of(text: str) -> list[str]:
    """The problems a load of ``text`` reports (it must fail with a ConfigError, nothing else)."""
    with pytest.raises(ConfigError) as refused:
        from_text(text)
    return refused.value.problems


def billion_laughs(levels: int = 9) -> str:
    """Nine anchored lists of nine aliases to the one before: 9**9 strings once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once() -> None:
    # Before: 325 s of CPU and gigabytes expanding 387 million strings, then a config that loaded.
    assert problems_of(billion_laughs()) == [
        "config: more than 2000000 values once its YAML aliases are expanded (an alias bomb?)"]
    # Inside a pool, where a pasted anchor would land.
    text = HEAD + POOL.format(name="a") + "    alias: *l8\n"
    assert problems_of(billion_laughs() + text)[0].startswith("config: more than 2000000 values")


def test_anchors_and_merge_keys_of_an_ordinary_config_still_load() -> None:
    text = (":providers:\n  :dummy: {provider_class: dummy}\n:pools:\n"
            "  - &base {name: a, size: 1, provider: dummy, template: t/a}\n"
            "  - <<: *base\n    name: b\n")
    assert [(pool.name, pool.template) for pool in parse(text).pools] == [("a", "t/a"), ("b", "t/a")]


@pytest.mark.parametrize("value", ["&x [*x]", "&x {a: *x}", "&x [1, [2, *x]]"])
def test_a_value_that_contains_itself_is_refused(value: str) -> None:
    # Before: a RecursionError traceback (colon-stripping walked the self-containing list for ever).
    assert problems_of(HEAD + POOL.format(name="a") + f"    alias: {value}\n") == [
        "config: line 8: a YAML alias inside the value it names (a value that contains itself)"]
    # In a section vmpool ignores, too, and when it is a key written twice.
    assert problems_of(HEAD + POOL.format(name="a") + ":statsd:\n  x: &x [*x]\n  x: &y [*y]\n")[0].startswith(
        "config: line 9: a YAML alias inside")


@pytest.mark.parametrize("depth", [200, 1000, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    # Before: a RecursionError traceback at 1,000 levels, and the interpreter killed by a
    # segmentation fault (libyaml's composer) at 100,000.
    flow = HEAD + POOL.format(name="a") + "    alias: " + "[" * depth + "]" * depth + "\n"
    assert problems_of(flow) == ["config: nested deeper than 64 levels"]


def test_deep_nesting_in_canonical_json_is_refused() -> None:
    document = {config_module.CANONICAL_FORMAT_KEY: config_module.CANONICAL_FORMAT,
                "pools": [{"name": "a", "size": 1, "provider": "dummy"}]}
    text = json.dumps(document)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert problems_of(text) == ["config: nested deeper than 64 levels"]


def test_a_yaml_file_over_8_mib_is_refused_before_it_is_parsed() -> None:
    # Before: a 50 MB file of 700,000 pools took 5 minutes and 3.2 GB to load; then 16 MiB files
    # were parsed (8 s and 200 MB to refuse one of 10,000 pools with long alias lists).
    text = HEAD + "".join(POOL.format(name=f"p{n}") for n in range(8 * 1024 * 1024 // 40))
    assert problems_of(text) == [f"config: more than {8 * 1024 * 1024} characters" + config_module.YAML_TOO_LARGE]


@pytest.mark.parametrize(("pools", "written"), [(10_001, ":pools:"), (100_000, ":pools:"), (10_001, "pools:"),
                                                (10_001, "'pools':"), (10_001, '":pools":')])
def test_more_than_10000_pools_are_refused_at_the_first_one_too_many(pools: int, written: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: refused once the whole file was parsed, composed and every value built (100,000
    short pools: 14 s of CPU, 40 s on a busy machine, for a one-line answer). Now the pool past
    the limit is refused as the file is read, nothing built, and its line is named."""
    import yaml

    built: list[object] = []
    monkeypatch.setattr(yaml.CSafeLoader, "get_single_node", lambda loader: built.append(loader))
    text = HEAD.replace(":pools:", written) + "".join(POOL.format(name=f"p{n}") for n in range(pools))
    assert problems_of(text) == ["config: pools: at most 10000 pools, got more (pool 10001 at line 30005)"]
    assert built == []


def test_10000_pools_are_not_too_many() -> None:
    fewer_tags = ":config:\n  max_tag_names_per_day: 20\n  max_tag_values_per_day: 60\n"  # /summary's room
    text = fewer_tags + HEAD + "".join(POOL.format(name=f"p{n}") for n in range(10_000))
    assert len(parse(text).pools) == 10_000


def test_the_pools_limit_is_counted_only_in_the_top_level_pools_list() -> None:
    """Other lists, and a ``pools`` key deeper down, are not pools."""
    many = "[" + ", ".join(["x"] * 10_001) + "]"
    text = f":config:\n  pools: {many}\n:tagfilter_list: {many}\n" + HEAD + POOL.format(name="a")
    assert [pool.name for pool in parse(text).pools] == ["a"]


NOT_A_ZONE = "must be a time zone name such as Europe/Berlin, got "


@pytest.mark.parametrize("zone, problem", [
    ("Europe", "unknown time zone 'Europe'"),  # a directory of the zone database
    ("a" * 10_000, NOT_A_ZONE + "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'"),
    ("a/" * 3000 + "b", NOT_A_ZONE + "'a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/...'"),
    ("Europe/../Europe/Berlin", NOT_A_ZONE + "'Europe/../Europe/Berlin'"),
    ("../../etc/passwd", NOT_A_ZONE + "'../../etc/passwd'"),
], ids=["directory", "long", "deep", "dotdot", "escape"])
def test_a_time_zone_that_is_not_one_is_refused_with_its_key(zone: str, problem: str) -> None:
    # Before: IsADirectoryError, OSError (file name too long) and RecursionError tracebacks.
    service = ":config:\n  sizing_timezone: " + json.dumps(zone) + "\n" + HEAD + POOL.format(name="a")
    assert problems_of(service) == [f"config.sizing_timezone: {problem}"]
    pool = HEAD + POOL.format(name="a") + "    sizing:\n      timezone: " + json.dumps(zone) + "\n"
    assert problems_of(pool) == [f"pools[0].sizing: timezone: {problem}"]


def test_a_long_pool_name_is_refused_without_echoing_it_whole() -> None:
    name = "a" * 10_000
    problem, = problems_of(HEAD + POOL.format(name=name))
    assert problem.startswith("pools[0].name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, got \"aaaa")
    assert len(problem) < 200


UNREQUESTABLE = "cannot be requested: a request names pools and aliases of 1 to 100 letters, digits, '.', '_' or '-'"


@pytest.mark.parametrize("alias", ["debian,ubuntu", "debian+ubuntu", "centos 7", "a/b", "", "a:b", "*", "débian",
                                   "line\nbreak", "\u202etxt.exe", "<script>x</script>", "x" * 101])
def test_an_alias_no_request_can_name_is_refused(alias: str) -> None:
    """Such an alias loaded, /status and /config listed it, and every request for it (POST /vm,
    /ondemandvm, in the path or the body) answered 400 "Invalid pool name format": a comma- or
    plus-separated string of aliases (``alias: "debian,ubuntu"``) served no one."""
    text = HEAD + POOL.format(name="a") + f"    alias: [linux, {json.dumps(alias)}]\n"
    problem, = problems_of(text)
    assert problem.startswith("pools[0].alias: ") and problem.endswith(UNREQUESTABLE), problem
    assert len(problem) < 250


def test_a_pool_listing_thousands_of_unrequestable_aliases_gets_one_problem() -> None:
    text = HEAD + POOL.format(name="a") + f"    alias: {json.dumps([f'a b{n}' for n in range(5000)])}\n"
    assert problems_of(text) == [f'pools[0].alias: "a b0" (and 4999 more) {UNREQUESTABLE}']


def test_a_canonical_object_holding_such_an_alias_still_loads() -> None:
    """What config-push wrote before the check (an earlier release's push) is not refused by the
    functions that read it after an upgrade: the check is the validation's."""
    document = json.loads(config_module.canonical_json(parse(HEAD + POOL.format(name="a") + "    alias: [x]\n")))
    document["pools"][0]["alias"] = ["debian,ubuntu"]
    assert from_text(json.dumps(document)).resolve("debian,ubuntu") == ("a",)


@pytest.mark.parametrize("name", config_module.ANSWER_KEYS)
@pytest.mark.parametrize("where", ["name", "alias"])
def test_a_pool_or_alias_named_like_a_key_of_the_checkout_answer_is_refused(name: str, where: str) -> None:
    """Each name requested is a key of the answer beside ``ok``, ``domain``, ``request_id`` and
    ``ready``: such a name took that key's place. A v1 checkout of a pool ``domain`` answered
    ``{"ok":true,"domain":"example.com"}`` (the VM checked out, its hostname lost), a pool
    ``ready`` made a building on-demand request ``"ready": {"ready": "0", ...}`` (true to a
    client), an alias ``request_id`` put the hostnames where the request's id was."""
    block = POOL.format(name=name) if where == "name" else POOL.format(name="a") + f"    alias: [linux, {name}]\n"
    problem, = problems_of(HEAD + block)
    assert problem.startswith(f"pools[0].{where}: {json.dumps(name)} cannot be requested: "), problem
    assert "must not be named ok, domain, request_id, ready" in problem, problem


@pytest.mark.parametrize("name", ["OK", "domains", "ready-1", "okay"])
def test_names_near_the_answers_keys_load(name: str) -> None:
    config = parse(HEAD + POOL.format(name=name) + f"    alias: [{name}-alias]\n")
    assert config.resolve(name) == (name,) and config.resolve(f"{name}-alias") == (name,)


def test_a_canonical_object_naming_a_pool_like_an_answer_key_still_loads() -> None:
    """A config an earlier release pushed keeps loading after an upgrade: the check is the
    validation's, as the alias rule's."""
    document = json.loads(config_module.canonical_json(parse(HEAD + POOL.format(name="a") + "    alias: [x]\n")))
    document["pools"][0]["name"], document["pools"][0]["alias"] = "ready", ["domain"]
    assert from_text(json.dumps(document)).resolve("domain") == ("ready",)


@pytest.mark.parametrize("alias", ["linux", "centos-7.2-x86_64", "Win_2022", ".hidden", "x" * 100, "pool-2"])
def test_an_alias_a_request_can_name_loads_and_resolves(alias: str) -> None:
    config = parse(HEAD + POOL.format(name="a") + f"    alias: {json.dumps(alias)}\n")
    assert config.resolve(alias) == ("a",)


ONE_WAY = "must read a value in one way only"
NOTHING = "must not repeat a part that can match nothing"


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"^(https?://)?([\w.-]+)+/", ONE_WAY), (r"(a+)+", ONE_WAY), (r"(\w+\s?)+$", ONE_WAY), (r"((a+))*", ONE_WAY),
    (r"(a+?){2,}", ONE_WAY), (r"^v((\.?\d+)+)$", ONE_WAY), (r"(?>(\w+))+x", ONE_WAY),
    (r"(.*)*", NOTHING), (r"(?:a*b?)+", NOTHING), (r"(a|)*", NOTHING),
    # Passed the check of nested repetition, each still 0.7 to 1.3 s of CPU per request on a value
    # of 23 to 255 characters (exponential or n^3 and more):
    (r"(a|aa)+$", ONE_WAY), (r"(a|a)*$", ONE_WAY), (r"(.*a)*$", ONE_WAY), (r"\w*\w*\w*!", ONE_WAY),
    (r"[\w.]*\.[\w.]*!", ONE_WAY), (r"(.*)-(.*)!", ONE_WAY), (r"(?i)A*a*!", ONE_WAY),
    (r"\w*\w*\w*\w*\w*!", "must hold at most 3 repetitions (*, +, {m,n}), got 5"),
    (r"(a)\1", "must not hold a backreference"), (r"x|(?=(a+)+)", "must not hold a lookaround"),
    (r"(?<!a)b", "must not hold a lookaround"), (r"(a)?(?(1)b|c)", "must not hold a conditional group"),
    ("a" * 201, "must be at most 200 characters, got 201"),
    ("[ab]" * 25, "must match at most 24 characters but for repetitions"),
    ("(" * 7 + "x{16}" + "){16}" * 6 + ")", "must match at most 24 characters but for repetitions"),
    ("(?:" * 7 + "){16}" * 7, "must match at most 24 characters but for repetitions, and be simpler than"),
])
def test_a_tagfilter_re_may_spend_long_on_is_refused(pattern: str, reason: str) -> None:
    r"""A tagfilter applies to every tag value a caller sends (PUT /vm/<host>, no token needed):
    with ``^(https?://)?([\w.-]+)+/``, 24 letters and a ``!`` held the API function 15 s, each
    letter more doubling it, so one request kept a function (a local worker's loop) busy until
    its timeout. A pattern the analysis (chalicelib/tagfilter.py) cannot bound is refused at load."""
    text = HEAD + POOL.format(name="a") + f":tagfilter:\n  url: {json.dumps(pattern)}\n"
    problem, = problems_of(text)
    assert problem.startswith(f"tagfilter.url: {reason}"), problem


@pytest.mark.parametrize(("pattern", "value", "kept"), [
    (r"(.*)\/", "https://jenkins.example.com/job/42/", "https://jenkins.example.com/job/42"),  # vmpooler's example
    (r"^v(\d+(\.\d+)*)", "v1.2.3", "1.2.3.3"),
    (r"^(https?://)?([\w.-]+)/", "https://example.com/x", "https://example.com"),
    (r"([^-]*)-(.*)", "ci-42-b", "ci42-b"),
    (r"(\w|\d)+$", "x 42", "2"),  # re reads the branch as one set, [\w\d]
    (r"([0-9a-f]{8})-[0-9a-f]{4}", "id 0123abcd-ef01", "0123abcd"),
    (r"(?i)^(JOB)-(\d{1,4})$", "job-42", "job42"),
])
def test_a_tagfilter_reading_values_one_way_loads(pattern: str, value: str, kept: str) -> None:
    from chalicelib.api.vms import _filter_tag

    config = parse(HEAD + POOL.format(name="a") + f":tagfilter:\n  url: {json.dumps(pattern)}\n")
    assert _filter_tag(value, config.tagfilter["url"]) == kept


def test_a_canonical_object_holding_a_refused_tagfilter_still_loads() -> None:
    """A tagfilter an earlier release pushed (``(a|aa)+$``, refused by this one's validation) keeps
    loading in the upgraded functions, as docs/deploy.md says; before, they refused the whole
    pushed config (``tagfilter.url: must not repeat ...`` raised from the canonical read too)."""
    document = json.loads(config_module.canonical_json(parse(HEAD + POOL.format(name="a"))))
    document["tagfilter"] = {"url": "(a|aa)+$", "job": "(a+)+"}
    assert dict(from_text(json.dumps(document)).tagfilter) == {"url": "(a|aa)+$", "job": "(a+)+"}
    document["tagfilter"] = {"url": "("}
    with pytest.raises(ConfigError, match=r"tagfilter\.url: must be a regular expression"):
        from_text(json.dumps(document))


def test_a_refresh_from_the_bucket_keeps_the_last_good_config_on_a_hostile_one() -> None:
    good = parse(HEAD + POOL.format(name="a"))
    hostile = [billion_laughs(), HEAD + POOL.format(name="a") + "    alias: " + "[" * 100_000 + "]" * 100_000,
               json.dumps({config_module.CANONICAL_FORMAT_KEY: 1, "x": [[[[[[]]]]]] * 2})[:-1]
               + ', "y": ' + "[" * 5000 + "]" * 5000 + "}"]
    hostile.append(json.dumps({config_module.CANONICAL_FORMAT_KEY: 1, "x": "x" * 16 * 1024 * 1024}))
    # A YAML object put there by hand: a value that contains itself (before, a RecursionError out
    # of every function's refresh), a pool's size written twice (before, the last one served).
    hostile += [HEAD + POOL.format(name="a") + "    alias: &x [*x]\n", HEAD + POOL.format(name="a") + "    size: 5\n"]
    objects = iter((text, f"etag-{n}") for n, text in enumerate(hostile))
    source = ConfigSource(good, lambda etag: next(objects), FakeClock(), refresh_seconds=0)
    for _ in hostile:
        assert source.current() is good


@pytest.mark.parametrize("prefix", ["CI-", "ci_", "ci:{x}*", "c i", "çi-", "-ci", "c" * 58])
def test_a_prefix_that_cannot_start_a_hostname_is_refused(prefix: str) -> None:
    """VM names are the prefix and random characters, and the API reads a hostname lower-cased and
    as a DNS name: before, a VM named from such a prefix (``CI-dusty-otter``, ``ci_dusty-otter``)
    could be checked out but never returned, extended or looked at (404 or 400), and a Redis key
    was built from ``ci:{x}*``."""
    text = ":config:\n  prefix: " + json.dumps(prefix) + "\n" + HEAD + POOL.format(name="a")
    shown = f'"{prefix}"'
    assert problems_of(text) == [
        f"config.prefix: must be lower-case letters, digits and '-' (at most 57, not first), got {shown}"]


@pytest.mark.parametrize("prefix", ["", "ci-", "ci", "vm-2024-", "c" * 57])
def test_a_prefix_of_a_hostname_loads(prefix: str) -> None:
    text = ":config:\n  prefix: " + json.dumps(prefix) + "\n" + HEAD + POOL.format(name="a")
    assert parse(text).service.prefix == prefix


@pytest.mark.parametrize("where", ["service", "pool"])
@pytest.mark.parametrize("domain", ["example .com", "example.com\nX-Injected: 1", "a..b", "-a.com",
                                    "x" * 64 + ".com", ("a" * 60 + ".") * 5 + "com"],
                         ids=["space", "line-break", "empty-label", "leading-hyphen", "long-label", "over-253"])
def test_a_domain_that_is_not_a_dns_name_is_refused(where: str, domain: str) -> None:
    # Before: it loaded and every checkout answered an fqdn no resolver could look up (a 1 MB
    # domain went into every answer); with a DNS plugin, every record failed at run time.
    text = HEAD + POOL.format(name="a")
    if where == "service":
        text = f":config:\n  domain: {json.dumps(domain)}\n" + text
    else:
        text += f"    domain: {json.dumps(domain)}\n"
    [problem] = problems_of(text)
    assert "domain" in problem and "must be a DNS name" in problem


@pytest.mark.parametrize(("where", "prefix", "longest"), [
    ("pool", "", 15), ("service", "", 15), ("dns_configs", "", 15), ("pool", "p" * 40 + "-", 47)])
def test_a_domain_that_leaves_no_room_for_vm_names_is_refused(where: str, prefix: str, longest: int) -> None:
    # Before: it loaded, and each new VM whose name made <name>.<domain> longer than DNS allows
    # (253 characters) was cloned, never published (NameTooLong), and destroyed after its
    # timeout: a lottery on the name's length, VMs made for nothing.
    room = 253 - 1 - longest  # the longest domain a VM name still fits in front of
    fits, too_long = ("a" * 59 + ".") * 3 + "b" * (room - 180), ("a" * 59 + ".") * 3 + "b" * (room - 179)
    assert len(fits) == room

    def config_with(domain: str) -> str:
        text = f":config:\n  prefix: {json.dumps(prefix)}\n"
        if where == "service":
            return text.replace("\n", f"\n  domain: {domain}\n", 1) + HEAD + POOL.format(name="a")
        if where == "dns_configs":
            return (text + f":dns_configs:\n  d:\n    dns_class: route53\n    domain: {domain}\n"
                    "    hosted_zone_id: Z1\n" + HEAD + POOL.format(name="a") + "    dns_plugin: d\n")
        return text + HEAD + POOL.format(name="a") + f"    domain: {domain}\n"

    assert from_text(config_with(fits)).pools[0].domain.rstrip(".") == fits
    assert from_text(config_with(fits + ".")).pools[0].domain.rstrip(".") == fits
    [problem] = problems_of(config_with(too_long))
    assert problem == (f"pools[0].domain: {len(too_long)} characters leave no room for VM names: "
                       f"{longest} characters, a '.' and the domain must fit in 253")


def test_a_domain_with_a_final_dot_loads() -> None:
    pool = POOL.format(name="a") + "    domain: pool.example.com\n"
    config = parse(":config:\n  domain: example.com.\n" + HEAD + pool)
    assert (config.service.domain, config.pools[0].domain) == ("example.com.", "pool.example.com")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "'1e999'"])
@pytest.mark.parametrize("key", ["check_loop_delay_min", "clone_poll_interval"])
def test_a_delay_that_is_not_a_finite_number_is_refused(key: str, value: str) -> None:
    # Before: loaded; NaN compares false with every bound, so a NaN delay passed the minimum and
    # reached the scheduler's timer, and an infinite one never ended.
    [problem] = problems_of(f":config:\n  {key}: {value}\n" + HEAD + POOL.format(name="a"))
    assert key in problem and "finite number" in problem


def test_a_provider_name_that_would_be_part_of_a_redis_key_is_refused() -> None:
    """Its name is in the provider's purge lease key (and the dummy provider's keys): before,
    ``a:{b}*`` loaded and put ``:{}*`` into them."""
    text = ':providers:\n  "a:{b}*": {provider_class: dummy}\n:pools:\n  - {name: p, size: 1, provider: dummy}\n'
    assert problems_of(text) == [
        'providers.a:{b}*: a provider\'s name must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, got "a:{b}*"']


def test_a_token_ttl_past_any_date_is_refused() -> None:
    """token_ttl: 100000000 (hours) loaded; a token's expiry, a date past the year 9999, was a
    500 at every use of every token (listing, GET /token/<t>, any VM route with the token)."""
    [problem] = problems_of(":config:\n  token_ttl: 100000000\n" + HEAD + POOL.format(name="a"))
    assert "token_ttl" in problem and "876000" in problem


@pytest.mark.parametrize("key", ["vm_lifetime", "vm_lifetime_auth", "max_lifetime_upper_limit"])
def test_a_lifetime_past_any_date_is_refused(key: str) -> None:
    """vm_lifetime: 100000000 (hours) loaded; GET /vm/<host> of every VM checked out was a 500
    (its end time, a date past the year 9999). max_lifetime_upper_limit as large let a PUT of such
    a lifetime through, with the same 500 after it."""
    [problem] = problems_of(f":config:\n  {key}: 100000000\n" + HEAD + POOL.format(name="a"))
    assert key in problem and "876000" in problem
