"""The AWS SDK clients the functions build for themselves (SQS, S3, Secrets Manager, SSM), with
bounded waits. botocore's defaults wait 60 s to connect and 60 s for each answer, and try again:
an AWS endpoint that takes connections and never answers (a VPC endpoint or a NAT gone wrong)
held a request past the API function's 29 s, so API Gateway answered 504 to a checkout that had
taken the user's VM. Now such a call fails within AWS_CALL_BOUND_SECONDS and each caller carries
on as it does for any AWS failure (a nudge dropped, the config kept, Redis's password unavailable
as a 503). Route 53 has its own timeout setting (dns/route53.py)."""

from __future__ import annotations

import re
from typing import Any

CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0
ATTEMPTS = 2
"""Tries of one call, the first included (botocore's ``total_max_attempts``: its ``max_attempts``
counts the retries only, so ``max_attempts: 2`` made three tries, 8-9 s against a silent endpoint)."""
AWS_CALL_BOUND_SECONDS = ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + 1.0
"""The longest one call may take, the retry's backoff (at most 1 s before the second try) included."""


def boto_config() -> Any:
    """The botocore Config of every client built here (for clients built by a library)."""
    from botocore.config import Config

    # S3 by its regional name in us-east-1 too: botocore's default there is the global
    # <bucket>.s3.amazonaws.com, which the stack's S3 interface endpoint's private DNS does not
    # answer (it serves s3.<region>.amazonaws.com and its subdomains), and the functions' security
    # group reaches nothing else: every config refresh timed out, so no push ever took effect.
    return Config(connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
                  retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
                  s3={"us_east_1_regional_endpoint": "regional"})


def client(service: str) -> Any:
    """A boto3 client for ``service`` with the bounded waits above."""
    import boto3

    return boto3.client(service, config=boto_config())


THROTTLED_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "SlowDown", "PriorRequestNotComplete", "RequestTimeout", "RequestTimeoutException",
})
"""Error codes with which an AWS service says "not now" (botocore's standard retry mode tries
these again itself first)."""

UNAVAILABLE_CODES = frozenset({
    "InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "KMSInternalException",
})


class AwsCallFailed(Exception):
    """An AWS call that failed, typed. ``code``: AWS's error code, the HTTP status of an error
    page that was not AWS's (``"502"``), or the kind of failure when no answer came
    (``ReadTimeoutError``, ``EndpointConnectionError``) or none that could be read
    (``UnreadableAnswer``). ``metric_key``: its bounded class for metrics and logs:
    ``throttled``, ``unavailable`` (no answer, a server error, an error page), ``unreadable``
    (an answer botocore could not parse: a proxy's sign-in page, an outage's HTML) or
    ``refused`` (AWS said no: denied, not found, invalid). ``detail``: AWS's own message (one
    line, at most ``DETAIL_CHARS``), never an error page's text. The message (``what: code:
    detail``) is safe to log and to show: it never quotes a page or a request's parameters."""

    def __init__(self, what: str, code: str, metric_key: str, detail: str = "") -> None:
        super().__init__(": ".join(part for part in (what, code, detail) if part))
        self.what = what
        self.code = code
        self.metric_key = metric_key
        self.detail = detail

    @property
    def transient(self) -> bool:
        """Worth trying again later: everything but a refusal."""
        return self.metric_key != "refused"


UNREADABLE_ANSWER = "UnreadableAnswer"


def failure_of(error: BaseException, what: str = "") -> AwsCallFailed | None:
    """The typed failure of an exception a boto3 call raised, or None when it is not an AWS
    failure (a bug of ours, to be raised again). Covers botocore's ClientError (AWS's refusal,
    throttling, an HTML error page answered with a 5xx status), its BotoCoreError family (no
    connection, timeouts, no credentials), ``botocore.parsers.ResponseParserError`` (a 200 or
    5xx body that is not XML: not a BotoCoreError) and the KeyError botocore's XML parser raises
    for a well-formed page that is not the answer (an HTML page with status 200), recognised by
    the traceback ending inside botocore."""
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
    from botocore.parsers import ResponseParserError

    if isinstance(error, AwsCallFailed):
        return error
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code") or "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not code:  # an error page botocore found no code in: its HTTP status says what it was
            code = str(status or type(error).__name__)
        # A code that is an HTTP status is botocore's for a page that was not AWS's: its
        # "message" is that page (or its status's phrase), not AWS's words.
        detail = "" if code.isdigit() else _one_line(str(error.response.get("Error", {}).get("Message") or ""))
        if code in THROTTLED_CODES:
            return AwsCallFailed(what, code, "throttled", detail)
        server_side = (code.isdigit() and int(code) >= 500) or (isinstance(status, int) and status >= 500)
        if code in UNAVAILABLE_CODES or server_side:
            return AwsCallFailed(what, code, "unavailable", detail)
        return AwsCallFailed(what, code, "refused", detail)
    if isinstance(error, ResponseParserError) or (isinstance(error, KeyError) and _raised_in_botocore(error)):
        return AwsCallFailed(what, UNREADABLE_ANSWER, "unreadable")
    if isinstance(error, BotoCoreError):
        # A request botocore would not send (a parameter of the wrong shape) is refused as AWS would.
        kind = "refused" if isinstance(error, ParamValidationError) else "unavailable"
        return AwsCallFailed(what, type(error).__name__, kind)
    return None


DETAIL_CHARS = 200

ARN = re.compile(r"arn:aws[A-Za-z0-9-]*:[^\s,;]*")
"""An ARN in an AWS message (a role's names the account's ID): withheld wherever a reason is shown."""
ACCOUNT_ID = re.compile(r"(?<![0-9A-Za-z])[0-9]{12}(?![0-9A-Za-z])")
"""An account ID outside an ARN (a queue's URL, ``account 123456789012``)."""


def without_arns(text: str) -> str:
    """``text`` with every ARN in it withheld (a DNS plugin's reasons too: dns/base.py)."""
    return ARN.sub("(ARN withheld)", text)


def _one_line(text: str) -> str:
    """AWS's message as a failure carries it: one line, its ARNs and account IDs withheld (IAM's
    ``AccessDenied`` names the caller's role, ``arn:aws:sts::<account id>:assumed-role/...``, and
    the resource's), cut at ``DETAIL_CHARS``. Before, the S3 config refresh's warning
    (``config not refreshed: S3 failed``) logged them whole."""
    flat = " ".join(ACCOUNT_ID.sub("(account withheld)", without_arns(text)).split())
    return flat if len(flat) <= DETAIL_CHARS else flat[:DETAIL_CHARS] + "..."


def _raised_in_botocore(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is botocore's code (its parser)."""
    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    return "/botocore/" in trace.tb_frame.f_code.co_filename.replace("\\", "/")


def call(what: str, method: Any, /, **arguments: Any) -> Any:
    """``method(**arguments)`` (a boto3 client's method); its AWS failures raised as
    AwsCallFailed naming ``what``, anything else as it is."""
    try:
        return method(**arguments)
    except Exception as error:  # what is not an AWS failure is raised again
        failure = failure_of(error, what)
        if failure is None:
            raise
        raise failure from None
