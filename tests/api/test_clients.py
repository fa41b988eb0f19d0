"""What beaker-vmpooler and vmfloaty send, against the packaged demo config (`make run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.auth.slapd import SlapdServer
from tests.harness import Harness, Reply

DEMO_CONFIG = (Path(__file__).resolve().parents[2] / "chalicelib" / "vmpool.yaml").read_text()
EXAMPLE_CONFIG = (Path(__file__).resolve().parents[2] / "vmpool.yaml.example").read_text()

BEAKER_TAGS = {
    # beaker-vmpooler's add_tags: its presets merged over the host's host_tags.
    "beaker_version": "6.1.0",
    "jenkins_build_url": "https://jenkins.example.com/job/puppet-agent/1234/",
    "department": "engineering",
    "project": "puppet-agent",
    "created_by": "jenkins",
    "name": "debian12-64-1",
    "roles": "agent, master, default",
    "team": "ci",
}


def test_beaker_provisions_and_tags_hosts_with_the_demo_config(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(DEMO_CONFIG)
    stack.fill("debian-12-x86_64", "win-2022-x86_64")
    # beaker: POST <pooling_api>/vm/ (unversioned) with {"template": "count"}.
    reply = stack.post("/vm/", {"debian-12-x86_64": "1", "win-2022-x86_64": "1"})
    assert reply.status == 200 and reply.json["ok"] is True
    domain = reply.json.get("domain")
    for template in ("debian-12-x86_64", "win-2022-x86_64"):
        hostname = reply.json[template]["hostname"]
        vmhostname = f"{hostname}.{domain}" if domain else hostname  # what beaker builds
        short = vmhostname.split(".")[0]
        assert stack.get(f"/api/v3/vm/{short}").json[short]["fqdn"] == vmhostname
        # beaker: PUT <pooling_api>/vm/<short> {"tags": {...}}; "Failed to tag host" unless ok.
        tagged = stack.put(f"/vm/{short}", {"tags": BEAKER_TAGS})
        assert tagged.json == {"ok": True}, tagged.json
        assert stack.get(f"/vm/{short}").json[short]["tags"] == BEAKER_TAGS


def test_beaker_keeps_host_tags_a_hosts_file_wrote_as_booleans_and_numbers(
        make_stack: Callable[[str], Harness]) -> None:
    """beaker merges its tags over the host's `host_tags` as YAML read them: `preserve: true` is a
    JSON boolean, `build: 42` a number. A boolean was `400 Tag value for preserve must be a string`
    (vmpooler: a 500), and beaker only logged "Failed to tag host": the VM kept none of its tags,
    jenkins_build_url included. Kept as JSON spells them, as numbers are."""
    stack = make_stack(DEMO_CONFIG)
    stack.fill("debian-12-x86_64")
    short = stack.post("/vm/", {"debian-12-x86_64": "1"}).json["debian-12-x86_64"]["hostname"].split(".")[0]
    host_tags = {"preserve": True, "nightly": False, "build": 42}
    tagged = stack.put(f"/vm/{short}", {"tags": {**host_tags, **BEAKER_TAGS}})
    assert tagged.json == {"ok": True}, tagged.json
    shown = stack.get(f"/vm/{short}").json[short]["tags"]
    assert shown == {"preserve": "true", "nightly": "false", "build": "42", **BEAKER_TAGS}


def test_beaker_provisions_a_template_with_a_dot_in_its_name(make_stack: Callable[[str], Harness]) -> None:
    """beaker sends only the body form, ``{"centos-7.2-x86_64": "1"}``; vmpooler 3.9.1 refuses a
    dot there (``400 Invalid pool name format``: its POOL_NAME_PATTERN is ``[a-zA-Z0-9_-]+``) though
    its config and its path form take the name, so beaker retries until its timeout. Served here
    in both forms (docs/compatibility.md, "Deliberately different")."""
    dotted = DEMO_CONFIG.replace("- name: debian-12-x86_64", "- name: centos-7.2-x86_64", 1)
    assert dotted != DEMO_CONFIG
    stack = make_stack(dotted)
    stack.fill("centos-7.2-x86_64")
    reply = stack.post("/vm/", {"centos-7.2-x86_64": "1"})
    assert reply.status == 200 and reply.json["ok"] is True, reply.json
    short = reply.json["centos-7.2-x86_64"]["hostname"].split(".")[0]
    assert stack.put(f"/vm/{short}", {"tags": BEAKER_TAGS}).json == {"ok": True}
    assert stack.delete(f"/vm/{reply.json['centos-7.2-x86_64']['hostname']}").json == {"ok": True}
    assert stack.post("/api/v3/vm/centos-7.2-x86_64").status == 200


def test_vmfloaty_modify_tags_with_the_demo_config(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(DEMO_CONFIG)
    stack.fill("ubuntu-2404-x86_64")
    host = stack.post("/api/v3/vm/ubuntu").json["ubuntu"]["hostname"].split(".")[0]
    # `floaty modify <host> --tags '{"jira": "CI-42", "owner": "me@example.com"}'`
    reply = stack.put(f"/api/v3/vm/{host}", {"tags": {"jira": "CI-42", "owner": "me@example.com"}})
    assert reply.json == {"ok": True}


def test_the_example_config_accepts_any_tag(make_stack: Callable[[str], Harness]) -> None:
    example = make_stack(EXAMPLE_CONFIG)
    assert example.config.service.allowed_tags == ()


NET_HTTP_HEADERS = {"Accept-Encoding": "gzip;q=1.0,deflate;q=0.6,identity;q=0.3", "Accept": "*/*",
                    "User-Agent": "Ruby"}
"""What Ruby's Net::HTTP sends on every request beaker-vmpooler makes; with a body and no type of
its own it adds ``Content-Type: application/x-www-form-urlencoded``."""

MATRIX_BUILD_URL = ("https://jenkins.example.com/job/platform_puppet-agent_suite-daily/"
                    "SLAVE_LABEL=beaker,TEST_TARGET=debian12-64a,label=k8s-beaker/12/?view=full#tests")
"""A Jenkins matrix job's build URL (axis=value pairs, commas), with a query and a fragment."""


POOLING_API_PATHS = [
    pytest.param("", id="pooling_api without a trailing slash"),
    pytest.param("/", id="pooling_api with a trailing slash (beaker-hostgenerator's default)"),
    pytest.param("/api/v3", id="pooling_api on /api/v3 (vmpooler 3 serves no unversioned /vm)"),
    pytest.param("/api/v1", id="pooling_api on /api/v1"),
    pytest.param("/api/v3/", id="pooling_api on /api/v3/ (a trailing slash after the version)"),
]
"""The path of beaker's ``pooling_api``. beaker-hostgenerator writes a bare host with a trailing
slash (``pooling_api: http://vmpooler.delivery.puppetlabs.net/``) and beaker appends ``/vm/...``
to it as a string, so every request of a generated hosts file begins ``//``: vmpooler's
Rack::Protection routed ``//vm/`` as ``/vm/``, and so does API Gateway. vmpooler 3 serves only
``/api/v3``, so its users' ``pooling_api`` ends there (or in ``/api/v3/``: every request then
has ``//`` inside, ``/api/v3//vm/``, which vmpooler routed as ``/api/v3/vm/`` and the local stack
answered ``404 {"ok": false}``); beaker still posts disks to
``<pooling_api>/api/v1/vm/<host>/disk/<n>``."""


def beaker(api: Harness, method: str, path: str, body: Any = None, token: str | None = None) -> Reply:
    """One request as beaker-vmpooler's Net::HTTP sends it to ``pooling_api`` (a bare host):
    ``path`` is ``pooling_api``'s path followed by what beaker appends."""
    headers = dict(NET_HTTP_HEADERS)
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        headers["X-AUTH-TOKEN"] = token
    return api.request(method, path, json.dumps(body) if body is not None else None, headers)


@pytest.mark.parametrize("base", POOLING_API_PATHS)
def test_beaker_with_a_token_provisions_tags_adds_disks_and_cleans_up(client_api: Harness, slapd: SlapdServer,
                                                                       base: str) -> None:
    """beaker-vmpooler's whole flow against a service with ``:auth:`` (vmpooler_token in ~/.fog).
    Its tags carry ``jenkins_build_url``; the URL of a Jenkins matrix job has ``=`` (and a query
    ``?``, ``&``): those were refused, ``400 Tag value contains invalid characters``, so beaker
    logged "Failed to tag host" and the VM had none of its tags. With ``pooling_api`` ending in
    ``/`` every request was a 404 ``{"ok": false}``: beaker retried its provision until its
    timeout and gave up. With ``pooling_api`` on ``/api/vN`` the disk's ``/api/vN/api/v1/...``
    was a 404: "Response from <host> indicates disk was not added", the host failed."""
    api = client_api
    token = api.new_token("alice", slapd.password("alice"))
    # provision: POST <pooling_api>/vm/ {"<template>": "<count>"} with the token.
    got = beaker(api, "POST", f"{base}/vm/", {"debian-12-x86_64": "2", "centos-9-x86_64": "1"}, token)
    assert got.status == 200 and got.json["ok"] is True, got.json
    domain = got.json.get("domain")
    vmhostnames = []
    for template, count in (("debian-12-x86_64", 2), ("centos-9-x86_64", 1)):
        names = got.json[template]["hostname"]
        names = names if isinstance(names, list) else [names]
        assert len(names) == count
        vmhostnames += [f"{name}.{domain}" if domain else name for name in names]
    assert sorted(name.count(".") for name in vmhostnames) == [0, 2, 2]  # centos has no domain

    tags = {**BEAKER_TAGS, "jenkins_build_url": MATRIX_BUILD_URL + "&x=1"}
    for vmhostname in vmhostnames:
        short = vmhostname.split(".")[0]
        # tag: PUT <pooling_api>/vm/<short> {"tags": {...}}, no token; anything but ok is logged.
        tagged = beaker(api, "PUT", f"{base}/vm/{short}", {"tags": tags})
        assert tagged.json == {"ok": True}, tagged.json
        # add_disk: POST <pooling_api>/api/v1/vm/<short>/disk/8 with the token; raises unless ok.
        disk = beaker(api, "POST", f"{base}/api/v1/vm/{short}/disk/8", token=token)
        assert disk.status == 202 and disk.json["ok"] is True, disk.json
    api.run_passes(seconds=1)
    for vmhostname in vmhostnames:
        short = vmhostname.split(".")[0]
        # wait_for_disk: GET <pooling_api>/vm/<short>; disk[index] == "+8gb".
        described = beaker(api, "GET", f"{base}/vm/{short}").json[short]
        assert described["disk"] == ["+8gb"] and described["tags"] == tags
        # cleanup: DELETE <pooling_api>/vm/<vmhostname> (fully qualified) with the token.
        assert beaker(api, "DELETE", f"{base}/vm/{vmhostname}", token=token).json == {"ok": True}
        assert api.state_of(short) == "completed"


BEAKER_PRESET_TAGS = ('"beaker_version":"7.6.0","jenkins_build_url":null,"department":"unknown",'
                      '"project":"Beaker","created_by":"audit"')
"""beaker-vmpooler's add_tags with beaker 7.6.0's presets, as Ruby's to_json wrote them in the run:
outside Jenkins (no BUILD_URL) ``jenkins_build_url`` is ``nil``, sent as ``null``."""


def test_beaker_outside_jenkins_as_recorded(client_api: Harness, slapd: SlapdServer) -> None:
    """beaker-vmpooler 1.4.0 run unchanged (docs/compatibility.md, "Run again"), these are the
    bytes it sent, replayed: four hosts, one template written ``templates/centos-9-x86_64``
    (beaker sends the last part), one an alias (``windows``), one hosts-file ``host_tags`` a YAML
    boolean, two disks on the first host. A developer's run sends ``"jenkins_build_url":null``:
    any answer but ``ok`` to that PUT is only logged ("Failed to tag host") and the VM keeps none of
    its tags; a disk is checked by its index in ``disk`` (``+16gb`` second)."""
    api = client_api
    token = api.new_token("alice", slapd.password("alice"))
    ruby = {**NET_HTTP_HEADERS, "Connection": "close"}
    posted = {**ruby, "Content-Type": "application/x-www-form-urlencoded"}

    got = api.request("POST", "//vm/", b'{"debian-12-x86_64":"2","centos-9-x86_64":"1","windows":"1"}',
                      {**posted, "X-Auth-Token": token})
    assert got.status == 200 and got.json["ok"] is True, got.json
    hosts = {"primary": "debian-12-x86_64", "agent-centos": "centos-9-x86_64", "agent-win": "windows",
             "agent-debian2": "debian-12-x86_64"}
    vmhostnames = {}
    for host, template in hosts.items():  # beaker's provision: shift from an array, else the string
        answer = got.json[template]["hostname"]
        name = answer.pop(0) if isinstance(answer, list) else answer
        vmhostnames[host] = f"{name}.{got.json['domain']}" if "domain" in got.json else name
    assert [name.partition(".")[2] for name in vmhostnames.values()] == [
        "example.com", "", "win.example.com", "example.com"]

    for host, vmhostname in vmhostnames.items():
        short = vmhostname.split(".")[0]
        host_tags = '"preserve":true,' if host == "agent-centos" else ""
        roles = "master, agent" if host == "primary" else "agent"
        body = f'{{"tags":{{{host_tags}{BEAKER_PRESET_TAGS},"name":"{host}","roles":"{roles}"}}}}'
        tagged = api.request("PUT", f"//vm/{short}", body.encode(), posted)
        assert tagged.json == {"ok": True}, tagged.json
        tags = api.request("GET", f"//vm/{short}", headers=ruby).json[short]["tags"]
        assert "jenkins_build_url" not in tags and tags["name"] == host and tags["roles"] == roles
        assert tags.get("preserve") == ("true" if host_tags else None)

    primary = vmhostnames["primary"].split(".")[0]
    for index, size in enumerate((8, 16)):  # add_disk, then wait_for_disk until disk[index] is it
        added = api.request("POST", f"//api/v1/vm/{primary}/disk/{size}", b"",
                            {**posted, "Content-Length": "0", "X-Auth-Token": token})
        assert added.status == 202 and added.json["ok"] is True, added.json
        api.run_passes("debian-12-x86_64", seconds=1)
        disks = api.request("GET", f"//vm/{primary}", headers=ruby).json[primary]["disk"]
        assert disks[index] == f"+{size}gb", disks

    for vmhostname in vmhostnames.values():  # cleanup: DELETE by the name beaker built
        returned = api.request("DELETE", f"//vm/{vmhostname}", headers={**ruby, "X-Auth-Token": token})
        assert returned.json == {"ok": True}, returned.json
        assert api.state_of(vmhostname.split(".")[0]) == "completed"
