"""How many ``base`` DNs and ``user_object`` attributes an LDAP block may list: a login tries each
attribute under each base, one directory round trip each, so the lists are bounded (10 bases,
5 attributes) in the YAML and in a pushed canonical JSON alike, the problem naming the key."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from chalicelib.config import ConfigError, canonical_json, from_text, parse
from tests.auth.slapd import SlapdServer

BASES = [f"ou=team{n},dc=example,dc=com" for n in range(11)]
ATTRIBUTES = ["uid", "cn", "mail", "sn", "givenName", "sAMAccountName"]


def yaml_text(ldap: dict[str, Any]) -> str:
    return yaml.safe_dump({"auth": {"provider": "ldap", "ldap": ldap}})


def refused(load: Any) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load()
    return error.value.problems


@pytest.mark.parametrize("key, written, problem", [
    ("base", BASES, "at most 10 bases (a login tries each), got 11"),
    ("user_object", ATTRIBUTES, "at most 5 user_objects (a login tries each), got 6"),
])
def test_an_ldap_block_listing_more_than_a_login_should_try_is_refused_in_either_format(
        slapd: SlapdServer, key: str, written: list[str], problem: str) -> None:
    """Both name the key the operator wrote (``base``, which the canonical form keeps). Before,
    the canonical reader named the field (``auth.ldap.bases``), a key no config file has."""
    assert refused(lambda: parse(yaml_text(slapd.ldap_config(**{key: written})))) == [f"auth.ldap.{key}: {problem}"]

    document = json.loads(canonical_json(parse(yaml_text(slapd.ldap_config()))))
    document["auth"]["ldap"][key] = written
    assert refused(lambda: from_text(json.dumps(document), "s3 config")) == [f"auth.ldap.{key}: {problem}"]


def test_a_pushed_ldap_block_without_its_base_names_the_key_written(slapd: SlapdServer) -> None:
    document = json.loads(canonical_json(parse(yaml_text(slapd.ldap_config()))))
    del document["auth"]["ldap"]["base"]
    assert refused(lambda: from_text(json.dumps(document), "s3 config")) == ["auth.ldap.base: is required"]


def test_10_bases_of_5_user_objects_load(slapd: SlapdServer) -> None:
    config = parse(yaml_text(slapd.ldap_config(base=BASES[:10], user_object=ATTRIBUTES[:5])))
    assert config.auth is not None and config.auth.ldap is not None
    assert (len(config.auth.ldap.bases), len(config.auth.ldap.user_objects)) == (10, 5)
    pushed = from_text(canonical_json(config))
    assert pushed.auth is not None and pushed.auth.ldap is not None
    assert (pushed.auth.ldap.bases, pushed.auth.ldap.user_objects) == (config.auth.ldap.bases,
                                                                       config.auth.ldap.user_objects)


def test_admin_groups_past_20_are_refused_in_either_format(slapd: SlapdServer) -> None:
    """Any token holder's POST /config/poolsize asks the directory about each group before its
    403: before, any number loaded (1,000 groups: 1,000 searches, 3.3 s a refused request against
    the test slapd)."""
    groups = [f"cn=admins{n},ou=groups,dc=example,dc=com" for n in range(21)]
    problem = "auth.admin_groups: must list at most 20 names, got 21"
    def text(listed: list[str]) -> str:
        return yaml.safe_dump({"auth": {"provider": "ldap", "ldap": slapd.service_account_config(),
                                        "admin_groups": listed}})

    assert refused(lambda: parse(text(groups))) == [problem]

    document = json.loads(canonical_json(parse(text(groups[:20]))))
    assert len(document["auth"]["admin_groups"]) == 20
    document["auth"]["admin_groups"] = groups
    assert refused(lambda: from_text(json.dumps(document), "s3 config")) == [problem]
