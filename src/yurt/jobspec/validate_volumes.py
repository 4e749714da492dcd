"""Group `volume` and task `volume_mount` blocks (Nomad's VolumeRequest and VolumeMount).

Yurt runs host volumes (a directory a client declares in `client { host_volume "name" { path } }`);
CSI volumes need plugins Yurt does not have, so they are refused.
"""

from __future__ import annotations

import posixpath

from yurt.structs import Task, TaskGroup

from .errors import Path
from .validate_common import Report


def validate_group_volumes(r: Report, g: TaskGroup, base: Path) -> None:
    for name, v in (g.volumes or {}).items():
        path = base + ("Volumes", name)
        if v.type == "csi":
            r.error(path + ("Type",), f'volume "{name}": csi volumes are not supported by Yurt (it runs no CSI '
                                      'plugins); use type = "host" with a client host_volume')
        elif v.type != "host":
            r.error(path + ("Type",), f'volume "{name}": type "{v.type}" is not known: use type = "host"')
        if not v.source:
            r.error(path + ("Source",), f'volume "{name}" has no source: set source = "<the client\'s '
                                        'host_volume name>"')
        if v.per_alloc:
            r.error(path + ("PerAlloc",), f'volume "{name}": per_alloc only applies to csi volumes: remove it')
        if v.mount_options is not None and (v.mount_options.fs_type or v.mount_options.mount_flags):
            r.warn(path + ("MountOptions",), f'volume "{name}": mount_options has no effect yet in Yurt: they '
                                             'apply to csi volumes; a host volume is bind-mounted')
        for attr, field in (("access_mode", "AccessMode"), ("attachment_mode", "AttachmentMode"),
                            ("sticky", "Sticky")):
            if getattr(v, attr):
                r.warn(path + (field,), f'volume "{name}": {attr} has no effect yet in Yurt: it applies to csi '
                                        'and dynamic host volumes; a host volume is mounted as read_only says')


def validate_volume_mounts(r: Report, g: TaskGroup, t: Task, base: Path) -> None:
    seen: set[str] = set()
    for i, m in enumerate(t.volume_mounts or []):
        path = base + ("VolumeMounts", i)
        volumes = g.volumes or {}
        if not m.volume:
            r.error(path + ("Volume",), 'volume_mount has no volume: set volume = "<a group volume\'s name>"')
        elif m.volume not in volumes:
            known = ", ".join(f'"{n}"' for n in sorted(volumes)) or "none"
            r.error(path + ("Volume",), f'volume_mount names volume "{m.volume}", which the group does not '
                                        f'declare (group volumes: {known}); add volume "{m.volume}" {{ type = '
                                        '"host", source = "..." } to the group')
        if not m.destination:
            r.error(path + ("Destination",), "volume_mount has no destination: set destination to the path "
                                             "the task sees it at")
        elif ".." in posixpath.normpath(m.destination).split("/"):
            r.error(path + ("Destination",), f'volume_mount destination "{m.destination}" contains "..": '
                                             'use a plain path')
        elif posixpath.normpath(m.destination) in seen:
            r.error(path + ("Destination",), f'two volume_mounts have destination "{m.destination}"; keep one')
        else:
            seen.add(posixpath.normpath(m.destination))
        if m.propagation_mode not in ("", "private"):
            r.warn(path + ("PropagationMode",), f'propagation_mode "{m.propagation_mode}" has no effect yet in '
                                                'Yurt: mounts are private')
        if m.selinux_label:
            r.warn(path + ("SELinuxLabel",), "selinux_label has no effect yet in Yurt: the volume is mounted "
                                             "without relabelling")
