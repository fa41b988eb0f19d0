"""GET /status (and its views), /poolstat, /totalrunning, /summary (ranges and sub-routes) and
/config, which must never show a secret."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Callable

import pytest

import app as app_module
from chalicelib.api.vms import MAX_TAG_VALUE
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker
from chalicelib.store import DurationSample
from chalicelib.timestamps import day_of
from tests.api.configs import CONFIG_YAML, LDAP_PASSWORD, PROVIDER_PASSWORD, REDIS_PASSWORD
from tests.harness import Harness, Reply
from tests.support import RecordingQueue

OK_MESSAGE = "Battle station fully armed and operational."


def _today(stack: Harness) -> date:
    return date.fromisoformat(day_of(stack.clock.now()))


# --- /status ------------------------------------------------------------------------------------


def test_status_shows_every_section_sorted(full: Harness) -> None:
    full.checkout("pool1")
    reply = full.get("/api/v3/status")
    assert reply.status == 200
    body = reply.json
    assert list(body) == ["boot", "capacity", "clone", "pools", "queue", "status"]
    assert body["capacity"] == {"current": 4, "total": 5, "percent": 80.0}
    assert body["pools"]["pool1"] == {"ready": 1, "running": 1, "pending": 0, "max": 2,
                                      "lastBoot": body["pools"]["pool1"]["lastBoot"], "alias": ["linux"],
                                      "size_reason": "config"}
    assert body["pools"]["pool1"]["lastBoot"].endswith(" +0000")
    # vmpooler's order (ready, running, pending, max, lastBoot, alias), our own key after it.
    assert list(body["pools"]["pool1"]) == ["ready", "running", "pending", "max", "lastBoot", "alias", "size_reason"]
    assert "alias" not in body["pools"]["pool3"]
    assert body["queue"] == {"requested": 0, "pending": 0, "cloning": 0, "booting": 0, "ready": 4,
                             "running": 1, "completed": 0, "total": 5}
    assert body["clone"]["count"] == {"total": 5} and body["boot"]["count"] == {"total": 5}
    assert (body["status"]["ok"], body["status"]["message"]) == (True, OK_MESSAGE)
    assert "empty" not in body["status"]


def test_a_pool_that_never_booted_a_vm_shows_last_boot_empty_as_vmpooler(stack: Harness) -> None:
    """vmpooler 3.9.1 reads every pool's lastboot field in one pipeline
    (``get_list_across_pools_redis_hget``, since 0.10.0) and answers ``res[i].to_s``: a pool with no
    field shows ``""``, never null. Before, null here (a 3 December change read the field as
    absent), so a client script doing vmpooler's ``pool['lastBoot'].empty?`` raised
    NoMethodError on nil; and the type changed from a string once the pool booted a VM."""
    pools = stack.get("/api/v3/status").json["pools"]
    assert pools["pool1"]["lastBoot"] == ""
    stack.fill("pool1")
    assert stack.get("/api/v3/status").json["pools"]["pool1"]["lastBoot"].endswith(" +0000")


def test_status_names_empty_pools(stack: Harness) -> None:
    stack.fill("pool1", "pool2")
    status = stack.get("/api/v3/status").json["status"]
    assert status["ok"] is False
    assert status["message"] == "Found 1 empty pools."
    assert status["empty"] == ["pool3"]


def test_status_flags_a_pool_whose_clones_keep_failing(make_stack: Callable[..., Harness]) -> None:
    """A pool whose clones fail looked like any other pool refilling (ready below size, some
    pending) until it ran empty: nothing in /status, so nothing on the dashboard, said its clones
    were failing. Its entry now counts the clones failed in a row (its clone backoff)."""
    stack = make_stack(CONFIG_YAML.replace("    size: 1\n", "    size: 1\n    createvm_fail_percent: 100\n"))
    stack.fill("pool1", "pool2")
    stack.run_passes("pool3", passes=3)
    pools = stack.get("/api/v3/status").json["pools"]
    assert pools["pool3"]["clone_failures"] >= 2
    assert "clone_failures" not in pools["pool1"] and "clone_failures" not in pools["pool2"]
    assert stack.get("/api/v3/status?view=capacity").json.keys() == {"capacity", "status"}


@pytest.mark.parametrize("view, keys", [
    ("capacity,queue", ["capacity", "queue", "status"]),
    ("pools", ["pools", "status"]),
    ("boot, clone", ["boot", "clone", "status"]),
    ("", ["boot", "capacity", "clone", "pools", "queue", "status"]),  # ?view= with no value: all
    ("nosuchview", ["status"]),
])
def test_status_views(stack: Harness, view: str, keys: list[str]) -> None:
    stack.fill("pool1", "pool2")
    body = stack.get(f"/api/v3/status?view={view}").json
    assert list(body) == keys
    if not view:
        assert stack.get("/api/v3/status?view").json.keys() == body.keys()
    # the empty-pool check only runs when the pools are shown
    assert body["status"]["ok"] is ("pools" not in keys)


def test_status_capacity_percent_is_0_without_capacity(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG_YAML.replace("size: 2", "size: 0").replace("size: 1", "size: 0"))
    body = stack.get("/api/v3/status?view=capacity,pools").json
    assert body["capacity"] == {"current": 0, "total": 0, "percent": 0}
    assert body["status"]["ok"] is True  # pools of size 0 are not empty


def test_status_reads_do_not_change_state(full: Harness) -> None:
    before = full.redis_state()
    for path in ("/api/v3/status", "/api/v3/poolstat?pool=linux", "/api/v3/totalrunning",
                 "/api/v3/summary", "/api/v3/config", "/api/v3/vm"):
        assert full.get(path).status == 200
    assert full.redis_state() == before


# --- /poolstat and /totalrunning ----------------------------------------------------------------


@pytest.mark.parametrize("query, pools", [
    ("?pool=pool1", ["pool1"]),
    ("?pool=linux", ["pool1", "pool2"]),
    ("?pool=two,pool3", ["pool2", "pool3"]),
    ("?pool=nosuchpool", []),
    ("", []),
])
def test_poolstat(full: Harness, query: str, pools: list[str]) -> None:
    body = full.get(f"/api/v3/poolstat{query}").json
    assert list(body["pools"]) == pools
    if "pool1" in pools:
        assert body["pools"]["pool1"] == {"max": 2, "ready": 2, "alias": ["linux"], "size_reason": "config"}


def test_poolstat_keys_come_in_vmpoolers_order(full: Harness) -> None:
    """vmpooler writes ``max``, then ``alias`` (when the pool has one), then ``ready``: a client
    reading the body as text (a diff against vmpooler's answer, a regex) sees the same order;
    our extra ``size_reason`` comes last."""
    raw = full.get("/api/v3/poolstat?pool=pool1,pool3").raw
    pools = json.loads(raw)["pools"]
    assert list(pools["pool1"]) == ["max", "alias", "ready", "size_reason"]
    assert raw.index(b'"max"') < raw.index(b'"alias"') < raw.index(b'"ready"') < raw.index(b'"size_reason"')
    assert list(pools["pool3"]) == ["max", "ready", "size_reason"]  # no alias: vmpooler writes none


def test_totalrunning(full: Harness) -> None:
    assert full.get("/api/v3/totalrunning").json == {"running": 0}
    full.post("/api/v3/vm", {"pool1": 1, "pool2": 2})
    assert full.get("/api/v3/totalrunning").json == {"running": 3}


# --- /summary -----------------------------------------------------------------------------------


def test_summary_today(full: Harness) -> None:
    body = full.get("/api/v3/summary").json
    assert list(body) == ["daily", "boot", "clone", "tag"]
    assert [day["date"] for day in body["daily"]] == [_today(full).isoformat()]
    today = body["daily"][0]
    assert today["clone"]["count"]["total"] == 5
    assert today["clone"]["count"]["pool"] == {"pool1": {"total": 2}, "pool2": {"total": 2}, "pool3": {"total": 1}}
    assert body["boot"]["count"]["total"] == 5
    assert sorted(body["clone"]["duration"]["pool"]) == ["pool1", "pool2", "pool3"]


def test_summary_range_has_every_day_with_zeros_for_empty_days(full: Harness) -> None:
    today = _today(full)
    first = today - timedelta(days=2)
    body = full.get(f"/api/v3/summary?from={first.isoformat()}&to={today.isoformat()}").json
    assert [day["date"] for day in body["daily"]] == [(first + timedelta(days=n)).isoformat() for n in range(3)]
    empty = body["daily"][0]["boot"]
    assert empty == {"duration": {"average": 0, "min": 0, "max": 0, "total": 0}, "count": {"total": 0}}
    assert body["boot"]["count"]["total"] == 5
    # 'to' may be in the future; only 'from' must not be
    later = full.get(f"/api/v3/summary?from={today.isoformat()}&to={(today + timedelta(days=1)).isoformat()}")
    assert later.status == 200 and len(later.json["daily"]) == 2


@pytest.mark.parametrize("section", ["boot", "clone"])
def test_summary_sections(full: Harness, section: str) -> None:
    body = full.get(f"/api/v3/summary/{section}").json
    assert list(body) == [section, "daily"]
    assert body[section]["count"]["total"] == 5
    assert list(body["daily"][0]) == ["date", section]
    only_count = full.get(f"/api/v3/summary/{section}/count").json
    assert list(only_count[section]) == ["count"]
    assert list(only_count["daily"][0][section]) == ["count"]
    nothing = full.get(f"/api/v3/summary/{section}/nosuchkey").json
    assert nothing[section] == {} and nothing["daily"][0][section] == {}


def test_summary_tag_section_and_key(full: Harness) -> None:
    for pool in ("pool1", "pool2"):
        host = full.checkout(pool)
        full.put(f"/api/v3/vm/{host}", {"tags": {"project": "ci", "owner": pool}})
    body = full.get("/api/v3/summary/tag").json
    assert body["tag"]["project"] == {"ci": 2, "total": 2}
    assert body["tag"]["owner"] == {"pool1": 1, "pool2": 1, "total": 2}
    only = full.get("/api/v3/summary/tag/owner").json
    assert list(only["tag"]) == ["owner"]
    assert list(only["daily"][0]["tag"]) == ["owner"]


def test_a_tag_value_written_as_total_leaves_the_total_true(full: Harness) -> None:
    """``total`` is a value like any other to a caller, and shares its key with the tag's total
    in vmpooler's shape: one VM tagged ``project: total`` and two ``project: ci`` made the day's
    total 4 (the ``total`` value counted twice). The total stays the number of values counted."""
    for pool, project in (("pool1", "total"), ("pool2", "ci"), ("pool2", "ci")):
        assert full.put(f"/api/v3/vm/{full.checkout(pool)}", {"tags": {"project": project}}).status == 200
    body = full.get("/api/v3/summary/tag").json
    assert body["tag"]["project"] == {"ci": 2, "total": 3} == body["daily"][0]["tag"]["project"]
    assert full.get("/api/v3/summary").json["tag"]["project"]["total"] == 3


# --- /config ------------------------------------------------------------------------------------

SECRETS_YAML = CONFIG_YAML.replace(":pools:", f"""
:auth:
  provider: ldap
  ldap:
    host: ldap.example.com
    base: ou=users,dc=example,dc=com
    user_object: uid
    service_account_hash:
      user_dn: cn=svc,dc=example,dc=com
      password: {LDAP_PASSWORD}
:pools:""")


def test_config_shows_each_pool(full: Harness) -> None:
    body = full.get("/api/v3/config").json
    assert body["status"] == {"ok": True}
    pools = body["pool_configuration"]
    assert [pool["name"] for pool in pools] == ["pool1", "pool2", "pool3"]
    assert pools[0]["size"] == 2 and pools[0]["alias"] == ["linux"] and pools[0]["template"] == "templates/pool1"
    assert all(pool["template_ready"] is True for pool in pools)


def test_no_answer_shows_a_secret(make_stack: Callable[[str], Harness]) -> None:
    """Passwords for the provider, Redis and the LDAP service account are in the config; no
    read answers with any of them, nor with the provider's username or any password key."""
    stack = make_stack(SECRETS_YAML)
    stack.fill()
    host = stack.checkout("pool1")
    for path in ("/api/v3/config", "/api/v1/config", "/api/v3/status", "/api/v3/poolstat?pool=linux",
                 "/api/v3/summary", "/api/v3/vm", f"/api/v3/vm/{host}", f"/api/v1/vm/{host}"):
        reply = stack.get(path)
        assert reply.status == 200, path
        text = reply.raw.decode()
        for secret in (PROVIDER_PASSWORD, REDIS_PASSWORD, LDAP_PASSWORD, "password", "admin"):
            assert secret not in text, (path, secret)
    # vmpooler's GET /full_config answers all of them to anyone; it is no route here.
    assert stack.answer("GET", "/api/v3/full_config") == (404, {"ok": False})


SUMMARY_POOLS = 1000
LAMBDA_ANSWER_LIMIT = 6 * 1024 * 1024
"""Lambda's limit on a synchronous invocation's answer: a /summary above it is API Gateway's 502."""


def test_a_summary_of_many_pools_is_refused_past_the_days_that_fit_one_answer(
    make_stack: Callable[..., Harness],
) -> None:
    pools = "".join(f"  - {{name: p{n:04d}-with-a-longer-name, size: 1, provider: dummy}}\n"
                    for n in range(SUMMARY_POOLS))
    stack = make_stack(":providers:\n  :dummy: {}\n:pools:\n" + pools)
    today = _today(stack)
    for back in range(40):
        day = (today - timedelta(days=back)).isoformat()
        stack.store.record_durations(day, [DurationSample(kind, pool.name, 12.34 + back)
                                           for pool in stack.config.pools for kind in ("clone", "boot")])
    widest = None
    for days in range(1, 41):
        first = (today - timedelta(days=days - 1)).isoformat()
        reply = stack.get(f"/api/v3/summary?from={first}&to={today.isoformat()}")
        if reply.status == 400:
            assert "at most" in reply.json["error"] and str(SUMMARY_POOLS) in reply.json["error"]
            break
        assert reply.status == 200
        assert len(reply.raw) < LAMBDA_ANSWER_LIMIT, f"{days} days of {SUMMARY_POOLS} pools: {len(reply.raw):,} bytes"
        widest = days
    else:
        pytest.fail("40 days of 1,000 pools were answered whole")
    assert widest is not None and widest >= 7, "a week of a large fleet still fits"


def record_most_tags(stack: Harness, day: str) -> None:
    """The most tag statistics one day keeps (max_tag_names_per_day names of
    max_tag_values_per_day values each, of the longest allowed): what anyone may put there in an
    afternoon, since tags need no token (about 1.7 MB of /summary a day)."""
    service = stack.config.service
    for value in range(service.max_tag_values_per_day):
        tags = {f"n{name:02d}" + "x" * 47: f"{value:03d}" + "v" * 252 for name in range(service.max_tag_names_per_day)}
        stack.store.record_tags(day, tags, service.max_tag_names_per_day, service.max_tag_values_per_day)


def test_a_summary_whose_tags_would_not_fit_one_answer_is_refused(stack: Harness) -> None:
    """Four days of full tag statistics were a 7 MB answer (API Gateway's 502 past Lambda's 6 MB),
    and a year of them 600 MB read into one worker."""
    today = _today(stack)
    days = [(today - timedelta(days=back)).isoformat() for back in range(4)]
    for day in days:
        record_most_tags(stack, day)

    whole = stack.get(f"/api/v3/summary?from={days[-1]}&to={days[0]}")
    assert whole.status == 400, len(whole.raw)
    assert whole.json["error"].startswith("Date range is invalid, the tags counted in it would not fit one answer")
    one = stack.get(f"/api/v3/summary?from={days[0]}&to={days[0]}")
    assert one.status == 200 and len(one.json["tag"]) == stack.config.service.max_tag_names_per_day
    assert len(one.raw) < LAMBDA_ANSWER_LIMIT
    assert stack.get(f"/api/v3/summary/tag?from={days[-1]}&to={days[0]}").status == 400



def as_previous_release(stack: Harness, day: str) -> None:
    """Turn the day's tag counts into the layout the previous release wrote: in the day's
    durations hash (``daily:<day>``), the same fields."""
    tags_key = stack.store.keys.daily_tags(day)
    stack.client.hset(stack.store.keys.daily(day), mapping=stack.client.hgetall(tags_key))
    stack.client.delete(tags_key)


@pytest.mark.parametrize("layout", ["this release's", "previous release's"])
def test_boot_and_clone_summaries_of_days_full_of_tags_carry_none_and_are_not_refused(
    stack: Harness, layout: str,
) -> None:
    """/summary/boot and /summary/clone (what the dashboard polls) show no tags, but read the
    whole day's hash, tags included: a range was refused (400) because of tags they do not show,
    and /status read up to 1.7 MB of tag counts a poll. They now read durations only, from days
    in either layout."""
    today = _today(stack)
    days = [(today - timedelta(days=back)).isoformat() for back in range(4)]
    for day in days:
        stack.store.record_durations(day, [DurationSample("clone", "pool1", 30.0),
                                           DurationSample("boot", "pool1", 9.5)])
        record_most_tags(stack, day)
        if layout == "previous release's":
            as_previous_release(stack, day)

    for section, seconds in (("clone", 30), ("boot", 9.5)):
        reply = stack.get(f"/api/v3/summary/{section}?from={days[-1]}&to={days[0]}")
        assert reply.status == 200, reply.json
        assert reply.json[section]["duration"]["pool"]["pool1"]["average"] == seconds
        assert reply.json[section]["count"]["total"] == 4
        assert len(reply.raw) < 2000
    status = stack.get("/api/v3/status?view=boot,clone")
    assert status.json["clone"]["count"]["total"] == 1 and len(status.raw) < 1000
    # the tags themselves are still counted and shown where they are asked for
    assert stack.get(f"/api/v3/summary?from={days[-1]}&to={days[0]}").status == 400
    whole_day = stack.get(f"/api/v3/summary/tag?from={days[0]}&to={days[0]}").json
    assert len(whole_day["tag"]) == stack.config.service.max_tag_names_per_day


def test_a_day_the_previous_release_counted_tags_in_is_read_alike_and_kept_within_its_bounds(
    stack: Harness,
) -> None:
    """Tag counts now have a key of their own; a day the previous release recorded keeps them in
    the durations hash for up to 400 days. Such a day answers what it answered,
    and the first tag counted on it moves its counts to the new key through the same bounds (a
    day holds no more distinct names and values than one layout alone would)."""
    service = stack.config.service
    today = _today(stack).isoformat()
    stack.store.record_durations(today, [DurationSample("clone", "pool1", 30.0)])
    record_most_tags(stack, today)
    before = {path: stack.get(path).json for path in ("/api/v3/summary", "/api/v3/summary/tag")}
    as_previous_release(stack, today)
    assert {path: stack.get(path).json for path in before} == before

    stack.store.record_tags(today, {"n00" + "x" * 47: "000" + "v" * 252, "newname": "ci"},
                            service.max_tag_names_per_day, service.max_tag_values_per_day)
    left = stack.client.hgetall(stack.store.keys.daily(today))
    assert sorted(left) == ["clone:count", "clone:max", "clone:min", "clone:pool:pool1:count", "clone:pool:pool1:max",
                            "clone:pool:pool1:min", "clone:pool:pool1:total", "clone:total"]
    tags = stack.get("/api/v3/summary").json["tag"]
    assert len(tags) == service.max_tag_names_per_day + 1  # the new name counted as '(other)'
    assert tags["(other)"] == {"ci": 1, "total": 1}
    assert tags["n00" + "x" * 47]["000" + "v" * 252] == 2
    counted = service.max_tag_names_per_day * service.max_tag_values_per_day
    assert sum(entry["total"] for entry in tags.values()) == counted + 2


def test_tag_counts_of_a_day_in_both_layouts_are_added(stack: Harness) -> None:
    """While the previous release still runs beside this one (a deploy), both may count the same
    day: /summary shows the sum."""
    today = _today(stack).isoformat()
    stack.store.record_tags(today, {"project": "ci"}, 50, 100)
    stack.client.hset(stack.store.keys.daily(today), mapping={"tag:project:ci": 2, "tag:project:web": 1})
    assert stack.get("/api/v3/summary/tag").json["tag"] == {"project": {"ci": 3, "web": 1, "total": 4}}


def test_durations_are_read_from_a_redis_that_never_ran_the_script(full: Harness) -> None:
    """A new primary after a failover has no scripts loaded: /status and /summary/clone load it."""
    full.client.script_flush()
    assert full.get("/api/v3/status?view=clone").json["clone"]["count"]["total"] == 5
    full.client.script_flush()
    assert full.get("/api/v3/summary/clone").json["clone"]["count"]["total"] == 5


ANY_TAG_CONFIG = """\
config: {domain: example.com}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: pool1, size: 2, provider: dummy}
"""
"""No ``allowed_tags``: any caller may tag a running VM with any name (the demo config's way)."""


def lambda_answer_bytes(reply: Reply) -> int:
    """What the answer takes in Lambda's payload to API Gateway: its body escaped once more, as a
    JSON string."""
    return len(json.dumps(reply.raw.decode()))


def test_tag_values_of_control_characters_cannot_swell_a_day_past_one_answer(
    make_stack: Callable[..., Harness],
) -> None:
    """A tag value may hold whitespace (vmpooler's ``\\s``), and a vertical tab is one of a
    value's 255 characters but six in JSON (``\\u000b``). Two VMs tagged through PUT /vm/<host>
    (no token needed) filled one day with such values: /summary was 15 MB, past Lambda's 6 MB (API
    Gateway's 502 for every caller and the dashboard until the day's statistics expire). A value
    is now measured as JSON shows it."""
    stack = make_stack(ANY_TAG_CONFIG)
    stack.fill()
    service = stack.config.service
    names = [f"n{name:02d}" + "x" * 47 for name in range(service.max_tag_names_per_day)]
    hosts = [stack.checkout("pool1"), stack.checkout("pool1")]
    per_host = (names[:service.max_tags_per_vm], names[service.max_tags_per_vm:])

    refused = stack.put(f"/api/v3/vm/{hosts[0]}", {"tags": {names[0]: "000" + "\v" * 252}})
    assert (refused.status, refused.json["failure"]) == (400, ["Tag value too long"])
    assert stack.describe(hosts[0])["tags"] == {}
    longest = "\v" * ((MAX_TAG_VALUE - 3) // 6)  # with three digits, 255 characters of JSON
    for value in range(service.max_tag_values_per_day):
        for host, tag_names in zip(hosts, per_host, strict=True):
            tagged = stack.put(f"/api/v3/vm/{host}", {"tags": {name: f"{value:03d}{longest}" for name in tag_names}})
            assert tagged.status == 200, tagged.raw

    summary = stack.get("/api/v3/summary")
    assert summary.status == 200
    assert len(summary.json["tag"]) == service.max_tag_names_per_day
    assert all(len(values) == service.max_tag_values_per_day + 1 for values in summary.json["tag"].values())
    assert lambda_answer_bytes(summary) < LAMBDA_ANSWER_LIMIT


def test_a_day_whose_tags_are_longer_as_json_is_measured_as_json(stack: Harness) -> None:
    """Tag statistics recorded before values were measured as JSON (a day keeps them a while):
    /summary measured their names and values by their length as written and answered 15 MB; now
    a range they do not fit in is refused, as any other."""
    service = stack.config.service
    today = _today(stack).isoformat()
    for value in range(service.max_tag_values_per_day):
        tags = {f"n{name:02d}": f"{value:03d}" + "\v" * 252 for name in range(service.max_tag_names_per_day)}
        stack.store.record_tags(today, tags, service.max_tag_names_per_day, service.max_tag_values_per_day)

    summary = stack.get("/api/v3/summary")
    assert summary.status == 400, lambda_answer_bytes(summary)
    assert summary.json["error"].startswith("Date range is invalid, the tags counted in it would not fit one answer")


BROKEN_FIGURES: dict[str, Callable[[dict], object]] = {
    "boot:min": lambda body: body["daily"][0]["boot"]["duration"]["min"],
    "boot:max": lambda body: body["daily"][0]["boot"]["duration"]["max"],
    "boot:total": lambda body: body["daily"][0]["boot"]["duration"]["total"],
    "boot:pool:pool1:count": lambda body: body["daily"][0]["boot"]["count"]["pool"]["pool1"]["total"],
    "boot:pool:pool1:max": lambda body: body["daily"][0]["boot"]["duration"]["pool"]["pool1"]["max"],
    "tag:project:ci": lambda body: body["tag"]["project"].get("ci", 0),
}
"""A figure of today's statistics, and where /summary shows it."""


@pytest.mark.parametrize("broken", ["nan", "-inf", "not a number"])
@pytest.mark.parametrize("figure", list(BROKEN_FIGURES))
def test_a_figure_broken_in_redis_reads_as_absent(full: Harness, figure: str, broken: str) -> None:
    """A duration or tag count written into Redis by hand as ``nan``, ``inf`` or text: /summary
    and /status (the dashboard's feeds) were a 500 (``int(nan)``); the broken figure now reads as
    none (0), and the others are still shown."""
    host = full.checkout("pool1")
    full.put(f"/api/v3/vm/{host}", {"tags": {"project": "ci", "owner": "me"}})
    today = day_of(full.clock.now())
    kept_in = full.store.keys.daily_tags(today) if figure.startswith("tag:") else full.store.keys.daily(today)
    full.client.hset(kept_in, figure, broken)
    summary = full.get("/api/v3/summary")
    status = full.get("/api/v3/status")
    assert (summary.status, status.status) == (200, 200), (summary.raw[:300], status.raw[:300])
    assert BROKEN_FIGURES[figure](summary.json) == 0
    assert summary.json["daily"][0]["boot"]["count"]["total"] == 5 == status.json["boot"]["count"]["total"]
    assert summary.json["daily"][0]["clone"]["count"]["total"] == 5
    assert summary.json["tag"]["owner"] == {"me": 1, "total": 1}
    for section in ("boot", "tag"):
        assert full.get(f"/api/v3/summary/{section}").status == 200


def test_a_broken_count_of_samples_reads_as_none(full: Harness) -> None:
    """``boot:count`` broken: the day shows no boots (its average, over no samples, is 0)."""
    full.client.hset(full.store.keys.daily(day_of(full.clock.now())), "boot:count", "nan")
    summary, status = full.get("/api/v3/summary"), full.get("/api/v3/status")
    assert (summary.status, status.status) == (200, 200)
    assert summary.json["daily"][0]["boot"]["count"] == {"total": 0} == status.json["boot"]["count"]
    assert status.json["boot"]["duration"]["average"] == 0


def test_a_day_filled_to_the_most_tags_the_config_allows_fits_one_summary(make_stack: Callable[..., Harness]) -> None:
    """max_tag_names_per_day and max_tag_values_per_day each took up to 10,000: at 100 x 100 a
    day of the longest names and values was refused as a range too long for one answer, so
    today's /summary answered 400 all day. A config whose day may not fit is now refused at load
    (tests/core/test_config.py); at the most it accepts, a full day of the longest tags fits."""
    names, values = 63, 99  # (63 + 1) x (99 + 1) = MAX_TAG_COUNTS_PER_DAY
    stack = make_stack(ANY_TAG_CONFIG.replace(
        "{domain: example.com}",
        f"{{domain: example.com, max_tag_names_per_day: {names}, max_tag_values_per_day: {values}}}"))
    today = _today(stack).isoformat()
    longest = "\v" * ((MAX_TAG_VALUE - 3) // 6)  # with three digits, 255 characters of JSON
    for value in range(values + 1):  # the last is counted as '(other)'
        tags = {f"n{name:03d}" + "x" * 46: f"{value:03d}{longest}" for name in range(names + 1)}
        stack.store.record_tags(today, tags, names, values)

    summary = stack.get("/api/v3/summary")
    assert summary.status == 200, summary.raw[:300]
    assert len(summary.json["tag"]) == names + 1
    assert lambda_answer_bytes(summary) < LAMBDA_ANSWER_LIMIT


def test_uptime_is_the_services_whichever_process_answers(make_harness, clock, redis_client) -> None:
    """Each process (a local worker, a Lambda instance) reported its own uptime, from when it was
    built: the dashboard's "API up" jumped between an hour and a minute from one refresh to the
    next. Now every process answers since the service started, as its scheduler's first tick
    recorded it (before that tick, each its own)."""

    def uptime(process: Harness) -> float:
        app_module._services = process.services  # the process that answers this request
        return process.get("/api/v3/status").json["status"]["uptime"]

    first = make_harness(parse(CONFIG_YAML))
    clock.advance(30)
    assert uptime(first) == 30.0
    Ticker().tick(first.services, RecordingQueue())
    clock.advance(3600)
    later = make_harness(parse(CONFIG_YAML))  # a worker started an hour on, as a new Lambda instance
    clock.advance(60)
    assert uptime(later) == uptime(first) == 3660.0
    Ticker().tick(later.services, RecordingQueue())  # every tick: the start stays
    assert uptime(later) == uptime(first) == 3660.0
    redis_client.set(first.services.store.keys.started, "nan")  # broken by hand: a tick replaces it
    Ticker().tick(later.services, RecordingQueue())
    assert float(redis_client.get(first.services.store.keys.started)) == clock.now()
    assert uptime(make_harness(parse(CONFIG_YAML))) == 0.0  # read by a process started since
