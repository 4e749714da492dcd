"""Request bodies in the OpenAPI description. The routes read their JSON themselves
(`common.json_body`, so that a bad body gets Yurt's error, naming the place); each write route
still declares what it takes: `@router.put(path, openapi_extra=body(Model))`. The models'
shared definitions go to `components/schemas` (`install`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

REF = "#/components/schemas/{model}"
_DEFS: dict[str, Any] = {}
_CLASHES: list[str] = []


def body(model: type[BaseModel] | dict[str, Any], *, required: bool = True,
         description: str = "") -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model` (a pydantic model, by its JSON
    names; or a JSON schema as a dict, for a body with no model)."""
    if isinstance(model, dict):
        schema = model
    else:
        schema = model.model_json_schema(by_alias=True, ref_template=REF, mode="validation")
        for name, definition in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            _define(name, definition)
        schema = {"$ref": REF.format(model=model.__name__)}
    rb: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": schema}}}
    if description:
        rb["description"] = description
    return {"requestBody": rb}


def _define(name: str, definition: dict[str, Any]) -> None:
    """One shared definition per name: two different models of one name would make every
    reference to it ambiguous. The first is kept and the clash noted (`clashes`, which
    tests/test_openapi.py checks is empty): a description's mistake must not stop the agent."""
    known = _DEFS.setdefault(name, definition)
    if known != definition and name not in _CLASHES:
        _CLASHES.append(name)


def clashes() -> list[str]:
    """Names given to two different models in request bodies (rename one of each)."""
    return list(_CLASHES)


def install(app: FastAPI) -> None:
    """Add the models the routes named to the document FastAPI builds."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(
                {k: v for k, v in _DEFS.items() if k not in doc["components"]["schemas"]})
            app.openapi_schema = doc
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]
