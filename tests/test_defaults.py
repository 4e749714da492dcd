"""Nomad's defaults filled by yurt.jobspec.defaults.canonicalize (api Canonicalize + server)."""

from __future__ import annotations

import pytest

from yurt.jobspec.defaults import (canonicalize, default_reschedule_policy,
                                   default_restart_policy, default_update_strategy, merge,
                                   service_name)
from yurt.structs import (Affinity, ChangeScript, CheckRestart, ConsulConnect, ConsulProxy,
                          ConsulSidecarService, ConsulUpstream, Constraint, EphemeralDisk, Job,
                          LogConfig, MigrateStrategy, NetworkResource, Port, ReschedulePolicy,
                          Resources, RestartPolicy, Service, ServiceCheck, SidecarTask, Spread,
                          Task, TaskGroup, TaskLifecycle, Template, UpdateStrategy)

S = 1_000_000_000
M = 60 * S
H = 60 * M


def make_job(type_: str | None = None, **kw) -> Job:
    group = kw.pop("group", None) or TaskGroup(name="web", tasks=[Task(name="app", driver="docker")])
    return Job(id="example", type=type_, task_groups=[group], **kw)


def only_group(job: Job) -> TaskGroup:
    return job.task_groups[0]


def only_task(job: Job) -> Task:
    return job.task_groups[0].tasks[0]


# --- job ---------------------------------------------------------------------------------------

def test_job_level_defaults():
    job = canonicalize(make_job())
    assert job.region == "global"
    assert job.namespace == "default"
    assert job.name == "example"
    assert job.type == "service"
    assert job.priority == 50
    assert job.datacenters == ["*"]
    assert job.node_pool == "default"
    assert job.all_at_once is False


def test_job_values_written_are_kept():
    job = canonicalize(make_job("batch", region="eu", namespace="team", name="nice name",
                                priority=70, datacenters=["dc1", "dc2"], node_pool="gpu",
                                all_at_once=True))
    assert (job.region, job.namespace, job.name, job.type) == ("eu", "team", "nice name", "batch")
    assert job.priority == 70
    assert job.datacenters == ["dc1", "dc2"]
    assert job.node_pool == "gpu"
    assert job.all_at_once is True


def test_empty_datacenters_become_star():
    assert canonicalize(make_job(datacenters=[])).datacenters == ["*"]


def test_canonicalize_returns_the_same_object():
    job = make_job()
    assert canonicalize(job) is job


# --- update -----------------------------------------------------------------------------------

def test_service_job_gets_default_update_everywhere():
    job = canonicalize(make_job("service"))
    expected = UpdateStrategy(max_parallel=1, stagger=30 * S, health_check="checks",
                              min_healthy_time=10 * S, healthy_deadline=5 * M,
                              progress_deadline=10 * M, canary=0, auto_revert=False,
                              auto_promote=False)
    assert job.update == expected
    assert only_group(job).update == expected
    assert default_update_strategy() == expected


@pytest.mark.parametrize("type_", ["batch", "sysbatch"])
def test_batch_types_have_no_update(type_):
    job = canonicalize(make_job(type_))
    assert job.update is None
    assert only_group(job).update is None


def test_system_job_without_update_block_has_none():
    # Nomad's api only defaults the update block for service jobs.
    job = canonicalize(make_job("system"))
    assert job.update is None
    assert only_group(job).update is None


def test_system_job_update_block_is_filled_and_pushed_into_groups():
    job = canonicalize(make_job("system", update=UpdateStrategy(max_parallel=3)))
    assert job.update.max_parallel == 3
    assert job.update.stagger == 30 * S
    assert only_group(job).update.max_parallel == 3
    assert only_group(job).update.healthy_deadline == 5 * M


def test_update_merges_default_job_group():
    group = TaskGroup(name="web", tasks=[Task(name="app", driver="docker")],
                      update=UpdateStrategy(canary=2, auto_promote=True))
    job = canonicalize(make_job("service", group=group,
                                update=UpdateStrategy(max_parallel=4, canary=1,
                                                      min_healthy_time=20 * S)))
    assert job.update.max_parallel == 4
    assert job.update.canary == 1
    assert job.update.health_check == "checks"
    g = only_group(job).update
    assert g.max_parallel == 4           # from the job
    assert g.min_healthy_time == 20 * S  # from the job
    assert g.canary == 2                 # group wins
    assert g.auto_promote is True        # group
    assert g.progress_deadline == 10 * M  # default


def test_group_update_without_job_update_gets_defaults():
    group = TaskGroup(name="web", tasks=[Task(name="app", driver="docker")],
                      update=UpdateStrategy(max_parallel=2))
    job = canonicalize(make_job("system", group=group))
    assert job.update is None
    assert only_group(job).update.max_parallel == 2
    assert only_group(job).update.stagger == 30 * S


# --- reschedule -------------------------------------------------------------------------------

def test_service_reschedule_default():
    rp = only_group(canonicalize(make_job("service"))).reschedule_policy
    assert rp == ReschedulePolicy(attempts=0, interval=0, delay=30 * S,
                                  delay_function="exponential", max_delay=1 * H, unlimited=True)


def test_batch_reschedule_default():
    rp = only_group(canonicalize(make_job("batch"))).reschedule_policy
    assert rp == ReschedulePolicy(attempts=1, interval=24 * H, delay=5 * S,
                                  delay_function="constant", max_delay=0, unlimited=False)


@pytest.mark.parametrize("type_", ["system", "sysbatch"])
def test_system_types_have_no_reschedule(type_):
    assert only_group(canonicalize(make_job(type_))).reschedule_policy is None
    assert default_reschedule_policy(type_) is None


def test_reschedule_merges_type_job_group():
    group = TaskGroup(name="web", tasks=[Task(name="app", driver="docker")],
                      reschedule_policy=ReschedulePolicy(delay=10 * S))
    job = canonicalize(make_job("batch", group=group,
                                reschedule=ReschedulePolicy(attempts=5, delay=20 * S)))
    rp = only_group(job).reschedule_policy
    assert rp.attempts == 5               # job
    assert rp.delay == 10 * S             # group over job
    assert rp.interval == 24 * H          # batch default
    assert rp.delay_function == "constant"
    assert job.reschedule == ReschedulePolicy(attempts=5, delay=20 * S)  # job block untouched


def test_reschedule_written_in_system_job_is_kept_for_validation():
    job = canonicalize(make_job("system", reschedule=ReschedulePolicy(attempts=3)))
    rp = only_group(job).reschedule_policy
    assert rp.attempts == 3
    assert rp.unlimited is False and rp.delay == 0


# --- migrate ----------------------------------------------------------------------------------

def test_service_migrate_default():
    assert only_group(canonicalize(make_job("service"))).migrate == MigrateStrategy(
        max_parallel=1, health_check="checks", min_healthy_time=10 * S, healthy_deadline=5 * M)


@pytest.mark.parametrize("type_", ["batch", "system", "sysbatch"])
def test_migrate_only_for_service(type_):
    assert only_group(canonicalize(make_job(type_))).migrate is None


def test_migrate_merges_job_into_group():
    group = TaskGroup(name="web", tasks=[Task(name="app", driver="docker")],
                      migrate=MigrateStrategy(health_check="task_states"))
    job = canonicalize(make_job("service", group=group,
                                migrate=MigrateStrategy(max_parallel=3, health_check="checks")))
    m = only_group(job).migrate
    assert m.max_parallel == 3
    assert m.health_check == "task_states"
    assert m.min_healthy_time == 10 * S


# --- restart ----------------------------------------------------------------------------------

@pytest.mark.parametrize("type_,attempts,interval", [
    ("service", 2, 30 * M), ("system", 2, 30 * M), ("batch", 3, 24 * H), ("sysbatch", 3, 24 * H),
])
def test_restart_defaults_per_type(type_, attempts, interval):
    job = canonicalize(make_job(type_))
    expected = RestartPolicy(attempts=attempts, interval=interval, delay=15 * S, mode="fail",
                             render_templates=False)
    assert only_group(job).restart_policy == expected
    assert only_task(job).restart_policy == expected
    assert default_restart_policy(type_) == expected


def test_restart_merges_group_then_task():
    tasks = [Task(name="a", driver="docker", restart_policy=RestartPolicy(delay=1 * S)),
             Task(name="b", driver="docker")]
    group = TaskGroup(name="web", tasks=tasks,
                      restart_policy=RestartPolicy(attempts=7, mode="delay"))
    job = canonicalize(make_job("service", group=group))
    g = only_group(job).restart_policy
    assert (g.attempts, g.mode, g.delay, g.interval) == (7, "delay", 15 * S, 30 * M)
    a, b = job.task_groups[0].tasks
    assert (a.restart_policy.attempts, a.restart_policy.mode, a.restart_policy.delay) == (7, "delay", 1 * S)
    assert b.restart_policy == g
    assert b.restart_policy is not g  # a copy, not shared


# --- group ------------------------------------------------------------------------------------

def test_group_count_and_disk_defaults():
    g = only_group(canonicalize(make_job()))
    assert g.count == 1
    assert g.ephemeral_disk == EphemeralDisk(sticky=False, migrate=False, size_mb=300)
    assert g.shutdown_delay is None


def test_group_count_zero_kept_and_disk_merged():
    group = TaskGroup(name="web", count=0, tasks=[Task(name="app", driver="docker")],
                      ephemeral_disk=EphemeralDisk(size_mb=1000, sticky=True))
    g = only_group(canonicalize(make_job(group=group)))
    assert g.count == 0
    assert g.ephemeral_disk == EphemeralDisk(sticky=True, migrate=False, size_mb=1000)


# --- task -------------------------------------------------------------------------------------

def test_task_defaults():
    t = only_task(canonicalize(make_job()))
    assert t.kill_timeout == 5 * S
    assert t.shutdown_delay == 0
    assert t.log_config == LogConfig(max_files=10, max_file_size_mb=10, disabled=False)
    assert t.resources == Resources(cpu=100, cores=0, memory_mb=300, memory_max_mb=0,
                                    disk_mb=0, secrets_mb=0)
    assert t.lifecycle is None


def test_task_values_written_are_kept_and_merged():
    task = Task(name="app", driver="docker", kill_timeout=30 * S,
                log_config=LogConfig(max_files=3),
                resources=Resources(memory_mb=64, memory_max_mb=128))
    t = only_task(canonicalize(make_job(group=TaskGroup(name="web", tasks=[task]))))
    assert t.kill_timeout == 30 * S
    assert t.log_config == LogConfig(max_files=3, max_file_size_mb=10, disabled=False)
    assert (t.resources.cpu, t.resources.memory_mb, t.resources.memory_max_mb) == (100, 64, 128)


def test_cores_set_means_cpu_zero():
    task = Task(name="app", driver="docker", resources=Resources(cores=2))
    r = only_task(canonicalize(make_job(group=TaskGroup(name="web", tasks=[task])))).resources
    assert (r.cores, r.cpu, r.memory_mb) == (2, 0, 300)


def test_cpu_written_kept():
    task = Task(name="app", driver="docker", resources=Resources(cpu=500))
    r = only_task(canonicalize(make_job(group=TaskGroup(name="web", tasks=[task])))).resources
    assert (r.cores, r.cpu) == (0, 500)


def test_zero_kill_timeout_becomes_default_like_nomad_server():
    task = Task(name="app", driver="docker", kill_timeout=0)
    assert only_task(canonicalize(make_job(group=TaskGroup(name="web", tasks=[task])))).kill_timeout == 5 * S


def test_lifecycle_without_hook_is_kept():
    task = Task(name="app", driver="docker", lifecycle=TaskLifecycle(sidecar=True))
    t = only_task(canonicalize(make_job(group=TaskGroup(name="web", tasks=[task]))))
    assert t.lifecycle == TaskLifecycle(hook="", sidecar=True)


# --- networks ---------------------------------------------------------------------------------

def test_ports_get_default_host_network_and_keep_to():
    net = NetworkResource(mode="bridge",
                          reserved_ports=[Port(label="http", value=8080, to=80)],
                          dynamic_ports=[Port(label="proxy", to=-1),
                                         Port(label="admin", host_network="private")])
    group = TaskGroup(name="web", networks=[net], tasks=[Task(name="app", driver="docker")])
    n = only_group(canonicalize(make_job(group=group))).networks[0]
    assert n.mode == "bridge"
    assert [(p.label, p.host_network) for p in n.ports()] == [
        ("http", "default"), ("proxy", "default"), ("admin", "private")]
    assert n.dynamic_ports[0].to == -1
    assert n.reserved_ports[0].value == 8080


def test_empty_network_mode_stays_empty():
    group = TaskGroup(name="web", networks=[NetworkResource()], tasks=[Task(name="app", driver="docker")])
    n = only_group(canonicalize(make_job(group=group))).networks[0]
    assert n.mode == ""
    assert n.effective_mode == "host"
    assert n.reserved_ports is None and n.dynamic_ports is None


# --- services and checks ----------------------------------------------------------------------

def service_job(group_services=None, task_services=None, job_name=None) -> Job:
    task = Task(name="server", driver="docker", services=task_services)
    group = TaskGroup(name="api", services=group_services, tasks=[task])
    return Job(id="countdash", name=job_name, task_groups=[group])


def test_group_service_defaults():
    job = canonicalize(service_job(group_services=[Service(port_label="9001")]))
    s = only_group(job).services[0]
    assert s.name == "countdash-api"
    assert s.address_mode == "auto"
    assert s.provider == "consul"
    assert s.on_update == "require_healthy"
    assert s.cluster == "default"
    assert s.task_name == ""


def test_task_service_defaults_name_and_task():
    job = canonicalize(service_job(task_services=[Service()]))
    s = only_task(job).services[0]
    assert s.name == "countdash-api-server"
    assert s.task_name == "server"


def test_service_name_uses_job_name_not_id():
    job = canonicalize(service_job(group_services=[Service()], job_name="dash"))
    assert only_group(job).services[0].name == "dash-api"


def test_legacy_tokens_in_task_service_names():
    job = canonicalize(service_job(task_services=[
        Service(name="${JOB}-x"), Service(name="${TASKGROUP}-${TASK}"),
        Service(name="${BASE}-web"), Service(name="keep-${NOMAD_ALLOC_INDEX}")]))
    names = [s.name for s in only_task(job).services]
    assert names == ["countdash-x", "api-server", "countdash-api-server-web",
                     "keep-${NOMAD_ALLOC_INDEX}"]


def test_legacy_tokens_in_group_service_names_task_is_group():
    job = canonicalize(service_job(group_services=[Service(name="${TASK}-${BASE}")]))
    assert only_group(job).services[0].name == "group-countdash-api-group"


def test_service_name_helper():
    assert service_name("", "j", "g", None) == "j-g"
    assert service_name("", "j", "g", "t") == "j-g-t"
    assert service_name("${JOB}.${TASKGROUP}", "j", "g", "t") == "j.g"


def test_written_service_fields_kept():
    s = Service(name="count-api", address_mode="host", provider="nomad", on_update="ignore",
                cluster="other", tags=["a"])
    out = only_group(canonicalize(service_job(group_services=[s]))).services[0]
    assert (out.address_mode, out.provider, out.on_update, out.cluster) == (
        "host", "nomad", "ignore", "other")
    assert out.tags == ["a"]


def test_check_defaults_name_on_update_task():
    svc = Service(name="count-api", on_update="ignore_warnings",
                  checks=[ServiceCheck(type="http", path="/health", interval=10 * S, timeout=2 * S),
                          ServiceCheck(name="mine", type="tcp", on_update="ignore")])
    s = only_task(canonicalize(service_job(task_services=[svc]))).services[0]
    first, second = s.checks
    assert first.name == 'service: "count-api" check'
    assert first.on_update == "ignore_warnings"
    assert first.task_name == "server"
    assert first.check_restart is None
    assert second.name == "mine"
    assert second.on_update == "ignore"


def test_check_name_uses_defaulted_service_name():
    svc = Service(checks=[ServiceCheck(type="tcp")])
    s = only_group(canonicalize(service_job(group_services=[svc]))).services[0]
    assert s.checks[0].name == 'service: "countdash-api" check'
    assert s.checks[0].on_update == "require_healthy"
    assert s.checks[0].task_name == ""


def test_check_restart_merged_from_service_check_wins():
    svc = Service(name="count-api",
                  check_restart=CheckRestart(limit=3, grace=90 * S),
                  checks=[ServiceCheck(name="a", type="tcp"),
                          ServiceCheck(name="b", type="tcp",
                                       check_restart=CheckRestart(limit=5, ignore_warnings=True))])
    s = only_group(canonicalize(service_job(group_services=[svc]))).services[0]
    a, b = s.checks
    assert a.check_restart == CheckRestart(limit=3, grace=90 * S, ignore_warnings=False)
    assert b.check_restart == CheckRestart(limit=5, grace=90 * S, ignore_warnings=True)
    assert s.check_restart == CheckRestart(limit=3, grace=90 * S)  # service block untouched


def test_check_restart_grace_default_1s():
    svc = Service(name="x", checks=[ServiceCheck(name="a", type="tcp",
                                                 check_restart=CheckRestart(limit=2))])
    c = only_group(canonicalize(service_job(group_services=[svc]))).services[0].checks[0]
    assert c.check_restart == CheckRestart(limit=2, grace=1 * S)


def test_negative_check_thresholds_become_zero():
    svc = Service(name="x", checks=[ServiceCheck(name="a", type="tcp", success_before_passing=-1,
                                                 failures_before_critical=-4)])
    c = only_group(canonicalize(service_job(group_services=[svc]))).services[0].checks[0]
    assert (c.success_before_passing, c.failures_before_critical) == (0, 0)


def test_sidecar_service_inherits_parent_tags():
    inherit = Service(name="a", tags=["v1", "blue"],
                      connect=ConsulConnect(sidecar_service=ConsulSidecarService()))
    own = Service(name="b", tags=["v1"],
                  connect=ConsulConnect(sidecar_service=ConsulSidecarService(tags=["proxy"])))
    a, b = only_group(canonicalize(service_job(group_services=[inherit, own]))).services
    assert a.connect.sidecar_service.tags == ["v1", "blue"]
    assert b.connect.sidecar_service.tags == ["proxy"]


def test_no_sidecar_task_is_invented():
    svc = Service(name="count-api", connect=ConsulConnect(sidecar_service=ConsulSidecarService(
        proxy=ConsulProxy(upstreams=[ConsulUpstream(destination_name="count-api",
                                                    local_bind_port=8080)]))))
    job = canonicalize(service_job(group_services=[svc]))
    s = only_group(job).services[0]
    assert s.connect.sidecar_task is None
    assert [t.name for t in only_group(job).tasks] == ["server"]
    assert s.connect.sidecar_service.proxy.upstreams[0].local_bind_port == 8080


def test_written_sidecar_task_keeps_only_what_it_sets():
    # Better than Nomad, whose client fills a written sidecar_task with task defaults (100/300).
    svc = Service(name="count-api", connect=ConsulConnect(
        sidecar_service=ConsulSidecarService(),
        sidecar_task=SidecarTask(resources=Resources(memory_mb=64))))
    st = only_group(canonicalize(service_job(group_services=[svc]))).services[0].connect.sidecar_task
    assert (st.resources.cpu, st.resources.memory_mb) == (None, 64)
    assert st.log_config is None and st.kill_timeout is None and st.shutdown_delay is None


def test_bare_sidecar_task_changes_nothing():
    svc = Service(name="count-api", connect=ConsulConnect(
        sidecar_service=ConsulSidecarService(), sidecar_task=SidecarTask()))
    st = only_group(canonicalize(service_job(group_services=[svc]))).services[0].connect.sidecar_task
    assert st.resources is None


# --- templates --------------------------------------------------------------------------------

def template_job(*templates: Template) -> Job:
    return make_job(group=TaskGroup(name="web", tasks=[Task(name="app", driver="docker",
                                                            templates=list(templates))]))


def test_template_defaults():
    t = only_task(canonicalize(template_job(Template(dest_path="local/a", embedded_tmpl="x")))).templates[0]
    assert t.change_mode == "restart"
    assert t.change_signal == ""
    assert t.splay == 5 * S
    assert t.perms == "0644"
    assert (t.left_delim, t.right_delim) == ("{{", "}}")
    assert t.change_script is None
    assert t.envvars is False


def test_template_signal_defaults_and_upper_case():
    t1, t2, t3 = only_task(canonicalize(template_job(
        Template(dest_path="a", change_mode="signal"),
        Template(dest_path="b", change_mode="signal", change_signal="sigusr1"),
        Template(dest_path="c", change_mode="script", change_script=ChangeScript(command="/x"),
                 splay=0, perms="0600", left_delim="[[", right_delim="]]")))).templates
    assert (t1.change_mode, t1.change_signal) == ("signal", "SIGHUP")
    assert t2.change_signal == "SIGUSR1"
    assert t3.change_script.timeout == 5 * S
    assert t3.change_script.fail_on_error is False
    assert (t3.splay, t3.perms, t3.left_delim, t3.right_delim) == (0, "0600", "[[", "]]")


# --- constraints, affinities, spreads ---------------------------------------------------------

def test_constraint_affinity_spread_defaults_at_every_level():
    task = Task(name="app", driver="docker",
                constraints=[Constraint(l_target="${attr.kernel.name}", r_target="linux")],
                affinities=[Affinity(l_target="${node.class}", r_target="big")])
    group = TaskGroup(name="web", tasks=[task],
                      constraints=[Constraint(l_target="${attr.cpu.arch}", r_target="amd64"),
                                   Constraint(operand="distinct_hosts", r_target="true")],
                      affinities=[Affinity(l_target="${meta.rack}", r_target="r1", weight=-30)],
                      spreads=[Spread(attribute="${node.datacenter}")])
    job = canonicalize(make_job(group=group,
                                constraints=[Constraint(l_target="${attr.os}", operand="!=",
                                                        r_target="windows")],
                                affinities=[Affinity(l_target="${node.datacenter}", r_target="dc1")],
                                spreads=[Spread(attribute="${meta.zone}", weight=80)]))
    assert job.constraints[0].operand == "!="
    assert (job.affinities[0].operand, job.affinities[0].weight) == ("=", 50)
    assert job.spreads[0].weight == 80
    g = only_group(job)
    assert [c.operand for c in g.constraints] == ["=", "distinct_hosts"]
    assert (g.affinities[0].operand, g.affinities[0].weight) == ("=", -30)
    assert g.spreads[0].weight == 50
    t = only_task(job)
    assert t.constraints[0].operand == "="
    assert (t.affinities[0].operand, t.affinities[0].weight) == ("=", 50)


# --- merge helper, idempotence ----------------------------------------------------------------

def test_merge_override_non_none_wins_and_copies():
    base = RestartPolicy(attempts=2, delay=15 * S, mode="fail")
    out = merge(base, RestartPolicy(attempts=0, mode=None))
    assert out == RestartPolicy(attempts=0, delay=15 * S, mode="fail")
    assert out is not base and base.attempts == 2
    assert merge(None, base) == base and merge(None, base) is not base
    assert merge(None, None) is None


def full_job(type_: str) -> Job:
    svc = Service(name="${JOB}-api", port_label="9001", tags=["t"],
                  check_restart=CheckRestart(limit=2),
                  checks=[ServiceCheck(type="http", path="/", interval=10 * S, timeout=1 * S)],
                  connect=ConsulConnect(sidecar_service=ConsulSidecarService(),
                                        sidecar_task=SidecarTask()))
    task = Task(name="app", driver="docker",
                restart_policy=RestartPolicy(attempts=9),
                services=[Service(name="${BASE}", checks=[ServiceCheck(type="tcp", port_label="http")])],
                templates=[Template(dest_path="a", change_mode="signal")],
                constraints=[Constraint(l_target="${attr.os}", r_target="linux")],
                resources=Resources(cores=1))
    group = TaskGroup(name="web", tasks=[task], services=[svc] if type_ == "service" else None,
                      networks=[NetworkResource(mode="bridge", dynamic_ports=[Port(label="http", to=-1)])],
                      update=UpdateStrategy(canary=1) if type_ in ("service", "system") else None,
                      reschedule_policy=ReschedulePolicy(delay=7 * S) if type_ in ("service", "batch") else None,
                      affinities=[Affinity(l_target="${node.class}", r_target="x")],
                      spreads=[Spread(attribute="${node.datacenter}")])
    return Job(id="full", type=type_, task_groups=[group],
               update=UpdateStrategy(max_parallel=2) if type_ != "batch" else None,
               migrate=MigrateStrategy(max_parallel=2) if type_ == "service" else None)


@pytest.mark.parametrize("type_", ["service", "batch", "system", "sysbatch"])
def test_idempotent(type_):
    once = canonicalize(full_job(type_)).to_json()
    twice = canonicalize(canonicalize(full_job(type_))).to_json()
    assert once == twice
    assert once["TaskGroups"][0]["Tasks"][0]["RestartPolicy"]["Attempts"] == 9
