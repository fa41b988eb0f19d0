"""CI scripts that check VMs out with curl and read the host from the answer's text.

puppet-agent's Windows MSI build script and Puppetstein (a Puppet developer's tool) run
``curl -d --url http://<pooler>/vm/<platform>`` and take the host with the regular expression
``/"hostname": "(.*)"/`` from its output, one line at a time, as vmpooler writes every answer
(Ruby's ``JSON.pretty_generate``: two-space indent, one key per line, ``"key": value``). The
puppet-agent script then reaches ``Administrator@<hostname>`` and returns the VM with
``curl -X DELETE --url http://<pooler>/vm/<hostname>``. Our compact answer
(``{"ok":true,"win-2012-x86_64":{"hostname":"..."},"domain":"..."}``) matched nothing: Ruby's
``match(...)[1]`` raised ``NoMethodError`` on nil and the build stopped with the VM taken.
"""

from __future__ import annotations

import json
import re
from typing import Callable

import pytest

from tests.api.test_clients import DEMO_CONFIG
from tests.harness import Harness

HOSTNAME_IN_TEXT = re.compile(r'"hostname": "(.*)"')
"""The scripts' Ruby regular expression; ``.`` matches no line break in Ruby's as in Python's."""

CURL_FORM = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/7.88.1", "Accept": "*/*"}
"""What ``curl -d --url <url>`` sends besides its body, ``--url`` (the data ``-d`` takes)."""


@pytest.mark.parametrize("prefix", ["", "/api/v1", "/api/v2", "/api/v3"])
def test_a_script_takes_the_host_from_the_checkout_answers_text(make_stack: Callable[[str], Harness],
                                                                 prefix: str) -> None:
    stack = make_stack(DEMO_CONFIG)
    stack.fill("win-2022-x86_64")

    reply = stack.request("POST", f"{prefix}/vm/win-2022-x86_64", b"--url", headers=CURL_FORM)

    assert reply.status == 200, reply.raw[:300]
    text = reply.raw.decode()
    found = HOSTNAME_IN_TEXT.search(text)
    assert found is not None, text
    hostname = found.group(1)
    assert hostname == reply.json["win-2022-x86_64"]["hostname"]
    assert stack.state_of(hostname.split(".")[0]) == "running"
    # As vmpooler writes it (JSON.pretty_generate), byte for byte.
    assert text == json.dumps(reply.json, indent=2)
    returned = stack.request("DELETE", f"{prefix}/vm/{hostname}", headers={"User-Agent": "curl/7.88.1"})
    assert returned.json == {"ok": True}


def test_every_host_of_a_checkout_of_several_is_on_its_own_line(make_stack: Callable[[str], Harness]) -> None:
    """vmpooler's layout of several VMs: the array's items one per line, so a script reading
    ``"<host>",`` lines (or ``grep -o``) finds each."""
    stack = make_stack(DEMO_CONFIG)
    stack.fill("debian-12-x86_64", "win-2022-x86_64")

    reply = stack.request("POST", "/api/v3/vm/debian+debian+windows", b"--url", headers=CURL_FORM)

    assert reply.status == 200, reply.raw[:300]
    debian = reply.json["debian"]["hostname"]
    windows = reply.json["windows"]["hostname"]
    assert reply.raw.decode().splitlines() == [
        "{",
        '  "ok": true,',
        '  "debian": {',
        '    "hostname": [',
        f'      "{debian[0]}",',
        f'      "{debian[1]}"',
        "    ]",
        "  },",
        '  "windows": {',
        f'    "hostname": "{windows}"',
        "  }",
        "}",
    ]
