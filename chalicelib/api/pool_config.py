"""Runtime pool configuration (``experimental_features`` only, else 405): pool size, template
and reset, kept in Redis (store/pool_overrides.py) and applied by the pools' reconcile passes
(manager/pool_changes.py). Answers as vmpooler: 201 when something changed, 200 when not.
"""

from __future__ import annotations

import re
from typing import Any

from chalicelib.api.identity import required_caller
from chalicelib.api.http import ApiError, ApiRequest, ApiResponse, bad_request, json_body, ok
from chalicelib.config import PoolConfig
from chalicelib.services import Services
from chalicelib.store.pool_overrides import PoolOverrides

MAX_POOL_SIZE = 10000
"""As the config loader allows."""
SIZE_PATTERN = re.compile(r"^[0-9]+$")


def _allowed(services: Services, request: ApiRequest) -> None:
    """405 unless experimental_features is on; then a token when auth is configured."""
    if not services.config.service.experimental_features:
        raise ApiError(405)
    required_caller(services, request)


def _payload(request: ApiRequest) -> dict[str, Any]:
    """The body as an object of pool -> value. Bad JSON is a 400 (vmpooler answered 500)."""
    try:
        body = json_body(request)
    except ApiError:
        raise ApiError(400, {"message": "JSON payload could not be parsed"}) from None
    if body is None:
        raise ApiError(400, {"message": "JSON payload could not be parsed"})
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def _size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not SIZE_PATTERN.match(str(value)):
        return None
    size = int(value)
    return size if size <= MAX_POOL_SIZE else None


def _template_ok(value: Any) -> bool:
    """vmpooler's rule: a path with a '/', not at either end."""
    return isinstance(value, str) and "/" in value and not value.startswith("/") and not value.endswith("/")


def set_size(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /config/poolsize ``{"pool": "3"}``: 400 ``not_configured`` lists unknown pools and bad sizes."""
    _allowed(services, request)
    body = _payload(request)
    invalid = [pool for pool, size in body.items() if services.config.pool(pool) is None or _size(size) is None]
    if invalid:
        raise ApiError(400, {"not_configured": invalid})
    overrides = PoolOverrides(services.store)
    changed = []
    for name, value in body.items():
        size = int(value)  # validated above
        if size != _now(services, name).size:
            overrides.set_size(name, None if size == _configured(services, name).size else size)
            changed.append(name)
    return _changed(services, changed)


def clear_size(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /config/poolsize/<pool>: back to the configured size."""
    _allowed(services, request)
    name = _known_pool(services, request)
    if PoolOverrides(services.store).get(name).size is None:
        return ok()
    PoolOverrides(services.store).set_size(name, None)
    return _changed(services, [name])


def set_template(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /config/pooltemplate ``{"pool": "dir/template"}``: 400 ``bad_templates`` lists unknown
    pools and templates that are not a path."""
    _allowed(services, request)
    body = _payload(request)
    invalid = [pool for pool, template in body.items()
               if services.config.pool(pool) is None or not _template_ok(template)]
    if invalid:
        raise ApiError(400, {"bad_templates": invalid})
    overrides = PoolOverrides(services.store)
    changed = []
    for name, template in body.items():
        if template != _now(services, name).template:
            overrides.set_template(name, None if template == _configured(services, name).template else template)
            changed.append(name)
    return _changed(services, changed)


def clear_template(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /config/pooltemplate/<pool>: back to the configured template."""
    _allowed(services, request)
    name = _known_pool(services, request)
    if PoolOverrides(services.store).get(name).template is None:
        return ok()
    PoolOverrides(services.store).set_template(name, None)
    return _changed(services, [name])


def reset(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /poolreset ``{"pool": "1"}``: drain the pools' ready and pending VMs and refill
    them. 400 ``bad_pools`` lists unknown pools. Always 201, as vmpooler."""
    _allowed(services, request)
    body = _payload(request)
    invalid = [pool for pool in body if services.config.pool(pool) is None]
    if invalid:
        raise ApiError(400, {"bad_pools": invalid})
    overrides = PoolOverrides(services.store)
    now = services.clock.now()
    for name in body:
        overrides.reset(name, now)
    _reconcile_now(services, list(body))
    return ok(201)


def _configured(services: Services, name: str) -> PoolConfig:
    """A pool the handler has checked exists, as configured."""
    pool = services.config.pool(name)
    if pool is None:
        raise ApiError(404, {"error": f"unknown pool {name}"})
    return pool


def _now(services: Services, name: str) -> PoolConfig:
    """A pool the handler has checked exists, with its runtime overrides."""
    return services.pool(name) or _configured(services, name)


def _known_pool(services: Services, request: ApiRequest) -> str:
    name = request.params["pool"]
    if services.config.pool(name) is None:
        raise ApiError(404, {"error": f"unknown pool {name}"})
    return name


def _changed(services: Services, pools: list[str]) -> ApiResponse:
    """201 and a reconcile of the changed pools, or 200 when nothing changed."""
    if not pools:
        return ok()
    _reconcile_now(services, pools)
    return ok(201)


def _reconcile_now(services: Services, pools: list[str]) -> None:
    """Nudge a running reconcile loop of each pool, and ask for one where none runs."""
    for pool in pools:
        services.store.wake(pool)
    services.refill.pools_changed(pools)
