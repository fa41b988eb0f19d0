"""Where the running service reads its config: S3 in AWS, the packaged file otherwise.

Pools change without a code deploy: ``make config-push`` validates the YAML (``config.parse``) and
writes the canonical JSON of the validated config to ``s3://<VMPOOL_CONFIG_BUCKET>/config/vmpool.yaml``,
which a function builds without pydantic or yaml (``config.from_canonical``). A YAML object put
there by hand is still accepted: it is validated here, on the slow path (pydantic and PyYAML
imported on that first use, logged), or refused with a log line where the package carries no
pydantic (the Lambda zip: infra/slim_zip.py), the last good config staying.
Every function checks the object at most once per ``REFRESH_SECONDS`` (a conditional GET: an
unchanged object costs a 304 and no parsing) and swaps in the new config when it changed, so
a push is live everywhere within a minute. An object holding the canonical text the config in
use was built from (the packaged one at a cold start, ``config.load_with_digest``) is not
built again: the config in use is kept, with the object's ETag and generation. A config that
fails validation there (pushed by hand, not through config-push) is logged and ignored: the last
good one stays.

Why S3 and not SSM Parameter Store: a pool is 100 to 300 bytes of YAML, so 1,000 pools are
100 to 300 KB; a standard parameter holds 4 KB and an advanced one 8 KB, too small even
compressed. An S3 object has no such limit, is versioned (rollback = restore a version), and a
conditional GET per function per 30 s costs about $0.02 a month per warm function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import threading
from typing import Any, Callable, Mapping, NamedTuple

from chalicelib import aws_clients
from chalicelib import observability as metric
from chalicelib.clock import Clock
from chalicelib.config import (
    CONFIG_FILE_ENV,
    MAX_CONFIG_CHARACTERS,
    Config,
    ConfigError,
    canonical_document,
    from_canonical,
    parse,
    text_digest,
)
from chalicelib.observability import emit, logger

CONFIG_BUCKET_ENV = "VMPOOL_CONFIG_BUCKET"
CONFIG_WATCH_ENV = "VMPOOL_CONFIG_WATCH"
"""Set (``1``) by the local stack (local/run.py): its processes re-read the checked config file
(VMPOOL_CONFIG_FILE) when it changes, at most every LOCAL_REFRESH_SECONDS, as the Lambdas refresh
from S3."""
LOCAL_REFRESH_SECONDS = 2.0
DEFAULT_CONFIG_KEY = "config/vmpool.yaml"
"""The config object's key, the one config-push writes and every function reads (their roles may
read ``config/*`` only). Not a setting: a ``VMPOOL_CONFIG_KEY`` the functions read once moved
them to an object config-push never wrote, and no push reached them."""
REFRESH_SECONDS = 30.0


GENERATION_METADATA = "generation"
"""The S3 user metadata (``x-amz-meta-generation``) config-push writes with each object: the
push's generation, epoch seconds with a fraction, later than the object's it replaces
(``next_generation``). S3's Last-Modified alone has one-second resolution: two pushes within a
second (a mistake and its fix) were one generation, so the functions still on the mistake ran
passes beside those on the fix until every one had read it (30 s)."""
MAX_GENERATION_AHEAD_SECONDS = 86_400.0
"""How far past its Last-Modified an object's metadata generation is believed (a pusher's clock
that far ahead, or a value written by hand): beyond it, Last-Modified is the generation, so no
one object can stay the newest for years, nor leave a next push no later in float precision."""
GENERATION_STEP_SECONDS = 0.001
"""How much later than the object it replaces a push is, at the least (``next_generation``)."""


def object_generation(last_modified: Any, metadata: Mapping[str, str] | None) -> float:
    """The generation of a config object: its metadata generation (config-push's), or its
    Last-Modified (a ``datetime``; None: 0) when that is later, absent (an object written by an
    older release or by hand) or not believable. The later of the two, so that an older version
    copied over the object (a rollback) is as new as the copy."""
    written = last_modified.timestamp() if last_modified is not None else 0.0
    try:
        pushed = float((metadata or {}).get(GENERATION_METADATA, ""))
    except ValueError:
        return written
    if not math.isfinite(pushed) or pushed - written > MAX_GENERATION_AHEAD_SECONDS:
        return written
    return max(written, pushed)


def next_generation(previous: float, now: float) -> float:
    """The generation of a push replacing an object of generation ``previous`` (0: none):
    ``now``, or just after ``previous`` when the pusher's clock says no later (a push within
    the same second as the last, a pusher's clock behind S3's or another pusher's)."""
    return max(now, previous + GENERATION_STEP_SECONDS)


class Fetched(NamedTuple):
    """A config object fetched: its text, its ETag and its generation (``object_generation``;
    0 when unknown), which orders the configs of functions that overlap after a push."""

    text: str
    etag: str
    generation: float = 0.0


Fetch = Callable[[str | None], "Fetched | tuple[str, str] | None"]
"""Given the ETag last seen, the newer config object (``Fetched`` or its text and ETag), or None
when unchanged."""


class ObjectRefused(ConfigError):
    """The object is no config (larger than any config, or not UTF-8 text): refused unparsed,
    and not fetched again until it changes (``etag``)."""

    def __init__(self, problem: str, etag: str) -> None:
        super().__init__([problem])
        self.etag = etag


class NothingPublished(Exception):
    """The bucket holds no config object (S3's ``NoSuchKey``): nothing was pushed to the stage
    yet, or the object was deleted. Not a failure of S3: the config in use stays."""


NOT_FOUND_CODES = ("NoSuchKey", "404")
"""S3's answer for an object that does not exist, to a caller allowed to list the bucket (the
functions' roles are: ``s3:ListBucket`` on the config bucket, infra/sync_config.py). Without that
right S3 answers ``AccessDenied`` instead, which cannot be told from a role that may not read it."""


class ConfigSource:
    """The current config, refreshed from ``fetch`` at most every ``refresh_seconds``."""

    def __init__(self, initial: Config, fetch: Fetch | None, clock: Clock,
                 refresh_seconds: float = REFRESH_SECONDS, initial_digest: str | None = None) -> None:
        """``initial_digest``: ``config.text_digest`` of the canonical text ``initial`` was built
        from (``config.load_with_digest``). A fetched object of the same text is not built again:
        a cold start whose bucket holds the packaged config builds it once, not twice."""
        self._config = initial
        self._digest = initial_digest
        self._fetch = fetch
        self._clock = clock
        self.refresh_seconds = refresh_seconds
        self._etag: str | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        self._said_nothing_published = False

    def current(self) -> Config:
        """The config to use now (fetching it first when due)."""
        if self._fetch is None:
            return self._config
        now = self._clock.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.refresh_seconds:
            return self._config
        with self._lock:
            if self._checked_at is None or now - self._checked_at >= self.refresh_seconds:
                self._checked_at = now
                self._refresh()
        return self._config

    def _refresh(self) -> None:
        assert self._fetch is not None
        try:
            fetched = self._fetch(self._etag)
        except ObjectRefused as error:
            self._keep_last_good(error, error.etag)
            return
        except NothingPublished:
            self._say_nothing_published()
            return
        except aws_clients.AwsCallFailed as error:
            logger.warning("config not refreshed: S3 failed; the config in use stays",
                           extra={"error": str(error), "code": error.code, "failure": error.metric_key})
            emit(None, {metric.AWS_CALL_FAILURES: 1})
            return
        except Exception:  # noqa: BLE001 - a bug of ours: keep serving with the config we have, say where
            logger.exception("config not refreshed: the fetch failed")
            return
        self._said_nothing_published = False
        if fetched is None:
            return
        text, etag, generation = Fetched(*fetched)
        digest = text_digest(text)
        if digest == self._digest:  # the text the config in use was built from: the same config
            self._use(self._config, etag, digest, generation)
            return
        try:
            document = canonical_document(text)
            if document is not None:
                config = from_canonical(document, source="s3 config")
            else:
                logger.warning("pushed config is YAML, not config-push's canonical JSON: validating it here")
                config = parse(text, source="s3 config")
        except ConfigError as error:
            self._keep_last_good(error, etag)
            return
        # Only canonical text is reused: a YAML object's extra_config files are part of its config.
        self._use(config, etag, digest if document is not None else None, generation)

    def _use(self, config: Config, etag: str, digest: str | None, generation: float) -> None:
        for warning in config.warnings:
            logger.warning("config: " + warning)
        if config.generation != generation:
            config = dataclasses.replace(config, generation=generation)
        self._config, self._etag, self._digest = config, etag, digest
        logger.info("config loaded", extra={"etag": etag, "pools": len(config.pools), "generation": generation})

    def _say_nothing_published(self) -> None:
        """Said once until an object shows up again, never counted as a failure: a stage whose
        bucket is still empty (before its first ``make config-push``) runs on the packaged config.
        Before, each function logged "S3 failed" and counted ``AwsCallFailures`` every 30 s, and
        in AWS the answer read ``AccessDenied`` (the roles could not list the bucket)."""
        if self._said_nothing_published:
            return
        self._said_nothing_published = True
        if self._etag is None:
            logger.info("no config pushed to the bucket yet: the packaged config is in use (make config-push)")
        else:
            logger.warning("the pushed config object is gone from the bucket; the config in use stays until "
                           "one is pushed again")

    def _keep_last_good(self, error: ConfigError, etag: str) -> None:
        logger.error("pushed config is invalid; keeping the last good one", extra={"error": str(error)})
        emit(None, {metric.CONFIG_REJECTED: 1})  # once per function and object, not per request
        self._etag = etag  # do not fetch and parse the same bad object again


class S3Fetch:
    """Conditional GETs of one S3 object."""

    def __init__(self, bucket: str, key: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.bucket, self.key = bucket, key
        self._client_factory = client_factory or _default_s3_client
        self._client: Any = None

    def __call__(self, etag: str | None) -> Fetched | None:
        """The object when it changed since ``etag``, None when not; AwsCallFailed when S3 failed
        or answered with what is not S3's answer (a proxy's page with status 200 has no ETag:
        before, a KeyError logged as if it were a bug)."""
        if self._client is None:
            self._client = self._client_factory()
        options = {"IfNoneMatch": etag} if etag else {}
        try:
            answer = aws_clients.call("s3 get config", self._client.get_object, Bucket=self.bucket, Key=self.key,
                                      **options)
        except aws_clients.AwsCallFailed as error:
            if error.code in ("304", "NotModified"):
                return None
            if error.code in NOT_FOUND_CODES:
                raise NothingPublished(str(error)) from None
            raise
        if not isinstance(answer, dict) or "Body" not in answer or not answer.get("ETag"):
            if isinstance(answer, dict) and "Body" in answer:
                answer["Body"].close()
            raise aws_clients.AwsCallFailed("s3 get config", aws_clients.UNREADABLE_ANSWER, "unreadable")
        body, etag = answer["Body"], answer["ETag"]
        try:
            # At most one byte past the largest config: an object of gigabytes (a wrong file
            # pushed by hand) costs the function no more memory than a config can.
            data = body.read(MAX_CONFIG_CHARACTERS + 1)
        finally:
            body.close()
        if len(data) > MAX_CONFIG_CHARACTERS:
            raise ObjectRefused(f"s3 config: more than {MAX_CONFIG_CHARACTERS} bytes", etag)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ObjectRefused(f"s3 config: not UTF-8 text (byte {error.start})", etag) from None
        return Fetched(text, etag, object_generation(answer.get("LastModified"), answer.get("Metadata")))


class FileFetch:
    """A config file read again when it changed: its ETag is its size, modification time and
    SHA-256, so an unchanged file costs one ``stat``, and one rewritten with the same text is
    not parsed again."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _read(self) -> tuple[os.stat_result, bytes]:
        with open(self.path, "rb") as file:
            return os.fstat(file.fileno()), file.read(MAX_CONFIG_CHARACTERS + 1)

    @staticmethod
    def _etag(stat: os.stat_result, data: bytes) -> str:
        return f"{stat.st_size}:{stat.st_mtime_ns}:{hashlib.sha256(data).hexdigest()}"

    def __call__(self, etag: str | None) -> Fetched | None:
        stat = os.stat(self.path)
        if etag is not None and etag.startswith(f"{stat.st_size}:{stat.st_mtime_ns}:"):
            return None
        stat, data = self._read()
        found = self._etag(stat, data)
        if etag is not None and etag.rsplit(":", 1)[-1] == found.rsplit(":", 1)[-1]:
            return None  # touched, the same text
        if len(data) > MAX_CONFIG_CHARACTERS:
            raise ObjectRefused(f"{self.path}: more than {MAX_CONFIG_CHARACTERS} bytes", found)
        try:
            return Fetched(data.decode("utf-8"), found, stat.st_mtime)
        except UnicodeDecodeError as error:
            raise ObjectRefused(f"{self.path}: not UTF-8 text (byte {error.start})", found) from None


def _default_s3_client() -> Any:
    return aws_clients.client("s3")


def from_environment(initial: Config, clock: Clock, environ: Mapping[str, str],
                     initial_digest: str | None = None) -> ConfigSource | None:
    """The S3 config when ``VMPOOL_CONFIG_BUCKET`` is set; the local stack's checked config file
    when ``VMPOOL_CONFIG_WATCH`` is (local/run.py rewrites it as the developer edits theirs);
    None: the packaged one, unchanging. ``initial_digest``: see ``ConfigSource``."""
    bucket = environ.get(CONFIG_BUCKET_ENV)
    watched = environ.get(CONFIG_FILE_ENV) if environ.get(CONFIG_WATCH_ENV) else None
    if not bucket and watched:
        # Read once more at the first look (the file may have changed since ``initial`` was read).
        return ConfigSource(initial, FileFetch(watched), clock, refresh_seconds=LOCAL_REFRESH_SECONDS,
                            initial_digest=initial_digest)
    if not bucket:
        return None
    return ConfigSource(initial, S3Fetch(bucket, DEFAULT_CONFIG_KEY), clock,
                        initial_digest=initial_digest)
