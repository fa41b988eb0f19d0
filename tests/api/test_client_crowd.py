"""Nine LDAP users at once through vmfloaty's and beaker-vmpooler's requests (as they send them:
tests/api/test_vmfloaty.py, tests/api/test_clients.py), their commands interleaved in a seeded
order: `floaty get` (path form, aliases with counts), beaker's checkout (body form), `floaty
modify` (lifetime, tags), beaker's untokened tagging, `floaty snapshot`/`revert`, `floaty query`,
`floaty token status`/`list --active`, `floaty token get`/`list`/`delete`, `floaty delete`, and
the same commands aimed at another user's VM or token. Some VMs and tokens are as an earlier
release left them: a VM record with no ``token_entry``, a token record with no ``entry``
(checked out, or made, before entries were recorded).

Checked on every answer: the status and the body's shape the client parses (floaty's
``standardize_hostnames``, ``list --active``'s lines, ``status``'s bars; beaker's hostnames); a
user sees, changes and returns only their own VMs and tokens (another's is a 403 that changes
nothing in Redis); ``token status`` lists exactly the VMs that token checked out and still
holds. Checked as the pools move: for each pool, ready + pending + running plus the VMs returned
since the last fill is the size plus what was running at that fill (a checkout moves one VM,
a return one), ``/totalrunning`` is what the users hold, and after each fill every pool is full."""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from chalicelib.config import build
from tests.api.test_clients import BEAKER_TAGS, beaker
from tests.api.test_vmfloaty import floaty, floaty_list_active, floaty_status_lines, floaty_token, standardize_hostnames
from tests.auth.slapd import SlapdServer
from tests.harness import Harness, HarnessFactory, basic

POOLS = {"debian-12-x86_64": 14, "win-2022-x86_64": 6, "centos-9-x86_64": 8}
ALIASES = {"debian": ["debian-12-x86_64"], "windows": ["win-2022-x86_64"], "centos": ["centos-9-x86_64"],
           "linux": ["debian-12-x86_64", "centos-9-x86_64"]}
BUILT_IN = ["alice", "comma,user", "bob", "carol", "stra\u00dfe", "strasse", "dana"]


@dataclass
class User:
    name: str
    password: str
    tokens: list[str] = field(default_factory=list)
    vms: dict[str, str] = field(default_factory=dict)
    """short hostname -> the token it was checked out with."""
    pools: dict[str, str] = field(default_factory=dict)
    """short hostname -> its pool."""
    snapshots: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


@pytest.fixture
def crowd_api(make_harness: HarnessFactory, slapd: SlapdServer) -> Iterator[tuple[Harness, list[User]]]:
    ldap = slapd.ldap_config()
    ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    dummy = {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0, "destroyvm_max_time": 0,
             "createdisk_max_time": 0, "createsnapshot_max_time": 0, "revertsnapshot_max_time": 0}
    domains = {"debian-12-x86_64": "example.com", "win-2022-x86_64": "win.example.com"}
    doc = {
        "config": {"vm_lifetime": 2, "vm_lifetime_auth": 12, "max_lifetime_upper_limit": 168},
        "providers": {"dummy": dummy},
        "auth": {"provider": "ldap", "ldap": ldap},
        "pools": [
            {"name": name, "alias": [alias for alias, pools in ALIASES.items() if name in pools], "size": size,
             "provider": "dummy", "template": f"t/{name}", **({"domain": domains[name]} if name in domains else {})}
            for name, size in POOLS.items()
        ],
    }
    api = make_harness(build(doc), headers={})
    api.fill()
    users = [User(name, slapd.password(name)) for name in BUILT_IN]
    added = []
    for n in range(2):  # two entries of this test's own, removed after it
        name, password = f"crowd{n}-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        added.append(slapd.add_user(name, password))
        users.append(User(name, password))
    yield api, users
    for dn in added:
        slapd.remove(dn)


class Crowd:
    """The users' model of what they hold, and the checks of each answer against it."""

    def __init__(self, api: Harness, users: list[User], rng: random.Random) -> None:
        self.api, self.users, self.rng = api, users, rng
        self.returned_since_fill: dict[str, int] = defaultdict(int)
        self.running_at_fill: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)

    def floaty(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests["vmfloaty"] += 1
        return floaty(self.api, method, path, **kwargs)

    def beaker(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        self.requests["beaker-vmpooler"] += 1
        return beaker(self.api, method, path, body, token)

    def held(self, pool: str | None = None) -> int:
        return sum(1 for user in self.users for vm in user.vms if pool is None or user.pools[vm] == pool)

    def fill(self) -> None:
        self.api.fill()
        self.returned_since_fill.clear()
        for pool in POOLS:
            self.running_at_fill[pool] = self.held(pool)
        self.check_counts(full=True)

    def check_counts(self, full: bool = False) -> None:
        status = self.floaty("GET", "status").json
        for pool, size in POOLS.items():
            counts = status["pools"][pool]
            assert all(type(counts[key]) is int for key in ("ready", "pending", "running", "max")), counts
            moved = counts["ready"] + counts["pending"] + counts["running"] + self.returned_since_fill[pool]
            assert moved == size + self.running_at_fill[pool], (pool, counts, dict(self.returned_since_fill))
            assert counts["running"] == self.held(pool), (pool, counts)
            if full:
                assert counts["ready"] + counts["pending"] == size, (pool, counts)
        assert self.floaty("GET", "totalrunning").json == {"running": self.held()}
        floaty_status_lines(self.api)  # every pool's bar drawn: numbers Ruby can use

    def legacy(self, hostname: str) -> None:
        """The VM's record as an earlier release checked it out: no ``token_entry``."""
        self.api.client.hdel(self.api.store.keys.vm(hostname), "token_entry")

    def get(self, user: User) -> None:
        """`floaty get <a>=<n> <b>` (POST vm/<a>+<a>+<b>) or beaker's POST vm/ {"<pool>": "<n>"}."""
        token = self.rng.choice(user.tokens)
        names = self.rng.sample(sorted(ALIASES) + sorted(POOLS), self.rng.randint(1, 2))
        wanted = {name: self.rng.randint(1, 2) for name in names}
        if self.rng.random() < 0.5:
            path = "+".join(name for name, count in wanted.items() for _ in range(count))
            reply = self.floaty("POST", f"vm/{path}", token=token)
        else:
            reply = self.beaker("POST", "/vm/", {name: str(count) for name, count in wanted.items()}, token)
        if reply.status == 503:
            assert reply.json == {"ok": False}
            return
        assert reply.status == 200, reply.json
        hosts = standardize_hostnames(reply.json)
        assert sorted(hosts) == sorted(wanted), reply.json
        for name, fqdns in hosts.items():
            assert len(fqdns) == wanted[name], reply.json
            one = reply.json[name]["hostname"]
            assert isinstance(one, str) if wanted[name] == 1 else isinstance(one, list), reply.json
            for fqdn in fqdns:
                short = fqdn.split(".")[0]
                assert all(short not in other.vms for other in self.users), f"{short} handed out twice"
                described = self.floaty("GET", f"vm/{fqdn}").json[short]
                assert described["state"] == "running" and described["fqdn"] == fqdn, described
                assert described["template"] in ALIASES.get(name, [name]), described
                user.vms[short], user.pools[short] = token, described["template"]
                if self.rng.random() < 0.3:
                    self.legacy(short)

    def own_vm(self, user: User) -> str | None:
        return self.rng.choice(sorted(user.vms)) if user.vms else None

    def others_vm(self, user: User) -> tuple[User, str] | None:
        held = [(other, vm) for other in self.users if other is not user for vm in other.vms]
        return self.rng.choice(sorted(held, key=lambda pair: pair[1])) if held else None

    def modify(self, user: User) -> None:
        vm = self.own_vm(user)
        if vm is None:
            return
        token = self.rng.choice(user.tokens)  # any token of the owner's
        lifetime = self.rng.randint(1, 100)
        body = json.dumps({"lifetime": lifetime, "tags": {"jira": f"CI-{lifetime}", "owner": "crowd"}})
        assert self.floaty("PUT", f"vm/{vm}", token=token, body=body).json == {"ok": True}
        described = self.floaty("GET", f"vm/{vm}").json[vm]
        assert described["lifetime"] == lifetime and described["tags"]["jira"] == f"CI-{lifetime}", described
        # beaker tags with no token at all: tags need none.
        tagged = self.beaker("PUT", f"/vm/{vm}", {"tags": {**BEAKER_TAGS, "name": vm}})
        assert tagged.json == {"ok": True}, tagged.json

    def snapshot(self, user: User) -> None:
        vm = self.own_vm(user)
        if vm is None:
            return
        token = self.rng.choice(user.tokens)
        taken = self.floaty("POST", f"vm/{vm}/snapshot", token=token)
        assert taken.status == 202 and taken.json["ok"] is True, taken.json
        snapshot_id = taken.json[vm]["snapshot"]
        assert isinstance(snapshot_id, str) and len(snapshot_id) == 32
        user.snapshots[vm].append(snapshot_id)
        self.api.run_passes(seconds=1)  # the pass takes the snapshot (and refills the pools)
        self.fill()
        assert self.floaty("GET", f"vm/{vm}").json[vm]["snapshots"] == user.snapshots[vm]
        reverted = self.floaty("POST", f"vm/{vm}/snapshot/{snapshot_id}", token=token)
        assert (reverted.status, reverted.json) == (202, {"ok": True})

    def trespass(self, user: User) -> None:
        """The same commands on another user's VM: a 403 floaty prints, and nothing changes."""
        picked = self.others_vm(user)
        if picked is None:
            return
        owner, vm = picked
        token = self.rng.choice(user.tokens)
        before = self.api.redis_state()
        attempts = [("PUT", f"vm/{vm}", '{"lifetime":99}'), ("DELETE", f"vm/{vm}", None),
                    ("POST", f"vm/{vm}/snapshot", None), ("PUT", f"vm/{vm}", '{"disk":8}')]
        if owner.snapshots.get(vm):
            attempts.append(("POST", f"vm/{vm}/snapshot/{owner.snapshots[vm][0]}", None))
        for method, path, body in attempts:
            reply = self.floaty(method, path, token=token, body=body)
            assert reply.status == 403 and reply.json["ok"] is False, (method, path, reply.json)
        disk = self.beaker("POST", f"/api/v1/vm/{vm}/disk/8", token=token)
        assert disk.status == 403 and disk.json["ok"] is False, disk.json
        # The other user's token, read by name in the path with this user's Basic login.
        other_token = self.rng.choice(owner.tokens)
        self.requests["vmfloaty"] += 1
        read = self.api.request("GET", f"/api/v3/token/{other_token}", headers=basic(user.name, user.password))
        assert read.status == 403, read.json
        refused = self.floaty("DELETE", f"token/{other_token}", headers=basic(user.name, user.password))
        assert refused.status == 403, refused.json
        after = {key: value for key, value in self.api.redis_state().items() if not self._touched(key)}
        assert after == {key: value for key, value in before.items() if not self._touched(key)}

    def _touched(self, key: str) -> bool:
        """Keys a refused request may still write (a token's ``last`` use, the rate counters, the
        login limiter's and the directory's answers) and marks that expire as the test runs."""
        return any(part in key for part in ("token", "rate", "login", "dircheck", "limit", "seen", "nudged",
                                            "settled:", "requests:waiting"))

    def status(self, user: User) -> None:
        """`floaty token status` and `floaty list --active` for each token of the user."""
        for token in user.tokens:
            answer = self.floaty("GET", f"token/{token}").json
            assert answer["ok"] is True and answer[token]["user"] == user.name, answer
            mine = sorted(vm for vm, by in user.vms.items() if by == token)
            assert sorted(answer[token]["vms"]["running"]) == mine, (user.name, answer)
            lines = floaty_list_active(self.api, token)
            self.requests["vmfloaty"] += 1 + len(lines)
            assert len(lines) == len(mine) and all(" (running, " in line for line in lines), lines
        listed = self.floaty("GET", "token", headers=basic(user.name, user.password))
        assert listed.status == 200, listed.json
        ids = {key for key in listed.json if key != "ok"}
        assert len(ids) == len(user.tokens), (user.name, listed.json)
        assert all(set(value) >= {"created", "last"} for key, value in listed.json.items() if key != "ok")

    def rotate(self, user: User) -> None:
        """`floaty token get`, then `floaty token delete` of the oldest; its VMs go with the user,
        who changes and returns them with the new token (they are the user's, not the token's)."""
        new = floaty_token(self.api, user.name, user.password)
        self.requests["vmfloaty"] += 1
        old = user.tokens.pop(0)
        user.tokens.append(new)
        assert self.floaty("DELETE", f"token/{old}", headers=basic(user.name, user.password)).json == {"ok": True}
        assert self.floaty("GET", f"token/{old}").status == 404
        for vm, by in list(user.vms.items()):
            if by == old:
                # No token status lists them any more (vmpooler's too): `floaty delete <host>`
                # with the new token still returns them.
                user.vms[vm] = ""

    def delete(self, user: User) -> None:
        vm = self.own_vm(user)
        if vm is None:
            return
        token = self.rng.choice(user.tokens)
        if self.rng.random() < 0.5:
            reply = self.floaty("DELETE", f"vm/{vm}", token=token)
        else:  # beaker's cleanup: the FQDN
            fqdn = self.floaty("GET", f"vm/{vm}").json[vm]["fqdn"]
            reply = self.beaker("DELETE", f"/vm/{fqdn}", token=token)
        assert reply.json == {"ok": True}, reply.json
        assert self.floaty("GET", f"vm/{vm}").json[vm]["state"] == "destroyed"
        self.returned_since_fill[user.pools[vm]] += 1
        del user.vms[vm]
        del user.pools[vm]


def test_nine_users_through_floaty_and_beaker_see_only_their_own(
        crowd_api: tuple[Harness, list[User]], slapd: SlapdServer) -> None:
    """Two rounds of every user's commands in a seeded order, the pools filled between them;
    then each user's status and the return of all they hold."""
    api, users = crowd_api
    crowd = Crowd(api, users, random.Random(15))
    for n, user in enumerate(users):
        user.tokens = [floaty_token(api, user.name, user.password) for _ in range(2 if n % 2 else 1)]
        crowd.requests["vmfloaty"] += len(user.tokens)
    # One token as an earlier release made it: no directory entry on its record.
    legacy_token = users[1].tokens[0]
    api.client.hdel(api.services.tokens.keys.token(hashlib.sha256(legacy_token.encode()).hexdigest()), "entry")
    crowd.fill()

    steps = [crowd.get, crowd.get, crowd.modify, crowd.snapshot, crowd.trespass, crowd.status, crowd.delete,
             crowd.rotate]
    for _ in range(2):
        order = [(user, step) for user in users for step in steps]
        crowd.rng.shuffle(order)
        for user, step in order:
            if step == crowd.rotate and crowd.rng.random() < 0.7:
                continue
            step(user)
            crowd.check_counts()
        crowd.fill()
    for user in users:
        crowd.status(user)
        while user.vms:
            crowd.delete(user)
    crowd.check_counts()
    assert crowd.requests["vmfloaty"] > 500 and crowd.requests["beaker-vmpooler"] > 20, dict(crowd.requests)
