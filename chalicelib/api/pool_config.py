"""Runtime pool configuration (``experimental_features`` only, else 405): pool size, template,
clone target and reset, kept in Redis (store/pool_overrides.py) and applied by the pools' reconcile passes
(manager/pool_changes.py). Answers as vmpooler: 201 when something changed, 200 when not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from chalicelib.answer_sizes import override_fits
from chalicelib.api.http import (
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    capped_names,
    not_found,
    ok,
    vmpooler_json_body,
    whole_number,
)
from chalicelib.api.identity import required_admin
from chalicelib.config import PoolConfig
from chalicelib.services import Services
from chalicelib.store.pool_overrides import MAX_SIZE, PoolOverrides, apply, valid_clone_target, valid_template


def _allowed(services: Services, request: ApiRequest) -> str:
    """405 unless experimental_features is on; then, when auth is configured, an administrator's
    token (401 without a token, 403 for anyone else). The record of that token, for the change's
    step to check it is still there ("" without ``:auth:``)."""
    if not services.config.service.experimental_features:
        raise ApiError(405)
    caller = required_admin(services, request)
    return caller.token_key if caller else ""


def _payload(request: ApiRequest) -> dict[str, Any]:
    """The body as an object of pool -> value. Bad JSON is a 400 (vmpooler answered 500); no
    body, or ``null``, is vmpooler's "no payload": 404 ``{"ok": false}``."""
    body = vmpooler_json_body(request)
    if body is None:
        raise not_found()
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


RUBY_INTEGER_TEXT = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+(?:_[0-9]+)*)[ \t\n\v\f\r]*")
"""A size as vmpooler's Ruby ``Integer()`` accepts it and its ``to_i`` reads the same number:
blanks around, a ``+``, ``_`` between digits. Not ``0x``/``0b``/``0o`` (``Integer("0x10")`` is
16, but vmpooler stores ``"0x10".to_i``, 0: an emptied pool)."""


def _size(value: Any) -> int | None:
    """A pool size: a whole number written as vmpooler's ``Integer()`` check lets a curl script
    write it (``5``, ``"5"``, ``5.0``, ``" 5"``, ``"+5"``, ``"1_000"``); a fraction stays a 400
    (vmpooler cuts ``2.5`` to 2)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and (written := RUBY_INTEGER_TEXT.fullmatch(value)):
        value = written.group(1).replace("_", "")
    size = whole_number(value)
    return size if size is not None and size <= MAX_SIZE else None


def _template(value: Any) -> str | None:
    """vmpooler's rule, a path with a '/' not at either end, and the rules of a stored template."""
    if not isinstance(value, str) or "/" not in value or value.strip("/") != value:
        return None
    return valid_template(value)


def _clone_target(value: Any) -> str | None:
    """No '/' at either end (the config would drop it: two spellings of one target), and the
    rules of a stored clone target."""
    if not isinstance(value, str) or value.strip("/") != value:
        return None
    return valid_clone_target(value)


@dataclass(frozen=True)
class _Setting:
    """A pool setting the API may override: how to read a value, and the 400 body's key."""

    field: str
    """The PoolConfig (and PoolOverride) attribute."""
    parse: Callable[[Any], Any]
    """The value, or None when it is not valid."""
    error_key: str
    answer_prefix: str
    """DELETE answers ``<prefix>_before_reset`` (the value until now) and
    ``<prefix>_before_overrides`` (the configured one), as vmpooler."""


_SIZE = _Setting("size", _size, "not_configured", "pool_size")
_TEMPLATE = _Setting("template", _template, "bad_templates", "template")
_CLONE_TARGET = _Setting("clone_target", _clone_target, "bad_templates", "clone_target")


def _override(services: Services, request: ApiRequest, setting: _Setting) -> ApiResponse:
    token_key = _allowed(services, request)
    wanted = {pool: setting.parse(value) for pool, value in _payload(request).items()}
    invalid = [pool for pool, value in wanted.items()
               if services.config.pool(pool) is None or value is None or not _fits(services, pool, setting, value)]
    if invalid:
        raise ApiError(400, capped_names(setting.error_key, invalid))
    # Setting a pool back to its configured value removes its override; the script changes every
    # pool or none, and says which ones it changed (201), from the values as it finds them.
    stored = {name: None if _as_configured(_configured(services, name), setting, value) else value
              for name, value in wanted.items()}
    return _changed(services, PoolOverrides(services.store).set_many(setting.field, stored, token_key))


def _clear(services: Services, request: ApiRequest, setting: _Setting) -> ApiResponse:
    token_key = _allowed(services, request)
    name = _known_pool(services, request)
    configured = _configured(services, name)
    # The value until now is the one the script found and removed, in its own step: read before
    # it, a change landing in between made this answer a value it did not remove. 201 only when
    # this request removed an override (another clear of the pool at once may have done it).
    removed, found = PoolOverrides(services.store).clear(setting.field, name, token_key)
    answer = _changed(services, [name] if removed else [])
    answer.body.update({
        f"{setting.answer_prefix}_before_reset": _shown(apply(configured, found, services.override_room), setting),
        f"{setting.answer_prefix}_before_overrides": _shown(configured, setting),
    })
    return answer


def _shown(pool: PoolConfig, setting: _Setting) -> Any:
    """A DELETE answer's value: a template the pool does not have (its config gave none, and no
    override) is ``null``, as vmpooler answers the pool's missing ``template`` (nil), not ``""``."""
    value = _value(pool, setting)
    return None if setting is _TEMPLATE and value == "" else value


def _fits(services: Services, name: str, setting: _Setting, value: Any) -> bool:
    """Whether /config, which shows the pools' templates and clone targets, still fits one answer
    with ``value`` (chalicelib/answer_sizes.py: each pool's may grow by the same share of what is left)."""
    if setting is _SIZE:
        return True  # counted at its widest when the config was accepted
    return override_fits(services.config, _value(_configured(services, name), setting), value)


def _as_configured(pool: PoolConfig, setting: _Setting, value: Any) -> bool:
    """Whether ``value`` is what the pool has without an override (then setting it removes the
    override, as vmpooler). A pool with a ``sizing`` block has no such size: its schedule or
    demand sizes it, not ``size``; any size asked for it is kept as an override, else asking for
    its configured ``size`` during a window would change nothing."""
    if setting is _SIZE and pool.sizing is not None:
        return False
    return bool(value == _value(pool, setting))


def _value(pool: PoolConfig, setting: _Setting) -> Any:
    """The pool's current value of a setting (the clone target may come from ``:config:``)."""
    if setting is _CLONE_TARGET:
        return pool.clone_target
    return getattr(pool, setting.field)


def set_size(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /config/poolsize ``{"pool": "3"}``: 400 ``not_configured`` lists unknown pools and bad sizes."""
    return _override(services, request, _SIZE)


def clear_size(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /config/poolsize/<pool>: back to the configured size."""
    return _clear(services, request, _SIZE)


def set_template(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /config/pooltemplate ``{"pool": "dir/template"}``: 400 ``bad_templates`` lists unknown
    pools and templates that are not a path."""
    return _override(services, request, _TEMPLATE)


def clear_template(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /config/pooltemplate/<pool>: back to the configured template."""
    return _clear(services, request, _TEMPLATE)


def set_clone_target(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /config/clonetarget ``{"pool": "cluster"}``: where the pool's next clones are placed
    (vSphere ``clone_target``). 400 ``bad_templates`` lists unknown pools and unusable values."""
    return _override(services, request, _CLONE_TARGET)


def clear_clone_target(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /config/clonetarget/<pool>: back to the configured clone target."""
    return _clear(services, request, _CLONE_TARGET)


def reset(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /poolreset ``{"pool": "1"}``: drain the pools' ready and pending VMs and refill
    them. 400 ``bad_pools`` lists unknown pools. Otherwise 201, as vmpooler (503 while no replica has
    it: ``RESET_NOT_REPLICATED``)."""
    token_key = _allowed(services, request)
    body = _payload(request)
    invalid = [pool for pool in body if services.config.pool(pool) is None]
    if invalid:
        raise ApiError(400, capped_names("bad_pools", invalid))
    PoolOverrides(services.store).reset_many(body, services.clock.now(), token_key)
    _reconcile_now(services, list(body))
    services.store.require_replicated(RESET_NOT_REPLICATED, f"the reset of pools {list(body)[:3]}")
    return ok(201)


def _configured(services: Services, name: str) -> PoolConfig:
    """A pool the handler has checked exists, as configured."""
    pool = services.config.pool(name)
    if pool is None:
        raise not_found()
    return pool


def _known_pool(services: Services, request: ApiRequest) -> str:
    """The pool named in the path; an unknown one is vmpooler's bare 404 ``{"ok": false}``."""
    name = request.params["pool"]
    if services.config.pool(name) is None:
        raise not_found()
    return name


CHANGE_NOT_REPLICATED = ("the pool change was made, but it could not be replicated in time; "
                         "send it again shortly to be sure it holds")
RESET_NOT_REPLICATED = ("the pools were reset, but the reset could not be replicated in time; send it again "
                        "shortly to be sure it holds (sent again, the pools are drained again)")
"""A change answered 201 that a failover lost left the promoted replica with the pool as before,
silently: a replaced template's VMs cloned and handed out again, a reset or a drain to size 0
never made. Each answer (a retry's 200 too) waits for a replica (``Store.require_replicated``);
without one in time the change stays made on the primary and this 503 says so."""


def _changed(services: Services, pools: list[str]) -> ApiResponse:
    """201 and a reconcile of the changed pools, or 200 when nothing changed (a retry finds its
    change made), each once a replica has the pools' overrides as they are now."""
    if pools:
        _reconcile_now(services, pools)
    services.store.require_replicated(CHANGE_NOT_REPLICATED, f"a runtime change of pools {pools[:3]}")
    return ok(201) if pools else ok()


def _reconcile_now(services: Services, pools: list[str]) -> None:
    """Ask for a reconcile of each pool where none runs (never raises). A running reconcile loop
    was nudged by the change's own script (lua/pool_overrides.lua): a nudge sent after it could
    fail and answer 503 for a change made."""
    services.refill.pools_changed(pools)
