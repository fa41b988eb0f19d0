"""The route table, and the adapter from a Chalice request to our handlers and back.

Every route exists under /api/v3, /api/v2 and /api/v1; the routes vmpooler 2.x rerouted from
unversioned paths (its ``reroute.rb``) also exist unversioned and behave as v1; the dashboard's
routes exist only unversioned. Whatever goes wrong, the answer is JSON with ``ok: false`` and
the right status: a handler's ApiError as it is, Redis down as 503, and a bug
as a 500 without a traceback (logged with one).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import unquote

import redis

from chalicelib.api import dashboard, feed_cache, ondemand, pool_config, status, summary, tokens, vm_tasks, vms
from chalicelib.api.http import (
    JSON_HEADERS,
    MAX_BASE64_BODY_CHARS,
    MAX_BODY_BYTES,
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    body_too_large,
    json_text,
)
from chalicelib.api.identity import TOKEN_HEADER, unauthorized
from chalicelib.api.limits import check_rate
from chalicelib.api.shared_reads import SharedReads
from chalicelib.auth.directory_budget import request_budget
from chalicelib.observability import logger
from chalicelib.refusals import STORE_UNAVAILABLE
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable, TokenGone

Handler = Callable[[Services, ApiRequest], ApiResponse]

API_VERSIONS: tuple[tuple[str, int], ...] = (("/api/v3", 3), ("/api/v2", 2), ("/api/v1", 1), ("", 1))
"""(path prefix, version). The unversioned paths are vmpooler's old rerouted ones, served as v1."""


@dataclass(frozen=True)
class Route:
    name: str
    """Unique among routes; the Chalice view name is ``<name>_<version>``."""
    method: str
    path: str
    handler: Handler
    unversioned: bool = False
    """Whether the route also exists without an /api/vN prefix."""
    versioned: bool = True
    """False for the routes that exist only without a prefix (/, /healthcheck, /dashboard)."""
    feed: bool = False
    """A read of every pool that does not depend on who asks: callers asking it at once share one
    computation (api/shared_reads.py)."""
    tagged: bool = False
    """Its 200s carry an ETag, and a caller naming it in If-None-Match gets 304 (api/conditional.py).
    Every feed's do too (``conditional``)."""

    tag_basis: Callable[[str], str] | None = None
    """The part of its rendered answer its ETag is computed from, when not all of it (a weak
    tag then: answers differing only elsewhere are equivalent, not byte for byte the same)."""

    @property
    def conditional(self) -> bool:
        """Whether its answers are conditional: the feeds and the dashboard's page."""
        return self.feed or self.tagged


ROUTES: list[Route] = [
    Route("list_pools", "GET", "/vm", vms.list_pools, unversioned=True),
    Route("checkout", "POST", "/vm", vms.checkout_from_body, unversioned=True),
    Route("checkout_path", "POST", "/vm/{name}", vms.checkout_from_path, unversioned=True),
    Route("describe_vm", "GET", "/vm/{name}", vms.describe, unversioned=True),
    Route("modify_vm", "PUT", "/vm/{name}", vms.modify, unversioned=True),
    Route("return_vm", "DELETE", "/vm/{name}", vms.give_back, unversioned=True),
    Route("status", "GET", "/status", status.status, unversioned=True, feed=True, tag_basis=status.status_tag_basis),
    Route("poolstat", "GET", "/poolstat", status.poolstat, feed=True),
    Route("totalrunning", "GET", "/totalrunning", status.total_running, feed=True),
    Route("summary", "GET", "/summary", summary.summary, unversioned=True, feed=True),
    Route("summary_section", "GET", "/summary/{section}", summary.summary, unversioned=True, feed=True),
    Route("summary_key", "GET", "/summary/{section}/{key}", summary.summary, unversioned=True, feed=True),
    Route("config", "GET", "/config", status.pool_configuration, feed=True),
    Route("token_list", "GET", "/token", tokens.list_tokens, unversioned=True),
    Route("token_create", "POST", "/token", tokens.create_token, unversioned=True),
    Route("token_describe", "GET", "/token/{token}", tokens.describe_token, unversioned=True),
    Route("token_delete", "DELETE", "/token/{token}", tokens.delete_token, unversioned=True),
    Route("ondemand_create", "POST", "/ondemandvm", ondemand.create_from_body),
    Route("ondemand_create_path", "POST", "/ondemandvm/{name}", ondemand.create_from_path),
    Route("ondemand_show", "GET", "/ondemandvm/{name}", ondemand.show),
    Route("ondemand_delete", "DELETE", "/ondemandvm/{name}", ondemand.delete),
    Route("config_poolsize", "POST", "/config/poolsize", pool_config.set_size),
    Route("config_poolsize_clear", "DELETE", "/config/poolsize/{pool}", pool_config.clear_size),
    Route("config_pooltemplate", "POST", "/config/pooltemplate", pool_config.set_template),
    Route("config_pooltemplate_clear", "DELETE", "/config/pooltemplate/{pool}", pool_config.clear_template),
    Route("config_clonetarget", "POST", "/config/clonetarget", pool_config.set_clone_target),
    Route("config_clonetarget_clear", "DELETE", "/config/clonetarget/{pool}", pool_config.clear_clone_target),
    Route("poolreset", "POST", "/poolreset", pool_config.reset),
    Route("root", "GET", "/", dashboard.home, unversioned=True, versioned=False),
    Route("healthcheck", "GET", "/healthcheck", dashboard.healthcheck, unversioned=True, versioned=False),
    Route("dashboard", "GET", "/dashboard", dashboard.page, unversioned=True, versioned=False, tagged=True),
    Route("dashboard_pool_stats", "GET", "/dashboard/stats/vmpooler/pool", dashboard.vmpooler_pool,
          unversioned=True, versioned=False, feed=True),
    Route("dashboard_running_stats", "GET", "/dashboard/stats/vmpooler/running", dashboard.vmpooler_running,
          unversioned=True, versioned=False, feed=True),
    Route("dashboard_history", "GET", "/dashboard/stats/history", dashboard.history,
          unversioned=True, versioned=False, feed=True),
    Route("vm_disk", "POST", "/vm/{name}/disk/{size}", vm_tasks.add_disk),
    # beaker-vmpooler posts disks to `<pooling_api>/api/v1/vm/...` whatever its pooling_api, and
    # vmpooler 3 serves no unversioned /vm: a pooling_api of `.../api/v3` made every host with
    # `disks:` fail (vmpooler 3 has no such route either, nor any /api/v1).
    Route("vm_disk_beaker", "POST", "/api/v1/vm/{name}/disk/{size}", vm_tasks.add_disk),
    Route("vm_snapshot", "POST", "/vm/{name}/snapshot", vm_tasks.take_snapshot, unversioned=True),
    Route("vm_revert", "POST", "/vm/{name}/snapshot/{snapshot}", vm_tasks.revert_snapshot, unversioned=True),
]


def versioned_paths(route: Route) -> list[tuple[str, int]]:
    """Every (full path, version) under which ``route`` is served."""
    return [
        ((prefix + route.path).rstrip("/") or "/", version)
        for prefix, version in API_VERSIONS
        if (prefix and route.versioned) or (not prefix and route.unversioned)
    ]



def render(response: ApiResponse) -> tuple[int, str, dict[str, str]]:
    """Status, JSON text and headers of a response; a text body (the dashboard's page) is sent
    as it is, with the Content-Type its handler set."""
    if isinstance(response.body, str):
        return response.status, response.body, response.headers
    return response.status, json_text(response.body, response.pretty), {**JSON_HEADERS, **response.headers}


SHARED_READS = SharedReads()
"""The feeds being computed in this process, shared by the callers asking them at once."""


def _route_of(handler: Handler) -> Route | None:
    """The first route of ROUTES whose handler is ``handler`` (a few handlers serve several):
    looked up, not searched (the healthcheck's was the 30th of the list)."""
    return _ROUTE_OF.get(handler)


_ROUTE_OF: dict[Handler, Route] = {}
for _route in reversed(ROUTES):
    _ROUTE_OF[_route.handler] = _route  # the first one last: it stays


def handle(services: Services, handler: Handler, request: ApiRequest) -> ApiResponse:
    """Run a handler (once its request is within the rate limits) and turn every failure into a
    JSON answer. While Redis has just timed out (``store.breaker``), a 503 at once."""
    services.refusals.flush_if_due()  # a window of refusals that is over is written now
    breaker = services.redis_breaker
    if breaker is not None and not breaker.admit():
        return ApiResponse(503, {"ok": False, "error": StoreUnavailable.public_message}, {"Retry-After": "1"})
    try:
        route = _route_of(handler)
        if route is not None:
            check_rate(services, route.method, route.path, request)
        if route is not None and route.feed:
            key = (id(services), route.name, request.version, tuple(sorted(request.params.items())),
                   tuple(sorted(request.query.items())))
            def compute() -> ApiResponse:
                return SHARED_READS.answer(key, lambda: handler(services, request))

            max_age, kept = feed_cache.accepted_age(request), feed_cache.entry_name(route.name, request)
            if max_age and kept:
                return feed_cache.answer(services, kept, max_age, compute)
            return compute()
        return handler(services, request)
    except ApiError as error:
        return error.response()
    except TokenGone:
        # Deleted (or expired) after it was checked, before the change's step: nothing changed.
        return unauthorized("invalid or expired token").response()
    except (StoreUnavailable, redis.RedisError) as error:
        if _timed_out(error):  # one a breaker opening: its followers are answered without a line
            logger.warning(STORE_UNAVAILABLE, extra={"error": str(error)})
        else:  # each request fails so at once while it lasts: the first said, the rest counted
            services.refusals.refused(STORE_UNAVAILABLE, level=logging.WARNING, error=str(error))
        message = error.public_message if isinstance(error, StoreUnavailable) else StoreUnavailable.public_message
        return ApiResponse(503, {"ok": False, "error": message}, {"Retry-After": "1"})
    except Exception:  # noqa: BLE001 - the client gets JSON; the log gets the traceback
        logger.exception("unhandled error", extra={"request_id": request.request_id})
        return ApiResponse(500, {"ok": False, "error": "internal error", "request_id": request.request_id})


def _timed_out(error: BaseException) -> bool:
    """Whether Redis did not answer in time (the error, or one it was raised from)."""
    seen: BaseException | None = error
    for _ in range(5):  # a short chain: StoreUnavailable from redis-py's error from the socket's
        if seen is None:
            return False
        if isinstance(seen, (redis.TimeoutError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


SERVICES_UNAVAILABLE = "service unavailable; try again"


def handle_when_built(build: Callable[[], Services], handler: Handler, request: ApiRequest) -> ApiResponse:
    """``handle`` with the services ``build`` returns (the process builds them on its first
    request). Failing to build them (out of descriptors, a secret that could not be fetched) is
    a 503 in JSON, and the next request tries again; before, it escaped to Chalice's own 500."""
    try:
        services = build()
    except Exception:  # noqa: BLE001 - the client gets JSON; the log gets the traceback
        logger.exception("services could not be built", extra={"request_id": request.request_id})
        return ApiResponse(503, {"ok": False, "error": SERVICES_UNAVAILABLE}, {"Retry-After": "1"})
    with request_budget():  # one deadline for all the request's directory work
        return handle(services, handler, request)


def _event_body(event: Mapping[str, Any]) -> bytes:
    """The body of an API Gateway proxy event as the client sent it. Read here rather than by
    Chalice, whose ``raw_body`` raises on a body that is not base64 (or text that is not
    Unicode) and makes it a 500 outside our error handling: a 400 instead. A body longer than
    any the API reads is a 413 on every route (as the local front answers it) from its length
    alone, before it is decoded or encoded: a 6 MB base64 body cost 30-40 ms of decoding, then
    was ignored (a route that reads none) or refused anyway."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise bad_request("Request body must be sent as text or base64")
    # Text: each character is at least one byte of UTF-8.
    if len(body) > (MAX_BASE64_BODY_CHARS if event.get("isBase64Encoded") else MAX_BODY_BYTES):
        raise body_too_large()
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error: bad characters or padding
            raise bad_request("Request body is marked base64 but is not valid base64") from None
    # A lone surrogate (an escape JSON allows) passes through as bytes no UTF-8 decoder accepts:
    # the body's JSON parse then refuses it as any other bad input.
    return body.encode("utf-8", "surrogatepass")


def _event_query(event: Mapping[str, Any]) -> dict[str, str]:
    """Each query parameter's last value (``?a=1&a=2`` is ``a=2``, as Chalice's MultiDict)."""
    values = event.get("multiValueQueryStringParameters") or {}
    return {name: found[-1] for name, found in values.items() if found}


CREDENTIAL_HEADERS = ("authorization", TOKEN_HEADER.lower())
"""Headers that say who the caller is. API Gateway's event keeps only the last value of a header
sent several times (``headers``); every value is in ``multiValueHeaders``."""


def _event_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, names lower-cased. A credential header sent several times is every
    value joined with ", " (RFC 9110 5.3, as the local front joins them), which no credential
    check accepts: with the last value alone, a proxy or WAF that checked the first would let
    through a login or a token it never saw. Several times means under any spelling of its name
    (API Gateway keeps ``X-AUTH-TOKEN`` and ``x-auth-token`` as two keys of the event), and a
    value of ``headers`` that is not its name's last one in ``multiValueHeaders`` (an event API
    Gateway did not send) counts as one more."""
    # The event's own headers, as Chalice's request holds them (its mapping lower-cases each
    # name): read through that mapping, each header cost three calls of Python.
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    multi = event.get("multiValueHeaders") or {}
    multi_names = {name.lower() for name in multi}
    for credential in CREDENTIAL_HEADERS:
        if credential not in headers and credential not in multi_names:
            continue  # not sent under any spelling: nothing to join (most requests, for both)
        values: list[str] = []
        for name, sent in multi.items():
            if name.lower() == credential:
                values += sent
        for name, value in (event.get("headers") or {}).items():
            if name.lower() == credential and value != (multi.get(name) or [None])[-1]:
                values.append(value)
        if len(values) > 1:
            headers[credential] = ", ".join(values)
    return headers


MAX_REQUEST_ID = 128
"""Longest request id kept as sent (API Gateway's are 36-character UUIDs)."""


def bounded_request_id(sent: str) -> str:
    """The request id a request's log lines (``correlation_id``) and 500 answers carry: the one
    sent, or for one longer than MAX_REQUEST_ID (a direct invoke may send a megabyte, which
    would be written into every line the invocation logs) its SHA-256, still telling requests
    apart."""
    if len(sent) <= MAX_REQUEST_ID:
        return sent
    return "sha256:" + hashlib.sha256(sent.encode("utf-8", "surrogatepass")).hexdigest()


def request_from_chalice(current: Any, version: int, params: Mapping[str, str]) -> ApiRequest:
    """Our ApiRequest from Chalice's ``app.current_request``; ApiError (400) for an event whose
    body cannot be read."""
    context = current.context or {}
    event = current.to_original_event()
    return ApiRequest(
        method="GET" if current.method == "HEAD" else current.method,  # HEAD: GET's answer, its body dropped
        version=version,
        # Decoded once here: API Gateway's REST event holds path parameters as sent (``my%2Dhost``),
        # where vmpooler's router decoded them; the local front passes them as API Gateway does.
        params={name: unquote(value) for name, value in params.items()},
        query=_event_query(event),
        headers=_event_headers(event),
        body=_event_body(event),
        source_ip=(context.get("identity") or {}).get("sourceIp", ""),
        request_id=bounded_request_id(context.get("requestId") or ""),
        context_path=context.get("path") or "",
    )
