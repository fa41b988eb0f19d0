"""The VM a /vm/<host> route names (shared by the /vm routes and the VM task routes), and the
domain every answer names a VM under."""

from __future__ import annotations

from chalicelib.api.http import ApiRequest, not_found, short_hostnames
from chalicelib.services import Services
from chalicelib.store import VMRecord


def find_vm(services: Services, request: ApiRequest, running: bool = False) -> VMRecord:
    """The VM named in the path (short or FQDN): a 404 when unknown, or when ``running`` is
    asked for and it is not checked out."""
    names = short_hostnames(request.params["name"])
    record = services.store.get_first_vm(names)
    if record is None or not record.pool:
        raise not_found(error=f"VM {names[-1]} not found")
    hostname = record.name
    if running and record.state != "running":
        raise not_found(error=f"VM {hostname} is not running")
    return record


def shown_domain(services: Services, record: VMRecord) -> str:
    """The domain a VM is named under, in GET /vm and GET /ondemandvm alike (``named_domain``)."""
    return named_domain(services, record.pool, record.domain if record.raw.get("dns_name") else None, record.domain)


def named_domain(services: Services, pool_name: str, published: str | None, noted: str = "") -> str:
    """The domain a VM of ``pool_name`` is named under, in every answer (POST /vm's too). A VM
    a DNS plugin published (``published``: the domain it was published under) keeps that domain:
    passes move it, record and domain together, when the config changes (manager/dns_records.py).
    Any other VM is named under its pool's domain in the config in effect, as vmpooler computes it
    at each GET (a changed ``config.domain`` applies to every VM at once, not to new ones only);
    ``noted`` (its record's) when its pool is no longer configured."""
    if published is not None:
        return published
    pool = services.config.pool(pool_name)
    return (pool.domain or "") if pool is not None else noted
