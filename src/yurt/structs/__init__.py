"""The data model, with Nomad's and Consul's JSON field names. Imports nothing else of yurt."""

from .base import Struct, built, copied, field, hcl_name, json_name
from .duration import Duration, format_duration, parse_duration
from .job import JOB_TYPES, Job, TaskGroup, VolumeRequest
from .network import CNIConfig, DNSConfig, NetworkResource, Port
from .placement import Affinity, Constraint, Spread, SpreadTarget
from .policies import (DisconnectStrategy, EphemeralDisk, LogConfig, MigrateStrategy, ReschedulePolicy,
                       RestartPolicy, ScalingPolicy, UpdateStrategy)
from .resources import Resources
from .service import (CheckRestart, ConsulConnect, ConsulExposeConfig, ConsulExposePath,
                      ConsulProxy, ConsulSidecarService, ConsulTransparentProxy, ConsulUpstream,
                      MeshGateway, Service, ServiceCheck, ServiceWeights, SidecarTask)
from .task import ChangeScript, Task, TaskArtifact, TaskLifecycle, Template, VolumeMount, WaitConfig
from .node import (ClientHostVolumeConfig, DrainMetadata, DrainSpec, DrainStrategy, DriverInfo, Node, NodeCpuResources,
                   NodeDiskResources, NodeEvent, NodeMemoryResources, NodeNetworkAddress, NodeNetworkResource,
                   NodeReservedResources, NodeResources)
from .alloc import (AllocDeploymentStatus, AllocatedCpuResources, AllocMetric, AllocatedMemoryResources,
                    AllocatedPortMapping,
                    AllocatedResources, AllocatedSharedResources, AllocatedTaskResources, Allocation,
                    AllocNetworkStatus, DesiredTransition, RescheduleEvent, RescheduleTracker,
                    TaskEvent, TaskState)
from .evaluation import (DesiredUpdates, Evaluation, JobSummary, Plan, PlanAnnotations,
                         PlanResult, TaskGroupSummary)
from .catalog import (CHECK_CRITICAL, CHECK_PASSING, CHECK_WARNING, CatalogNode, ConnectProxyConfig, HealthCheck,
                      ServiceRegistration, UpstreamConfig, VirtualIP)
from .connect import (CAConfig, CARoot, CAState, Intention, IssuedCert, SpiffeService,
                      parse_service_uri, service_uri)
from .deployment import Deployment, DeploymentState, merged_update
from .usage import NodeUsed
from . import deployment as deployment_status
from .kv import ConfigEntry, KVEntry, Namespace, Session, StoredVariable
from .acl import TOKEN_CLIENT, TOKEN_MANAGEMENT, ACLPolicy, ACLToken, secret_hash
from . import alloc as alloc_status, evaluation as eval_status, node as node_status

__all__ = [
    "built", "copied", "ACLPolicy", "ACLToken", "TOKEN_CLIENT", "TOKEN_MANAGEMENT", "secret_hash",
    "ConfigEntry", "KVEntry", "Namespace", "Session", "StoredVariable",
    "Affinity", "CNIConfig", "ChangeScript", "CheckRestart", "Constraint", "ConsulConnect",
    "ConsulExposeConfig", "ConsulExposePath", "ConsulProxy", "ConsulSidecarService",
    "ConsulTransparentProxy", "ConsulUpstream", "DNSConfig", "Duration", "EphemeralDisk",
    "DisconnectStrategy", "JOB_TYPES", "Job", "LogConfig", "MeshGateway", "MigrateStrategy", "NetworkResource", "Port",
    "ReschedulePolicy", "Resources", "ScalingPolicy", "RestartPolicy", "Service", "ServiceCheck", "ServiceWeights",
    "SidecarTask", "Spread", "SpreadTarget", "Struct", "Task", "TaskGroup", "TaskLifecycle",
    "TaskArtifact", "Template", "UpdateStrategy", "WaitConfig", "field", "format_duration", "hcl_name",
    "json_name", "parse_duration", "VolumeMount", "VolumeRequest", "ClientHostVolumeConfig",
    "DrainMetadata", "DrainSpec", "DrainStrategy", "NodeEvent", "AllocDeploymentStatus",
    "DriverInfo", "Node", "NodeCpuResources", "NodeDiskResources", "NodeMemoryResources",
    "NodeNetworkAddress", "NodeNetworkResource",
    "NodeReservedResources", "NodeResources", "AllocatedCpuResources", "AllocatedMemoryResources",
    "AllocatedPortMapping", "AllocatedResources", "AllocatedSharedResources", "AllocatedTaskResources",
    "Allocation", "AllocNetworkStatus", "DesiredTransition", "RescheduleEvent", "RescheduleTracker",
    "TaskEvent", "TaskState", "AllocMetric", "DesiredUpdates", "Evaluation", "JobSummary", "Plan",
    "PlanAnnotations", "PlanResult", "TaskGroupSummary", "alloc_status", "eval_status", "node_status",
    "CHECK_CRITICAL", "CHECK_PASSING", "CHECK_WARNING", "CatalogNode", "ConnectProxyConfig", "HealthCheck",
    "VirtualIP",
    "ServiceRegistration", "UpstreamConfig", "CAConfig", "CARoot", "CAState", "Intention",
    "IssuedCert", "SpiffeService", "parse_service_uri", "service_uri",
    "Deployment", "DeploymentState", "deployment_status", "merged_update", "NodeUsed",
]
