"""Tasks and what belongs to them only: lifecycle, templates, artifacts (Nomad's api/tasks.go)."""

from __future__ import annotations

from typing import Any

from .base import Struct, field
from .duration import Duration
from .placement import Affinity, Constraint
from .policies import LogConfig, RestartPolicy
from .resources import Resources
from .service import Service


class TaskLifecycle(Struct):
    hook: str = ""
    sidecar: bool = False


class ChangeScript(Struct):
    command: str = ""
    args: list[str] | None = None
    timeout: Duration | None = None
    fail_on_error: bool = False


class WaitConfig(Struct):
    min: Duration | None = None
    max: Duration | None = None


class Template(Struct):
    source_path: str = field("", hcl="source")
    dest_path: str = field("", hcl="destination")
    embedded_tmpl: str = field("", hcl="data")
    change_mode: str = ""
    change_signal: str = ""
    change_script: ChangeScript | None = None
    splay: Duration | None = None
    perms: str = ""
    uid: int | None = None
    gid: int | None = None
    left_delim: str = field("", hcl="left_delimiter")
    right_delim: str = field("", hcl="right_delimiter")
    envvars: bool = field(False, hcl="env")
    once: bool = False
    wait: WaitConfig | None = None
    err_missing_key: bool = field(False, hcl="error_on_missing_key")


class TaskArtifact(Struct):
    """Nomad's `artifact` block: fetched (and unpacked) into the task directory before it starts."""
    getter_source: str = field("", hcl="source")
    getter_options: dict[str, str] | None = field(None, hcl="options")
    getter_headers: dict[str, str] | None = field(None, hcl="headers")
    getter_mode: str = field("", hcl="mode")
    relative_dest: str = field("", hcl="destination")
    chown: bool = False


class TaskIdentity(Struct):
    """A task's `identity` block. Yurt issues the default identity only: `env` puts its JWT in
    NOMAD_TOKEN, `file` in secrets/nomad_token (without the block: the file, as before)."""
    name: str = ""
    audience: list[str] | None = field(None, hcl="aud")
    env: bool = False
    file: bool = False
    filepath: str = ""
    ttl: Duration | None = field(None, json="TTL")
    change_mode: str = ""
    change_signal: str = ""
    service_name: str = ""


class DispatchPayloadConfig(Struct):
    """Nomad's `dispatch_payload`: where a dispatched job's payload is written (under local/)."""
    file: str = ""


class VolumeMount(Struct):
    """A task's `volume_mount { volume, destination, read_only }` (Nomad's VolumeMount)."""
    volume: str = ""
    destination: str = ""
    read_only: bool = False
    propagation_mode: str = ""
    selinux_label: str = field("", json="SELinuxLabel")


class Task(Struct):
    name: str = field("", hcl="label")
    driver: str = ""
    user: str = ""
    lifecycle: TaskLifecycle | None = None
    config: dict[str, Any] | None = None
    constraints: list[Constraint] | None = field(None, hcl="constraint")
    affinities: list[Affinity] | None = field(None, hcl="affinity")
    env: dict[str, str] | None = None
    services: list[Service] | None = field(None, hcl="service")
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = field(None, hcl="restart")
    meta: dict[str, str] | None = None
    kill_timeout: Duration | None = None
    log_config: LogConfig | None = field(None, hcl="logs")
    templates: list[Template] | None = field(None, hcl="template")
    artifacts: list[TaskArtifact] | None = field(None, hcl="artifact")
    leader: bool = False
    shutdown_delay: Duration = 0
    kill_signal: str = ""
    kind: str = ""
    identity: TaskIdentity | None = None
    dispatch_payload: DispatchPayloadConfig | None = None
    volume_mounts: list[VolumeMount] | None = field(None, hcl="volume_mount")

    @property
    def token_file(self) -> bool:
        """The workload identity goes to secrets/nomad_token (no identity block: yes)."""
        return self.identity is None or self.identity.file

    @property
    def token_env(self) -> bool:
        return self.identity is not None and self.identity.env

    @property
    def is_main(self) -> bool:
        """A main task: no lifecycle hook (prestart/poststart/poststop tasks are helpers)."""
        return self.lifecycle is None or not self.lifecycle.hook
