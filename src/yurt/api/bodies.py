"""The request bodies of the write routes, as Nomad's and Consul's clients send them, for the
OpenAPI description (`openapi.body`). The routes still read and check their bodies themselves
(`common.json_body` and the servers' own checks, with Yurt's error messages); these models only
describe them. Where a body is one of the structs (an ACL policy, an intention) the struct is
used as it is; here are the wrappers around them (`{"Job": ...}`) and the bodies with no struct.

A wrapper takes unknown keys (Nomad's and Consul's clients send more than Yurt reads, and the
routes ignore what they do not use), so its schema allows additional properties."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict

from yurt.structs import Job, Node
from yurt.structs.base import Struct, field


class Request(Struct):
    """A request body: Nomad's JSON names, unknown keys accepted."""

    model_config = ConfigDict(extra="allow")


# -- jobs ---------------------------------------------------------------------------------------

class JobRegisterRequest(Request):
    """PUT /v1/jobs, /v1/job/<id>: the job, and `-check-index` as EnforceIndex + JobModifyIndex."""

    job: Job
    enforce_index: bool = False
    job_modify_index: int = 0
    policy_override: bool = False
    preserve_counts: bool = False
    eval_priority: int = 0
    namespace: str = ""
    region: str = ""


class JobPlanRequest(Request):
    job: Job
    diff: bool = True
    policy_override: bool = False


class JobValidateRequest(Request):
    job: Job


class JobsParseRequest(Request):
    """The job file's text; Variables as a map or as `key=value` lines."""

    job_hcl: str = field(..., json="JobHCL")
    canonicalize: bool = False
    variables: dict[str, str] | str | None = None


class JobRevertRequest(Request):
    job_id: str = field("", json="JobID")
    job_version: int
    enforce_prior_version: int | None = None


class JobStabilityRequest(Request):
    job_id: str = field("", json="JobID")
    job_version: int
    stable: bool


class ScaleTarget(Request):
    group: str
    job: str = ""
    namespace: str = ""


class JobScaleRequest(Request):
    job_id: str = field("", json="JobID")
    target: ScaleTarget
    count: int | None = None
    message: str = ""
    error: bool = False
    meta: dict[str, Any] | None = None
    policy_override: bool = False


class JobDispatchRequest(Request):
    """PUT /v1/job/<id>/dispatch: the payload (base64), meta, and an idempotency token."""
    job_id: str = field("", json="JobID")
    payload: str | None = None
    meta: dict[str, str] | None = None
    idempotency_token: str = ""
    id_prefix_template: str = field("", json="IdPrefixTemplate")


class EvalOptions(Request):
    force_reschedule: bool = False


class JobEvaluateRequest(Request):
    """`EvalOptions.ForceReschedule`: the job's failed allocations are rescheduled now, even past
    their reschedule policy (`yurt job eval -force-reschedule`)."""

    job_id: str = field("", json="JobID")
    eval_options: EvalOptions | None = None


# -- deployments --------------------------------------------------------------------------------

class DeploymentPromoteRequest(Request):
    deployment_id: str = field("", json="DeploymentID")
    all: bool = False
    groups: list[str] | None = None


class DeploymentFailRequest(Request):
    deployment_id: str = field("", json="DeploymentID")


class DeploymentPauseRequest(Request):
    deployment_id: str = field("", json="DeploymentID")
    pause: bool


class DeploymentAllocHealthRequest(Request):
    deployment_id: str = field("", json="DeploymentID")
    healthy_allocation_ids: list[str] = field(factory=list, json="HealthyAllocationIDs")
    unhealthy_allocation_ids: list[str] = field(factory=list, json="UnhealthyAllocationIDs")


# -- allocations and nodes ----------------------------------------------------------------------

class AllocSignalRequest(Request):
    signal: str = ""
    task: str = ""


class AllocRestartRequest(Request):
    task_name: str = ""
    all_tasks: bool = True


class NodeDrainSpec(Struct):
    deadline: int = 0
    ignore_system_jobs: bool = False


class NodeDrainRequest(Struct):
    """Exactly these keys (the route answers 400 naming any other)."""

    node_id: str = field("", json="NodeID")
    drain_spec: NodeDrainSpec | None = None
    mark_eligible: bool = False
    meta: dict[str, str] | None = None


class NodeEligibilityRequest(Struct):
    node_id: str = field("", json="NodeID")
    eligibility: Literal["eligible", "ineligible"]


class SearchRequest(Request):
    prefix: str
    context: str = "all"


class FuzzySearchRequest(Request):
    text: str
    context: str = "all"


# -- ACLs ---------------------------------------------------------------------------------------

class ACLBootstrapRequest(Request):
    bootstrap_secret: str = ""


class ACLTokenRequest(Request):
    """A token to create or update (the server makes the accessor and secret)."""

    accessor_id: str = field("", json="AccessorID")
    name: str = ""
    type: Literal["client", "management"] = "client"
    policies: list[str] = field(factory=list)
    global_: bool = field(False, json="Global")
    expiration_ttl: str = field("", json="ExpirationTTL")


class ACLCheckRequest(Request):
    method: str = ""
    path: str = ""
    name: str = ""


# -- the client agents' side door ---------------------------------------------------------------

class NodeRegisterRequest(Request):
    node: Node


class AllocUpdate(Request):
    id: str = field(..., json="ID")
    client_status: str = ""
    client_description: str = ""
    task_states: dict[str, Any] | None = None
    network_status: dict[str, Any] | None = None


class NodeAllocUpdateRequest(Request):
    allocs: list[AllocUpdate]


class MeshProbeRequest(Request):
    probes: list[dict[str, Any]]


# -- Consul -------------------------------------------------------------------------------------

class CheckDefinition(Request):
    """A check as Consul's agent takes it (/v1/agent/check/register, a service's Check/Checks)."""

    check_id: str = field("", json="CheckID")
    id: str = field("", json="ID")
    name: str = ""
    status: str = ""
    notes: str = ""
    output: str = ""
    service_id: str = field("", json="ServiceID")
    http: str = field("", json="HTTP")
    method: str = ""
    header: dict[str, list[str]] | None = None
    body: str = ""
    tcp: str = field("", json="TCP")
    grpc: str = field("", json="GRPC")
    ttl: str = field("", json="TTL")
    interval: str = ""
    timeout: str = ""
    alias_service: str = ""
    deregister_critical_service_after: str = ""
    tls_skip_verify: bool = field(False, json="TLSSkipVerify")


class AgentServiceRegistration(Request):
    """PUT /v1/agent/service/register."""

    id: str = field("", json="ID")
    name: str
    kind: str = ""
    tags: list[str] | None = None
    address: str = ""
    port: int = 0
    meta: dict[str, str] | None = None
    tagged_addresses: dict[str, Any] | None = None
    enable_tag_override: bool = False
    weights: dict[str, int] | None = None
    proxy: dict[str, Any] | None = None
    connect: dict[str, Any] | None = None
    check: CheckDefinition | None = None
    checks: list[CheckDefinition] | None = None
    namespace: str = ""


class CheckUpdateRequest(Request):
    """PUT /v1/agent/check/update/<id>; pass, warn and fail take no body (?note=)."""

    status: Literal["passing", "warning", "critical"]
    output: str = ""


class CatalogRegistration(Request):
    """PUT /v1/catalog/register: a service on a node no agent runs."""

    node: str
    address: str = ""
    datacenter: str = ""
    id: str = field("", json="ID")
    tagged_addresses: dict[str, str] | None = None
    node_meta: dict[str, str] | None = None
    service: AgentServiceRegistration | dict[str, Any] | None = None
    check: CheckDefinition | None = None
    checks: list[CheckDefinition] | None = None
    skip_node_update: bool = False


class CatalogDeregistration(Request):
    node: str
    datacenter: str = ""
    service_id: str = field("", json="ServiceID")
    check_id: str = field("", json="CheckID")


class CAConfigRequest(Request):
    """PUT /v1/connect/ca/configuration: Config's PrivateKey (PEM) or ForceRotation rotates the root."""

    provider: str = "consul"
    config: dict[str, Any] | None = None


class CASignRequest(Request):
    csr: str = field(..., json="CSR")
    service: str = ""


class ConnectAuthorizeRequest(Request):
    target: str
    client_cert_uri: str = field(..., json="ClientCertURI")
    client_cert_serial: str = ""
