"""The VM a /vm/<host> route names (shared by the /vm routes and the VM task routes)."""

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
