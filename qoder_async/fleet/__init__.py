"""Many workers, one follower per session: :class:`Fleet` and its coordinators.

Front ends post messages with :meth:`Fleet.send`; workers run
:meth:`Fleet.serve` and share the sessions through a coordinator
(:class:`MemoryCoordinator` in one process, :class:`RedisCoordinator` across
processes and hosts). The subpackage is layered like the rest of the client:

==================================  ==============================================================
module                              holds
==================================  ==============================================================
``qoder_async/fleet/_fleet.py``     the driver (:class:`Fleet`, :class:`Delivery`) and its rules
``_coordinators.py``                the coordinator contract, its memory and Redis implementations
                                    and the Redis keys
``_lease.py``                       the sans-I/O core: every lease, cursor and balancing rule
==================================  ==============================================================
"""

from qoder_async._core.errors import CoordinatorUnavailableError, LeaseLostError

from ._coordinators import (
    DEFAULT_LEDGER_TTL,
    WORK_WINDOW,
    Coordinator,
    MemoryCoordinator,
    RedisCoordinator,
)
from ._fleet import Delivery, Fleet, Handler
from ._lease import Claim, FleetCursor, InFlight, SessionInfo, ToolRecord, ToolState, WorkerLoad

__all__ = [
    "DEFAULT_LEDGER_TTL",
    "WORK_WINDOW",
    "Claim",
    "Coordinator",
    "CoordinatorUnavailableError",
    "Delivery",
    "Fleet",
    "FleetCursor",
    "Handler",
    "InFlight",
    "LeaseLostError",
    "MemoryCoordinator",
    "RedisCoordinator",
    "SessionInfo",
    "ToolRecord",
    "ToolState",
    "WorkerLoad",
]
