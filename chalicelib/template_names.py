"""A pool's template named from the config alone (no provider asked): how its preparation
(``create_template_delta_disks``) is recorded, for the passes (providers/base.Provider.template_name)
and for GET /config's ``template_ready``, which the API answers without the provider layer."""

from __future__ import annotations

from chalicelib.config import PoolConfig


def configured_template(pool: PoolConfig, template: str | None = None) -> str:
    """The pool's template (or ``template``) named from the config alone: qualified with the
    pool's own ``datacenter`` when it has one (``<datacenter>/vm/<template>``, the inventory
    path), as ``templates/t`` in DC0 and in DC1 are two templates; as configured otherwise."""
    template = (template if template is not None else pool.template).strip("/")
    datacenter = pool.datacenter
    if not datacenter or template.startswith(f"{datacenter}/vm/"):
        return template
    return f"{datacenter}/vm/{template}"


def bare_template(name: str) -> str:
    """A template name without an inventory path's ``<datacenter>/vm/`` in front."""
    _, marker, inside = name.partition("/vm/")
    return inside if marker and inside else name


def template_names(pool: PoolConfig, template: str | None = None) -> set[str]:
    """The names the pool's template (or ``template``) may be recorded and leased under, from the
    config alone: the provider's ``template_name`` is one of them (as configured, or without its
    ``<datacenter>/vm/``: vSphere's for a pool naming the default datacenter)."""
    configured = configured_template(pool, template)
    return {configured, bare_template(configured)}
