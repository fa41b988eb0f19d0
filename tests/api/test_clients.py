"""What beaker-vmpooler and vmfloaty send, against the packaged demo config (`make run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tests.harness import Harness

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
