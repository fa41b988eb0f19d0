"""Property tests (hypothesis) of the pure parsers a caller's bytes reach before any state: the
JSON body, Basic credentials, hostnames, whole numbers, summary dates, the API Gateway event, and
the config checks a runtime change or a config push runs. Whatever the input, each answers a
value or its own refusal (an ApiError with a client status, ``Invalid``, ``Refused``), never
another exception (a 500). ``make fuzz`` runs many more examples (VMPOOL_FUZZ_EXAMPLES)."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import config_fields
from chalicelib.api import http, summary
from chalicelib.api.http import ApiError, ApiRequest
from chalicelib.api.proxy_event import checked_event
from chalicelib.auth.basic import parse_basic_auth, sends_basic_auth
from chalicelib.tagfilter import TAG_VALUE_PATTERN, Refused, check_tagfilter

EXAMPLES = 10 * int(os.environ.get("VMPOOL_FUZZ_EXAMPLES", "8"))
"""80 examples a property in `make test`, 2,000 in `make fuzz`."""
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

json_texts = st.one_of(
    json_values.map(lambda value: json.dumps(value, allow_nan=True)),
    st.text(alphabet='{}[]":,0123456789.eE+-tfnul\\ud8 \n\ufeff', max_size=60),
    st.text(max_size=60))


def _client_error(error: ApiError, allowed: tuple[int, ...]) -> None:
    assert error.status in allowed, error.body
    assert error.body["ok"] is False
    json.dumps(error.body).encode("utf-8")


@SETTINGS
@given(body=st.one_of(st.binary(max_size=200), json_texts.map(lambda text: text.encode("utf-8", "surrogatepass"))),
       coding=st.sampled_from([None, "", "identity", "gzip", "identity, br", " GZIP "]))
def test_a_body_is_json_or_a_client_error(body: bytes, coding: str | None) -> None:
    headers = {} if coding is None else {"content-encoding": coding}
    request = ApiRequest("POST", 3, headers=headers, body=body)
    try:
        value = http.json_body(request)
    except ApiError as error:
        _client_error(error, (400, 413, 415))
        return
    # What it returns is JSON the service can write back, log and store.
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


@SETTINGS
@given(header=st.one_of(st.none(), st.text(max_size=80),
                        st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode())))
def test_basic_credentials_parse_or_are_none(header: str | None) -> None:
    parsed = parse_basic_auth(header)
    if parsed is not None:
        user, _password = parsed
        assert ":" not in user
        assert sends_basic_auth(header)


@SETTINGS
@given(user=st.text(max_size=20).filter(lambda name: ":" not in name), password=st.text(max_size=20))
def test_basic_credentials_read_back_as_sent(user: str, password: str) -> None:
    encoded = base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass")).decode()
    hypothesis.assume(not re.search("[\ud800-\udfff]", user + password))
    assert parse_basic_auth(f"Basic {encoded}") == (user, password)


@SETTINGS
@given(raw=st.text(max_size=300))
def test_a_hostname_is_names_or_a_400(raw: str) -> None:
    try:
        names = http.short_hostnames(raw)
    except ApiError as error:
        _client_error(error, (400,))
        return
    assert names and all(name.isascii() and "." not in name for name in names)


@SETTINGS
@given(value=json_values | st.text(alphabet="0123456789", max_size=40) | st.integers())
def test_a_whole_number_is_in_range_or_none(value: Any) -> None:
    number = http.whole_number(value)
    assert number is None or 0 <= number <= http.TOO_LARGE


@SETTINGS
@given(value=st.text(max_size=20) | st.dates().map(str))
def test_a_summary_date_is_a_date_or_a_400(value: str) -> None:
    try:
        summary._parse_day("from", value)
    except ApiError as error:
        _client_error(error, (400,))


class _Route:
    def __init__(self, *view_args: str) -> None:
        self.view_args = list(view_args)


@SETTINGS
@given(event=st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "resource": st.sampled_from(["/vm/{name}", "/status", "/nope"]) | json_values,
    "httpMethod": st.sampled_from(["GET", "PUT"]) | json_values,
    "headers": json_values, "multiValueHeaders": json_values,
    "queryStringParameters": json_values, "multiValueQueryStringParameters": json_values,
    "pathParameters": json_values | st.just({"name": "host1"}), "stageVariables": json_values,
    "isBase64Encoded": json_values, "body": json_values,
    "requestContext": json_values | st.fixed_dictionaries({}, optional={"identity": json_values,
                                                                          "resourcePath": json_values}),
})))
def test_an_event_is_checked_or_refused(event: Any) -> None:
    routes = {"/vm/{name}": {"GET": _Route("name"), "PUT": _Route("name")}, "/status": {"GET": _Route()}}
    try:
        checked_event(event, routes)
    except ApiError as error:
        _client_error(error, (400, 404, 405, 413))


CHECKERS = [config_fields.integer(0, 100), config_fields.number(0, 10), config_fields.boolean,
            config_fields.string, config_fields.inventory_path, config_fields.string_list,
            config_fields.weights, config_fields.compiled_regex, config_fields.regex,
            config_fields.dns_name, config_fields.sizing, config_fields.hostname_prefix,
            config_fields.deployment_name, config_fields.timezone_name, config_fields.secret]


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda checker: getattr(checker, "__qualname__", str(checker)))
@SETTINGS
@given(value=json_values)
def test_a_config_check_accepts_or_says_invalid(checker: Any, value: Any) -> None:
    try:
        checker(value)
    except config_fields.Invalid as error:
        assert str(error)


regex_texts = st.text(alphabet="ab.-_*+?|()[]{}^$\\dwsDWS0123,:=!<>#", max_size=30)


@SETTINGS
@given(pattern=regex_texts)
def test_a_tagfilter_is_accepted_or_refused(pattern: str) -> None:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        hypothesis.assume(False)
    try:
        check_tagfilter(pattern)
    except Refused as error:
        assert str(error)
        return
    # Accepted: it runs on the longest tag value there is (the cost bound is measured in
    # tests/core/test_tagfilter_cost.py; here only that it runs).
    value = "a" * 254 + "!"
    assert TAG_VALUE_PATTERN.match(value)
    re.search(pattern, value)
