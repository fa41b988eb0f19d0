"""Who is calling: the token in ``X-AUTH-TOKEN``, when the service has ``:auth:`` configured.

Without ``:auth:`` nobody needs a token and a token sent anyway is ignored, as in vmpooler.

With ``:auth:`` (vmpooler's FIX notes):
- an ``X-AUTH-TOKEN`` that is not a live token is a 401 wherever a route reads a token (an empty one
  too); the read-only routes (``GET /status``, ``/vm``, ``/vm/<host>``, ``/summary``, the
  dashboard's) read none and ignore it, as vmpooler does;
- a VM checked out with a token belongs to that token's user: only a token of the same user may
  change its lifetime or give it back (401 without a token, 403 with another user's); the same
  user is the same name and, when both are known, the same directory entry, or the same entry
  under another name (renamed: ``same_owner``);
- lifetime changes need a token even on a VM checked out without one.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from chalicelib.api.http import ApiError, ApiRequest
from chalicelib.auth.base import (
    AuthConfigError,
    AuthUnavailable,
    canonical_user,
    listed_entry_id,
    other_entry,
    same_entry,
    same_user,
)
from chalicelib.auth.basic import WWW_AUTHENTICATE
from chalicelib.auth.directory_check import Standing
from chalicelib.auth.tokens import TokenRecord
from chalicelib.observability import logger
from chalicelib.services import Services
from chalicelib.store import VMRecord

TOKEN_HEADER = "X-AUTH-TOKEN"


@dataclass(frozen=True)
class Caller:
    user: str
    token_id: str = ""
    """The token's id (first 16 hex of its SHA-256): recorded on VMs, never the token itself."""
    token_key: str = ""
    """The Redis key of the token's record: the step that makes a change it asked for refuses the
    change once the token is gone (deleted since it was checked; lua/token_live.lua)."""
    entry_id: str | None = None
    """The stable id of the directory entry the token's login bound as (``TokenRecord.entry_id``;
    None when unknown): recorded on the VMs it checks out (``token_entry``), so that another entry
    given the same name later does not own them."""


def unauthorized(message: str) -> ApiError:
    """401 with the header vmpooler clients expect."""
    return ApiError(401, {"error": message}, {"WWW-Authenticate": WWW_AUTHENTICATE})


@dataclass(frozen=True)
class TokenCheck:
    """What the request's ``X-AUTH-TOKEN`` is worth: looked up in Redis and its user's standing in
    the directory, once per request (the rate limit and the handler both ask)."""

    record: TokenRecord | None
    """None: not a live token."""
    standing: Standing | None = None
    """What the directory says about the token's user (None without a record)."""


def sends_token(request: ApiRequest) -> bool:
    """Whether the request has an ``X-AUTH-TOKEN`` header at all. An empty one counts: it is a
    token sent (by mistake: a client whose config holds ``token: ""``) that no token matches, a
    401 as in vmpooler, not a request without a token."""
    return request.header(TOKEN_HEADER) is not None


def token_check(services: Services, request: ApiRequest) -> TokenCheck | None:
    """The check of the request's token; None without ``:auth:`` or without an ``X-AUTH-TOKEN``
    header. Made once per request: a second look would cost the round trips again and could
    answer otherwise."""
    if services.config.auth is None:
        return None
    token = request.header(TOKEN_HEADER)
    if token is None:
        return None
    if "token_check" not in request.memo:
        record = services.tokens.lookup(token.strip(), touch=False)
        # The user may have left since the token was made: the directory is asked every few minutes.
        standing = None if record is None else services.directory_check.standing(record.user, record.created_at,
                                                                                    record.entry_id)
        request.memo["token_check"] = TokenCheck(record, standing)
    check: TokenCheck = request.memo["token_check"]
    return check


def path_token_check(services: Services, request: ApiRequest) -> TokenCheck:
    """The check of the token in the path of ``GET /token/<t>`` (its record, unchanged, and its
    user's standing in the directory), made once per request: the rate limit, which counts the
    request as that token's user, and the handler both ask. Before, each looked it up, two reads
    of the token and two of its user's directory record for one request, and the two could
    answer otherwise (the token deleted, or its user's answer renewed, in between)."""
    if "path_token_check" not in request.memo:
        record = services.tokens.lookup(request.params.get("token", ""), touch=False)
        standing = None if record is None else services.directory_check.standing(record.user, record.created_at,
                                                                                    record.entry_id)
        request.memo["path_token_check"] = TokenCheck(record, standing)
    check: TokenCheck = request.memo["path_token_check"]
    return check


def refuse_unless_present(standing: Standing) -> None:
    """401 for a token whose user the directory no longer has, 503 when it cannot say."""
    if standing is Standing.REMOVED:
        raise unauthorized("the token's user is no longer in the directory")
    if standing is Standing.UNKNOWN:
        raise auth_unavailable(AuthUnavailable("the directory cannot say whether the token's user is still there"))


def valid_record(check: TokenCheck) -> TokenRecord:
    """The record of the token checked, once it is live and its user still in the directory:
    401 otherwise (an empty token too), 503 when the directory cannot say."""
    if check.record is None:
        raise unauthorized("invalid or expired token")
    assert check.standing is not None
    refuse_unless_present(check.standing)
    return check.record


def refuse_a_dead_token(services: Services, request: ApiRequest) -> None:
    """401 for an ``X-AUTH-TOKEN`` sent that is not live (or whose user has left), before a route
    that reads one looks at anything else: a client holding a dead token is told so whatever else
    is wrong with its request. Records no use of the token (the request may still be refused)."""
    check = token_check(services, request)
    if check is not None:
        valid_record(check)


def refuse_without_a_live_token(services: Services, request: ApiRequest) -> None:
    """``required_caller``'s 401s (no token, a dead one, its user gone), without recording a use
    of the token: a route that names a VM checks the token first, whatever the VM, and records
    its use only once the VM is found (``required_caller`` then)."""
    if services.config.auth is None:
        return
    check = token_check(services, request)
    if check is None:
        raise unauthorized("a token is required (X-AUTH-TOKEN)")
    valid_record(check)


def optional_caller(services: Services, request: ApiRequest) -> Caller | None:
    """The caller when a valid token is given; None without one. An invalid token, or one whose
    user has left the directory, is a 401. The token's use is recorded once per request."""
    check = token_check(services, request)
    if check is None:
        return None
    if "caller" not in request.memo:
        record = services.tokens.touch(valid_record(check))
        if record is None:  # deleted since it was checked: this request comes after the delete
            raise unauthorized("invalid or expired token")
        request.memo["caller"] = Caller(record.user, record.id, services.store.keys.token(record.token_hash),
                                        record.entry_id)
    caller: Caller = request.memo["caller"]
    return caller


def required_caller(services: Services, request: ApiRequest) -> Caller | None:
    """For routes the contract marks "token": with ``:auth:`` a valid token is a must (401
    otherwise); without ``:auth:``, None."""
    if services.config.auth is None:
        return None
    caller = optional_caller(services, request)
    if caller is None:
        raise unauthorized("a token is required (X-AUTH-TOKEN)")
    return caller


def caller_for_change(
    services: Services, request: ApiRequest, record: VMRecord, *, token_required: bool = False
) -> Caller | None:
    """The caller allowed to change or return ``record``: a 401/403 otherwise.

    A VM checked out with a token needs a token of the same user; ``token_required`` asks for a
    token whatever the VM (lifetime changes). Without ``:auth:`` anyone may, as in vmpooler."""
    return may_change(services, optional_caller(services, request), record, token_required=token_required)


def may_change(services: Services, caller: Caller | None, record: VMRecord, *,
               token_required: bool = False) -> Caller | None:
    """``caller_for_change`` for a caller already known (``optional_caller``)."""
    if services.config.auth is None:
        return None
    if caller is None and (token_required or record.token_user):
        raise unauthorized("a token is required (X-AUTH-TOKEN)")
    if record.token_user and caller is not None and not same_owner(caller, record.token_user,
                                                                   record.raw.get("token_entry")):
        raise ApiError(403, {"error": f"VM {record.name} was checked out by another user"})
    return caller


def same_owner(caller: Caller, owner: str, owner_entry: str | None) -> bool:
    """Whether ``caller`` is the user who checked out a VM (or made an on-demand request) as
    ``owner``, logged in as the directory entry ``owner_entry``: the same name, and the same entry
    when both are known (``other_entry``). A name given to a newcomer (a new entry, a new
    entryUUID) is not the departed user whose VMs still run under it. A VM or token recorded without an entry (made
    before entries were recorded, or by a directory that shows none) goes by the name alone.
    The same entry (both known) is the same person under any name: a user renamed in the
    directory (a modrdn keeps the entry) logs in by the new name, and was refused their own VMs
    and on-demand requests as another user's (403), their old tokens refused with the old name."""
    if same_entry(caller.entry_id, owner_entry):
        return True
    if not same_user(caller.user, owner):
        return False
    return not other_entry(caller.entry_id, owner_entry)


AUTH_UNAVAILABLE = "authentication service unavailable"
"""What a client is told when the directory cannot answer; the details (host, port, error) go to
the log only."""


def auth_unavailable(error: Exception) -> ApiError:
    """503 for a directory outage, its details logged and not shown."""
    logger.error("authentication service unavailable", extra={"detail": str(error)})
    return ApiError(503, {"error": AUTH_UNAVAILABLE}, {"Retry-After": "5"})


def required_admin(services: Services, request: ApiRequest) -> Caller | None:
    """For changes to pools at runtime: with ``:auth:``, a token of a user listed in
    ``auth.admins`` or a member of one of ``auth.admin_groups`` (LDAP); 401 without a token, 403
    for anyone else. Without ``:auth:``, None (anyone, as in vmpooler)."""
    caller = required_caller(services, request)
    if caller is None:
        return None
    if is_admin(services, caller.user, caller.entry_id):
        return caller
    services.refusals.refused("runtime pool change refused: not an administrator", level=logging.WARNING,
                              user=caller.user)
    raise ApiError(403, {"error": "only administrators may change pools at runtime"})


def is_admin(services: Services, user: str, entry_id: str | None = None) -> bool:
    """Whether ``user``, logged in as the directory entry ``entry_id`` (None: unknown), is an
    administrator: that entry listed in ``auth.admins`` by its stable id (``entryUUID:<uuid>``...:
    the person, whatever name they hold now), the name listed there (canonical names: whoever
    holds the name), or a member of one of ``auth.admin_groups`` (asked of the directory now: 503
    when it cannot say). Without ``:auth:``, or with neither list set, nobody is."""
    auth = services.config.auth
    if auth is None:
        return False
    names, entries = _admins(auth.admins)
    if entry_id is not None and entry_id in entries:
        return True
    if canonical_user(user) in names:
        return True
    groups = auth.admin_groups
    if groups:
        try:
            member_of_any = getattr(services.authenticator, "member_of_any", None)
            return bool(member_of_any is not None and member_of_any(user, groups, entry=entry_id))
        except (AuthUnavailable, AuthConfigError) as error:
            raise auth_unavailable(error) from None
    return False


@functools.lru_cache(maxsize=8)
def _admins(listed: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """``auth.admins`` as (canonical user names, entry ids): checked at load, so an item that
    names neither (``listed_entry_id`` raising) is skipped here."""
    names: set[str] = set()
    entries: set[str] = set()
    for item in listed:
        try:
            entry = listed_entry_id(item)
        except ValueError:
            continue
        if entry is None:
            names.add(canonical_user(item))
        else:
            entries.add(entry)
    return frozenset(names), frozenset(entries)
