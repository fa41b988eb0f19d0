"""The AWS SDK clients the functions build for themselves (SQS, S3, Secrets Manager, SSM), with
bounded waits. botocore's defaults wait 60 s to connect and 60 s for each answer, and try again:
an AWS endpoint that takes connections and never answers (a VPC endpoint or a NAT gone wrong)
held a request past the API function's 29 s, so API Gateway answered 504 to a checkout that had
taken the user's VM. Now such a call fails within AWS_CALL_BOUND_SECONDS and each caller carries
on as it does for any AWS failure (a nudge dropped, the config kept, Redis's password unavailable
as a 503). Route 53 has its own timeout setting (dns/route53.py)."""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0
ATTEMPTS = 2
AWS_CALL_BOUND_SECONDS = ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + 1.0
"""The longest one call may take, the retry's backoff included."""


def boto_config() -> Any:
    """The botocore Config of every client built here (for clients built by a library)."""
    from botocore.config import Config

    return Config(connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
                  retries={"mode": "standard", "max_attempts": ATTEMPTS})


def client(service: str) -> Any:
    """A boto3 client for ``service`` with the bounded waits above."""
    import boto3

    return boto3.client(service, config=boto_config())
