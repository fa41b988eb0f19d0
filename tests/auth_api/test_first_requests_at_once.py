"""The first requests after a start or an ``:auth:`` change arriving at once: what the service
builds from the config (the authenticator, the directory check...) is built once, and they share
it. Before, each request that came before the first build ended built its own, the last one
kept: each its own directory check, so each asked the directory about the same user."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from chalicelib.auth.directory_check import DirectoryCheck, user_hash
from chalicelib.auth.ldap import LdapAuthenticator
from chalicelib.config import build
from chalicelib.services import Services
from tests.auth_api.documents import document
from tests.harness import HarnessFactory

CALLERS = 16


def test_first_requests_at_once_after_an_auth_change_ask_the_directory_about_their_user_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], leaver: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A config push changes ``:auth:``; 16 ``GET /token/<t>`` of one user come at once, no
    answer about the user kept: one build of the directory check, one question to the
    directory, 16 answers. Each build is held until another starts (at most 1 s), so that the
    16 are at once whatever the machine's load: with one build at a time nobody else starts one."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    name, password = leaver
    token = api.new_token(name, password)
    api.client.delete(api.services.directory_check.keys.directory_check(user_hash(name)))
    api.services.use_config(build(document(ldap_auth(directory_check_minutes=11))))

    builds: list[DirectoryCheck] = []
    another_build = threading.Event()
    make_check = Services._directory_check

    def held_build(services: Services, auth: Any) -> DirectoryCheck:
        if builds:
            another_build.set()
        builds.append(made := make_check(services, auth))
        another_build.wait(1.0)
        return made

    asked: list[str] = []
    user_entry = LdapAuthenticator.user_entry

    def counted(authenticator: LdapAuthenticator, user: str) -> str | bool:
        asked.append(user)
        check = api.services.directory_check
        for _ in range(2000):  # bounded: the others wait for this answer, or (two checks) ask themselves
            if check.waiting(user) == CALLERS - 1 or len(asked) > 1:
                break
            threading.Event().wait(0.001)
        return user_entry(authenticator, user)

    monkeypatch.setattr(Services, "_directory_check", held_build)
    monkeypatch.setattr(LdapAuthenticator, "user_entry", counted)
    with ThreadPoolExecutor(CALLERS) as pool:
        replies = list(pool.map(lambda _: api.call("GET", f"/api/v3/token/{token}"), range(CALLERS)))
    assert [reply.status for reply in replies] == [200] * CALLERS
    assert asked == [name]
    assert len(builds) == 1
    assert api.services.directory_check is builds[0]

