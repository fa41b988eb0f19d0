"""The dummy provider's settings (chalicelib/providers/dummy.py): simulated times and failure
rates, vmpooler's dummy keys plus ``createvm_min_time`` and ``createvm_cancel_time``. Set on the
provider, overridden per pool.
Unset times and rates mean 0 (instant, never fails)."""

from dataclasses import dataclass
from typing import Annotated, Optional

from chalicelib.config_fields import Ignored, Int, Number0, one_of
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.settings import ProviderSettings


@dataclass(frozen=True, kw_only=True)
class DummySettings(ProviderSettings):
    createvm_max_time: Optional[Number0] = None
    createvm_min_time: Optional[Number0] = None
    """Ours: every clone takes at least this long."""
    createvm_cancel_time: Optional[Number0] = None
    """Ours: how long a clone asked to cancel (``cancel_task``) runs on before its task ends."""
    createvm_fail_percent: Optional[Number0] = None
    createvm_fail_kind: Optional[Annotated[str, one_of(*(kind.value for kind in FailureKind))]] = None
    destroyvm_max_time: Optional[Number0] = None
    destroyvm_fail_percent: Optional[Number0] = None
    vmready_fail_percent: Optional[Number0] = None
    getvm_poweroff_percent: Optional[Number0] = None
    getvm_rename_percent: Optional[Number0] = None
    createdisk_max_time: Optional[Number0] = None
    createdisk_fail_percent: Optional[Number0] = None
    createsnapshot_max_time: Optional[Number0] = None
    createsnapshot_fail_percent: Optional[Number0] = None
    revertsnapshot_max_time: Optional[Number0] = None
    revertsnapshot_fail_percent: Optional[Number0] = None
    migratevm_couldmove_percent: Optional[Number0] = None
    migratevm_max_time: Optional[Number0] = None
    migratevm_fail_percent: Optional[Number0] = None
    boot_time: Optional[Number0] = None
    seed: Optional[Int] = None
    filename: Ignored = None
    destroyvm_max_shutdown_time: Ignored = None  # destroyvm_max_time covers the whole destroy
