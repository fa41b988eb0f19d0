"""Who a posixGroup's ``memberUid`` makes an administrator (``admin_groups``), decided: the holder
of the name, as RFC 2307 says and as every host reading the group has it, and only through a
token whose login bound as the entry holding the name now. vmpool cannot tell a name's holders
apart in ``memberUid`` (it names no entry): taking a departed or renamed person's name out of the
group is the directory operator's part (docs/auth.md, Administrators); list an administrator by
their entry's id, or use a group read through ``memberOf``, to bind the rights to the person."""

from __future__ import annotations

import secrets
from typing import Any, Callable

from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import POOL, document
from tests.harness import Harness, HarnessFactory

EXPERIMENTAL = {"experimental_features": True}


def _resize(api: Harness, token: str) -> int:
    """``POST /config/poolsize`` to a size the pool has not had: 201 when the token's user may."""
    pool = api.services.pool(POOL)
    assert pool is not None
    size = str(pool.size + 1)
    return api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": token}, body={POOL: size}).status


def test_a_memberuid_name_is_its_holders_not_a_departed_or_renamed_persons_token(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """Directory checks off (a departed person's tokens keep working, as vmpooler's): the name in
    ``memberUid`` is an administrator's while its entry holds it; renamed, the person's token
    under the new name is not (the group names the old one); deleted and the name given to a
    newcomer, the departed person's token is not an administrator's, the newcomer is."""
    name, password = leaver
    group = slapd.add_posix_group(f"vmpool-posix-{secrets.token_hex(4)}", [name])
    created: list[str] = []
    try:
        api = make_api(document(ldap_auth(admin_groups=[group], directory_check_minutes=0), config=EXPERIMENTAL))
        departed = api.new_token(name, password)
        assert _resize(api, departed) == 201
        renamed_dn = slapd.rename(f"uid={name},{slapd.users_base}", f"{name}r")
        created.append(renamed_dn)
        assert _resize(api, api.new_token(f"{name}r", password)) == 403
        assert _resize(api, departed) == 403  # the name finds no entry now
        slapd.remove(renamed_dn)
        newcomer_password = secrets.token_urlsafe(12)
        created.append(slapd.add_user(name, newcomer_password))
        assert _resize(api, departed) == 403
        assert _resize(api, api.new_token(name, newcomer_password)) == 201
    finally:
        for dn in [*created, group]:
            slapd.remove(dn)
