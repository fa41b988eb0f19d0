"""Secret values in the config: plain strings, or references to AWS Secrets Manager / SSM.

A config value that holds a secret (the LDAP service account password, the vSphere password, the
Redis password or AUTH token) may be written three ways::

    password: "plain text"                                   # as vmpooler does
    password: {secret: "prod/vmpool/ldap"}                    # Secrets Manager, whole SecretString
    password: {secret: "arn:aws:...:secret:vmpool", key: "password"}   # one key of a JSON secret
    password: {ssm: "/vmpool/ldap/password"}                 # SSM parameter (SecureString decrypted)

Only the mapping forms are references: a plain string is always the secret itself, so a password
that happens to start with ``ssm:`` is never mistaken for a reference. Values are fetched with
Powertools Parameters, which caches them (``max_age`` seconds, default 300) so a warm Lambda does
not call AWS on every request and a rotated secret is picked up within ``max_age``.

``Secret`` wraps a value so that ``repr``/``str``/f-strings/logging never show it. Nothing here puts
a secret value into an exception message or a log line.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from chalicelib import aws_clients
from chalicelib.logs import module_logger

logger = module_logger(__name__)

DEFAULT_MAX_AGE_SECONDS = 300
REDACTED = "**********"


class SecretConfigError(ValueError):
    """A secret reference is malformed (message names the problem, never a value)."""


class SecretUnavailable(RuntimeError):
    """A referenced secret could not be fetched (message names the reference, never a value).
    ``metric_key``: its bounded class for metrics (``SecretFailures``' ``reason``): an AWS
    failure's (``aws_clients.AwsCallFailed.metric_key``: ``throttled``, ``unavailable``,
    ``unreadable``, ``refused``), or ``malformed`` (fetched, but not what the reference asks
    for: not a JSON object, the key missing, binary, not text)."""

    def __init__(self, message: str, metric_key: str = "unavailable") -> None:
        super().__init__(message)
        self.metric_key = metric_key


MALFORMED = "malformed"
FAILURE_KEYS = ("refused", "throttled", "unavailable", "unreadable", MALFORMED)
"""Every ``SecretUnavailable.metric_key`` (the dashboard draws each)."""


class Secret:
    """A secret string that does not show itself: ``repr``, ``str`` and formatting are redacted.

    ``reveal()`` returns the value. Equality is constant-time. Not hashable, not picklable into
    something readable by accident (pickling is refused)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("a Secret holds a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def get_secret_value(self) -> str:
        """The value (the name pydantic's SecretStr gives it, which callers of the config know)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):  # pragma: no cover - guard only
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class SecretReference:
    """Where a secret lives. Names and keys are not secret and may appear in messages."""

    store: str  # "secretsmanager" or "ssm"
    name: str
    key: str | None = None

    def describe(self) -> str:
        where = "Secrets Manager secret" if self.store == "secretsmanager" else "SSM parameter"
        return f"{where} {self.name!r}" + (f" (key {self.key!r})" if self.key else "")


def parse_reference(value: Any) -> SecretReference | None:
    """The reference a config value names, or None for a plain value (string, number, None).

    Raises SecretConfigError for a mapping that is not a valid reference."""
    if not isinstance(value, Mapping):
        return None
    keys = set(value)
    if "secret" in value and "ssm" in value:
        raise SecretConfigError("a secret reference names either 'secret' or 'ssm', not both")
    if "secret" in value:
        store, name = "secretsmanager", value["secret"]
    elif "ssm" in value:
        store, name = "ssm", value["ssm"]
    else:
        raise SecretConfigError(
            "a secret reference must be {secret: <name or ARN>[, key: <json key>]} or {ssm: <parameter name>}"
        )
    unknown = keys - {"secret", "ssm", "key"}
    if unknown:
        raise SecretConfigError(f"unknown keys in secret reference: {', '.join(sorted(map(str, unknown)))}")
    if not isinstance(name, str) or not name.strip():
        kind = "secret" if store == "secretsmanager" else "ssm"
        raise SecretConfigError(f"the {kind} name must be a non-empty string")
    key = value.get("key")
    if key is not None and (not isinstance(key, str) or not key):
        raise SecretConfigError("the secret reference 'key' must be a non-empty string")
    return SecretReference(store, name.strip(), key)


def check_secret_value(value: Any) -> Any:
    """Validate a config value that may hold a secret: a string, a number, or a reference.
    Returns it unchanged; raises SecretConfigError. For config validation (no AWS call)."""
    if value is None or isinstance(value, (str, Secret)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        parse_reference(value)
        return value
    raise SecretConfigError(f"must be a string or a secret reference, got {type(value).__name__}")


class SecretResolver:
    """Turns config values into secret strings, fetching references with Powertools Parameters.

    Providers are created on first use (so tests can create the resolver inside ``mock_aws``);
    ``secrets_provider``/``ssm_provider`` may be given (Powertools ``SecretsProvider`` /
    ``SSMProvider`` or anything with the same ``get``). ``count_failure``: told of each failed
    fetch (default: the process's counter, ``count_failures_with``: the ``SecretFailures``
    metric)."""

    def __init__(
        self,
        *,
        max_age: int = DEFAULT_MAX_AGE_SECONDS,
        secrets_provider: Any = None,
        ssm_provider: Any = None,
        count_failure: Callable[[SecretUnavailable], None] | None = None,
    ) -> None:
        self.max_age = max_age
        self._secrets_provider = secrets_provider
        self._ssm_provider = ssm_provider
        self._count_failure = count_failure or _count_with_process_counter
        self._lock = threading.Lock()

    def _provider(self, store: str) -> Any:
        _quiet_aws_wire_logs()
        with self._lock:
            if store == "secretsmanager":
                if self._secrets_provider is None:
                    from aws_lambda_powertools.utilities.parameters import SecretsProvider

                    self._secrets_provider = SecretsProvider(boto_config=aws_clients.boto_config())
                return self._secrets_provider
            if self._ssm_provider is None:
                from aws_lambda_powertools.utilities.parameters import SSMProvider

                self._ssm_provider = SSMProvider(boto_config=aws_clients.boto_config())
            return self._ssm_provider

    def __call__(self, value: Any) -> str | None:
        return self.resolve(value)

    def resolve(self, value: Any, *, force_fetch: bool = False) -> str | None:
        """The secret string for a config value: plain strings as they are (numbers as text),
        references fetched (cached ``max_age`` seconds), None stays None."""
        if value is None:
            return None
        if isinstance(value, Secret):
            return value.reveal()
        if isinstance(value, SecretReference):
            return self.fetch(value, force_fetch=force_fetch)
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        reference = parse_reference(value)
        if reference is None:
            raise SecretConfigError(f"must be a string or a secret reference, got {type(value).__name__}")
        return self.fetch(reference, force_fetch=force_fetch)

    def resolve_secret(self, value: Any) -> Secret | None:
        """Like ``resolve`` but wrapped in ``Secret``."""
        resolved = self.resolve(value)
        return None if resolved is None else Secret(resolved)

    def fetch(self, reference: SecretReference, *, force_fetch: bool = False) -> str:
        """The referenced secret's text. Raises SecretUnavailable, counted first
        (``count_failure``)."""
        provider = self._provider(reference.store)
        options: dict[str, Any] = {"max_age": self.max_age, "force_fetch": force_fetch}
        if reference.key:
            options["transform"] = "json"
        if reference.store == "ssm":
            options["decrypt"] = True
        try:
            return self._fetch(provider, reference, options)
        except SecretUnavailable as error:
            self._count_failure(error)
            raise

    def _fetch(self, provider: Any, reference: SecretReference, options: dict[str, Any]) -> str:
        from aws_lambda_powertools.utilities.parameters.exceptions import (
            GetParameterError,
            TransformParameterError,
        )

        try:
            raw = provider.get(reference.name, **options)
        except TransformParameterError:
            raise SecretUnavailable(f"{reference.describe()} is not a JSON object", MALFORMED) from None
        except GetParameterError as error:
            code, metric_key = _aws_reason(error)
            raise SecretUnavailable(f"cannot fetch {reference.describe()}: {code}", metric_key) from None
        except Exception as error:  # noqa: BLE001 - botocore errors (no credentials, endpoint) and the like
            failure = aws_clients.failure_of(error)
            raise SecretUnavailable(f"cannot fetch {reference.describe()}: {type(error).__name__}",
                                    failure.metric_key if failure else "unavailable") from None
        if reference.key:
            if not isinstance(raw, Mapping):
                raise SecretUnavailable(f"{reference.describe()} is not a JSON object", MALFORMED)
            if reference.key not in raw:
                raise SecretUnavailable(f"{reference.describe()}: the key is missing", MALFORMED)
            raw = raw[reference.key]
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                raise SecretUnavailable(f"{reference.describe()} is binary, not text", MALFORMED) from None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise SecretUnavailable(f"{reference.describe()} is not a string", MALFORMED)
        return raw


AWS_WIRE_LOGGERS = ("botocore", "boto3", "urllib3")


def _quiet_aws_wire_logs() -> None:
    """Keep the AWS SDK's DEBUG wire logs off: botocore logs every response body at DEBUG, and a
    GetSecretValue / GetParameter body *is* the secret (before RedactingFilter can know it).
    A root logger set to DEBUG (AWS_LAMBDA_LOG_LEVEL=DEBUG) would otherwise print it."""
    for name in AWS_WIRE_LOGGERS:
        wire = logging.getLogger(name)
        if wire.getEffectiveLevel() < logging.INFO:
            wire.setLevel(logging.INFO)


def _aws_reason(error: Exception) -> tuple[str, str]:
    """The AWS error code of a Powertools fetch error (the code only, e.g. ResourceNotFoundException;
    ``aws_clients.AwsCallFailed``'s codes) and its metric key. A KeyError is Powertools' reading of
    an answer that has not what every answer of SSM or Secrets Manager holds: a proxy's or an
    outage's page with status 200, which botocore reads as an empty answer (``UnreadableAnswer``;
    before, the reason said ``KeyError``)."""
    cause = error.__cause__ or error.__context__
    if cause is None:
        return "fetch failed", "unavailable"
    failure = aws_clients.failure_of(cause)
    if failure is not None:
        return failure.code, failure.metric_key
    if isinstance(cause, KeyError):
        return aws_clients.UNREADABLE_ANSWER, "unreadable"
    return type(cause).__name__, "unavailable"


def _uncounted(error: SecretUnavailable) -> None:
    """No counter registered (a process without chalicelib.observability)."""


_process_counter: list[Callable[[SecretUnavailable], None]] = [_uncounted]


def count_failures_with(counter: Callable[[SecretUnavailable], None]) -> None:
    """Who counts the failed fetches of resolvers given no ``count_failure`` of their own:
    chalicelib.observability registers its ``SecretFailures`` counter when it is imported (this
    module cannot import it: it imports this one, for its log redaction)."""
    _process_counter[0] = counter


def _count_with_process_counter(error: SecretUnavailable) -> None:
    _process_counter[0](error)


_default_resolver: SecretResolver | None = None
_default_lock = threading.Lock()


def default_resolver() -> SecretResolver:
    global _default_resolver
    with _default_lock:
        if _default_resolver is None:
            _default_resolver = SecretResolver()
        return _default_resolver


def resolve_secret(value: Any) -> str | None:
    """Resolve a config value with the process-wide resolver (see ``SecretResolver.resolve``)."""
    return default_resolver().resolve(value)


ResolveSecret = Callable[[Any], "str | None"]


def plain_secret(value: Any) -> str | None:
    """A config secret's value when it is written in the config (no AWS call): references give
    None. The default where no resolver is injected (tests, local runs without AWS)."""
    if hasattr(value, "get_secret_value"):
        return str(value.get_secret_value())
    return value if isinstance(value, str) else None


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""What every LogRecord has; anything else on a record is a field given as ``extra``."""


class RedactingFilter(logging.Filter):
    """A logging filter that replaces known secret values in log records with ``**********``.

    Defence in depth: attach it to handlers (``handler.addFilter(RedactingFilter(values))``) with
    every configured secret. It masks the message, every field given as ``extra`` (nested in
    lists and mappings too), and the exception: a record whose traceback shows a secret keeps its
    masked text (``exc_text``, and ``exception``/``exception_name``, which Powertools' JSON
    formatter prefers) instead of the exception itself, from which Powertools would rebuild the
    text and its ``stack_trace``. Values are masked as written and as ``repr`` shows them (a
    KeyError's message). Values shorter than 4 characters are not redacted (too many false hits).
    """

    def __init__(self, values: Any = ()) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._forms: list[str] = []
        for value in values:
            self.add(value)

    def add(self, value: Any) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if isinstance(value, str) and len(value) >= 4 and value not in self._values:
            self._values.add(value)
            forms = {form for known in self._values for form in (known, repr(known)[1:-1])}
            self._forms = sorted(forms, key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def _scrub(self, value: Any) -> Any:
        """``value`` with every secret masked; the very object when it shows none."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, Mapping):
            scrubbed = {key: self._scrub(item) for key, item in value.items()}
            changed = any(scrubbed[key] is not item for key, item in value.items())
            return scrubbed if changed else value
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self._scrub(item) for item in value]
            return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
        text = str(value)  # what a JSON formatter writes for any other object
        redacted = self._redact(text)
        return redacted if redacted != text else value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._forms:
            return True
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRIBUTES:
                scrubbed = self._scrub(value)
                if scrubbed is not value:
                    setattr(record, key, scrubbed)
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            masked = self._redact(text)
            if masked != text:
                record.exc_text = masked
                # The fields Powertools' JSON formatter writes in preference to exc_info's.
                record.__dict__.update(exception=masked, exception_name=record.exc_info[0].__name__)
                record.exc_info = None
        elif record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True
