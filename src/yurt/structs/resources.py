"""Task resources (Nomad's api/resources.go Resources)."""

from __future__ import annotations

from .base import Struct, field


class Resources(Struct):
    cpu: int | None = field(None, json="CPU")
    cores: int | None = None
    memory_mb: int | None = field(None, json="MemoryMB", hcl="memory")
    memory_max_mb: int | None = field(None, json="MemoryMaxMB", hcl="memory_max")
    disk_mb: int | None = field(None, json="DiskMB", hcl="disk")
    secrets_mb: int | None = field(None, json="SecretsMB", hcl="secrets")
