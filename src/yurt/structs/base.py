"""The base of every struct: Nomad/Consul JSON field names, HCL names as metadata.

Python attribute names are snake_case; the JSON name (the alias) is the PascalCase of the
attribute unless a field says otherwise, so ``task_groups`` is ``TaskGroups`` in JSON. A field
may also carry the name its HCL block or attribute has in a job file when that differs from the
attribute name (``task_groups`` is written ``group`` in HCL); the job spec reader uses that.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_pascal
from pydantic.json_schema import JsonDict


class Struct(BaseModel):
    """A model whose JSON form uses Nomad's field names."""

    model_config = ConfigDict(
        alias_generator=to_pascal,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        arbitrary_types_allowed=False,
    )

    def to_json(self) -> dict[str, Any]:
        """The Nomad-shaped JSON object (all fields, by their JSON names)."""
        return self.model_dump(by_alias=True, mode="json")


def field(default: Any = None, *, json: str | None = None, hcl: str | None = None,
          factory: Any = None, **kw: Any) -> Any:
    """A struct field: ``json`` overrides the JSON name, ``hcl`` names it in job files."""
    extra: JsonDict | None = {"hcl": hcl} if hcl else None
    if factory is not None:
        return Field(default_factory=factory, alias=json, json_schema_extra=extra, **kw)
    return Field(default=default, alias=json, json_schema_extra=extra, **kw)


def hcl_name(model: type[BaseModel], attr: str) -> str:
    """The name a field has in a job file."""
    info = model.model_fields[attr]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and extra.get("hcl"):
        return str(extra["hcl"])
    return attr


def json_name(model: type[BaseModel], attr: str) -> str:
    info = model.model_fields[attr]
    return info.alias or to_pascal(attr)
