"""A job diff in Nomad's shape (`nomad job plan`): fields, objects, task groups and tasks.

Values are compared on the canonical JSON; nested objects become "Objects", lists of named
things (groups, tasks) are matched by name, other lists compare whole.
"""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from typing import Any

SERVER_FIELDS = {"Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex",
                 "ModifyIndex", "JobModifyIndex", "Stop"}


def _kind(old: Any, new: Any) -> str:
    if old is None and new is not None:
        return "Added"
    if old is not None and new is None:
        return "Deleted"
    return "Edited" if old != new else "None"


def _scalar(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _dict_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and isinstance(v[0], dict)


def object_diff(name: str, old: dict | None, new: dict | None, skip: AbstractSet[str] = frozenset()) -> dict:
    fields, objects = [], []
    keys = sorted(set(old or {}) | set(new or {}))
    for key in keys:
        if key in skip:
            continue
        o = (old or {}).get(key)
        n = (new or {}).get(key)
        if isinstance(o, dict) or isinstance(n, dict):
            sub = object_diff(key, o if isinstance(o, dict) else None, n if isinstance(n, dict) else None)
            if sub["Type"] != "None":
                objects.append(sub)
        elif _dict_list(o) or _dict_list(n):
            for i in range(max(len(o or []), len(n or []))):
                oi = (o or [])[i] if i < len(o or []) else None
                ni = (n or [])[i] if i < len(n or []) else None
                sub = object_diff(key, oi, ni)
                if sub["Type"] != "None":
                    objects.append(sub)
        elif o != n:
            if old is None or (o is None and n is not None):
                change = "Added"
            elif new is None or (n is None and o is not None):
                change = "Deleted"
            else:
                change = "Edited"
            fields.append({"Type": change, "Name": key, "Old": _scalar(o), "New": _scalar(n), "Annotations": None})
    kind = _kind(old, new)
    if kind == "Edited" and not fields and not objects:
        kind = "None"
    return {"Type": kind, "Name": name, "Fields": fields, "Objects": objects}


def _named(items: list[dict] | None) -> dict[str, dict]:
    return {i.get("Name", ""): i for i in items or []}


def job_diff(old: dict | None, new: dict) -> dict:
    """Nomad's JobDiff for `old` (None when the job is new) -> `new`."""
    top = object_diff("Job", old, new, skip=SERVER_FIELDS | {"TaskGroups"})
    groups = []
    og, ng = _named((old or {}).get("TaskGroups")), _named(new.get("TaskGroups"))
    for name in sorted(set(og) | set(ng)):
        gd = object_diff(name, og.get(name), ng.get(name), skip={"Tasks", "Name"})
        tasks = []
        ot, nt = _named((og.get(name) or {}).get("Tasks")), _named((ng.get(name) or {}).get("Tasks"))
        for tname in sorted(set(ot) | set(nt)):
            td = object_diff(tname, ot.get(tname), nt.get(tname), skip={"Name"})
            td["Annotations"] = None
            tasks.append(td)
        kind = gd["Type"]
        if kind == "None" and any(t["Type"] != "None" for t in tasks):
            kind = "Edited"
        groups.append({"Type": kind, "Name": name, "Fields": gd["Fields"], "Objects": gd["Objects"],
                       "Tasks": tasks, "Updates": None})
    kind = top["Type"]
    if kind == "None" and any(g["Type"] != "None" for g in groups):
        kind = "Edited"
    return {"Type": kind, "ID": new.get("ID"), "Fields": top["Fields"], "Objects": top["Objects"],
            "TaskGroups": groups}
