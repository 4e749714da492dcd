"""Nomad's job endpoints: /v1/jobs, /v1/job/<id>/..., /v1/jobs/parse, /v1/validate/job."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, NotFound
from yurt.server.admission import InvalidJob, admit_job, check_region, parse_job_file
from yurt.server.reads import Reads
from yurt.structs import Job

from .authz import may, require_namespace
from .common import block, flag, json_body, json_object, reply, reply_stubs, strict_flag, write_reply
from .forward import ServerReads, need_server
from . import bodies as b
from .openapi import body

# A child job's ID has a slash (`<parent>/periodic-<unix>`, `<parent>/dispatch-...`), escaped
# (%2F) or not. Like Nomad's jobSpecificRequest, what follows /v1/job/ is the ID unless it ends in
# one of the job routes' suffixes; `JobIDPaths` routes the ID as one path segment (its slashes
# as SLASH), and `_job_id_slashes` turns them back into "/".
SLASH = "\x1f"
_SUFFIXES = ("periodic/force", "plan", "evaluate", "allocations", "evaluations", "versions", "summary",
             "deployment", "deployments", "revert", "stable", "scale", "dispatch")


class JobIDPaths:
    """ASGI middleware: /v1/job/<parent>/<child>[/<suffix>] is routed with the ID in one segment."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path.startswith("/v1/job/") and "/" in path[len("/v1/job/"):].strip("/"):
            rest = path[len("/v1/job/"):]
            job_id, suffix = rest, ""
            for s in _SUFFIXES:
                if rest.endswith("/" + s):
                    job_id, suffix = rest[:-len(s) - 1], "/" + s
                    break
            if "/" in job_id:
                scope = {**scope, "path": "/v1/job/" + job_id.replace("/", SLASH) + suffix}
        await self.app(scope, receive, send)


def _job_id_slashes(request: Request) -> None:
    params = request.scope.get("path_params")
    if params and isinstance(params.get("job_id"), str) and SLASH in params["job_id"]:
        params["job_id"] = params["job_id"].replace(SLASH, "/")


router = APIRouter(dependencies=[Depends(need_server), Depends(_job_id_slashes)])  # a client-only agent forwards these


def _stub(job: Job, summary) -> dict[str, Any]:
    return {
        "ID": job.id, "ParentID": job.parent_id, "Name": job.name, "Namespace": job.namespace,
        "Datacenters": job.datacenters, "NodePool": job.node_pool, "Type": job.type,
        "Priority": job.priority, "Periodic": job.is_periodic(), "ParameterizedJob": job.is_parameterized(),
        "Stop": job.stop,
        "Status": job.status, "StatusDescription": job.status_description,
        "JobSummary": summary.to_json() if summary else None,
        "CreateIndex": job.create_index, "ModifyIndex": job.modify_index,
        "JobModifyIndex": job.job_modify_index, "SubmitTime": job.submit_time, "Version": job.version,
    }


def _ns(request: Request) -> str:
    return request.query_params.get("namespace") or "default"


def _in_namespace(request: Request, body: dict, job: Job) -> Job:
    """The job in the namespace Nomad puts it in (namespaceForJob): ?namespace= (the CLI's
    -namespace), else the body's Namespace, else the job's own, else default."""
    given = body["Job"].get("Namespace") if isinstance(body.get("Job"), dict) else None
    namespace = request.query_params.get("namespace") or body.get("Namespace") or given or "default"
    if not isinstance(namespace, str):
        raise InvalidInput(f'Namespace must be a string, not {namespace!r}')
    return job if job.namespace == namespace else job.model_copy(update={"namespace": namespace})


def _job(request: Request, reads: Reads, job_id: str) -> Job:
    job = reads.job(_ns(request), job_id)
    if job is None:
        raise NotFound("job not found")
    return job


@router.get("/v1/jobs")
async def list_jobs(request: Request, reads: ServerReads):
    index = await block(request, reads, "jobs")
    jobs = reads.jobs(_ns(request), request.query_params.get("prefix", ""))
    jobs = [j for j in jobs if may(request, j.namespace or "default", "list-jobs")]
    return reply([_stub(j, reads.job_summary(j.namespace, j.id)) for j in jobs], index)


def enforce_index(body: dict) -> int | None:
    """`EnforceIndex` (`yurt job run -check-index N`): the JobModifyIndex the job must still have
    (the server checks it in the same write), or None."""
    if not body.get("EnforceIndex"):
        return None
    try:
        return int(body.get("JobModifyIndex") or 0)
    except (TypeError, ValueError):
        raise InvalidInput(f'JobModifyIndex "{body.get("JobModifyIndex")}" must be a whole number') from None


@router.put("/v1/jobs", openapi_extra=body(b.JobRegisterRequest))
@router.post("/v1/jobs", openapi_extra=body(b.JobRegisterRequest))
async def register(request: Request):
    body = await json_body(request)

    def admit_and_register() -> dict[str, Any]:   # one trip to a worker thread, not two
        job, warnings = admit_job(body)
        job = _in_namespace(request, body, job)
        check_region(job, request.app.state.agent.server.region)
        require_namespace(request, job.namespace or "default", "submit-job")  # the body's namespace
        result = request.app.state.agent.server.register_job(job, enforce_index=enforce_index(body))
        result["Warnings"] = "\n".join([*warnings, *filter(None, [result.get("Warnings")])])
        return result

    return write_reply(await run_in_threadpool(admit_and_register))


@router.put("/v1/jobs/parse", openapi_extra=body(b.JobsParseRequest))
@router.post("/v1/jobs/parse", openapi_extra=body(b.JobsParseRequest))
async def parse(request: Request):
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("JobHCL"), str):
        raise InvalidInput('the body must be {"JobHCL": "<job file text>"}')
    variables = body.get("Variables") or {}
    if isinstance(variables, str):
        variables = _parse_var_lines(variables)
    job = await run_in_threadpool(parse_job_file, body["JobHCL"], variables,
                                  canonical=bool(body.get("Canonicalize")))
    out = job.to_json()
    out["Name"] = out.get("Name") or out.get("ID")   # Nomad names the job after its label either way
    return reply(out)


def _parse_var_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


@router.put("/v1/validate/job", openapi_extra=body(b.JobValidateRequest))
@router.post("/v1/validate/job", openapi_extra=body(b.JobValidateRequest))
async def validate_job(request: Request):
    body = await json_body(request)
    if not isinstance(body, dict) or not body.get("Job"):
        raise InvalidInput("Job must be specified")   # Nomad's 400
    try:
        _, warnings = await run_in_threadpool(admit_job, body)
    except InvalidJob as e:
        errors = e.errors
        return reply({"DriverConfigValidated": False, "ValidationErrors": errors,
                      "Error": "\n".join(errors), "Warnings": ""})
    return reply({"DriverConfigValidated": True, "ValidationErrors": [], "Error": "",
                  "Warnings": "\n".join(warnings)})


@router.get("/v1/job/{job_id}")
async def read_job(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "jobs")
    return reply(_job(request, reads, job_id).to_json(), index)


@router.put("/v1/job/{job_id}", openapi_extra=body(b.JobRegisterRequest))
@router.post("/v1/job/{job_id}", openapi_extra=body(b.JobRegisterRequest))
async def update_job(request: Request, job_id: str):
    body = await json_body(request)
    job, warnings = await run_in_threadpool(admit_job, body)
    if job.id != job_id:
        raise InvalidInput(f'job ID "{job.id}" does not match the URL ("{job_id}")')
    job = _in_namespace(request, body, job)
    check_region(job, request.app.state.agent.server.region)
    require_namespace(request, job.namespace or "default", "submit-job")
    result = await run_in_threadpool(request.app.state.agent.server.register_job, job,
                                     enforce_index=enforce_index(body))
    result["Warnings"] = "\n".join([*warnings, *filter(None, [result.get("Warnings")])])
    return write_reply(result)


@router.delete("/v1/job/{job_id}")
async def stop_job(request: Request, reads: ServerReads, job_id: str):
    no_shutdown_delay = strict_flag(request, "no_shutdown_delay")   # a bad value is a 400 either way
    if reads.job(_ns(request), job_id) is None:
        # Nomad deregisters an unknown job successfully, with no evaluation (the CLI looks the
        # job up first and says it does not exist)
        index = reads.index()
        return write_reply({"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": index, "Index": index})
    result = request.app.state.agent.server.deregister_job(
        _ns(request), job_id, purge=flag(request, "purge"),
        no_shutdown_delay=no_shutdown_delay)
    return write_reply(result)


@router.put("/v1/job/{job_id}/plan", openapi_extra=body(b.JobPlanRequest))
@router.post("/v1/job/{job_id}/plan", openapi_extra=body(b.JobPlanRequest))
async def plan_job(request: Request, job_id: str):
    body = await json_body(request)
    job, warnings = await run_in_threadpool(admit_job, body)
    if job.id != job_id:
        raise InvalidInput(f'job ID "{job.id}" does not match the URL ("{job_id}")')
    job = _in_namespace(request, body, job)
    check_region(job, request.app.state.agent.server.region)
    require_namespace(request, job.namespace or "default", "submit-job")
    result = await run_in_threadpool(request.app.state.agent.server.plan_job, job,
                                     diff=bool(body.get("Diff", True)))
    result["Warnings"] = "\n".join(warnings)
    return reply(result, result.get("Index"))


@router.put("/v1/job/{job_id}/evaluate", openapi_extra=body(b.JobEvaluateRequest, required=False))
@router.post("/v1/job/{job_id}/evaluate", openapi_extra=body(b.JobEvaluateRequest, required=False))
async def evaluate(request: Request, reads: ServerReads, job_id: str):
    _job(request, reads, job_id)
    body = await json_body(request, required=False)
    options = body.get("EvalOptions") if isinstance(body, dict) else None
    force = options.get("ForceReschedule", False) if isinstance(options, dict) else False
    if (options is not None and not isinstance(options, dict)) or not isinstance(force, bool):
        raise InvalidInput('EvalOptions must be an object like {"ForceReschedule": true}')
    result = request.app.state.agent.server.evaluate_job(_ns(request), job_id, force_reschedule=force)
    return reply(result, result["Index"])


@router.put("/v1/job/{job_id}/periodic/force")
@router.post("/v1/job/{job_id}/periodic/force")
async def periodic_force(request: Request, reads: ServerReads, job_id: str):
    job = _job(request, reads, job_id)
    result = await run_in_threadpool(request.app.state.agent.server.periodic_force, job.namespace or "default",
                                     job_id)
    return reply(result, result["Index"])


@router.put("/v1/job/{job_id}/dispatch", openapi_extra=body(b.JobDispatchRequest, required=False))
@router.post("/v1/job/{job_id}/dispatch", openapi_extra=body(b.JobDispatchRequest, required=False))
async def dispatch(request: Request, reads: ServerReads, job_id: str):
    raw = await request.body()
    body = await json_object(request) if raw.strip() else {}
    _check_job_id(body, job_id)
    job = _job(request, reads, job_id)
    payload_b64 = body.get("Payload") or ""
    if not isinstance(payload_b64, str):
        raise InvalidInput('"Payload" must be a base64 string')
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f'"Payload" is not valid base64: {e}') from e
    meta = body.get("Meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidInput('"Meta" must be an object of strings')
    token, template = body.get("IdempotencyToken") or "", body.get("IdPrefixTemplate") or ""
    if not isinstance(token, str) or not isinstance(template, str):
        raise InvalidInput('"IdempotencyToken" and "IdPrefixTemplate" must be strings')
    result = await run_in_threadpool(request.app.state.agent.server.dispatch_job, job.namespace or "default",
                                     job_id, payload, meta, token, template)
    return reply(result, result["Index"])


@router.get("/v1/job/{job_id}/allocations")
async def job_allocations(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "allocs")
    job = _job(request, reads, job_id)
    return reply_stubs(reads.job_allocs(job, all_jobs=flag(request, "all")), index)


@router.get("/v1/job/{job_id}/evaluations")
async def job_evaluations(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "evals")
    job = _job(request, reads, job_id)
    return reply([e.to_json() for e in reads.job_evals(job)], index)


@router.get("/v1/job/{job_id}/versions")
async def job_versions(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "jobs")
    job = _job(request, reads, job_id)
    versions = sorted(reads.job_versions(job.namespace, job.id), key=lambda v: v.version, reverse=True)
    docs = [v.to_json() for v in versions]
    diffs = None
    if flag(request, "diffs"):   # Nomad's: Diffs[i] is Versions[i+1] -> Versions[i] (newest first)
        from yurt.server.job_diff import job_diff
        diffs = [job_diff(docs[i + 1], docs[i]) for i in range(len(docs) - 1)]
    return reply({"Versions": docs, "Diffs": diffs, "Index": index}, index)


@router.get("/v1/job/{job_id}/summary")
async def job_summary(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "allocs")
    job = _job(request, reads, job_id)
    summary = reads.job_summary(job.namespace, job.id)
    return reply(summary.to_json() if summary else None, index)


@router.get("/v1/job/{job_id}/deployment")
async def job_deployment(request: Request, reads: ServerReads, job_id: str):
    """The job's latest deployment, or null."""
    index = await block(request, reads, "deployment")
    ds = reads.job_deployments(_job(request, reads, job_id))
    return reply(ds[0].to_json() if ds else None, index)


@router.get("/v1/job/{job_id}/deployments")
async def job_deployments(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, "deployment")
    ds = reads.job_deployments(_job(request, reads, job_id), all_versions=flag(request, "all"))
    return reply([d.to_json() for d in ds], index)


def _check_job_id(body: dict, job_id: str) -> None:
    given = body.get("JobID")
    if given and given != job_id:
        raise InvalidInput(f"Job ID does not match: the path says {job_id}, the body {given}")


def _int(body: dict, name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f'"{name}" must be a whole number, not {value!r}')
    return value


@router.put("/v1/job/{job_id}/revert", openapi_extra=body(b.JobRevertRequest))
@router.post("/v1/job/{job_id}/revert", openapi_extra=body(b.JobRevertRequest))
async def revert(request: Request, reads: ServerReads, job_id: str):
    body = await json_object(request)
    _check_job_id(body, job_id)
    job = _job(request, reads, job_id)
    version = _int(body, "JobVersion")
    prior = _int(body, "EnforcePriorVersion", required=False)
    result = await run_in_threadpool(request.app.state.agent.server.revert_job, job.namespace or "default",
                                     job_id, version, prior)
    return write_reply(result)


@router.put("/v1/job/{job_id}/stable", openapi_extra=body(b.JobStabilityRequest))
@router.post("/v1/job/{job_id}/stable", openapi_extra=body(b.JobStabilityRequest))
async def stable(request: Request, reads: ServerReads, job_id: str):
    body = await json_object(request)
    _check_job_id(body, job_id)
    job = _job(request, reads, job_id)
    if not isinstance(body.get("Stable"), bool):
        raise InvalidInput('"Stable" must be true or false')
    result = await run_in_threadpool(request.app.state.agent.server.set_job_stable, job.namespace or "default",
                                     job_id, _int(body, "JobVersion"), body["Stable"])
    return reply(result, result["Index"])


@router.get("/v1/job/{job_id}/scale")
async def scale_status(request: Request, reads: ServerReads, job_id: str):
    index = await block(request, reads, ("jobs", "allocs", "deployment"))
    job = _job(request, reads, job_id)
    allocs = reads.job_allocs(job)
    groups = {}
    for tg in job.task_groups or []:
        mine = [a for a in allocs if a.task_group == tg.name and not a.terminal()
                and a.job is not None and a.job.version == job.version]
        groups[tg.name] = {
            "Desired": tg.count or 0, "Placed": len(mine),
            "Running": sum(1 for a in mine if a.client_status == "running"),
            "Healthy": sum(1 for a in mine if a.deployment_status is not None and a.deployment_status.healthy),
            "Unhealthy": sum(1 for a in mine if a.deployment_status is not None
                             and a.deployment_status.healthy is False),
            "Events": None}
    return reply({"JobID": job.id, "Namespace": job.namespace, "JobCreateIndex": job.create_index,
                  "JobModifyIndex": job.job_modify_index, "JobStopped": job.stop, "TaskGroups": groups}, index)


@router.put("/v1/job/{job_id}/scale", openapi_extra=body(b.JobScaleRequest))
@router.post("/v1/job/{job_id}/scale", openapi_extra=body(b.JobScaleRequest))
async def scale(request: Request, reads: ServerReads, job_id: str):
    body = await json_object(request)
    _check_job_id(body, job_id)
    job = _job(request, reads, job_id)
    target = body.get("Target") or {}
    group = target.get("Group") if isinstance(target, dict) else None
    if not group:
        raise InvalidInput('"Target": {"Group": "<task group>"} names the group to scale')
    count = _int(body, "Count", required=False)
    result = await run_in_threadpool(request.app.state.agent.server.scale_job, job.namespace or "default",
                                     job_id, group, count, str(body.get("Message") or ""))
    return write_reply(result)


@router.put("/v1/system/gc")
@router.post("/v1/system/gc")
async def system_gc(request: Request):
    """Nomad's forced garbage collection: every terminal evaluation with its allocations, every
    stopped job whose evaluations and allocations are all terminal, whatever their age."""
    server = request.app.state.agent.server
    collected = await run_in_threadpool(server.gc.collect, True)
    return reply({"Jobs": collected.jobs, "Evals": collected.evals, "Allocs": collected.allocs,
                  "Deployments": collected.deployments, "Nodes": collected.nodes},
                 server.reads.index())
