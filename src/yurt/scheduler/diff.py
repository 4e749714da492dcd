"""Whether a group changed in a way that needs new allocations (Nomad's tasksUpdated).

Destructive: tasks added/removed/renamed, driver, user, config, env, resources, templates,
lifecycle, log disabling, kind, task services with connect; group networks and ports,
ephemeral disk, group services that use connect. Everything else (count, non-connect services
and checks, restart/update/reschedule policies, meta, constraints...) can be updated in place.
"""

from __future__ import annotations

from typing import Any

from yurt.structs import Service, Task, TaskGroup


def _dump(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def _connect_services(services: list[Service] | None) -> list[Any]:
    return [(s.name, s.port_label, _dump(s.connect)) for s in services or [] if s.connect is not None]


def _task_key(t: Task) -> tuple:
    return (t.driver, t.user, t.config or None, t.env or None, _dump(t.resources),
            _dump(t.templates), _dump(t.lifecycle),
            bool(t.log_config and t.log_config.disabled), t.kind, t.leader,
            _connect_services(t.services))


def tasks_updated(old: TaskGroup, new: TaskGroup) -> bool:
    if _dump(old.networks) != _dump(new.networks):
        return True
    if _dump(old.ephemeral_disk) != _dump(new.ephemeral_disk):
        return True
    if _connect_services(old.services) != _connect_services(new.services):
        return True
    old_tasks = {t.name: t for t in old.tasks or []}
    new_tasks = {t.name: t for t in new.tasks or []}
    if old_tasks.keys() != new_tasks.keys():
        return True
    return any(_task_key(old_tasks[n]) != _task_key(new_tasks[n]) for n in new_tasks)
