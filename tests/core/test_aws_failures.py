"""How an AWS call's failure is typed (chalicelib/aws_clients.py ``failure_of``): every caller
(SQS sends, Route 53, the config refresh, deploy and config-push) decides on its class."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError
from botocore.parsers import ResponseParserError

from chalicelib.aws_clients import AwsCallFailed, call, failure_of
from tests.aws_pages import PAGES, answer_with_page


def client_error(code: str, status: int = 400, message: str = "m") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "Op")


@pytest.mark.parametrize(("error", "code", "kind"), [
    (client_error("ThrottlingException"), "ThrottlingException", "throttled"),
    (client_error("RequestThrottled"), "RequestThrottled", "throttled"),
    (client_error("InternalError", 500), "InternalError", "unavailable"),
    (client_error("502", 502, "<html>page</html>"), "502", "unavailable"),
    (client_error("", 503), "503", "unavailable"),
    (client_error("AccessDeniedException"), "AccessDeniedException", "refused"),
    (ResponseParserError("Unable to parse response"), "UnreadableAnswer", "unreadable"),
    (ReadTimeoutError(endpoint_url="https://sqs"), "ReadTimeoutError", "unavailable"),
    (EndpointConnectionError(endpoint_url="https://sqs"), "EndpointConnectionError", "unavailable"),
    (ParamValidationError(report="bad"), "ParamValidationError", "refused"),
], ids=lambda value: value if isinstance(value, str) else type(value).__name__)
def test_each_kind_of_aws_failure_has_a_code_and_a_class(error: Exception, code: str, kind: str) -> None:
    failure = failure_of(error, "sqs send")
    assert failure is not None and (failure.code, failure.metric_key) == (code, kind)
    assert failure.transient == (kind != "refused")
    assert "<html>" not in str(failure)  # a page's text is never the message


def test_what_is_not_an_aws_failure_is_none() -> None:
    assert failure_of(TypeError("a bug")) is None
    assert failure_of(KeyError("ours")) is None  # raised here, not inside botocore


def test_a_well_formed_page_from_an_xml_service_is_unreadable_not_a_keyerror(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's XML parser raises a KeyError for an HTML page with status 200 (what deploy.py
    printed as a traceback): recognised by where it was raised."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    cloudformation = boto3.client("cloudformation", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    answer_with_page(cloudformation, *PAGES["200-html"])
    with pytest.raises(AwsCallFailed) as raised:
        call("describe stack", cloudformation.describe_stacks, StackName="vmpool-dev")
    assert (raised.value.code, raised.value.metric_key, str(raised.value)) == (
        "UnreadableAnswer", "unreadable", "describe stack: UnreadableAnswer")

    def buggy(**_: Any) -> None:
        raise KeyError("ours")

    with pytest.raises(KeyError):
        call("ours", buggy)
