"""Secrets: never in a response, a log line or an exception; references to Secrets Manager / SSM
(moto) resolve into the running service: Redis AUTH, the LDAP service account, vCenter (vcsim)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import redis
from moto import mock_aws

from chalicelib.auth.secrets import SecretResolver
from chalicelib.config import ConfigError, build
from chalicelib.providers.base import ProviderError
from chalicelib.providers.vsphere import connection as vsphere_connection
from chalicelib.services import Services, redis_client
from chalicelib.store import StoreUnavailable
from local.redis_server import RedisServer
from tests.auth_api.documents import POOL, document
from tests.harness import Harness, basic
from tests.local.stack import call as stack_call
from tests.local.stack import local_stack as running_stack
from tests.vsphere.vcsim import TEMPLATE, VcsimServer
from tools.vcsim import launcher

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "redis-AUTH-t0ken-8f3a"
VSPHERE_PASSWORD = "vsphere-Secret-Pa55-71c2"
POOL_KEY_SECRET = "pool-level-Secret-0d9e"


@pytest.fixture(scope="module")
def locked_redis_server() -> Iterator[RedisServer]:
    """A redis-server of its own that requires a password (AUTH)."""
    with RedisServer() as server:
        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        yield server


@pytest.fixture
def locked_redis(locked_redis_server: RedisServer) -> RedisServer:
    """The password-protected server, emptied."""
    redis.Redis(port=locked_redis_server.port, password=REDIS_PASSWORD).flushall()
    return locked_redis_server


@pytest.fixture
def aws(aws_env, slapd) -> Iterator[dict[str, Any]]:
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        ssm = boto3.client("ssm", region_name="us-east-1")
        secrets.create_secret(Name="vmpool/ldap", SecretString=json.dumps({"password": slapd.service_password}))
        secrets.create_secret(Name="vmpool/vsphere", SecretString=launcher.PASSWORD)
        ssm.put_parameter(Name="/vmpool/redis", Value=REDIS_PASSWORD, Type="SecureString")
        yield {"secretsmanager": secrets, "ssm": ssm}


def service_on(make_api, doc: dict[str, Any], resolver: SecretResolver | None = None) -> Harness:
    """The service for ``doc`` with its Redis client built as in production (password resolved on
    first connection)."""
    resolver = resolver or SecretResolver()
    config = build(doc)
    return make_api(doc, client=redis_client(config, resolver), secrets=resolver)


def locked_redis_section(server: RedisServer, password: Any) -> dict[str, Any]:
    return {"server": "127.0.0.1", "port": server.port, "password": password}


# --- nothing leaks ------------------------------------------------------------------------------


def exercise(api: Harness, slapd) -> list[str]:
    """Drive every kind of answer: successes, 400/401/403/404/405/429, GET /config... Returns the
    tokens it made."""
    alice, bob = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    alice_token = api.new_token("alice", slapd.password("alice"))
    bob_token = api.new_token("bob", slapd.password("bob"))
    api.call("GET", "/api/v3/token", headers=alice)
    api.call("GET", f"/api/v3/token/{alice_token}", headers={"X-AUTH-TOKEN": alice_token})
    api.call("GET", f"/api/v3/token/{alice_token}", headers=bob)
    api.call("DELETE", f"/api/v3/token/{alice_token}", headers=bob)
    vm = api.checkout(POOL, alice_token)
    api.call("GET", f"/api/v3/vm/{vm}")
    api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": alice_token}, body={"lifetime": 9999})
    api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob_token}, body={"lifetime": 3})
    api.call("PUT", f"/api/v3/vm/{vm}", body=b"{not json")
    api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": bob_token})
    api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": alice_token})
    # A password pasted where a token belongs.
    api.call("POST", "/api/v3/vm", headers={"X-AUTH-TOKEN": slapd.password("alice")}, body={POOL: 1})
    for path in ("/api/v3/config", "/api/v1/config", "/api/v3/status", "/api/v3/vm", "/api/v3/summary",
                 "/api/v3/poolstat?pool=debian", "/api/v3/totalrunning", "/api/v3/nothing-here"):
        api.call("GET", path)
    api.call("PATCH", "/api/v3/token")
    for _ in range(4):  # wrong passwords until 429
        api.call("POST", "/api/v3/token", headers=basic("carol", slapd.password("alice")))
    assert api.replies[-1].status == 429
    api.call("DELETE", f"/api/v3/token/{bob_token}", headers=bob)
    return [alice_token, bob_token]


def assert_nowhere(secrets: list[str], api: Harness, logs: list[str], output: str, *, tokens: list[str]) -> set[int]:
    """No secret in any reply (body or header); no secret or token in any log line or output.
    The statuses seen, so the caller can check the sweep covered every kind of answer."""
    statuses = {reply.status for reply in api.replies}
    for secret in secrets:
        for reply in api.replies:
            assert secret not in reply.raw.decode(errors="replace"), (secret, reply.status)
            assert secret not in json.dumps(reply.headers)
    for secret in secrets + tokens:
        assert not [line for line in logs if secret in line], secret
        assert secret not in output
    assert logs, "the scan must have seen log lines"
    return statuses


def test_no_secret_in_any_response_or_log_line(make_api, ldap_auth, slapd, locked_redis, all_logs, capfd,
                                                closed_port):
    auth = ldap_auth(login_attempts_per_user=3)
    doc = document(
        auth,
        redis=locked_redis_section(locked_redis, REDIS_PASSWORD),
        providers={"vcenter": {"provider_class": "vsphere", "server": "127.0.0.1:9", "username": "u",
                               "password": VSPHERE_PASSWORD}},
    )
    doc["pools"][0]["password"] = POOL_KEY_SECRET  # an unknown pool key must not reach GET /config
    api = service_on(make_api, doc)
    api.fill(POOL)
    api.services.provider("vcenter")  # the vSphere password is resolved into the service
    tokens = exercise(api, slapd)

    # Outages: LDAP down, Redis refusing a wrong password, Redis down. All JSON 503s.
    down = dict(auth, ldap={**auth["ldap"], "port": closed_port})
    ldap_down = service_on(make_api, document(down, redis=locked_redis_section(locked_redis, REDIS_PASSWORD)))
    assert ldap_down.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 503
    wrong = "wrong-Redis-Pa55-aa01"
    bad_redis = service_on(make_api, document(auth, redis=locked_redis_section(locked_redis, wrong)))
    reply = bad_redis.call("GET", "/api/v3/status")
    assert reply.status == 503 and reply.body["ok"] is False
    assert bad_redis.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 503
    gone = service_on(make_api, document(auth, redis={"port": closed_port, "password": REDIS_PASSWORD}))
    assert gone.call("GET", f"/api/v3/vm/{POOL}").status == 503

    config_reply = next(r for r in api.replies if r.raw and b"pool_configuration" in r.raw)
    assert config_reply.status == 200
    captured = capfd.readouterr()
    secrets = [slapd.service_password, VSPHERE_PASSWORD, REDIS_PASSWORD, wrong, POOL_KEY_SECRET,
               *(slapd.password(user) for user in slapd.users)]
    api.replies += ldap_down.replies + bad_redis.replies + gone.replies
    statuses = assert_nowhere(secrets, api, all_logs.lines, captured.out + captured.err, tokens=tokens)
    assert {200, 400, 401, 403, 404, 405, 429, 503} <= statuses


def test_config_errors_never_show_a_secret_value():
    doc = document({"provider": "ldap", "ldap": {"host": "ldap.example.com", "base": "dc=example,dc=com",
                                                 "service_account_hash": {"user_dn": "cn=svc,dc=example,dc=com",
                                                                          "password": ["svc-Secret-in-a-list"]}}},
                   redis={"password": {"vault": "redis-Secret-in-vault"}},
                   providers={"vcenter": {"provider_class": "vsphere", "password": ["vsphere-Secret-list"]}})
    with pytest.raises(ConfigError) as raised:
        build(doc)
    text = str(raised.value)
    assert "redis.password:" in text and "providers.vcenter.password:" in text
    assert "auth.ldap.service_account_hash.password:" in text
    for secret in ("svc-Secret-in-a-list", "redis-Secret-in-vault", "vsphere-Secret-list"):
        assert secret not in text


def test_the_ldap_block_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError) as raised:
        build(document({"provider": ":ldap", "ldap": {"host": "ldap://x", "port": "x", "encryption": "tls"}}))
    problems = raised.value.problems
    assert any(p.startswith("auth.ldap.host:") for p in problems)
    assert any(p.startswith("auth.ldap.port:") for p in problems)
    assert any(p.startswith("auth.ldap.base:") for p in problems)
    assert any(p.startswith("auth.ldap.encryption:") for p in problems)
    with pytest.raises(ConfigError, match=r"auth\.ldap: is required"):
        build(document({"provider": "ldap"}))


# --- references resolve into the running service ------------------------------------------------


def test_references_resolve_into_the_running_service(
    make_api, ldap_auth, slapd, locked_redis, aws,
    vcsim: VcsimServer,
    all_logs,
):
    auth = ldap_auth()
    auth["ldap"]["service_account_hash"]["password"] = {"secret": "vmpool/ldap", "key": "password"}
    doc = document(
        auth,
        redis=locked_redis_section(locked_redis, {"ssm": "/vmpool/redis"}),
        providers={"vsphere": {"provider_class": "vsphere", "server": vcsim.server, "username": launcher.USERNAME,
                               "password": {"secret": "vmpool/vsphere"}, "ca_bundle": str(vcsim.cert_path),
                               "connect_timeout": 2, "call_timeout": 10}},
    )
    doc["pools"].append({"name": "vs", "size": 0, "provider": "vsphere", "template": TEMPLATE,
                         "folder": "vmpool/not-there"})
    api = service_on(make_api, doc)
    # Redis AUTH (SSM SecureString) and the LDAP service account (a Secrets Manager JSON key).
    api.fill(POOL)
    token = api.new_token("carol", slapd.password("carol"))
    vm = api.checkout(POOL, token)
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": token}).status == 200
    # vCenter (Secrets Manager string): a real login to vcsim; the missing folder lists nothing.
    provider = api.services.provider("vsphere")
    vsphere_connection.drop(provider.endpoint)  # log in afresh, with the resolved password
    assert provider.list_vms(api.services.config.pool("vs")) == []
    for secret in (REDIS_PASSWORD, slapd.service_password, launcher.PASSWORD):
        assert not [line for line in all_logs.lines if secret in line]
        assert not [r for r in api.replies if secret.encode() in r.raw]


def test_a_wrong_vsphere_secret_fails_without_showing_it(make_api, aws, vcsim: VcsimServer):
    aws["secretsmanager"].put_secret_value(SecretId="vmpool/vsphere", SecretString="not-the-Vsphere-pass")
    doc = document(None, providers={"vsphere": {"provider_class": "vsphere", "server": vcsim.server,
                                                "username": launcher.USERNAME, "password": {"secret": "vmpool/vsphere"},
                                                "ca_bundle": str(vcsim.cert_path), "connect_timeout": 2}})
    doc["pools"].append({"name": "vs", "size": 0, "provider": "vsphere", "template": TEMPLATE, "folder": "x"})
    api = make_api(doc)
    provider = api.services.provider("vsphere")
    vsphere_connection.drop(provider.endpoint)  # no session left from another test
    with pytest.raises(ProviderError) as raised:
        provider.list_vms(api.services.config.pool("vs"))
    assert "not-the-Vsphere-pass" not in str(raised.value)


def test_an_unavailable_reference_is_a_503_naming_it(make_api, ldap_auth, slapd, locked_redis, aws):
    auth = ldap_auth()
    auth["ldap"]["service_account_hash"]["password"] = {"secret": "vmpool/missing"}
    api = service_on(make_api, document(auth, redis=locked_redis_section(locked_redis, {"ssm": "/vmpool/redis"})))
    reply = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert reply.status == 503 and reply.body["ok"] is False

    no_redis_secret = service_on(make_api, document(auth, redis=locked_redis_section(locked_redis,
                                                                                     {"ssm": "/vmpool/gone"})))
    reply = no_redis_secret.call("GET", "/api/v3/status")
    assert reply.status == 503 and reply.body == {
        "ok": False, "error": "the state store is unavailable, try again shortly"}


def test_in_aws_the_redis_auth_token_comes_from_its_secret_not_the_environment(locked_redis, aws, all_logs):
    """As infra/template.py deploys it: the endpoint in VMPOOL_REDIS_URL without a password, the
    token in the secret named by VMPOOL_REDIS_AUTH_SECRET."""
    aws["secretsmanager"].create_secret(Name="vmpool/prod/redis-auth",
                                        SecretString=json.dumps({"token": REDIS_PASSWORD}))
    environ = {"VMPOOL_CONFIG": ":pools:\n  - {name: p, size: 0, provider: dummy}\n",
               "VMPOOL_REDIS_URL": f"redis://127.0.0.1:{locked_redis.port}/0",
               "VMPOOL_REDIS_AUTH_SECRET": "vmpool/prod/redis-auth"}
    services = Services.from_environment(environ)
    assert REDIS_PASSWORD not in json.dumps(environ)
    services.store.ping()  # authenticated with the token from the secret
    without_secret = Services.from_environment({k: v for k, v in environ.items() if k != "VMPOOL_REDIS_AUTH_SECRET"})
    with pytest.raises(StoreUnavailable):
        without_secret.store.ping()
    assert not [line for line in all_logs.lines if REDIS_PASSWORD in line]


TRACED_TOKEN_ROUTES = """
import base64, json
from tests.infra.packaged_functions import Context, api_event
import app
login = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-Pass-1").decode()}
made = app.app(api_event("POST", "/api/v3/token", "/api/v3/token", headers=login), Context())
token = json.loads(made["body"])["token"]
path = "/api/v3/token/" + token
shown = app.app(api_event("GET", "/api/v3/token/{token}", path, params={"token": token}), Context())
print(json.dumps({"token": token, "statuses": [made["statusCode"], shown["statusCode"]],
                  "tracer": type(app.tracer).__name__}))
"""


def test_no_token_is_written_to_the_traces(redis_server: RedisServer, tmp_path: Path) -> None:
    """A stage with tracing (prod) recorded each API answer in its X-Ray trace (Powertools'
    capture_lambda_handler keeps the handler's response as metadata): every token POST /token made,
    and every token GET /token/<t> showed, sat in clear in the traces, for anyone allowed to read
    them. Run as the API Lambda with tracing on, an X-Ray daemon's port listening: the traces
    still go out, without the token."""
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(1)
    config = {"auth": {"provider": "dummy"}, "providers": {"dummy": {}},
              "pools": [{"name": "p", "size": 1, "provider": "dummy"}]}
    environ = {**os.environ, "LAMBDA_TASK_ROOT": str(tmp_path), "POWERTOOLS_TRACE_DISABLED": "false",
               "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
               "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{daemon.getsockname()[1]}", "AWS_REGION": "us-east-1",
               "VMPOOL_CONFIG": json.dumps(config), "VMPOOL_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/5",
               "VMPOOL_KEY_PREFIX": f"traces-{os.getpid()}:"}
    try:
        run = subprocess.run([sys.executable, "-c", TRACED_TOKEN_ROUTES], env=environ, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        *logs, last = run.stdout.strip().splitlines()
        found = json.loads(last)
        sent: list[str] = []
        with contextlib.suppress(socket.timeout):
            while True:
                sent.append(daemon.recv(65536).decode())
    finally:
        daemon.close()
    assert found["statuses"] == [200, 200] and found["tracer"] == "Tracer"
    assert any('"## ' in segment for segment in sent)  # the handlers' subsegments went out
    assert [segment for segment in sent if found["token"] in segment] == []
    assert [line for line in logs if found["token"] in line] == []


TOKEN_LOG_CONFIG = """\
config: {check_loop_delay_min: 0.2, task_limit: 10}
auth: {provider: dummy}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0.1, boot_time: 0.1, destroyvm_max_time: 0.1}
pools:
  - {name: debian, size: 1, provider: dummy}
"""


def _raw_answer(port: int, head: bytes) -> bytes:
    """What the local front answers to ``head`` sent as it is (no client tidies it up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        answer = b""
        with contextlib.suppress(socket.timeout):
            while chunk := connection.recv(65536):
                answer += chunk
    return answer


@pytest.mark.slow
def test_no_token_in_the_local_stacks_log_whatever_the_request(tmp_path: Path) -> None:
    """GET and DELETE /token/<t> put the token in the path, and vmfloaty's `token status` and
    `token delete` send nothing else. The real HTTP front and the app, logging at DEBUG, write no
    path and no header of any request: neither the answered ones, nor the refused ones (405, 404,
    a token too long, a control character, a repeated or broken header), nor the ones the front
    refuses before the app (414, 400, 501)."""
    with running_stack(tmp_path, TOKEN_LOG_CONFIG, workers=1, env={"POWERTOOLS_LOG_LEVEL": "DEBUG"}) as stack:
        base = f"http://127.0.0.1:{stack.port}"
        alice = basic("alice", "a-password")
        status, made = stack_call("POST", f"{base}/api/v3/token", headers=alice)
        assert status == 200, made
        token = made["token"]
        statuses = set()
        for method, path, headers in (
                ("GET", f"/api/v3/token/{token}", {}), ("GET", f"/token/{token}", {}),
                ("GET", f"/api/v1/token/{token}", {"X-AUTH-TOKEN": token}),
                ("GET", f"/api/v3/token/{token}", {"X-AUTH-TOKEN": token + "x"}),
                ("GET", f"/api/v3/token/{token}", basic("bob", "b-password")),
                ("PATCH", f"/api/v3/token/{token}", {}), ("GET", f"/api/v3/token/{token}/more", {}),
                ("GET", f"/api/v3/token/{token}?token={token}", {}), ("GET", f"/api/v3/vm/{token}", {}),
                ("DELETE", f"/api/v3/token/{token}x", alice), ("DELETE", f"/api/v3/token/{token}", {}),
                ("DELETE", f"/api/v3/token/{token}", alice), ("GET", f"/api/v3/token/{token}", {})):
            statuses.add(stack_call(method, base + path, headers=headers)[0])
        assert statuses == {200, 401, 403, 404, 405}
        fronted = [_raw_answer(stack.port, head).split(b"\r\n", 1)[0] for head in (
            f"HEAD /api/v3/token/{token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            f"GET /api/v3/token/{token}{'a' * 10000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            f"GET /api/v3/token/{token}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            f"GET /api/v3/token/{token} HTTP/1.1\r\nHost: x\r\nX-AUTH-TOKEN: {token}\x7f\r\n\r\n".encode(),
            f"GET /api/v3/token/{token} HTTP/1.1\r\nHost: x\r\nX-AUTH-TOKEN: {token}\r\n"
            f"X-AUTH-TOKEN: {token}\r\nConnection: close\r\n\r\n".encode(),
            f"GET /api/v3/token/{token} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zip\r\n\r\n".encode())]
        assert [line.split(b" ")[1] for line in fronted] == [b"404", b"414", b"400", b"400", b"401", b"501"]
        log = stack.log()
    assert '"token created"' in log and '"token deleted"' in log  # the app's lines are there
    assert [line for line in log.splitlines() if token in line] == []
