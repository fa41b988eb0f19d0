"""Two more real vmpooler clients, replayed request for request and read as their code reads
the answers (docs/compatibility.md, "Real clients", eighth round):

- go-vmpooler (johnmccabe/go-vmpooler 0d0102a, a Go client library; run unchanged with Go 1.19
  against the local stack): Go's net/http, ``/api/v1`` (its examples' endpoint), the token in
  ``X-AUTH-TOKEN``, HTTP Basic for its token calls, JSON bodies without a Content-Type. It
  decodes a token's ``created`` and ``last`` with the Go layout ``2006-01-02 15:04:05 -0700``
  (vmpooler's Ruby ``Time#to_s``) and nothing else.
- vmpooler-client 3.1 (puppetlabs-toy-chest/vmpooler-client cfef7db, Python 2's httplib, so
  replayed: no Python 2 here): the bare host (``/token``, ``/vm``), no Content-Type, an empty
  body with ``Content-Length: 0``, and a lifetime sent as a JSON string (``{"lifetime":"7"}``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from tests.auth.slapd import SlapdServer
from tests.harness import Harness, Reply

GO_HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
GO_ENDPOINT = "/api/v1"
HTTPLIB_HEADERS = {"Accept-Encoding": "identity", "Content-Length": "0"}


def go(api: Harness, method: str, path: str, payload: Any = None, token: str | None = None,
       basic: tuple[str, str] | None = None) -> Reply:
    """One request as go-vmpooler's BaseClient sends it: ``json.Marshal`` of the payload, if any,
    no Content-Type; ``SendWithAuth`` adds ``X-AUTH-TOKEN``, ``SendWithBasicAuth`` Basic."""
    headers = dict(GO_HEADERS)
    if token is not None:
        headers["X-AUTH-TOKEN"] = token
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    body = json.dumps(payload, separators=(",", ":")) if payload is not None else None
    return api.request(method, GO_ENDPOINT + path, body, headers)


def go_ok(reply: Reply) -> dict[str, Any]:
    """go-vmpooler's Send and responseOk: a 2xx whose ``ok`` is true, else an error."""
    assert 200 <= reply.status <= 299 and reply.json.get("ok") is True, (reply.status, reply.json)
    return dict(reply.json)


def go_token(answer: dict[str, Any], token: str) -> dict[str, Any]:
    """legacyGetAllTokenOutput / legacyGetTokenOutput: ``created`` and ``last`` decoded as
    PoolerTime (``null`` or absent is the zero time; anything else must fit the layout)."""
    details = dict(answer[token])
    for field in ("created", "last"):
        if details.get(field) is not None:
            # go-vmpooler's poolerTimeLayout, "2006-01-02 15:04:05 -0700", as strptime writes it.
            details[field] = datetime.strptime(details[field], "%Y-%m-%d %H:%M:%S %z")
    return details


def go_vm(answer: dict[str, Any], hostname: str) -> dict[str, Any]:
    """vm.Client.Get's reading of ``GET /vm/<host>``: each type assertion it makes, or a panic."""
    legacy = answer[hostname]
    assert isinstance(legacy["domain"], str)
    assert isinstance(legacy["ip"], str) and isinstance(legacy["state"], str)
    assert isinstance(legacy["running"], (int, float)) and isinstance(legacy["lifetime"], (int, float))
    assert isinstance(legacy["template"], str)
    assert all(isinstance(value, str) for value in legacy.get("tags", {}).values())
    return {"fqdn": f"{hostname}.{legacy['domain']}", "lifetime": int(legacy["lifetime"]),
            "tags": legacy.get("tags"), "state": legacy["state"]}


def test_go_vmpooler_makes_a_token_and_lists_its_vms(client_api: Harness, slapd: SlapdServer) -> None:
    """token.Generate is ``POST /token`` then token.Get, and vm.GetAll reads ``GET /token/<t>``:
    both decode ``created`` and ``last`` with vmpooler's layout. Answered in ISO-8601
    (``2026-12-06T20:13:57Z``), Generate failed after making the token (``parsing time ... cannot
    parse "T20:13:57Z" as " "``) and GetAll failed whenever the token had been made."""
    api = client_api
    alice = ("alice", slapd.password("alice"))
    made = go_ok(go(api, "POST", "/token", basic=alice))
    token = made["token"]
    details = go_token(go_ok(go(api, "GET", f"/token/{token}", basic=alice)), token)
    assert details["user"] == "alice"
    assert details["created"].timestamp() == int(api.clock.now())

    # The vm example's flow: ListTemplates, Create, SetLifetime, SetTags, GetAll, Delete.
    templates = go(api, "GET", "/vm")
    assert templates.status == 200 and "debian-12-x86_64" in templates.json
    created = go_ok(go(api, "POST", "/vm/debian-12-x86_64", token=token))
    hostname = created["debian-12-x86_64"]["hostname"]
    assert go_vm(go_ok(go(api, "GET", f"/vm/{hostname}", token=token)), hostname)["fqdn"] == f"{hostname}.example.com"
    assert go(api, "PUT", f"/vm/{hostname}", {"lifetime": 5}, token=token).json == {"ok": True}
    assert go(api, "PUT", f"/vm/{hostname}", {"tags": {"john": "mccabe"}}, token=token).json == {"ok": True}
    api.clock.advance(60)
    listed = go_token(go_ok(go(api, "GET", f"/token/{token}", token=token)), token)
    assert listed["vms"]["running"] == [hostname]
    assert listed["last"] >= listed["created"]
    shown = go_vm(go_ok(go(api, "GET", f"/vm/{hostname}", token=token)), hostname)
    assert (shown["lifetime"], shown["tags"], shown["state"]) == (5, {"john": "mccabe"}, "running")
    go_ok(go(api, "DELETE", f"/vm/{hostname}", token=token))
    assert go_token(go_ok(go(api, "GET", f"/token/{token}", token=token)), token)["vms"]["running"] == []


def vmpooler_client(api: Harness, method: str, path: str, body: str = "", token: str | None = None,
                    basic: tuple[str, str] | None = None) -> Reply:
    """One request as vmpooler-client's ``_make_request`` sends it through httplib."""
    headers = dict(HTTPLIB_HEADERS, **{"Content-Length": str(len(body))})
    if token is not None:
        headers["X-AUTH-TOKEN"] = token
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    return api.request(method, path, body or None, headers)


def test_vmpooler_client_token_vm_and_lifetime_commands(client_api: Harness, slapd: SlapdServer) -> None:
    """``token create``/``validate``/``revoke``, ``vm list``/``get``/``info``/``running``/
    ``destroy_all`` and ``lifetime extend``, with the statuses its code branches on."""
    api = client_api
    alice = ("alice", slapd.password("alice"))
    made = vmpooler_client(api, "POST", "/token", basic=alice)
    assert made.status == 200
    token = made.json["token"]
    assert vmpooler_client(api, "GET", f"/token/{token}").json[token]["user"] == "alice"  # validate
    assert "debian-12-x86_64" in vmpooler_client(api, "GET", "/vm", token=token).json  # vm list

    got = vmpooler_client(api, "POST", "/vm/debian-12-x86_64", token=token)  # vm get: 200, ok
    assert got.status == 200 and got.json["ok"] is True
    hostname = got.json["debian-12-x86_64"]["hostname"]  # printed "Hostname: <h>", then ssh'd to
    assert "." not in hostname and got.json["domain"] == "example.com"
    info = vmpooler_client(api, "GET", f"/vm/{hostname}", token=token)
    assert info.status == 200 and info.json[hostname]["template"] == "debian-12-x86_64"  # vm info

    # lifetime extend 5: round(running) + 5, sent as a string; anything but 200 and ok raises.
    api.clock.advance(2 * 3600)
    running = vmpooler_client(api, "GET", f"/vm/{hostname}", token=token).json[hostname]["running"]
    assert isinstance(running, float) and round(running) == 2
    extended = vmpooler_client(api, "PUT", f"/vm/{hostname}", '{"lifetime":"%s"}' % (round(running) + 5), token=token)
    assert (extended.status, extended.json) == (200, {"ok": True})
    assert vmpooler_client(api, "GET", f"/vm/{hostname}", token=token).json[hostname]["lifetime"] == 7

    # vm running / destroy_all: the token's running VMs, each described, then each destroyed.
    running_vms = vmpooler_client(api, "GET", f"/token/{token}").json[token]["vms"]["running"]
    assert running_vms == [hostname]
    for vm in running_vms:
        assert vmpooler_client(api, "DELETE", f"/vm/{vm}", token=token).status == 200
    # Its errors, by status: 404 names a template or VM it cannot find; other failures say so.
    assert vmpooler_client(api, "POST", "/vm/nosuchpool", token=token).status == 404
    assert vmpooler_client(api, "GET", "/vm/nosuchvm", token=token).status == 404
    assert vmpooler_client(api, "DELETE", "/vm/nosuchvm", token=token).status == 404

    assert vmpooler_client(api, "DELETE", f"/token/{token}", basic=alice).status == 200  # revoke
    # validate of a revoked token: 404 is "Token already revoked or invalid token specified!".
    assert vmpooler_client(api, "GET", f"/token/{token}").status == 404
    wrong = vmpooler_client(api, "POST", "/token", basic=("alice", "wrong"))
    assert wrong.status == 401  # "the provided credentials are not authorized!"
