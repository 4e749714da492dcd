"""Validation rules, one mutation of a valid job per case (yurt.jobspec.validate)."""

from __future__ import annotations

import pytest

from yurt.jobspec.errors import Position
from yurt.jobspec.locate import Locator
from yurt.jobspec.validate import validate
from yurt.structs import (Affinity, ChangeScript, CheckRestart, CNIConfig, Constraint,
                          ConsulConnect, ConsulExposeConfig, ConsulExposePath, ConsulProxy,
                          ConsulSidecarService, ConsulTransparentProxy, ConsulUpstream, DNSConfig,
                          EphemeralDisk, Job, LogConfig, MeshGateway, MigrateStrategy,
                          NetworkResource, Port, ReschedulePolicy, Resources, RestartPolicy,
                          Service, ServiceCheck, ServiceWeights, SidecarTask, Spread,
                          SpreadTarget, Task, TaskGroup, TaskLifecycle, Template, UpdateStrategy,
                          WaitConfig)

S, M, H = 1_000_000_000, 60_000_000_000, 3_600_000_000_000


# --- a valid job, shaped like seed/connect.nomad after defaults -------------------------------

def update() -> UpdateStrategy:
    return UpdateStrategy(stagger=30 * S, max_parallel=1, health_check="checks",
                          min_healthy_time=10 * S, healthy_deadline=5 * M,
                          progress_deadline=10 * M, canary=0, auto_revert=False, auto_promote=False)


def group_defaults() -> dict:
    return dict(
        count=1,
        restart_policy=RestartPolicy(attempts=2, interval=30 * M, delay=15 * S, mode="fail",
                                     render_templates=False),
        reschedule_policy=ReschedulePolicy(attempts=0, interval=0, delay=30 * S,
                                           delay_function="exponential", max_delay=H,
                                           unlimited=True),
        update=update(),
        migrate=MigrateStrategy(max_parallel=1, health_check="checks", min_healthy_time=10 * S,
                                healthy_deadline=5 * M),
        ephemeral_disk=EphemeralDisk(sticky=False, migrate=False, size_mb=300),
    )


def task(name: str, **kw) -> Task:
    base = dict(name=name, driver="docker", config={"image": "x"},
                resources=Resources(cpu=100, memory_mb=300),
                restart_policy=RestartPolicy(attempts=2, interval=30 * M, delay=15 * S,
                                             mode="fail", render_templates=False),
                kill_timeout=5 * S, log_config=LogConfig(max_files=10, max_file_size_mb=10,
                                                         disabled=False))
    base.update(kw)
    return Task(**base)


def countdash() -> Job:
    api = TaskGroup(
        name="api",
        networks=[NetworkResource(mode="bridge")],
        services=[Service(name="count-api", port_label="9001",
                          connect=ConsulConnect(sidecar_service=ConsulSidecarService()))],
        tasks=[task("web")],
        **group_defaults())
    dashboard = TaskGroup(
        name="dashboard",
        networks=[NetworkResource(mode="bridge", reserved_ports=[Port(label="http", value=9002, to=9002)])],
        services=[Service(name="count-dashboard", port_label="9002", connect=ConsulConnect(
            sidecar_service=ConsulSidecarService(proxy=ConsulProxy(upstreams=[
                ConsulUpstream(destination_name="count-api", local_bind_port=8080)]))))],
        tasks=[task("dashboard", env={"COUNTING_SERVICE_URL": "http://${NOMAD_UPSTREAM_ADDR_count_api}"})],
        **group_defaults())
    return Job(id="countdash", name="countdash", region="global", namespace="default",
               type="service", priority=50, datacenters=["dc1"], update=update(),
               reschedule=None, task_groups=[api, dashboard])


def kitchen_sink() -> Job:
    """Many optional features, all used correctly."""
    job = countdash()
    api = job.task_groups[0]
    api.networks[0].dynamic_ports = [Port(label="connect-proxy-count-api", to=-1),
                                     Port(label="metrics", to=9100)]
    api.networks[0].hostname = "${NOMAD_ALLOC_ID}"
    api.services[0].checks = [
        ServiceCheck(name="alive", type="http", path="/health", interval=10 * S, timeout=2 * S,
                     expose=True, on_update="ignore_warnings"),
        ServiceCheck(name="grpc", type="grpc", port_label="metrics", interval=10 * S,
                     timeout=2 * S, check_restart=CheckRestart(limit=3, grace=10 * S)),
    ]
    api.services.append(Service(name="${NOMAD_JOB_NAME}-metrics", port_label="metrics",
                                tags=["prom"], weights=ServiceWeights(passing=2, warning=1)))
    api.tasks.append(task("connect-proxy-count-api", kind="connect-proxy:count-api",
                          lifecycle=TaskLifecycle(hook="prestart", sidecar=True),
                          resources=Resources(cpu=50, memory_mb=64),
                          log_config=LogConfig(max_files=2, max_file_size_mb=2)))
    api.tasks.append(task("init", lifecycle=TaskLifecycle(hook="prestart"), driver="raw_exec",
                          config={"command": "/bin/true"}))
    api.tasks[0].templates = [
        Template(embedded_tmpl="x={{ key \"x\" }}", dest_path="local/x.env", envvars=True),
        Template(source_path="tpl/a.tpl", dest_path="../alloc/shared.conf", change_mode="signal",
                 change_signal="SIGHUP", perms="0600", wait=WaitConfig(min=5 * S, max=S * 10)),
    ]
    api.tasks[-1].templates = [   # a change_script runs on the node: only a raw_exec task (without user) has one
        Template(embedded_tmpl="y", dest_path="local/y", change_mode="script",
                 change_script=ChangeScript(command="/bin/reload")),
    ]
    api.tasks[0].resources = Resources(cores=2, memory_mb=256, memory_max_mb=512, secrets_mb=10)
    api.tasks[0].constraints = [Constraint(l_target="${attr.kernel.name}", r_target="linux", operand="=")]
    api.constraints = [
        Constraint(operand="distinct_hosts", r_target="true"),
        Constraint(l_target="${meta.rack}", operand="distinct_property", r_target="2"),
        Constraint(l_target="${attr.consul.version}", operand="semver", r_target=">= 1.8.0, < 2.0.0"),
        Constraint(l_target="${attr.nomad.version}", operand="version", r_target="~> 1.7"),
        Constraint(l_target="${node.unique.name}", operand="regexp", r_target="^web-[0-9]+$"),
        Constraint(l_target="${attr.docker.version}", operand="is_set"),
        Constraint(l_target="${meta.tags}", operand="set_contains", r_target="a,b"),
    ]
    api.affinities = [Affinity(l_target="${node.datacenter}", r_target="dc1", operand="=", weight=-50)]
    api.spreads = [Spread(attribute="${node.datacenter}", weight=100, spread_target=[
        SpreadTarget(value="dc1", percent=60), SpreadTarget(value="dc2", percent=40)])]
    api.meta = {"owner": "team"}
    dash = job.task_groups[1]
    dash.services[0].connect.sidecar_service.proxy.upstreams.append(
        ConsulUpstream(destination_name="cache", local_bind_port=6379,
                       mesh_gateway=MeshGateway(mode="local")))
    dash.services[0].connect.sidecar_service.proxy.expose = ConsulExposeConfig(paths=[
        ConsulExposePath(path="/metrics", protocol="http", local_path_port=9002, listener_port="http")])
    dash.services[0].connect.sidecar_task = SidecarTask(resources=Resources(cpu=50, memory_mb=64),
                                                        kill_timeout=5 * S)
    dash.networks[0].cni = CNIConfig(args={"IgnoreUnknown": "true"})
    job.task_groups.append(TaskGroup(
        name="native", networks=[NetworkResource(mode="host", reserved_ports=[
            Port(label="api", value=8443), Port(label="api2", value=8443, ignore_collision=True)])],
        services=[Service(name="native-api", port_label="api", connect=ConsulConnect(native=True))],
        tasks=[task("app")], **group_defaults()))
    return job


# --- helpers ---------------------------------------------------------------------------------

class RecordingLocator(Locator):
    """A locator that remembers the exact path each problem was reported at."""

    def __init__(self, job: Job, positions=None) -> None:
        super().__init__("job.nomad", positions or {}, job.to_json())
        self.paths: list[tuple] = []

    def problem(self, path, message, severity="error"):
        self.paths.append(tuple(path))
        return super().problem(path, message, severity)


def run(job: Job, positions=None):
    loc = RecordingLocator(job, positions)
    problems = validate(job, loc)
    return list(zip(loc.paths, problems, strict=True))


def errors(job: Job):
    return [(path, p) for path, p in run(job) if p.severity == "error"]


def show(found) -> str:
    return "\n".join(f"{path}: {p}" for path, p in found)


def s(obj, **kw) -> None:
    for k, v in kw.items():
        setattr(obj, k, v)


def g0(j: Job) -> TaskGroup:
    return j.task_groups[0]


def g1(j: Job) -> TaskGroup:
    return j.task_groups[1]


def t0(j: Job) -> Task:
    return j.task_groups[0].tasks[0]


def svc(j: Job) -> Service:
    return j.task_groups[0].services[0]


def proxy(j: Job) -> ConsulProxy:
    return g1(j).services[0].connect.sidecar_service.proxy


def add_check(j: Job, **kw) -> None:
    base = dict(name="c", type="http", path="/h", interval=10 * S, timeout=2 * S)
    base.update(kw)
    g1(j).services[0].checks = [ServiceCheck(**base)]


def plain_service(j: Job, **kw) -> None:
    """A non-connect service on the dashboard group, with the given fields."""
    base = dict(name="plain", port_label="http")
    base.update(kw)
    g1(j).services.append(Service(**base))


CHECK = ("TaskGroups", 1, "Services", 0, "Checks", 0)
PLAIN = ("TaskGroups", 1, "Services", 1)
T0 = ("TaskGroups", 0, "Tasks", 0)
G0 = ("TaskGroups", 0)
UP = ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "Upstreams")


# --- valid jobs ------------------------------------------------------------------------------

def test_countdash_is_valid():
    assert run(countdash()) == []


# The kitchen sink's fields that Yurt accepts but does not act on yet: a warning each, and no
# other problem (jobspec/ignored.py; tests/test_job_warnings.py has one test per field).
KITCHEN_SINK_IGNORED = [
    G0 + ("Tasks", 0, "Resources", "Cores"), G0 + ("Tasks", 0, "Resources", "SecretsMB"),
    G0 + ("Services", 1, "Weights"),
    ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "Upstreams", 1, "MeshGateway", "Mode"),
    ("TaskGroups", 2, "Networks", 0, "ReservedPorts", 1, "IgnoreCollision"),
]


def test_kitchen_sink_is_valid():
    found = run(kitchen_sink())
    assert errors(kitchen_sink()) == [], show(found)
    assert sorted(path for path, _ in found) == sorted(KITCHEN_SINK_IGNORED), show(found)
    assert all(p.severity == "warning" and "in Yurt" in p.message for _, p in found), show(found)


def test_partially_filled_job_does_not_raise():
    job = Job(id="j", task_groups=[TaskGroup(name="g", tasks=[Task(name="t", driver="exec", config={"command": "x"},
              resources=Resources(), restart_policy=RestartPolicy(), log_config=LogConfig())],
              update=UpdateStrategy(), reschedule_policy=ReschedulePolicy(),
              migrate=MigrateStrategy(), ephemeral_disk=EphemeralDisk(),
              restart_policy=RestartPolicy())], update=UpdateStrategy())
    assert errors(job) == []
    assert errors(Job()) != []


# --- one rule per case -----------------------------------------------------------------------

CASES = [
    # job
    ("job-id-missing", lambda j: s(j, id=""), ("ID",), "no ID"),
    ("job-id-space", lambda j: s(j, id="count dash"), ("ID",), "contains a space"),
    ("job-id-nul", lambda j: s(j, id="a\0b"), ("ID",), "NUL"),
    ("job-name-empty", lambda j: s(j, name=""), ("Name",), "name is empty"),
    ("job-region-empty", lambda j: s(j, region=""), ("Region",), "region is empty"),
    ("job-type", lambda j: s(j, type="daemon"), ("Type",), 'job type "daemon" is not known'),
    ("job-type-core", lambda j: s(j, type="_core"), ("Type",), "not known"),
    ("priority-low", lambda j: s(j, priority=0), ("Priority",), "use 1 to 100"),
    ("priority-high", lambda j: s(j, priority=101), ("Priority",), "out of range"),
    ("datacenter-empty", lambda j: s(j, datacenters=["dc1", ""]), ("Datacenters", 1), "datacenter name is empty"),
    ("no-groups", lambda j: s(j, task_groups=[]), ("TaskGroups",), "no groups"),
    ("dup-group", lambda j: s(g1(j), name="api"), ("TaskGroups", 1, "Name"), 'group name "api" is already used'),
    ("system-count", lambda j: (s(j, type="system", update=None), [s(g, count=2, reschedule_policy=None,
                                migrate=None, update=None) for g in j.task_groups]),
     ("TaskGroups", 0, "Count"), "one allocation per node"),
    ("system-reschedule", lambda j: s(j, type="system", update=None, reschedule=ReschedulePolicy()),
     ("Reschedule",), "cannot have a reschedule block"),
    ("sysbatch-group-reschedule", lambda j: s(j, type="sysbatch", update=None), G0 + ("ReschedulePolicy",),
     "sysbatch job cannot have a reschedule"),
    ("batch-update", lambda j: s(j, type="batch"), ("Update",), "batch job cannot have an update block"),
    ("batch-group-update", lambda j: (s(j, type="batch", update=None), s(g0(j), migrate=None)),
     G0 + ("Update",), "cannot have an update block"),
    ("batch-migrate", lambda j: (s(j, type="batch", update=None), s(g0(j), update=None)),
     G0 + ("Migrate",), "cannot have a migrate block"),
    ("system-affinity", lambda j: s(j, type="system", affinities=[Affinity(l_target="${node.class}", r_target="x", weight=50)]),
     ("Affinities", 0), "cannot have affinities"),
    ("system-spread", lambda j: s(j, type="system", spreads=[Spread(attribute="${node.datacenter}", weight=50)]),
     ("Spreads", 0), "cannot have spreads"),
    ("job-meta-empty-key", lambda j: s(j, meta={"": "x"}), ("Meta", ""), "meta key is empty"),
    # group
    ("group-name-missing", lambda j: s(g0(j), name=""), G0 + ("Name",), "group has no name"),
    ("group-count-negative", lambda j: s(g0(j), count=-1), G0 + ("Count",), "count -1 is negative"),
    ("group-no-tasks", lambda j: s(g0(j), tasks=[]), G0 + ("Tasks",), "has no tasks"),
    ("dup-task", lambda j: g0(j).tasks.append(task("web")), G0 + ("Tasks", 1, "Name"), 'task name "web" is already used'),
    ("two-leaders", lambda j: (g0(j).tasks.append(task("b", leader=True)), s(t0(j), leader=True)),
     G0 + ("Tasks", 1, "Leader"), "more than one leader"),
    ("no-main-task", lambda j: s(t0(j), lifecycle=TaskLifecycle(hook="prestart")), G0 + ("Tasks",), "add a main task"),
    ("group-shutdown-delay", lambda j: s(g0(j), shutdown_delay=-S), G0 + ("ShutdownDelay",), "negative"),
    ("group-max-client-disconnect", lambda j: s(g0(j), max_client_disconnect=-S), G0 + ("MaxClientDisconnect",), "negative"),
    ("ephemeral-disk-small", lambda j: s(g0(j).ephemeral_disk, size_mb=5), G0 + ("EphemeralDisk", "SizeMB"), "use 10 or more"),
    # network + ports
    ("network-mode", lambda j: s(g0(j).networks[0], mode="overlay"), G0 + ("Networks", 0, "Mode"), 'network mode "overlay" is not known'),
    ("network-mode-cni-empty", lambda j: s(g0(j).networks[0], mode="cni/"), G0 + ("Networks", 0, "Mode"), "cni/<network name>"),
    ("two-networks", lambda j: g1(j).networks.append(NetworkResource(mode="bridge")), ("TaskGroups", 1, "Networks", 1), "only one is allowed"),
    ("dup-port-label", lambda j: s(g1(j).networks[0], dynamic_ports=[Port(label="http")]),
     ("TaskGroups", 1, "Networks", 0, "DynamicPorts", 0, "Label"), 'port label "http" is declared twice'),
    ("dup-static-port", lambda j: g1(j).networks[0].reserved_ports.append(Port(label="b", value=9002)),
     ("TaskGroups", 1, "Networks", 0, "ReservedPorts", 1, "Value"), 'static port 9002 is already used by port "http"'),
    ("static-port-range", lambda j: s(g1(j).networks[0].reserved_ports[0], value=70000),
     ("TaskGroups", 1, "Networks", 0, "ReservedPorts", 0, "Value"), "use 1 to 65535"),
    ("port-to-negative", lambda j: s(g1(j).networks[0].reserved_ports[0], to=-2),
     ("TaskGroups", 1, "Networks", 0, "ReservedPorts", 0, "To"), "maps to -2"),
    ("port-to-high", lambda j: s(g1(j).networks[0].reserved_ports[0], to=65536),
     ("TaskGroups", 1, "Networks", 0, "ReservedPorts", 0, "To"), "out of range"),
    ("ignore-collision-bridge", lambda j: s(g1(j).networks[0].reserved_ports[0], ignore_collision=True),
     ("TaskGroups", 1, "Networks", 0, "ReservedPorts", 0, "IgnoreCollision"), "only works in host mode"),
    ("port-no-label", lambda j: s(g1(j).networks[0], dynamic_ports=[Port()]),
     ("TaskGroups", 1, "Networks", 0, "DynamicPorts", 0), "port has no label"),
    ("hostname", lambda j: s(g0(j).networks[0], hostname="bad_host!"), G0 + ("Networks", 0, "Hostname"), "not a valid DNS name"),
    ("cni-args-semicolon", lambda j: s(g0(j).networks[0], cni=CNIConfig(args={"a": "b;c"})),
     G0 + ("Networks", 0, "CNI", "Args", "a"), 'contains ";"'),
    # services
    ("service-name-invalid", lambda j: plain_service(j, name="bad_name"), PLAIN + ("Name",), "not a valid DNS label"),
    ("service-name-too-long", lambda j: plain_service(j, name="a" * 64), PLAIN + ("Name",), "1 to 63"),
    ("service-name-empty", lambda j: plain_service(j, name=""), PLAIN + ("Name",), "service has no name"),
    ("service-port-unknown-label", lambda j: s(svc(j), port_label="http"), G0 + ("Services", 0, "PortLabel"),
     'port "http" is not a port label of group "api": declare it with network { port "http" {} } or use a number'),
    ("service-port-range", lambda j: s(svc(j), port_label="99999"), G0 + ("Services", 0, "PortLabel"), "out of range"),
    ("dup-service", lambda j: (plain_service(j), plain_service(j)), ("TaskGroups", 1, "Services", 2, "Name"), 'service "plain" on port "http" is defined twice'),
    ("service-provider", lambda j: plain_service(j, provider="etcd"), PLAIN + ("Provider",), "provider \"etcd\" is not known"),
    ("mixed-providers", lambda j: plain_service(j, provider="nomad"), PLAIN + ("Provider",), "mix providers"),
    ("group-service-driver-mode", lambda j: plain_service(j, address_mode="driver"), PLAIN + ("AddressMode",), 'cannot use address_mode = "driver"'),
    ("task-service-alloc-mode", lambda j: s(t0(j), services=[Service(name="t", port_label="9001", address_mode="alloc")]),
     T0 + ("Services", 0, "AddressMode"), "move the service into the group"),
    ("service-address-non-auto", lambda j: plain_service(j, address="1.2.3.4", address_mode="host"), PLAIN + ("Address",), 'only be set with address_mode = "auto"'),
    ("service-on-update", lambda j: plain_service(j, on_update="never"), PLAIN + ("OnUpdate",), "not known"),
    ("service-weights", lambda j: plain_service(j, weights=ServiceWeights(passing=0)), PLAIN + ("Weights", "Passing"), "at least 1"),
    ("service-task-unknown", lambda j: plain_service(j, task_name="nope"), PLAIN + ("TaskName",), 'task "nope" is not a task of group'),
    ("task-service-port-unknown", lambda j: s(t0(j), services=[Service(name="t", port_label="web")]),
     T0 + ("Services", 0, "PortLabel"), 'port "web" is not a port label of group "api"'),
    # checks
    ("check-type-missing", lambda j: add_check(j, type=""), CHECK + ("Type",), "check has no type"),
    ("check-type-unknown", lambda j: add_check(j, type="ping"), CHECK + ("Type",), 'check type "ping" is not supported'),
    ("check-type-nomad", lambda j: (plain_service(j, provider="nomad", checks=[ServiceCheck(
        name="s", type="script", command="x", interval=10 * S, timeout=S, task_name="dashboard")]),
        s(g1(j).services[0], provider="nomad", connect=None)),
     PLAIN + ("Checks", 0, "Type"), "not supported by provider nomad"),
    ("check-needs-port", lambda j: plain_service(j, port_label="", checks=[ServiceCheck(
        name="t", type="tcp", interval=10 * S, timeout=S)]), PLAIN + ("Checks", 0, "PortLabel"), "a tcp check needs a port"),
    ("check-port-unknown", lambda j: add_check(j, port_label="nope"), CHECK + ("PortLabel",), 'port "nope" is not a port label'),
    ("check-numeric-port", lambda j: add_check(j, port_label="8080"), CHECK + ("PortLabel",), 'address_mode = "driver"'),
    ("http-check-path", lambda j: add_check(j, path=""), CHECK + ("Path",), "needs a path"),
    ("http-check-absolute", lambda j: add_check(j, path="http://x/health"), CHECK + ("Path",), "must be relative"),
    ("script-check-command", lambda j: add_check(j, type="script", task_name="dashboard"), CHECK + ("Command",), "needs a command"),
    ("script-check-task", lambda j: add_check(j, type="script", command="x"), CHECK + ("TaskName",), "which task runs it"),
    ("check-task-unknown", lambda j: add_check(j, task_name="ghost"), CHECK + ("TaskName",), 'task "ghost" is not a task'),
    ("check-interval", lambda j: add_check(j, interval=S // 2), CHECK + ("Interval",), "1s or more"),
    ("check-interval-missing", lambda j: add_check(j, interval=0), CHECK + ("Interval",), "check interval is missing"),
    ("check-timeout", lambda j: add_check(j, timeout=0), CHECK + ("Timeout",), "check timeout is missing"),
    ("check-initial-status", lambda j: add_check(j, initial_status="ok"), CHECK + ("InitialStatus",), "not known"),
    ("check-address-auto", lambda j: add_check(j, address_mode="auto"), CHECK + ("AddressMode",), 'cannot use address_mode = "auto"'),
    ("check-on-update-ignore-restart", lambda j: add_check(j, on_update="ignore", check_restart=CheckRestart(limit=3)),
     CHECK + ("OnUpdate",), "cannot be combined with check_restart"),
    ("check-notes-long", lambda j: add_check(j, notes="x" * 256), CHECK + ("Notes",), "255"),
    ("dup-check", lambda j: (add_check(j), g1(j).services[0].checks.append(g1(j).services[0].checks[0].model_copy())),
     ("TaskGroups", 1, "Services", 0, "Checks", 1, "Name"), 'check "c" is defined twice'),
    ("check-restart-limit", lambda j: add_check(j, check_restart=CheckRestart(limit=-1)), CHECK + ("CheckRestart", "Limit"), "negative"),
    ("tcp-check-sidecar", lambda j: add_check(j, type="tcp"), CHECK + ("Type",), "a tcp check cannot work on connect service"),
    ("expose-tcp", lambda j: plain_service(j, checks=[ServiceCheck(name="x", type="tcp", expose=True, interval=10 * S, timeout=S)]),
     PLAIN + ("Checks", 0, "Expose"), "only works for http and grpc"),
    ("expose-no-sidecar", lambda j: plain_service(j, checks=[ServiceCheck(name="x", type="http", path="/", expose=True, interval=10 * S, timeout=S)]),
     PLAIN + ("Checks", 0, "Expose"), "needs a group service with connect"),
    ("expose-path-relative", lambda j: add_check(j, expose=True, path="health"), CHECK + ("Path",), 'must start with "/"'),
    # connect
    ("connect-in-task", lambda j: s(t0(j), services=[Service(name="t", port_label="9001",
                                     connect=ConsulConnect(sidecar_service=ConsulSidecarService()))]),
     T0 + ("Services", 0, "Connect"), "only allowed in group services"),
    ("connect-empty", lambda j: s(svc(j), connect=ConsulConnect()), G0 + ("Services", 0, "Connect"), "connect block is empty"),
    ("connect-two-kinds", lambda j: s(svc(j).connect, native=True), G0 + ("Services", 0, "Connect"), "exactly one is allowed"),
    ("connect-nomad-provider", lambda j: s(svc(j), provider="nomad"), G0 + ("Services", 0, "Provider"), "needs the consul service provider"),
    ("sidecar-task-alone", lambda j: s(svc(j), connect=ConsulConnect(native=True, sidecar_task=SidecarTask())),
     G0 + ("Services", 0, "Connect", "SidecarTask"), "only applies to a sidecar_service"),
    ("connect-no-network", lambda j: s(g0(j), networks=[]), G0 + ("Networks",), "needs exactly one network"),
    ("connect-host-mode", lambda j: s(g0(j).networks[0], mode="host"), G0 + ("Networks", 0, "Mode"), 'network mode "host" cannot carry connect service "count-api"'),
    ("connect-group-uppercase", lambda j: s(g0(j), name="API"), G0 + ("Name",), "must be lowercase"),
    ("connect-service-uppercase", lambda j: s(svc(j), name="Count-API"), G0 + ("Services", 0, "Name"), 'rename it "count-api"'),
    ("native-needs-task", lambda j: (s(svc(j), connect=ConsulConnect(native=True)), g0(j).tasks.append(task("other"))),
     G0 + ("Services", 0, "TaskName"), "which task implements it"),
    ("native-needs-port", lambda j: s(svc(j), connect=ConsulConnect(native=True), port_label=""),
     G0 + ("Services", 0, "PortLabel"), "needs a port"),
    ("mesh-gateway-port", lambda j: s(svc(j), connect=ConsulConnect(gateway={"mesh": {}}), port_label=""),
     G0 + ("Services", 0, "PortLabel"), "mesh gateway needs the port"),
    ("dup-upstream", lambda j: proxy(j).upstreams.append(ConsulUpstream(destination_name="other", local_bind_port=8080)),
     UP + (1, "LocalBindPort"), 'upstream listener 127.0.0.1:8080 is already used by upstream "count-api"'),
    ("dup-upstream-across-services", lambda j: g1(j).services.append(Service(name="second", port_label="9003", connect=ConsulConnect(
        sidecar_service=ConsulSidecarService(proxy=ConsulProxy(upstreams=[ConsulUpstream(destination_name="x", local_bind_port=8080)]))))),
     ("TaskGroups", 1, "Services", 1, "Connect", "SidecarService", "Proxy", "Upstreams", 0, "LocalBindPort"), "already used"),
    ("upstream-no-destination", lambda j: s(proxy(j).upstreams[0], destination_name=""), UP + (0, "DestinationName"), "no destination_name"),
    ("upstream-no-port", lambda j: s(proxy(j).upstreams[0], local_bind_port=0), UP + (0, "LocalBindPort"), "local_bind_port is missing"),
    ("upstream-mesh-gateway", lambda j: s(proxy(j).upstreams[0], mesh_gateway=MeshGateway(mode="far")),
     UP + (0, "MeshGateway", "Mode"), "not known"),
    ("expose-path-slash", lambda j: s(proxy(j), expose=ConsulExposeConfig(paths=[ConsulExposePath(path="m", local_path_port=9002, listener_port="http")])),
     ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "Expose", "Paths", 0, "Path"), 'must start with "/"'),
    ("expose-protocol-http2", lambda j: s(proxy(j), expose=ConsulExposeConfig(paths=[ConsulExposePath(path="/m", protocol="http2", local_path_port=9002, listener_port="http")])),
     ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "Expose", "Paths", 0, "Protocol"),
     'expose protocol "http2" is not served by Yurt\'s sidecar yet'),
    ("expose-listener-label", lambda j: s(proxy(j), expose=ConsulExposeConfig(paths=[ConsulExposePath(path="/m", local_path_port=9002, listener_port="nope")])),
     ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "Expose", "Paths", 0, "ListenerPort"), "not a port label"),
    ("tproxy-dns", lambda j: (s(proxy(j), transparent_proxy=ConsulTransparentProxy()), s(g1(j).networks[0], dns=DNSConfig(servers=["1.1.1.1"]))),
     ("TaskGroups", 1, "Networks", 0, "DNS"), "no_dns = true"),
    ("tproxy-exclude-dynamic", lambda j: (s(proxy(j), transparent_proxy=ConsulTransparentProxy(exclude_inbound_ports=["metrics"])),
                                          s(g1(j).networks[0], dynamic_ports=[Port(label="metrics")])),
     ("TaskGroups", 1, "Services", 0, "Connect", "SidecarService", "Proxy", "TransparentProxy", "ExcludeInboundPorts", 0), "static port label"),
    ("sidecar-task-resources", lambda j: s(svc(j).connect, sidecar_task=SidecarTask(resources=Resources(memory_mb=4))),
     G0 + ("Services", 0, "Connect", "SidecarTask", "Resources", "MemoryMB"), "at least 10"),
    ("proxy-task-no-service", lambda j: g0(j).tasks.append(task("connect-proxy-x", kind="connect-proxy:x", lifecycle=TaskLifecycle(hook="prestart", sidecar=True))),
     G0 + ("Tasks", 1, "Kind"), 'has no service "x"'),
    ("proxy-task-leader", lambda j: g0(j).tasks.append(task("connect-proxy-count-api", kind="connect-proxy:count-api", leader=True,
                                                            lifecycle=TaskLifecycle(hook="prestart", sidecar=True))),
     G0 + ("Tasks", 1, "Leader"), "cannot be the leader"),
    # task
    ("task-name-missing", lambda j: s(t0(j), name=""), T0 + ("Name",), "task has no name"),
    ("task-name-alloc", lambda j: s(t0(j), name="alloc"), T0 + ("Name",), 'cannot be named "alloc"'),
    ("task-name-slash", lambda j: s(t0(j), name="a/b"), T0 + ("Name",), "contains a slash"),
    ("task-name-backslash", lambda j: s(t0(j), name="a\\b"), T0 + ("Name",), "contains a slash"),
    ("driver-missing", lambda j: s(t0(j), driver=""), T0 + ("Driver",), "task has no driver"),
    ("lifecycle-hook-empty", lambda j: (g0(j).tasks.append(task("b")), s(t0(j), lifecycle=TaskLifecycle())),
     T0 + ("Lifecycle", "Hook"), "lifecycle has no hook"),
    ("lifecycle-hook-unknown", lambda j: (g0(j).tasks.append(task("b")), s(t0(j), lifecycle=TaskLifecycle(hook="prerun"))),
     T0 + ("Lifecycle", "Hook"), 'lifecycle hook "prerun" is not known'),
    ("kill-timeout-negative", lambda j: s(t0(j), kill_timeout=-S), T0 + ("KillTimeout",), "negative"),
    ("kill-timeout-progress", lambda j: s(t0(j), kill_timeout=11 * M), T0 + ("KillTimeout",), "longer than the group progress_deadline"),
    ("shutdown-delay-negative", lambda j: s(t0(j), shutdown_delay=-S), T0 + ("ShutdownDelay",), "negative"),
    ("task-distinct-hosts", lambda j: s(t0(j), constraints=[Constraint(operand="distinct_hosts")]),
     T0 + ("Constraints", 0, "Operand"), "cannot be used in a task constraint"),
    ("env-bad-key", lambda j: s(t0(j), env={"A=B": "x"}), T0 + ("Env", "A=B"), "cannot be set"),
    # resources
    ("cpu-zero", lambda j: s(t0(j).resources, cpu=0), T0 + ("Resources", "CPU"), "at least 1 MHz"),
    ("cpu-and-cores", lambda j: s(t0(j).resources, cores=2), T0 + ("Resources", "Cores"), "cpu or cores, not both"),
    ("cores-negative", lambda j: s(t0(j).resources, cpu=None, cores=-1), T0 + ("Resources", "Cores"), "negative"),
    ("memory-low", lambda j: s(t0(j).resources, memory_mb=9), T0 + ("Resources", "MemoryMB"), "at least 10"),
    ("memory-max-low", lambda j: s(t0(j).resources, memory_max_mb=200), T0 + ("Resources", "MemoryMaxMB"), "lower than memory"),
    ("task-disk", lambda j: s(t0(j).resources, disk_mb=100), T0 + ("Resources", "DiskMB"), "ephemeral_disk"),
    ("secrets-over-memory", lambda j: s(t0(j).resources, secrets_mb=400), T0 + ("Resources", "SecretsMB"), "more than memory"),
    # logs
    ("logs-files", lambda j: s(t0(j).log_config, max_files=0), T0 + ("LogConfig", "MaxFiles"), "at least 1 file"),
    ("logs-size", lambda j: s(t0(j).log_config, max_file_size_mb=0), T0 + ("LogConfig", "MaxFileSizeMB"), "use 1 or more"),
    ("logs-over-disk", lambda j: s(g0(j).ephemeral_disk, size_mb=100), T0 + ("LogConfig",), "less than the group ephemeral_disk size of 100 MB"),
    # restart
    ("restart-mode", lambda j: s(g0(j).restart_policy, mode="retry"), G0 + ("RestartPolicy", "Mode"), 'restart mode "retry"'),
    ("restart-attempts-zero-delay", lambda j: s(g0(j).restart_policy, attempts=0, mode="delay"), G0 + ("RestartPolicy", "Attempts"), "ambiguous"),
    ("restart-interval", lambda j: s(g0(j).restart_policy, interval=2 * S, attempts=0), G0 + ("RestartPolicy", "Interval"), "use 5s or more"),
    ("restart-not-fit", lambda j: s(g0(j).restart_policy, attempts=10, delay=M, interval=5 * M),
     G0 + ("RestartPolicy", "Interval"), "10 restarts 1m apart do not fit in an interval of 5m"),
    ("task-restart", lambda j: s(t0(j).restart_policy, mode="never"), T0 + ("RestartPolicy", "Mode"), "not known"),
    # reschedule
    ("reschedule-ambiguous", lambda j: s(g0(j).reschedule_policy, attempts=3), G0 + ("ReschedulePolicy", "Unlimited"), "ambiguous"),
    ("reschedule-no-interval", lambda j: s(g0(j).reschedule_policy, attempts=3, unlimited=False, interval=0),
     G0 + ("ReschedulePolicy", "Interval"), "need an interval"),
    ("reschedule-delay", lambda j: s(g0(j).reschedule_policy, delay=S), G0 + ("ReschedulePolicy", "Delay"), "use 5s or more"),
    ("reschedule-function", lambda j: s(g0(j).reschedule_policy, delay_function="linear"), G0 + ("ReschedulePolicy", "DelayFunction"), "not known"),
    ("reschedule-max-delay", lambda j: s(g0(j).reschedule_policy, max_delay=10 * S, delay=M), G0 + ("ReschedulePolicy", "MaxDelay"), "shorter than delay"),
    ("reschedule-short-interval", lambda j: s(g0(j).reschedule_policy, attempts=1, unlimited=False, interval=10 * S),
     G0 + ("ReschedulePolicy", "Interval"), "use 15s or more"),
    ("reschedule-not-viable", lambda j: s(g0(j).reschedule_policy, attempts=5, unlimited=False, interval=M,
                                          delay=30 * S, delay_function="constant"),
     G0 + ("ReschedulePolicy", "Interval"), "take 2m30s"),
    # update / migrate
    ("update-health-check", lambda j: s(g0(j).update, health_check="http"), G0 + ("Update", "HealthCheck"), "not known"),
    ("update-auto-promote", lambda j: s(g0(j).update, auto_promote=True), G0 + ("Update", "AutoPromote"), "needs canaries"),
    ("update-canary", lambda j: s(g0(j).update, canary=-1), G0 + ("Update", "Canary"), "negative"),
    ("update-min-healthy", lambda j: s(g0(j).update, min_healthy_time=6 * M), G0 + ("Update", "MinHealthyTime"), "shorter than healthy_deadline"),
    ("update-progress", lambda j: s(g0(j).update, progress_deadline=4 * M), G0 + ("Update", "ProgressDeadline"), "longer than healthy_deadline"),
    ("update-stagger", lambda j: s(j.update, stagger=0), ("Update", "Stagger"), "stagger must be longer than 0"),
    ("update-max-parallel", lambda j: s(j.update, max_parallel=-1), ("Update", "MaxParallel"), "negative"),
    ("migrate-health", lambda j: s(g0(j).migrate, health_check="manual"), G0 + ("Migrate", "HealthCheck"), "not known"),
    ("migrate-times", lambda j: s(g0(j).migrate, min_healthy_time=10 * M), G0 + ("Migrate", "MinHealthyTime"), "longer than healthy_deadline"),
    # placement
    ("constraint-operator", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand="~=", r_target="1")]),
     ("Constraints", 0, "Operand"), 'constraint operator "~=" is not known'),
    ("constraint-needs-value", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand=">=")]),
     ("Constraints", 0, "RTarget"), 'operator ">=" compares with a value'),
    ("constraint-is-set-value", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand="is_set", r_target="y")]),
     ("Constraints", 0, "RTarget"), "takes no value"),
    ("constraint-regexp", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand="regexp", r_target="([a-z")]),
     ("Constraints", 0, "RTarget"), "does not compile"),
    ("constraint-version", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand="version", r_target=">= one")]),
     ("Constraints", 0, "RTarget"), "is not a version constraint"),
    ("constraint-semver-tilde", lambda j: s(j, constraints=[Constraint(l_target="${attr.x}", operand="semver", r_target="~> 1.2")]),
     ("Constraints", 0, "RTarget"), "is not a version constraint"),
    ("constraint-attribute", lambda j: s(g0(j), constraints=[Constraint(operand="=", r_target="x")]),
     G0 + ("Constraints", 0, "LTarget"), "constraint has no attribute"),
    ("constraint-distinct-property-count", lambda j: s(g0(j), constraints=[Constraint(l_target="${meta.r}", operand="distinct_property", r_target="0")]),
     G0 + ("Constraints", 0, "RTarget"), "count of 1 or more"),
    ("affinity-weight-zero", lambda j: s(g0(j), affinities=[Affinity(l_target="${node.class}", r_target="x", weight=0)]),
     G0 + ("Affinities", 0, "Weight"), "cannot be 0"),
    ("affinity-weight-range", lambda j: s(g0(j), affinities=[Affinity(l_target="${node.class}", r_target="x", weight=200)]),
     G0 + ("Affinities", 0, "Weight"), "-100 to 100"),
    ("affinity-operator", lambda j: s(g0(j), affinities=[Affinity(l_target="${node.class}", operand="is_set", weight=50)]),
     G0 + ("Affinities", 0, "Operand"), "not known"),
    ("spread-weight", lambda j: s(g0(j), spreads=[Spread(attribute="${node.datacenter}", weight=0)]),
     G0 + ("Spreads", 0, "Weight"), "use a number from 1 to 100"),
    ("spread-attribute", lambda j: s(g0(j), spreads=[Spread(weight=50)]), G0 + ("Spreads", 0, "Attribute"), "no attribute"),
    ("spread-percent", lambda j: s(g0(j), spreads=[Spread(attribute="a", weight=50, spread_target=[SpreadTarget(value="x", percent=101)])]),
     G0 + ("Spreads", 0, "SpreadTarget", 0, "Percent"), "0 to 100"),
    ("spread-sum", lambda j: s(g0(j), spreads=[Spread(attribute="a", weight=50, spread_target=[
        SpreadTarget(value="x", percent=60), SpreadTarget(value="y", percent=50)])]),
     G0 + ("Spreads", 0, "SpreadTarget"), "add up to 110%"),
    ("spread-dup-target", lambda j: s(g0(j), spreads=[Spread(attribute="a", weight=50, spread_target=[
        SpreadTarget(value="x", percent=10), SpreadTarget(value="x", percent=10)])]),
     G0 + ("Spreads", 0, "SpreadTarget", 1, "Value"), 'spread target "x" is defined twice'),
    # templates
    ("template-empty", lambda j: s(t0(j), templates=[Template(dest_path="local/a")]), T0 + ("Templates", 0), "nothing to render"),
    ("template-no-destination", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x")]), T0 + ("Templates", 0, "DestPath"), "no destination"),
    ("template-escape", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="../../etc/passwd")]),
     T0 + ("Templates", 0, "DestPath"), "escapes the allocation directory"),
    ("template-dup-destination", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="local/a"),
                                                                Template(embedded_tmpl="y", dest_path="local/a")]),
     T0 + ("Templates", 1, "DestPath"), 'destination "local/a" is already used'),
    ("template-change-mode", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", change_mode="reload")]),
     T0 + ("Templates", 0, "ChangeMode"), 'change_mode "reload" is not known'),
    ("template-signal-missing", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", change_mode="signal")]),
     T0 + ("Templates", 0, "ChangeSignal"), "needs a signal"),
    ("template-env-signal", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", change_mode="signal",
                                                                   change_signal="SIGHUP", envvars=True)]),
     T0 + ("Templates", 0, "Envvars"), 'cannot use change_mode = "signal"'),
    ("template-script", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", change_mode="script")]),
     T0 + ("Templates", 0, "ChangeScript"), "needs a script"),
    ("template-splay", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", splay=-S)]),
     T0 + ("Templates", 0, "Splay"), "negative"),
    ("template-perms", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", perms="rw-r--r--")]),
     T0 + ("Templates", 0, "Perms"), "octal"),
    ("template-wait", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", wait=WaitConfig(min=M, max=S))]),
     T0 + ("Templates", 0, "Wait", "Min"), "longer than max"),
]


@pytest.mark.parametrize("mutate,path,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(mutate, path, fragment):
    job = countdash()
    mutate(job)
    found = errors(job)
    hits = [p for at, p in found if at == path and fragment in p.message]
    assert hits, f"expected an error at {path} containing {fragment!r}; got:\n{show(found)}"
    # One sentence: what is wrong, then what to do.
    for p in hits:
        assert ": " in p.message, p.message


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# --- warnings ---------------------------------------------------------------------------------

WARNINGS = [
    ("upstream-shadows-service-port", lambda j: s(proxy(j).upstreams[0], local_bind_port=9002),
     UP + (0, "LocalBindPort"), "also the port of"),
    ("check-timeout-over-interval", lambda j: add_check(j, type="http", interval=2 * S, timeout=5 * S, expose=True),
     CHECK + ("Timeout",), "longer than its interval"),
    ("change-signal-ignored", lambda j: s(t0(j), templates=[Template(embedded_tmpl="x", dest_path="a", change_signal="SIGHUP")]),
     T0 + ("Templates", 0, "ChangeSignal"), "ignored"),
    ("hostname-host-mode", lambda j: (s(g0(j), services=[]), s(g0(j).networks[0], mode="host", hostname="web")),
     G0 + ("Networks", 0, "Hostname"), "no effect in host mode"),
]


@pytest.mark.parametrize("mutate,path,fragment", [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS])
def test_warning(mutate, path, fragment):
    job = countdash()
    mutate(job)
    found = run(job)
    assert [p for _, p in found if p.severity == "error"] == [], show(found)
    assert any(at == path and fragment in p.message and p.severity == "warning" for at, p in found), show(found)


# --- several problems at once, positions and descriptions ------------------------------------

def test_every_problem_is_reported_at_once():
    job = countdash()
    job.priority = 500
    g0(job).networks[0].mode = "host"
    t0(job).driver = ""
    t0(job).resources.memory_mb = 1
    proxy(job).upstreams.append(ConsulUpstream(destination_name="x", local_bind_port=8080))
    g1(job).tasks[0].templates = [Template(dest_path="../../x", embedded_tmpl="y")]
    paths = [path for path, _ in errors(job)]
    assert ("Priority",) in paths
    assert G0 + ("Networks", 0, "Mode") in paths
    assert T0 + ("Driver",) in paths
    assert T0 + ("Resources", "MemoryMB") in paths
    assert UP + (1, "LocalBindPort") in paths
    assert ("TaskGroups", 1, "Tasks", 0, "Templates", 0, "DestPath") in paths
    assert len(paths) == 6, show(errors(job))


def test_positions_come_from_the_locator():
    job = countdash()
    svc(job).port_label = "http"
    g1(job).networks[0].mode = "vxlan"
    t0(job).resources.cpu = 0
    positions = {
        (): Position("job.nomad", 1, 1),
        ("TaskGroups", 0): Position("job.nomad", 3, 3),
        ("TaskGroups", 0, "Services", 0): Position("job.nomad", 8, 5),
        ("TaskGroups", 0, "Services", 0, "PortLabel"): Position("job.nomad", 10, 7),
        ("TaskGroups", 0, "Tasks", 0): Position("job.nomad", 17, 5),
        ("TaskGroups", 1, "Networks", 0): Position("job.nomad", 27, 5),
        ("TaskGroups", 1, "Networks", 0, "Mode"): Position("job.nomad", 28, 7),
    }
    problems = [p for _, p in run(job, positions) if p.severity == "error"]
    assert len(problems) == 3
    by_pos = {str(p.pos): p for p in problems}
    port = by_pos["job.nomad:10:7"]
    assert port.where == 'group "api" > service "count-api" > port'
    assert str(port) == ('job.nomad:10:7: group "api" > service "count-api" > port: port "http" is '
                         'not a port label of group "api": declare it with network { port "http" {} } '
                         'or use a number')
    assert by_pos["job.nomad:28:7"].where == 'group "dashboard" > network > mode'
    # No position recorded for the attribute: the closest enclosing block (the task).
    cpu = next(p for p in problems if "cpu" in p.message)
    assert cpu.pos == Position("job.nomad", 17, 5)
    assert cpu.where == 'group "api" > task "web" > resources > cpu'


def test_positions_with_hand_built_locator():
    job = countdash()
    svc(job).port_label = "http"
    t0(job).resources.cpu = 0
    positions = {
        (): Position("job.nomad", 1, 1),
        ("TaskGroups", 0, "Services", 0, "PortLabel"): Position("job.nomad", 10, 7),
        ("TaskGroups", 0, "Tasks", 0): Position("job.nomad", 17, 5),
    }
    loc = Locator("job.nomad", positions, job.to_json())
    found = {p.message[:20]: p for p in validate(job, loc)}
    assert len(found) == 2
    port = next(p for p in found.values() if "port label" in p.message)
    cpu = next(p for p in found.values() if "cpu" in p.message)
    assert port.pos == Position("job.nomad", 10, 7)
    assert cpu.pos == Position("job.nomad", 17, 5)
    assert str(port).startswith('job.nomad:10:7: group "api" > service "count-api" > port: ')


def test_inherited_policies_are_reported_once():
    job = countdash()
    job.update.stagger = 0
    for g in job.task_groups:
        g.update = job.update.model_copy()
    stagger = [path for path, p in errors(job) if "stagger" in p.message]
    assert stagger == [("Update", "Stagger")]
    g0(job).restart_policy.mode = "retry"
    t0(job).restart_policy.mode = "retry"
    restart = [path for path, p in errors(job) if "restart mode" in p.message]
    assert restart == [G0 + ("RestartPolicy", "Mode")]
