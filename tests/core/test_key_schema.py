"""One key schema (issue 11): store/keys.py names every Redis key.

Lua scripts touch only the keys given in ``KEYS[]``, except the few of ``keys.DERIVED_KEYS``,
which fill templates made by keys.py with ``key_of``; Python code outside keys.py builds no key
name. Both are checked on the source, so a new script or module cannot slip past.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
from pathlib import Path

import pytest

from chalicelib.store import keys as keys_module
from chalicelib.store.keys import DEFAULT_PREFIX, DERIVED_KEYS, KEY_PART, Keys
from chalicelib.store.scripts import script_source

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = ROOT / "chalicelib" / "store" / "lua"
SHARED_ONLY = {"finite", "key_of", "quota", "record_fields", "request_sets", "token_live", "vm_owner"}
"""Files of lua/ that are never run alone: prepended to others (scripts.script_source)."""
SCRIPTS = sorted(path.stem for path in LUA_DIR.glob("*.lua") if path.stem not in SHARED_ONLY)
PYTHON_SOURCES = [ROOT / "app.py", *(ROOT / folder for folder in ("chalicelib", "local", "infra"))]

# --- Lua -------------------------------------------------------------------------------------

_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*,")
_NUMKEYS_FIRST = {"ZINTERCARD", "SINTERCARD", "ZINTER", "ZUNION", "ZDIFF"}  # their keys follow a count
_NO_KEYS = {"INFO"}  # its argument is a section name (names_hold.lua reads the replication id)
_ASSIGNMENT = re.compile(r"^\s*(?:local\s+)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=(?!=)\s*(.+)$")


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses, brackets and braces."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return parts


def _first_argument(source: str, start: int) -> str:
    """The argument that begins at ``start`` (up to its comma or the call's closing parenthesis)."""
    depth = 0
    for index in range(start, len(source)):
        char = source[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                return source[start:index].strip()
            depth -= 1
        elif char == "," and depth == 0:
            return source[start:index].strip()
    return source[start:].strip()


def _rest_of_call(source: str, start: int) -> str:
    """The arguments that begin at ``start``, up to the call's closing parenthesis."""
    depth = 0
    for index in range(start, len(source)):
        if source[index] in "([{":
            depth += 1
        elif source[index] in ")]}":
            if depth == 0:
                return source[start:index]
            depth -= 1
    return source[start:]


def _is_single_term(expression: str, opening: str) -> bool:
    """Whether ``expression`` is one ``<opening>...`` term whose bracket closes at its end."""
    if not expression.startswith(opening):
        return False
    depth = 0
    for index in range(len(opening) - 1, len(expression)):
        if expression[index] in "([":
            depth += 1
        elif expression[index] in ")]":
            depth -= 1
        if depth == 0:
            return index == len(expression) - 1
    return False


def _without_comments(source: str) -> str:
    """Comments dropped; a statement continued after a trailing ``=`` or ``,`` joined into one line."""
    lines = [re.sub(r"--.*$", "", line).rstrip() for line in source.splitlines()]
    return re.sub(r"([=,])\n\s*", r"\1 ", "\n".join(lines))


def key_violations(source: str, may_derive: bool) -> list[str]:
    """Every ``redis.call`` of ``source`` whose key is not ``KEYS[...]``, a local holding only
    such keys, or (when ``may_derive``) ``key_of(...)``."""
    source = _without_comments(source)

    def is_key(expression: str) -> bool:
        return _is_single_term(expression, "KEYS[") or (may_derive and _is_single_term(expression, "key_of("))

    bound: dict[str, bool] = {}
    for loop in re.finditer(r"\bfor\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(KEYS\)", source):
        bound[loop.group(1)] = True
    for line in source.splitlines():
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        names = [name.strip() for name in match.group(1).split(",")]
        values = _split_top_level(match.group(2))
        for position, name in enumerate(names):
            holds_key = position < len(values) and is_key(values[position])
            bound[name] = bound.get(name, True) and holds_key
    problems = []
    for call in _CALL.finditer(source):
        if call.group(1).upper() in _NO_KEYS:
            continue
        if call.group(1).upper() in _NUMKEYS_FIRST:  # ZINTERCARD numkeys key [key ...]
            arguments = _split_top_level(_rest_of_call(source, call.end()))
            count = int(arguments[0]) if arguments[0].isdigit() else 0
            checked = arguments[1:1 + count] if count else [arguments[0]]  # a numkeys not literal: refused
        else:
            checked = [_first_argument(source, call.end())]
        for argument in checked:
            if not (is_key(argument) or bound.get(argument, False)):
                problems.append(f"{call.group(1)} on {argument!r}")
    return problems


def test_the_checker_refuses_keys_built_in_a_script():
    """The check below can fail: a key concatenated from the prefix, from a given key, or held
    in a local built that way is refused, and key_of only where deriving is allowed."""
    assert key_violations("redis.call('GET', prefix .. 'changes')", may_derive=False)
    assert key_violations("redis.call('ZRANGE', KEYS[1] .. ':vms', 0, -1)", may_derive=False)
    assert key_violations("local key = KEYS[1]\nkey = ARGV[1] .. 'vm:' .. ARGV[2]\nredis.call('DEL', key)",
                          may_derive=False)
    assert key_violations("local vm_key = key_of(ARGV[1], h)\nredis.call('DEL', vm_key)", may_derive=False)
    assert not key_violations("local vm_key = key_of(ARGV[1], h)\nredis.call('DEL', vm_key)", may_derive=True)
    assert not key_violations("local a, b =\n  KEYS[1], KEYS[idx[p].ready]\nredis.call('ZCARD', b)",
                              may_derive=False)
    assert not key_violations("for _, key in ipairs(KEYS) do\n  redis.call('INCR', key)\nend", may_derive=False)
    assert key_violations("for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n  redis.call('DEL', key)\nend",
                          may_derive=False)
    assert not key_violations("redis.call('ZINTERCARD', 2, KEYS[1], KEYS[2])", may_derive=False)
    assert key_violations("redis.call('ZINTERCARD', 2, KEYS[1], KEYS[1] .. 'x')", may_derive=False)
    assert key_violations("redis.call('ZINTERCARD', n, KEYS[1])", may_derive=False)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_touches_only_keys_it_was_given(name):
    """No script builds a key: it uses KEYS[], or, listed in keys.DERIVED_KEYS with the reason,
    fills a template of keys.py with key_of."""
    assert key_violations(script_source(name), may_derive=name in DERIVED_KEYS) == []


def test_only_the_listed_scripts_derive_keys():
    """The exception list stays minimal: a listed script that no longer derives a key is dropped."""
    deriving = {name for name in SCRIPTS if re.search(r"\bkey_of\(", _without_comments(
        script_source(name).replace((LUA_DIR / "key_of.lua").read_text(), "")))}
    assert deriving == set(DERIVED_KEYS)


# --- Python ----------------------------------------------------------------------------------


_PART = "\x01"
"""Stands for a variable part in ``_key_templates``."""


def _key_templates() -> list[str]:
    """Every name keys.py's functions build, each variable part given as ``_PART``: those of
    ``Keys`` and the key parts its module-level functions name."""
    functions = [member for name, member in inspect.getmembers(Keys(""), inspect.ismethod)
                 if not name.startswith("_")]
    functions += [keys_module.purge_lease_name, keys_module.template_lease_name, keys_module.quota_owner,
                  keys_module.rate_limit_client]
    names = []
    for function in functions:
        count = len(inspect.signature(function).parameters)
        names.append(function(*[_PART] * count))
        if function in (keys_module.quota_owner, keys_module.rate_limit_client):
            names.append(function(None, _PART))
    return names


def _key_heads() -> set[str]:
    """How the names of keys.py begin before their first variable part ("vm:", "pool:", ...),
    and the key parts its functions name ("user:", "token:", ...)."""
    return {name.split(_PART)[0] for name in _key_templates() if _PART in name and name.split(_PART)[0]}


def key_suffixes() -> set[str]:
    """The words keys.py puts after a variable part (``:tokens`` of ``user:<user>:tokens``,
    ``:version`` of a dummy folder's key): a name ending in one may spell the key of that family
    for a shorter name, so the hostile names below end in each."""
    hashed = re.compile(r"[0-9a-f]{32}")  # template_lease_name's hash of its part: no word of a key
    return {word for name in _key_templates() for after in name.split(_PART)[1:]
            for word in after.split(":") if word and not hashed.fullmatch(word)} | set(keys_module.STATES)


def _named_prefix(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.lower().endswith("prefix")


def python_key_builders(path: Path, heads: set[str]) -> list[str]:
    """Lines of ``path`` that build a key name: the default prefix spelled out as a key, a string
    that starts like a key of keys.py followed by a variable part, or a prefix followed by one."""
    spelled_out = re.compile(re.escape(DEFAULT_PREFIX) + r"(\w|$)")

    def starts_like_a_key(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(tuple(heads))

    problems = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.JoinedStr):
            parts = list(node.values)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and spelled_out.match(node.value):
            problems.append(f"{path}:{node.lineno}: the key prefix spelled out")
            continue
        else:
            continue
        unwrapped = [part.value if isinstance(part, ast.FormattedValue) else part for part in parts]
        first = unwrapped[0]
        key_then_variable = (isinstance(first, ast.Constant) and first.value in heads and len(unwrapped) > 1
                             and not isinstance(unwrapped[1], ast.Constant))
        prefix_then_key = any(_named_prefix(before) and starts_like_a_key(after)
                              for before, after in itertools.pairwise(unwrapped))
        if key_then_variable or prefix_then_key:
            problems.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return problems


def _python_files() -> list[Path]:
    files = []
    for source in PYTHON_SOURCES:
        files += [source] if source.is_file() else sorted(source.rglob("*.py"))
    return [path for path in files if path != Path(keys_module.__file__).resolve()]


def test_the_python_checker_finds_key_names_built_elsewhere(tmp_path):
    """The check below can fail: each way code used to build keys before keys.py named them all."""
    module = tmp_path / "module.py"
    module.write_text('PREFIX = "vmpool:"\n'
                      'def ready(client, pool):\n'
                      '    return client.zcard(f"vmpool:pool:{pool}:ready")\n'
                      'def folder(prefix, name, pool):\n'
                      '    return f"{prefix}dummy:{name}:folder:{pool}"\n'
                      'def client(record):\n'
                      '    return f"token:{record.id}"\n'
                      'def lease(provider):\n'
                      '    return "user:" + provider\n'
                      'def harmless(name):\n'
                      '    return f"config: {name}", f"{name}-{name}", f"vmpool: {name}", f"{name}:{name}"\n')
    assert len(python_key_builders(module, _key_heads())) == 5


def test_no_python_code_outside_keys_py_builds_a_key_name():
    heads = _key_heads()
    assert {"vm:", "pool:", "ondemand:", "token:", "user:", "dummy:"} <= heads
    problems = [problem for path in _python_files() for problem in python_key_builders(path, heads)]
    assert problems == []


# --- keys whose part a caller chooses ---------------------------------------------------------

CALLER_REQUEST_IDS = ["build", "build:vms", "open", "open:debian-12", "open:vms", "vms", "~x", "a:b:c",
                      "f47ac10b-58cc-4372-a567-0e02b2c3d479"]


def test_no_request_id_names_a_key_of_another_request_or_pool():
    keys = Keys()
    named: dict[str, str] = {}
    pools = ["debian-12", "vms", "open", "build"]
    for pool in pools:
        named[keys.ondemand_open(pool)] = f"open set of {pool}"
    for request_id in CALLER_REQUEST_IDS:
        for key, what in ((keys.ondemand(request_id), "request"), (keys.ondemand_vms(request_id), "VM set")):
            assert key not in named, (request_id, what, named.get(key))
            named[key] = f"{what} of {request_id}"
    uuid_id = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
    assert keys.ondemand(uuid_id) == f"vmpool:ondemand:{uuid_id}"  # keys written before stay where they were


def test_no_dummy_folder_names_another_folders_version_or_change_log():
    """A pool's folder (an inventory path) may hold ``:``. Before, folder ``x:version`` was folder
    ``x``'s version counter (a string where a hash was expected: WRONGTYPE in every pass of both
    pools), and ``x:changes`` its change log."""
    keys = Keys()
    folders = ["x", "x:version", "x:changes", "~x", "vmpool/debian-12", "a:b:version"]
    named: dict[str, str] = {}
    for folder in folders:
        key = keys.dummy_folder("dummy", folder)
        for family_key, what in ((key, "folder"), (keys.dummy_folder_version(key), "version"),
                                 (keys.dummy_folder_changes(key), "change log")):
            assert family_key not in named, (folder, what, named.get(family_key))
            named[family_key] = f"{what} of {folder}"
    # keys written before stay where they were
    assert keys.dummy_folder("dummy", "vmpool/debian-12") == "vmpool:dummy:dummy:folder:vmpool/debian-12"


def test_scripts_derive_a_request_key_as_keys_py_names_it(redis_client):
    script = (LUA_DIR / "key_of.lua").read_text() + "\nreturn key_of(ARGV[1], request_part(ARGV[2]))"
    keys = Keys()
    for request_id in CALLER_REQUEST_IDS:
        assert redis_client.eval(script, 0, keys.ondemand_vms(KEY_PART), request_id) == keys.ondemand_vms(request_id)


# --- every key family against hostile names ------------------------------------------------------
# Each family is fed the names an outsider could choose, through the validator that really stands
# before it; no two different (family, name) pairs may name one key. The fragments are the words of
# other families' keys, so that joined with ``:`` they spell another family's key if a family lets
# them through unescaped (``pool:x`` as a hostname is ``vmtasks:pool:x``, a pool's task index).

FRAGMENTS = ["x", "debian-12", "pool", "pools", "purge", "open", "vms", "tokens", "token", "user", "addr",
             "in_flight", "task", "folder", "requests", "ready", "running_due", "ready_checked", "known",
             "2026-12-03", "1.2.3.4", "fe80::/64", "ip", "ondemand", "vmtasks", "lease", "wake", "~x",
             "", ":", "{x}", "{", "}", "*", " ", "stra\u00dfe", "\uff42ob", "\u0130", "\x00", "x\n", "a|b",
             "\u00e9" * 3, "y" * 300]
SUFFIXES = sorted(key_suffixes())
"""Found in keys.py, not listed: a family added there with a new suffix is fed names ending in it."""
HOSTILE_NAMES = sorted({*FRAGMENTS, *(f"{a}:{b}" for a, b in itertools.product(FRAGMENTS[:30], repeat=2)),
                        *(f"{a}:{s}" for a, s in itertools.product(FRAGMENTS, SUFFIXES)),
                        *(f"{a}:{b}:{c}" for a, b, c in itertools.product(["pool", "x", "purge"], FRAGMENTS[:12],
                                                                        ["x", *SUFFIXES]))})
DAY = "2026-12-03"


def _family_keys(keys: Keys) -> dict[str, list[tuple[str, str]]]:
    """Every key family: (name, key) for each hostile name its validator admits."""
    from chalicelib.api.http import HOSTNAME_PATTERN
    from chalicelib.api.limits import SHARED_RATE_COUNTERS
    from chalicelib.api.ondemand import REQUEST_ID_PATTERN
    from chalicelib.auth.base import canonical_user
    from chalicelib.auth.ratelimit import (
        SHARED_LOGIN_COUNTERS,
        _pair_part,
        _user_part,
        address_key,
        login_key,
        new_attempt,
    )
    from chalicelib.auth.tokens import hash_token, token_id
    from chalicelib.config import POOL_NAME_PATTERN
    from chalicelib.store.keys import purge_lease_name, quota_owner, rate_limit_client, template_lease_name
    from chalicelib.store.scripts import KeyList
    from chalicelib.store.store import Quota

    def holdings(owner: str) -> str:
        key_list = KeyList()
        return key_list.keys[Quota(owner, 1, 1, ()).payload(keys, key_list, 60, 0)["key"] - 1]

    pools = [name for name in HOSTILE_NAMES if POOL_NAME_PATTERN.match(name)]  # config.py; providers too
    # A hostname from the API matches HOSTNAME_PATTERN; one a provider's inventory lists (a VM
    # someone made in the pool's folder) is anything: it only ever names its record (vm:).
    api_hosts = [name for name in HOSTILE_NAMES if HOSTNAME_PATTERN.match(name)]
    request_ids = [name for name in HOSTILE_NAMES if REQUEST_ID_PATTERN.match(name)]
    users = sorted({canonical_user(name) for name in HOSTILE_NAMES} - {""})
    addresses = sorted({address_key(name) or "unknown" for name in HOSTILE_NAMES})
    owners = {*(quota_owner(u, "") for u in users), *(quota_owner(None, a) for a in addresses)}
    token_hashes = [hash_token(name) for name in HOSTILE_NAMES]
    login_names = sorted({login_key(u) for u in users})
    families: dict[str, list[tuple[str, str]]] = {
        "vm": [(h, keys.vm(h)) for h in HOSTILE_NAMES],
        "vm_tasks": [(h, keys.vm_tasks(h)) for h in api_hosts],
        "ondemand": [(r, keys.ondemand(r)) for r in request_ids],
        "ondemand_vms": [(r, keys.ondemand_vms(r)) for r in request_ids],
        "token": [(t, keys.token(t)) for t in token_hashes],
        "user_tokens": [(u, keys.user_tokens(u)) for u in users],
        "user_token_times": [(u, keys.user_token_times(u)) for u in users],
        # Failed logins are counted per login_key: spellings a directory binds as one name share
        # a counter by design (auth/ratelimit.py), so the family's names are the folded ones.
        "login_user": [(k, keys.login_user(_user_part(k))) for k in login_names],
        "login_address": [(a, keys.login_address(a)) for a in addresses],
        # A pair is hashed from its address and its folded name (HOSTILE_NAMES as each).
        "login_pair": [(f"{a} {k}", keys.login_pair(_pair_part(k, a)))
                       for a, k in {(address_key(name), login_key(name)) for name in HOSTILE_NAMES}],
        "login_pair_in_flight": [(k, keys.login_in_flight(keys.login_pair(_pair_part(k, None)))) for k in login_names],
        "login_user_in_flight": [(k, keys.login_in_flight(keys.login_user(_user_part(k)))) for k in login_names],
        "login_address_in_flight": [(a, keys.login_in_flight(keys.login_address(a))) for a in addresses],
        "login_attempt": [(a, keys.login_attempt(a)) for a in ("0" * 16, "f" * 16, new_attempt())],
        # A change's id is random hex the API draws (store/settle.py): a token's 32 characters, a task's 16.
        "settled": [(c, keys.settled(c)) for c in ("0" * 16, "f" * 32, new_attempt())],
        "holdings": [(o, holdings(o)) for o in owners],
        "owner_requests": [(o, Quota(o, 1, 1, ()).requests_key(keys)) for o in owners],
        "rate_limit": [(f"{c} {w}", keys.rate_limit(c, w))
                       for c in ("vm_creation", "vm_deletion", "authenticated", "global_per_ip")
                       for w in {*(rate_limit_client(token_id(t), "") for t in token_hashes),
                                 *(rate_limit_client(None, a) for a in addresses),
                                 *(rate_limit_client(None, a, k) for a, k in _sampled_pairs(addresses, login_names))}],
        "rate_limit_clients": [(c, keys.rate_limit_clients(c))
                               for c in ("vm_creation", "vm_deletion", "authenticated", "global_per_ip")],
        "rate_limit_shared": [(f"{c} {n}", keys.rate_limit_shared(c, n))
                              for c in ("vm_creation", "vm_deletion", "authenticated", "global_per_ip")
                              for n in (0, 1, SHARED_RATE_COUNTERS - 1)],
        "login_user_shared": [(str(n), keys.login_user_shared(n)) for n in (0, 1, SHARED_LOGIN_COUNTERS - 1)],
        "login_address_shared": [(str(n), keys.login_address_shared(n)) for n in (0, 1, SHARED_LOGIN_COUNTERS - 1)],
        "login_pair_shared": [(str(n), keys.login_pair_shared(n)) for n in (0, 1, SHARED_LOGIN_COUNTERS - 1)],
        "login_shared_in_flight": [(f"{kind} {n}", keys.login_in_flight(shared(n)))
                                   for kind, shared in (("user", keys.login_user_shared),
                                                        ("addr", keys.login_address_shared),
                                                        ("pair", keys.login_pair_shared))
                                   for n in (0, SHARED_LOGIN_COUNTERS - 1)],
        "purge_lease": [(p, keys.lease(purge_lease_name(p))) for p in pools],
        "names_known": [(p, keys.names_known(p)) for p in pools],
        "names_reading": [(p, keys.names_reading(p)) for p in pools],
        "template_lease": [(f"{p} {t}", keys.lease(template_lease_name(p, t)))
                           for p in pools[:20] for t in HOSTILE_NAMES],
        "dummy_folder": [(f"{p} {f}", keys.dummy_folder(p, f)) for p in pools[:20] for f in HOSTILE_NAMES],
        "dummy_folder_version": [(f"{p} {f}", keys.dummy_folder_version(keys.dummy_folder(p, f)))
                                 for p in pools[:20] for f in HOSTILE_NAMES],
        "dummy_folder_changes": [(f"{p} {f}", keys.dummy_folder_changes(keys.dummy_folder(p, f)))
                                 for p in pools[:20] for f in HOSTILE_NAMES],
        "dummy_task": [(f"{p} {t}", keys.dummy_task(p, t)) for p in pools[:20] for t in HOSTILE_NAMES],
        "daily": [(DAY, keys.daily(DAY))],
        "daily_tags": [(DAY, keys.daily_tags(DAY))],
        "pool_override": [(s, keys.pool_override(s)) for s in ("poolsize", "pooltemplate", "poolreset", "clonetarget")],
        "fixed": [(name, getattr(keys, name)) for name in ("cloning", "pool_clones", "pool_clones_counted", "changes",
                                                          "clone_demand", "clone_demand_renewed",
                                                          "clone_demand_before", "clone_backoff", "known_pools",
                                                          "forgotten_pools", "known_pools_config", "ready_fence",
                                                          "providerless_pools", "last_boot", "ondemand_open_requests",
                                                          "ondemand_kept_requests", "holders", "migrating",
                                                          "templates_prepared", "templates_preparing", "sizing_state",
                                                          "running", "running_counted", "running_rebuild", "started",
                                                          "config_generation", "login_users_counted",
                                                          "login_addresses_counted", "login_pairs_counted",
                                                          "names_held")],
    }
    for state in keys_module.STATES:
        families[f"pool:{state}"] = [(p, keys.pool_state(p, state)) for p in pools]
    for name in ("ready_checked", "running_due", "dns_left", "inventory_checked", "lease", "wake", "followup",
                 "ondemand_open", "pool_vm_tasks", "history"):
        families[name] = [(p, getattr(keys, name)(p)) for p in pools]
    families["demand"] = [(p, keys.demand(p, DAY)) for p in pools]
    families["nudged"] = [(p, keys.nudged(p, 1_796_256_000)) for p in pools]
    return families



def _sampled_pairs(addresses: list[str], login_names: list[str], sample: int = 30) -> list[tuple[str, str]]:
    """Every address with the first ``sample`` login names, and every login name with the first
    ``sample`` addresses: each hostile part on each side, without the whole product (about 4.5
    million pairs, 10 GB of keys held at once, for no name the sample leaves out)."""
    return sorted({*itertools.product(addresses, login_names[:sample]),
                   *itertools.product(addresses[:sample], login_names)})


def test_no_two_names_of_any_family_share_a_key():
    keys = Keys()
    families = _family_keys(keys)
    owner: dict[str, tuple[str, str]] = {}
    for family, pairs in families.items():
        assert pairs, f"no hostile name got through to {family}: the test would prove nothing"
        for name, key in pairs:
            taken = owner.setdefault(key, (family, name))
            assert taken == (family, name), f"{family} {name!r} and {taken[0]} {taken[1]!r} both name {key!r}"


def _hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first ``{...}`` holding something, else all of it."""
    opening = key.find("{")
    closing = key.find("}", opening + 1) if opening >= 0 else -1
    return key[opening + 1:closing] if closing > opening + 1 else key


def test_with_a_hash_tag_prefix_no_name_moves_a_key_to_another_slot():
    for pairs in _family_keys(Keys("{vmpool}:")).values():
        for name, key in pairs:
            assert _hash_tag(key) == "vmpool", (name, key)
