"""Secret references fetched with Powertools Parameters, against moto."""

from __future__ import annotations

import json
import logging
import pickle

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from moto import mock_aws

from chalicelib.auth.secrets import (
    RedactingFilter,
    Secret,
    SecretConfigError,
    SecretReference,
    SecretResolver,
    SecretUnavailable,
    check_secret_value,
    parse_reference,
)
from tests.aws_pages import PAGES, answer_with_page


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        ssm = boto3.client("ssm", region_name="us-east-1")
        secrets.create_secret(Name="vmpool/vsphere", SecretString="vsphere-Pa55")
        secrets.create_secret(
            Name="vmpool/ldap", SecretString=json.dumps({"user": "svc", "password": "ldap-Pa55", "port": 636})
        )
        ssm.put_parameter(Name="/vmpool/redis/password", Value="redis-Pa55", Type="SecureString")
        ssm.put_parameter(Name="/vmpool/plain", Value="plain-value", Type="String")
        yield {"secretsmanager": secrets, "ssm": ssm}


def test_plain_values_pass_through_without_aws():
    resolver = SecretResolver()
    assert resolver.resolve("pw") == "pw"
    assert resolver.resolve("ssm:/looks/like/a/reference") == "ssm:/looks/like/a/reference"
    assert resolver.resolve(1234) == "1234"
    assert resolver.resolve(None) is None
    assert resolver.resolve(Secret("x")) == "x"


def test_secrets_manager_whole_and_json_key(aws):
    resolver = SecretResolver()
    assert resolver.resolve({"secret": "vmpool/vsphere"}) == "vsphere-Pa55"
    assert resolver.resolve({"secret": "vmpool/ldap", "key": "password"}) == "ldap-Pa55"
    assert resolver.resolve({"secret": "vmpool/ldap", "key": "port"}) == "636"
    arn = aws["secretsmanager"].describe_secret(SecretId="vmpool/vsphere")["ARN"]
    assert resolver.resolve({"secret": arn}) == "vsphere-Pa55"


def test_ssm_secure_string_is_decrypted(aws):
    resolver = SecretResolver()
    assert resolver.resolve({"ssm": "/vmpool/redis/password"}) == "redis-Pa55"
    assert resolver.resolve({"ssm": "/vmpool/plain"}) == "plain-value"


def test_values_are_cached_for_max_age(aws):
    resolver = SecretResolver(max_age=300)
    assert resolver.resolve({"secret": "vmpool/vsphere"}) == "vsphere-Pa55"
    aws["secretsmanager"].put_secret_value(SecretId="vmpool/vsphere", SecretString="rotated-Pa55")
    assert resolver.resolve({"secret": "vmpool/vsphere"}) == "vsphere-Pa55"  # cached
    assert resolver.resolve({"secret": "vmpool/vsphere"}, force_fetch=True) == "rotated-Pa55"
    fresh = SecretResolver(max_age=0)
    assert fresh.resolve({"secret": "vmpool/vsphere"}) == "rotated-Pa55"


@pytest.mark.parametrize(
    "reference, message",
    [
        ({"secret": "vmpool/missing"}, "ResourceNotFoundException"),
        ({"ssm": "/vmpool/missing"}, "ParameterNotFound"),
        ({"secret": "vmpool/vsphere", "key": "password"}, "not a JSON object"),
        ({"secret": "vmpool/ldap", "key": "nope"}, "key is missing"),
    ],
)
def test_fetch_errors_name_the_reference_not_the_value(aws, reference, message):
    with pytest.raises(SecretUnavailable, match=message) as raised:
        SecretResolver().resolve(reference)
    text = str(raised.value)
    for value in ("vsphere-Pa55", "ldap-Pa55", "redis-Pa55"):
        assert value not in text
    assert raised.value.__cause__ is None


def test_no_credentials_is_unavailable(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws(), pytest.raises(SecretUnavailable, match="vmpool/x"):
        SecretResolver().resolve({"secret": "vmpool/x"})


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"vault": "x"}, "must be"),
        ({"secret": "a", "ssm": "b"}, "not both"),
        ({"secret": ""}, "non-empty"),
        ({"secret": "a", "key": ""}, "'key'"),
        ({"ssm": "/a", "region": "x"}, "unknown keys"),
    ],
)
def test_malformed_references(value, problem):
    with pytest.raises(SecretConfigError, match=problem):
        parse_reference(value)
    with pytest.raises(SecretConfigError):
        check_secret_value(value)


def test_reference_parsing():
    assert parse_reference("plain") is None
    assert parse_reference({"secret": " vmpool/x ", "key": "k"}) == SecretReference("secretsmanager", "vmpool/x", "k")
    assert parse_reference({"ssm": "/p"}) == SecretReference("ssm", "/p")
    assert check_secret_value({"ssm": "/p"}) == {"ssm": "/p"}
    with pytest.raises(SecretConfigError):
        check_secret_value(["a"])


def test_secret_wrapper_never_shows_its_value(caplog):
    secret = Secret("hunter22")
    assert "hunter22" not in repr(secret) + str(secret) + f"{secret}" + "%s" % secret + repr([secret])
    assert secret.reveal() == "hunter22"
    assert secret == "hunter22" and secret == Secret("hunter22") and secret != "hunter2"
    with pytest.raises(TypeError):
        hash(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("password is %s / %r", secret, secret)
    assert "hunter22" not in caplog.text


def test_resolve_secret_wraps(aws):
    wrapped = SecretResolver().resolve_secret({"ssm": "/vmpool/redis/password"})
    assert isinstance(wrapped, Secret) and wrapped.reveal() == "redis-Pa55"


def test_redacting_filter():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactingFilter(["vsphere-Pa55", Secret("ldap-Pa55"), "ab"]))
    log = logging.getLogger("redaction-test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("login with %s failed", "vsphere-Pa55")
        try:
            raise RuntimeError("bad password ldap-Pa55")
        except RuntimeError:
            log.exception("boom")
        log.warning("ab is too short to redact")
    finally:
        log.removeHandler(handler)
    text = "\n".join(records)
    assert "vsphere-Pa55" not in text and "ldap-Pa55" not in text
    assert "**********" in text and "ab is too short" in text


def test_the_redacting_filter_masks_the_json_lines_lambda_writes(log_output):
    """The service's log lines are Powertools JSON: fields given as ``extra`` (``"error":
    str(error)`` in "reconcile pass failed", "state store unavailable"...), the ``exception``
    text and the ``stack_trace`` Powertools builds from the exception itself. The filter masked
    the message alone: a secret in any of the others went out whole."""
    from chalicelib.observability import logger

    secret = 'vsphere-"Pa55\u00e9'  # a quote and a letter JSON may escape
    (handler,) = [h for h in logger.handlers if getattr(h, "stream", None) is log_output]
    redaction = RedactingFilter([secret])
    handler.addFilter(redaction)
    try:
        logger.warning("reconcile pass failed", extra={"error": f"login refused for {secret}",
                                                        "details": {"tried": [secret]}})
        try:
            try:
                raise KeyError(secret)
            except KeyError as cause:
                raise RuntimeError(f"cannot log in with {secret}") from cause
        except RuntimeError:
            logger.exception("unhandled error")
    finally:
        handler.removeFilter(redaction)
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert len(lines) == 2
    text = json.dumps(lines, ensure_ascii=False)
    assert "Pa55" not in text
    assert lines[0]["error"] == "login refused for **********"
    assert lines[1]["exception_name"] == "RuntimeError" and "cannot log in with **********" in lines[1]["exception"]


@pytest.mark.parametrize(("page", "reason"), [("200-html", "UnreadableAnswer"), ("502-html", "502")])
def test_a_page_instead_of_the_secret_stores_answer_is_unavailable_with_a_reason(aws, page, reason):
    """A proxy's or an outage's page instead of SSM's or Secrets Manager's answer: a typed
    SecretUnavailable (a 503 to the API, a failed pass) naming what came back, never the page.
    Before, a page with status 200 was reported as ``KeyError``."""
    ssm, secrets = SSMProvider(boto3_client=aws["ssm"]), SecretsProvider(boto3_client=aws["secretsmanager"])
    answer_with_page(aws["ssm"], *PAGES[page])
    answer_with_page(aws["secretsmanager"], *PAGES[page])
    resolver = SecretResolver(ssm_provider=ssm, secrets_provider=secrets)
    for reference in ({"ssm": "/vmpool/redis/password"}, {"secret": "vmpool/vsphere"}):
        with pytest.raises(SecretUnavailable, match=f": {reason}$"):
            resolver.resolve(reference)


def test_each_failed_fetch_is_counted_by_its_reason(aws, capsys):
    """A secret that cannot be fetched fails every LDAP login, Redis connection or pass of a
    provider's pools: each failure is counted in ``SecretFailures`` (service-wide for the
    ``secrets-unavailable`` alarm, by reason for the dashboard), as AWS call and provider
    failures are. Before, only the callers' log lines said so; no metric, no alarm."""
    import chalicelib.observability  # noqa: F401 - registers the process's counter, as in every function
    from tests.support import counts_by_reason, emf_documents, emitted

    resolver = SecretResolver()
    assert resolver.resolve({"secret": "vmpool/vsphere"}) == "vsphere-Pa55"  # a fetch that works counts nothing
    for reference in ({"secret": "vmpool/missing"}, {"ssm": "/vmpool/missing"},
                      {"secret": "vmpool/ldap", "key": "nope"}):
        with pytest.raises(SecretUnavailable):
            resolver.resolve(reference)
    answer_with_page(aws["ssm"], *PAGES["502-html"])
    with pytest.raises(SecretUnavailable):
        SecretResolver(ssm_provider=SSMProvider(boto3_client=aws["ssm"])).resolve({"ssm": "/vmpool/plain"})
    documents = emf_documents(capsys.readouterr().out)
    assert emitted(documents)[("SecretFailures", ("service",))] == [1.0] * 4
    assert counts_by_reason(documents, "SecretFailures") == {"refused": 2, "malformed": 1, "unavailable": 1}


def test_a_failed_fetchs_reason_is_bounded(aws):
    """The reason is the failure's class, never a reference or an AWS code (unbounded metric
    dimensions would cost a metric each)."""
    reasons = []
    resolver = SecretResolver(count_failure=lambda error: reasons.append(error.metric_key))
    for reference in ({"secret": "vmpool/missing"}, {"secret": "vmpool/vsphere", "key": "password"}):
        with pytest.raises(SecretUnavailable):
            resolver.resolve(reference)
    answer_with_page(aws["secretsmanager"], *PAGES["200-html"])
    with pytest.raises(SecretUnavailable):
        SecretResolver(secrets_provider=SecretsProvider(boto3_client=aws["secretsmanager"]),
                       count_failure=lambda error: reasons.append(error.metric_key)).resolve({"secret": "vmpool/x"})
    assert reasons == ["refused", "malformed", "unreadable"]
