"""/token routes: create, list, inspect and delete API tokens (vmpooler's wire shape, FIX applied).

- ``POST /token`` and ``GET /token`` take HTTP Basic credentials, checked by the ``:auth:``
  provider through the failed-login limiter: 401 (with ``WWW-Authenticate``) without
  credentials or for refused ones (each said so, never whether the user exists), 429 with
  ``Retry-After`` past the limit, 503 when the directory is down.
- ``GET /token`` lists only the caller's tokens, each under its id (Redis holds no token).
- ``GET /token/<t>``: the token in the path is proof enough (vmfloaty sends nothing else); Basic
  credentials sent with it are checked whatever else comes (refused ones: 401, as vmpooler's
  ``need_auth!``), and only the token's owner gets an answer (403 otherwise). A read: ``last``
  stays. An ``X-AUTH-TOKEN`` sent with it must be live, as everywhere (401 otherwise).
  A token whose user has left the directory is a 401 here too, as on every route.
- ``DELETE /token/<t>`` needs the owner's Basic credentials (another user: 403). ``<t>`` may be
  the token or the id ``GET /token`` lists, so a lost token can still be revoked.
- An administrator (``auth.admins``, ``auth.admin_groups``) may list and delete another user's
  tokens with ``?user=<name>`` (``GET /token?user=bob``, ``DELETE /token/<id>?user=bob``), the
  pending ones (made, not yet counted) listed too, marked ``"pending": true``, and
  delete any token held: a user removed from the directory can no longer log in to revoke theirs.
- Without ``:auth:`` every token route answers 404, as in vmpooler.
"""

from __future__ import annotations

import logging
from typing import Any

from chalicelib.api.http import ApiError, ApiRequest, ApiResponse, not_found, ok
from chalicelib.api.identity import (
    AUTH_UNAVAILABLE,
    auth_unavailable,
    is_admin,
    path_token_check,
    refuse_unless_present,
    token_check,
    unauthorized,
    valid_record,
)
from chalicelib.api.ondemand import delivery_replicated
from chalicelib.auth.base import AuthConfigError, acceptable_credentials, canonical_user, other_entry, same_user
from chalicelib.auth.basic import LoginOutcome, LoginService
from chalicelib.auth.tokens import (
    DeleteResult,
    TokenRecord,
    TooManyTokens,
    hash_token,
    is_token_id,
    is_token_shaped,
    token_id,
)
from chalicelib.observability import logger
from chalicelib.services import Services

DELETION_NOT_REPLICATED = ("the token was deleted, but the deletion could not be replicated in time; "
                           "send the DELETE again shortly to be sure it holds")


BASIC_AUTH_REQUIRED = "authentication required (HTTP Basic)"
BASIC_AUTH_REFUSED = "authentication failed: user name or password refused (HTTP Basic)"
"""Said alike for a wrong password and an unknown user: the answer never tells who exists."""


def _login_service(services: Services) -> LoginService:
    """The login service, or 404 when no ``:auth:`` is configured."""
    if services.config.auth is None:
        raise not_found()
    try:
        logins = services.logins
    except AuthConfigError as error:
        # The config was checked at load; what is left (an unreadable CA file...) is an outage.
        logger.error("authentication is misconfigured", extra={"problems": error.problems})
        raise ApiError(503, {"error": AUTH_UNAVAILABLE}) from None
    if logins is None:  # pragma: no cover - auth configured implies an authenticator
        raise not_found()
    return logins


def _basic_login(services: Services, request: ApiRequest) -> tuple[str, str | None]:
    """The user whose HTTP Basic credentials came with the request (401/429/503 otherwise), and
    the stable id of the directory entry the login bound as (None when the directory gives none)."""
    logins = _login_service(services)
    began = services.clock.now()
    result = logins.login(request.header("Authorization"), request.source_ip or None)
    if result.outcome is LoginOutcome.OK and result.user is not None:
        # The directory found the user, as of the login's start: an answer recorded since (the
        # entry removed while the login was under way) is the later one and stands.
        services.directory_check.logged_in(result.user, began, result.entry_id)
        return result.user, result.entry_id
    if result.outcome is LoginOutcome.RATE_LIMITED:
        wait = result.retry_after or 1
        raise ApiError(
            429,
            {"error": result.message or "too many failed logins, try again later", "retry_after": wait},
            {"Retry-After": str(wait)},
        )
    if result.outcome is LoginOutcome.UNAVAILABLE:
        raise auth_unavailable(RuntimeError(result.message or "no detail"))
    if result.outcome is LoginOutcome.MISSING:
        raise unauthorized(BASIC_AUTH_REQUIRED)
    raise unauthorized(BASIC_AUTH_REFUSED)


def create_token(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /token: a new token for the Basic-authenticated user, shown this once."""
    user, entry_id = _basic_login(services, request)
    try:
        # The entry's id goes with the token: should the name later be another person's entry,
        # the directory check refuses it (auth/directory_check.py).
        token = _create(services, user, entry_id)
    except TooManyTokens:
        limit = services.config.service.max_tokens_per_user
        message = f"you have {limit} tokens already; delete one first (DELETE /token/<id>)"
        raise ApiError(403, {"error": message}) from None
    logger.info("token created", extra={"user": user, "token_id": token_id(hash_token(token))})
    return ok(token=token)


def _create(services: Services, user: str, entry_id: str | None) -> str:
    """A new token of ``user``. At the limit, the tokens of another directory entry that held the
    name (a departed person's, refused everywhere) are revoked and the token made again: they
    counted against the newcomer's ``max_tokens_per_user`` (403 to a newcomer who had made none).
    Only then: a creation's cost does not grow with the tokens held."""
    try:
        return services.tokens.create(user, entry_id)
    except TooManyTokens:
        if not entry_id or not _own_tokens(services, user, entry_id)[1]:
            raise
    return services.tokens.create(user, entry_id)


def _own_tokens(services: Services, user: str, entry_id: str | None) -> tuple[list[TokenRecord], int]:
    """``TokenStore.list_own``, its revocations logged."""
    records, revoked = services.tokens.list_own(user, entry_id)
    if revoked:
        logger.warning("tokens of another directory entry of the name revoked at its new holder's login",
                       extra={"user": user, "revoked": revoked})
    return records, revoked


OTHERS_TOKENS_REFUSED = "only administrators may list or delete another user's tokens"


def _whose_tokens(services: Services, request: ApiRequest, caller: str, entry_id: str | None) -> str:
    """The user whose tokens the request lists or deletes: the caller's own, or the user named by
    ``?user=`` when the caller is an administrator (403 for anyone else, 400 for a name no login
    could have)."""
    named = request.query.get("user")
    if not named:
        return caller
    if not acceptable_credentials(named, "-"):
        raise ApiError(400, {"error": "user must be a user name as it logs in"})
    if same_user(named, caller):
        return caller
    if not is_admin(services, caller, entry_id):
        services.refusals.refused("another user's tokens refused: not an administrator", level=logging.WARNING,
                                  user=caller)
        raise ApiError(403, {"error": OTHERS_TOKENS_REFUSED})
    return canonical_user(named)


def list_tokens(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /token[?user=<name>]: the caller's tokens (an administrator's pick of user's), by id,
    with ``created`` and ``last``; none gets vmpooler's 404 ``{"ok": false}``."""
    caller, entry_id = _basic_login(services, request)
    user = _whose_tokens(services, request, caller, entry_id)
    # The caller's own listing leaves out (and revokes) the tokens of a departed person who held
    # the name: they were listed to the newcomer, who could not tell them from their own.
    own_entry = entry_id if user == caller else None
    records = _own_tokens(services, user, own_entry)[0]
    if user != caller:
        # An administrator revoking a user's tokens sees the pending ones too: one whose count a
        # failover lost works for its holder (and is counted at its first use) though listed
        # nowhere else. The user's own listing keeps to the tokens counted (a pending one there
        # is most likely a failed login's, never given).
        records += services.tokens.list_pending(user)
    body: dict[str, Any] = {record.id: record.public() for record in records}
    if not body:
        raise not_found()
    return ApiResponse(200, {"ok": True, **body})


def describe_token(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /token/<t>: the token's user, times and running VMs. The token in the path proves
    itself (vmfloaty's ``token status`` sends nothing else); Basic credentials sent with it are
    checked, a live ``X-AUTH-TOKEN`` beside them or not (refused: 401), and only the token's owner
    is answered (403)."""
    _login_service(services)
    token = request.params["token"]
    check = token_check(services, request)
    if check is not None:
        # An X-AUTH-TOKEN sent here is checked as on every other route (vmpooler ignored it): a
        # client holding a mistyped, expired or empty token learns it here too. A read, not a use.
        valid_record(check)
    if request.header("Authorization"):
        # Checked even beside a live X-AUTH-TOKEN: before, a wrong password sent with one was a
        # 200, so credentials a client believed checked were not.
        user, entry_id = _basic_login(services, request)
        record = services.tokens.lookup(token, touch=False)
        if record is None:
            raise not_found(error="unknown or expired token")
        # The same name and, when both are known, the same directory entry: a newcomer given a
        # departed person's name read that person's token (its times, its running VMs) with
        # their own password.
        if not same_user(record.user, user) or other_entry(entry_id, record.entry_id):
            raise ApiError(403, {"error": "the token belongs to another user"})
    else:
        # A read, not a use: ``last`` says when the token last did something (as in vmpooler).
        # Checked once per request: the rate limit counted the request as this token's user.
        check = path_token_check(services, request)
        if check.record is None:
            raise not_found(error="unknown or expired token")
        record = check.record
        # The token is the credential here: worth no more than on any other route once its user
        # has left the directory (before, it still showed the user's VMs).
        assert check.standing is not None
        refuse_unless_present(check.standing)
    info = {"user": record.user, **record.public(), "vms": {"running": _running_vms(services, record)}}
    return ApiResponse(200, {"ok": True, token: info})


def _running_vms(services: Services, record: TokenRecord) -> list[str]:
    """The running VMs that were checked out with this token. One delivered to an on-demand
    request is listed once a replica has its delivery (``delivery_replicated``), as GET
    /ondemandvm/<id> names it: a pass delivered it, and its writes wait for no replica, so a
    failover could lose it and the client that saw it listed would be told next that the VM does
    not exist. A checkout was answered only once a replica had it."""
    running = services.store.running_with(services.config.pool_names, "token_id", record.id)
    delivered = {host for host, vm in services.store.records(running).items() if vm.raw.get("delivered_at")}
    if delivered and not delivery_replicated(services):
        running = [host for host in running if host not in delivered]
    return sorted(running)


def delete_token(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /token/<t>[?user=<name>]: its owner (Basic) may delete it, ``<t>`` the token or its
    id; an administrator any token, and by id one of the user ``?user=`` names."""
    caller, entry_id = _basic_login(services, request)
    user = _whose_tokens(services, request, caller, entry_id)
    token = request.params["token"]
    if is_token_shaped(token):
        result = services.tokens.delete(token, user)
        if result is DeleteResult.FORBIDDEN and user == caller and is_admin(services, caller, entry_id):
            owner = services.tokens.owner(token)
            result = services.tokens.delete(token, owner) if owner else DeleteResult.NOT_FOUND
            user = owner or user
        if result is DeleteResult.NOT_FOUND and is_token_id(token):
            # 32 hex digits are shaped as a token and as an id's prefix (the SHA-256's first 32):
            # no token by that value, it names one of the user's tokens by id, as 31 or 33 would.
            result = services.tokens.delete_by_id(token, user)
    elif is_token_id(token):
        result = services.tokens.delete_by_id(token, user)
    else:
        raise not_found(error="unknown or expired token")  # names no token: no deletion to retry
    if result is DeleteResult.FORBIDDEN:
        services.refusals.refused("token deletion refused: not the owner", level=logging.WARNING, user=caller)
        raise ApiError(403, {"error": "the token belongs to another user"})
    # Revoking a leaked token, its owner must not be told it is gone while a failover could bring
    # it back. A 404 waits too: it answers the retry of a deletion answered 503, and must not say
    # "gone" while no replica has the deletion.
    services.store.require_replicated(DELETION_NOT_REPLICATED, f"the deletion of a token of {user!r}")
    if result is DeleteResult.NOT_FOUND:
        raise not_found(error="unknown or expired token")
    if same_user(user, caller):
        logger.info("token deleted", extra={"user": caller})
    else:
        logger.warning("token deleted by an administrator", extra={"user": user, "administrator": caller})
    return ok()
