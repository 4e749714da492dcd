"""The base of every struct: Nomad/Consul JSON field names, HCL names as metadata.

Python attribute names are snake_case; the JSON name (the alias) is the PascalCase of the
attribute unless a field says otherwise, so ``task_groups`` is ``TaskGroups`` in JSON. A field
may also carry the name its HCL block or attribute has in a job file when that differs from the
attribute name (``task_groups`` is written ``group`` in HCL); the job spec reader uses that.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_pascal
from pydantic.json_schema import JsonDict

M = TypeVar("M", bound=BaseModel)


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


_set = object.__setattr__


class AllFields(set[str]):
    """The fields-set of an instance that has every field set, shared by every such instance of
    one class (`built`, `copied`) instead of a set each: one object fewer for each of them to
    hold and for the cyclic collector to walk (the scheduler makes six models a placement, and
    a server keeps them all). Adding a field it holds changes nothing, as pydantic does on an
    assignment; anything else would change every instance's, so it is refused. A copy (as
    `model_copy` makes) is a set of its own."""

    def add(self, name: str) -> None:
        if name not in self:
            raise TypeError(f"the shared fields-set of a complete model has no field {name!r}")

    def update(self, *names: Any) -> None:
        for group in names:
            for name in group:
                self.add(name)

    def _shared(self, *_: Any) -> Any:
        raise TypeError("a complete model's fields-set is shared: change a copy (set(m.model_fields_set))")

    discard = remove = pop = clear = _shared
    difference_update = intersection_update = symmetric_difference_update = _shared
    __isub__ = __iand__ = __ixor__ = __ior__ = _shared

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)

    def __reduce__(self) -> Any:
        return (set, (list(self),))


_ALL_FIELDS: dict[type, AllFields] = {}


def _fields_set(cls: type[BaseModel], names: Collection[str]) -> set[str]:
    """`names` as a fields-set: the class's shared one when they are every field (no set made)."""
    full = _ALL_FIELDS.get(cls)
    if full is None:
        full = _ALL_FIELDS[cls] = AllFields(cls.model_fields)
    if len(names) == len(full) and full.issuperset(names):
        return full
    return names if type(names) is set else set(names)


def built(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of `cls` holding `values` (every field, none validated): what
    `cls.model_construct(**values)` makes, without its per-field walk. For the scheduler, which
    makes several objects per placement; `values` is kept, not copied."""
    m = cls.__new__(cls)
    _set(m, "__dict__", values)
    _set(m, "__pydantic_fields_set__", _fields_set(cls, values.keys()))
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def copied(m: M, update: dict[str, Any]) -> M:
    """A shallow copy of `m` with `update` (not validated): what `m.model_copy(update=update)`
    makes, without going through the copy module. For models without private attributes and
    without extra fields (every Struct)."""
    c = type(m).__new__(type(m))
    values = m.__dict__.copy()
    values.update(update)
    _set(c, "__dict__", values)
    fields_set = m.__pydantic_fields_set__
    if type(fields_set) is not AllFields:   # (an AllFields one is complete, and stays so: shared)
        fields_set = set(fields_set)
        fields_set.update(update)
        fields_set = _fields_set(type(m), fields_set)
    _set(c, "__pydantic_fields_set__", fields_set)
    _set(c, "__pydantic_extra__", None)
    _set(c, "__pydantic_private__", None)
    return c
