"""vmfloaty 1.9.1 (puppetlabs/vmfloaty, unchanged) against vmpool with ``:auth:``: each test
replays the requests `floaty` sent to a local stack (recorded by a proxy: method, path, headers,
body) and checks the answer the way vmfloaty's code reads it (docs/api.md, "What the clients
send").

vmfloaty sends every call through Faraday with the ``url_encoded`` middleware: a POST or PUT
carries ``Content-Type: application/x-www-form-urlencoded`` whatever its body (JSON for
`floaty modify`), the token goes in ``X-AUTH-TOKEN`` and only `floaty token` sends HTTP Basic.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.auth.slapd import SlapdServer
from tests.harness import Harness, Reply, basic

FARADAY_HEADERS = {
    "User-Agent": "Faraday v1.1.0",
    "Accept-Encoding": "gzip;q=1.0,deflate;q=0.6,identity;q=0.3",
    "Accept": "*/*",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
"""What Faraday's url_encoded middleware puts on every POST and PUT vmfloaty sends."""

URL = "/api/v3"
"""vmfloaty's ``url:`` (its ~/.vmfloaty.yml); every call is ``<url>/<path>``."""


def floaty(api: Harness, method: str, path: str, token: str | None = None, body: str | None = None,
           headers: dict[str, str] | None = None, url: str = URL) -> Reply:
    """One request exactly as vmfloaty sends it: ``path`` relative to its ``url``."""
    sent = dict(FARADAY_HEADERS)
    if method in ("POST", "PUT"):
        sent.update(FORM)
    if token:
        sent["X-AUTH-TOKEN"] = token
    sent.update(headers or {})
    return api.request(method, f"{url}/{path}", body.encode() if body is not None else None, sent)


def standardize_hostnames(answer: dict[str, Any]) -> dict[str, list[str]]:
    """What vmfloaty's Utils.standardize_hostnames makes of a `get` answer (it raises on a body
    without ``ok``, and on ``false``: what its on-demand wait returns after a timeout)."""
    body = dict(answer)
    assert body.pop("ok"), answer
    domain = body.pop("domain", None)
    hosts: dict[str, list[str]] = {}
    for name, value in body.items():
        if name in ("request_id", "ready"):
            continue
        names = value["hostname"]
        names = names if isinstance(names, list) else [names]
        hosts[name] = [f"{host}.{domain}" if domain else host for host in names]
    return hosts


def floaty_token(api: Harness, user: str, password: str, url: str = URL) -> str:
    """`floaty token get`: POST token with HTTP Basic; it prints ``token``."""
    reply = floaty(api, "POST", "token", headers=basic(user, password), url=url)
    assert reply.status == 200 and reply.json["ok"] is True, reply.json
    return str(reply.json["token"])


def test_floaty_get_ondemand_polls_its_request_without_a_token(client_api: Harness, slapd: SlapdServer) -> None:
    """`floaty get --ondemand centos=2 debian`: POST ondemandvm/<names> with the token, then
    Pooler.check_ondemandvm polls GET ondemandvm/<id> with *no* token every 5 s: 200 is done, 202
    waits, anything else also waits, for 300 s, after which floaty crashed (``undefined method
    `delete' for false``). With ``:auth:`` the poll was a 401, so it never worked."""
    api = client_api
    alice = floaty_token(api, "alice", slapd.password("alice"))
    created = floaty(api, "POST", "ondemandvm/centos+centos+debian", token=alice)
    assert created.status == 201, created.json
    request_id = created.json["request_id"]

    poll = floaty(api, "GET", f"ondemandvm/{request_id}")
    assert poll.status == 202, poll.json
    api.run_passes()
    done = floaty(api, "GET", f"ondemandvm/{request_id}")
    assert done.status == 200, done.json
    hosts = standardize_hostnames(done.json)
    assert sorted(hosts) == ["centos", "debian"]
    assert len(hosts["centos"]) == 2 and all("." not in host for host in hosts["centos"])
    assert [host.split(".", 1)[1] for host in hosts["debian"]] == ["example.com"]

    # The id was the service's (a UUID 4 only its owner was told). Another user's token still
    # may not read it, nor may anyone delete it without the owner's token.
    bob = floaty_token(api, "bob", slapd.password("bob"))
    assert floaty(api, "GET", f"ondemandvm/{request_id}", token=bob).status == 403
    assert floaty(api, "DELETE", f"ondemandvm/{request_id}").status == 401
    assert floaty(api, "DELETE", f"ondemandvm/{request_id}", token=bob).status == 403


def test_a_request_id_the_client_chose_is_read_with_its_owners_token_only(
    client_api: Harness, slapd: SlapdServer
) -> None:
    """An id a client chose (``request_id`` in the body) may be guessed: without a token it is a
    401 whether or not it exists, so nobody learns which ids are taken."""
    api = client_api
    alice = floaty_token(api, "alice", slapd.password("alice"))
    body = '{"centos": 1, "request_id": "ci-build-42"}'
    assert floaty(api, "POST", "ondemandvm", token=alice, body=body).status == 201
    assert floaty(api, "GET", "ondemandvm/ci-build-42").status == 401
    assert floaty(api, "GET", "ondemandvm/ci-build-43").status == 401
    assert floaty(api, "GET", "ondemandvm/ci-build-42", token=alice).status == 202


def floaty_list_active(api: Harness, token: str, url: str = URL) -> list[str]:
    """`floaty list --active`: GET token/<t> for ``vms.running``, then GET vm/<host> for each; the
    lines Utils.pretty_print_hosts prints (``host.domain`` when the answer has ``domain``, as v1
    did, else ``fqdn``)."""
    status = floaty(api, "GET", f"token/{token}", url=url)
    assert status.status == 200, status.json
    lines = []
    for hostname in status.json[token]["vms"]["running"]:
        data = floaty(api, "GET", f"vm/{hostname}", url=url).json[hostname]
        tags = [f"{key}: {value}" for key, value in data["tags"].items()]
        metadata = ", ".join([data["state"], data["template"], f"{data['running']}/{data['lifetime']} hours", *tags])
        name = f"{hostname}.{data['domain']}" if data.get("domain") else data.get("fqdn") or ""
        lines.append(f"- {name} ({metadata})")
    return lines


@pytest.mark.parametrize("url", ["/api/v1", "", "/api/v2", "/api/v3"], ids=["v1", "unversioned", "v2", "v3"])
def test_floaty_list_active_names_every_vm(client_api: Harness, slapd: SlapdServer, url: str) -> None:
    """`floaty list --active` with ``url:`` on v1 or a bare host (old ~/.vmfloaty.yml files)
    printed ``-  (running, centos-9-x86_64, 0.0/12 hours)`` for a VM of a pool without a domain:
    v1 had neither ``domain`` nor ``fqdn`` for it."""
    api = client_api
    alice = floaty_token(api, "alice", slapd.password("alice"), url=url)
    got = floaty(api, "POST", "vm/debian+centos+windows", token=alice, url=url)
    assert got.status == 200, got.json
    hosts = standardize_hostnames(got.json)
    lines = floaty_list_active(api, alice, url)
    printed = sorted(line[2:].split(" (")[0] for line in lines)
    assert printed == sorted(host for names in hosts.values() for host in names)
    assert [name.split(".", 1)[1:] for name in hosts["debian"] + hosts["windows"]] == [
        ["example.com"], ["win.example.com"]]
    assert "." not in hosts["centos"][0]


def test_floaty_modify_disk_adds_a_disk(client_api: Harness, slapd: SlapdServer) -> None:
    """`floaty modify <host> --disk 8` sends the disk in the PUT body (vmfloaty looks ``'disk'``
    up as a string in a hash of symbols, so it never calls POST vm/<host>/disk/8): it was
    ``400 Unknown argument disk.`` and floaty printed the error (vmpooler never added the disk
    either). The PUT adds it as the disk route does, with the route's checks, all or nothing."""
    api = client_api
    alice = floaty_token(api, "alice", slapd.password("alice"))
    bob = floaty_token(api, "bob", slapd.password("bob"))
    host = floaty(api, "POST", "vm/debian", token=alice).json["debian"]["hostname"].split(".")[0]

    changed = floaty(api, "PUT", f"vm/{host}", token=alice, body='{"disk":8}')
    assert changed.status == 200 and changed.json == {"ok": True}, changed.json
    # `floaty modify <host> --lifetime 20 --disk 4 --tags '{"jira":"CI-1"}'`
    both = floaty(api, "PUT", f"vm/{host}", token=alice, body='{"lifetime":20,"disk":4,"tags":{"jira":"CI-1"}}')
    assert both.status == 200 and both.json == {"ok": True}, both.json
    api.run_passes("debian-12-x86_64", seconds=1)
    described = floaty(api, "GET", f"vm/{host}").json[host]
    assert (described["disk"], described["lifetime"], described["tags"]) == (["+8gb", "+4gb"], 20, {"jira": "CI-1"})

    # One bad part changes nothing; the disk needs the owner's token, as POST vm/<host>/disk does.
    for body in ('{"lifetime":30,"disk":0}', '{"lifetime":30,"disk":4096}', '{"lifetime":30,"disk":"8gb"}'):
        refused = floaty(api, "PUT", f"vm/{host}", token=alice, body=body)
        assert refused.status == 400 and refused.json["ok"] is False, (body, refused.json)
    too_many_tags = {f"t{n}": "x" for n in range(api.config.service.max_tags_per_vm)}
    refused = floaty(api, "PUT", f"vm/{host}", token=alice, body=json.dumps({"disk": 2, "tags": too_many_tags}))
    assert refused.status == 400 and refused.json["ok"] is False, refused.json
    assert floaty(api, "PUT", f"vm/{host}", body='{"disk":8}').status == 401
    assert floaty(api, "PUT", f"vm/{host}", token=bob, body='{"disk":8}').status == 403
    api.run_passes("debian-12-x86_64", seconds=1)
    described = floaty(api, "GET", f"vm/{host}").json[host]
    assert (described["disk"], described["lifetime"]) == (["+8gb", "+4gb"], 20)


def floaty_status_lines(api: Harness, verbose: bool = False) -> list[str]:
    """`floaty status`: GET status; Utils.pretty_print_status draws each pool short of ready VMs
    (every pool with --verbose) from ``pools.<p>.{ready,pending,max}``, then ``status.message``.
    A pool whose numbers Ruby cannot use (nil, strings, a negative count) prints as an error."""
    status = floaty(api, "GET", "status").json
    pools = {name: pool for name, pool in status["pools"].items() if verbose or pool["ready"] < pool["max"]}
    lines = []
    for name, pool in pools.items():
        ready, pending, most = pool["ready"], pool["pending"], pool["max"]
        assert all(type(number) is int for number in (ready, pending, most)), pool
        missing = most - ready - pending
        lines.append(f"{name} " + "o" * (ready + pending + missing) if missing >= 0 else f"{name} negative argument")
    return [*lines, status["status"]["message"]]


def test_two_floaty_users_at_once(client_api: Harness, slapd: SlapdServer) -> None:
    """Every vmfloaty command that talks to vmpooler, as alice and bob, in the order a user runs
    them; each answer read as vmfloaty reads it."""
    api = client_api
    alice = floaty_token(api, "alice", slapd.password("alice"))
    bob = floaty_token(api, "bob", slapd.password("bob"))
    # `floaty list [filter]`: GET vm, a JSON array of pool names.
    assert floaty(api, "GET", "vm").json == ["debian-12-x86_64", "win-2022-x86_64", "centos-9-x86_64"]
    # `floaty status`: every pool full, so only the message.
    assert floaty_status_lines(api) == ["Battle station fully armed and operational."]
    assert floaty_status_lines(api, verbose=True)[0] == "debian-12-x86_64 ooo"

    # `floaty get debian=2 windows` (alice) and `floaty get centos` (bob): POST vm/<a>+<a>+<b>.
    got = floaty(api, "POST", "vm/debian+debian+windows", token=alice)
    assert got.status == 200, got.json
    alice_hosts = standardize_hostnames(got.json)
    assert [len(alice_hosts["debian"]), len(alice_hosts["windows"])] == [2, 1]
    bob_got = floaty(api, "POST", "vm/centos", token=bob)
    [bob_host] = standardize_hostnames(bob_got.json)["centos"]
    assert "." not in bob_host and isinstance(bob_got.json["centos"]["hostname"], str)
    # `floaty get debian=2` again: only one debian VM is ready, so nothing is checked out.
    short = floaty(api, "POST", "vm/debian+debian", token=bob)
    assert (short.status, short.json) == (503, {"ok": False})
    # `floaty status`: every pool is short of ready VMs now.
    assert [line.split()[0] for line in floaty_status_lines(api)[:-1]] == [
        "debian-12-x86_64", "win-2022-x86_64", "centos-9-x86_64"]

    # `floaty token status`: GET token/<t>, nothing but the token in the path.
    status = floaty(api, "GET", f"token/{alice}").json
    assert status["ok"] is True and status[alice]["user"] == "alice"
    alice_short = sorted(host.split(".")[0] for names in alice_hosts.values() for host in names)
    assert sorted(status[alice]["vms"]["running"]) == alice_short
    assert floaty(api, "GET", f"token/{bob}").json[bob]["vms"]["running"] == [bob_host]
    # `floaty list --active`: each of them sees their own VMs only.
    assert sorted(line[2:].split(" (")[0] for line in floaty_list_active(api, alice)) == sorted(
        host for names in alice_hosts.values() for host in names)
    assert floaty_list_active(api, bob) == [f"- {bob_host} (running, centos-9-x86_64, 0.0/12 hours)"]

    # `floaty query <host>`: GET vm/<host>, the answer keyed by the short name; by FQDN too.
    debian_fqdn = alice_hosts["debian"][0]
    debian_host = debian_fqdn.split(".")[0]
    queried = floaty(api, "GET", f"vm/{debian_fqdn}").json
    assert queried[debian_host]["fqdn"] == debian_fqdn and queried[debian_host]["state"] == "running"

    # `floaty modify <host> --lifetime 24 --tags '{...}'`: PUT vm/<host>, JSON sent as a form.
    body = '{"lifetime":24,"tags":{"jira":"CI-42","owner":"alice@example.com"}}'
    assert floaty(api, "PUT", f"vm/{debian_host}", token=alice, body=body).json == {"ok": True}
    assert floaty(api, "PUT", f"vm/{debian_host}", token=bob, body=body).status == 403
    assert floaty_list_active(api, bob)[0].endswith("0.0/12 hours)")
    [line] = [line for line in floaty_list_active(api, alice) if line.startswith(f"- {debian_fqdn} ")]
    assert line.startswith(f"- {debian_fqdn} (running, debian-12-x86_64, 0.0/24 hours, ")
    assert "jira: CI-42" in line and "owner: alice@example.com" in line  # in the record's order
    too_long = floaty(api, "PUT", f"vm/{debian_host}", token=alice, body='{"lifetime":168}')
    assert too_long.status == 400 and too_long.json["failure"], too_long.json

    # `floaty snapshot <host>`, then `floaty revert <host> <id>`: POSTs with the token.
    snapshot = floaty(api, "POST", f"vm/{debian_host}/snapshot", token=alice)
    assert snapshot.status == 202
    snapshot_id = snapshot.json[debian_host]["snapshot"]
    assert floaty(api, "POST", f"vm/{debian_host}/snapshot/{snapshot_id}", token=alice).json == {"ok": True}
    assert floaty(api, "POST", f"vm/{debian_host}/snapshot/{snapshot_id}", token=bob).status == 403
    assert floaty(api, "POST", f"vm/{debian_host}/snapshot/nosuchsnapshot", token=alice).status == 404
    api.run_passes("debian-12-x86_64", seconds=1)
    assert floaty(api, "GET", f"vm/{debian_host}").json[debian_host]["snapshots"] == [snapshot_id]

    # `floaty delete <host>` by the wrong user: an answer without ok, so floaty lists it as failed.
    assert floaty(api, "DELETE", f"vm/{bob_host}", token=alice).json["ok"] is False
    # `floaty delete h1,h2` (as typed: FQDN, capitals) and `floaty delete --all`.
    windows_fqdn = alice_hosts["windows"][0]
    assert floaty(api, "DELETE", f"vm/{windows_fqdn.upper()}", token=alice).json == {"ok": True}
    assert floaty(api, "DELETE", f"vm/{debian_fqdn}", token=alice).json == {"ok": True}
    for host in floaty(api, "GET", f"token/{alice}").json[alice]["vms"]["running"]:
        assert floaty(api, "DELETE", f"vm/{host}", token=alice).json == {"ok": True}
    assert "vms" not in floaty(api, "GET", f"token/{alice}").json[alice] or not (
        floaty(api, "GET", f"token/{alice}").json[alice]["vms"]["running"])
    assert floaty(api, "GET", f"token/{bob}").json[bob]["vms"]["running"] == [bob_host]

    # `floaty summary`: GET summary, printed as it comes.
    assert floaty(api, "GET", "summary").json["daily"]
    # `floaty token delete --token <t>`: DELETE token/<t> with HTTP Basic; only the owner's.
    assert floaty(api, "DELETE", f"token/{alice}", headers=basic("bob", slapd.password("bob"))).status == 403
    assert floaty(api, "DELETE", f"token/{alice}", headers=basic("alice", slapd.password("alice"))).json == {
        "ok": True}
    gone = floaty(api, "POST", "vm/debian", token=alice)
    assert gone.status == 401  # floaty: "The token provided could not authenticate to the pooler."
