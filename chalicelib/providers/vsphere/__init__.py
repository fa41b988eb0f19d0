"""vSphere provider (pyVmomi). Only this package imports pyVmomi; importing it loads pyVmomi, so
the registry imports it lazily and the API Lambdas never pay for it."""

from chalicelib.providers.vsphere.provider import VSphereProvider

__all__ = ["VSphereProvider"]
