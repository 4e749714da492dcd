"""The agent's ``client { template { ... } }`` settings (Nomad's), as the template hook uses them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TemplateRetry:
    """``nomad_retry``/``consul_retry { attempts backoff max_backoff }``: how the template hook
    retries an agent it cannot read (attempts 0: without end). Nomad's defaults: 12, 250ms, 1m."""

    attempts: int = 12
    backoff: float = 0.25
    max_backoff: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before the retry after ``failures`` failures in a row (doubling, capped)."""
        return min(self.backoff * 2.0 ** max(failures - 1, 0), self.max_backoff)


@dataclass(frozen=True)
class TemplateSettings:
    """``function_denylist`` (functions a template may not call), ``disable_file_sandbox``
    (``file``/``writeToFile`` outside the task directory), ``block_query_wait`` (seconds a
    blocking query waits), ``wait`` (the default ``wait { min max }`` of templates without one),
    ``wait_bounds`` (the range a template's own ``wait`` is clamped to) and the retry."""

    function_denylist: tuple[str, ...] = ("plugin", "writeToFile")
    disable_file_sandbox: bool = False
    block_query_wait: float = 60.0
    wait_min: float = 5.0
    wait_max: float = 240.0
    bounds_min: float | None = None
    bounds_max: float | None = None
    retry: TemplateRetry = field(default_factory=TemplateRetry)
