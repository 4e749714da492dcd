"""The scheduler: pure functions from (evaluation, state snapshot, seed, time) to a plan.

Feasibility (feasible.py, constraints.py) -> ranking (rank.py, stack.py) -> reconcile
(reconcile.py, reschedule.py, diff.py) -> plan (generic.py). No I/O, no clock, no asyncio.
"""

from .constraints import OPERANDS, check_operator, resolve_target, satisfies
from .fit import allocs_fit
from .generic import SchedulerResult, schedule
from .ports import port_collisions
from .state import SchedulerState

__all__ = ["OPERANDS", "SchedulerResult", "SchedulerState", "allocs_fit",
           "check_operator", "port_collisions", "resolve_target", "satisfies", "schedule"]
