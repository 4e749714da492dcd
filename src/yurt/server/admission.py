"""Admitting jobs that arrive over the API: the same reading, defaults and validation as a job file.

The API hands over the JSON body; the server decides whether it is a job. Problems carry the
path in the job (there are no line numbers in a request body).
"""

from __future__ import annotations

from typing import Any

from yurt.errors import InvalidInput
from yurt.jobspec import JobspecError, Problem, load, load_document
from yurt.structs import Job


class InvalidJob(InvalidInput):
    """The body is not a valid job; `errors` lists each problem as "<where>: <what>"."""

    def __init__(self, errors: list[str], summary: str = "job validation failed:") -> None:
        lines = [f"* {e}" for e in errors] if summary else errors
        super().__init__("\n".join([summary, *lines] if summary else lines))
        self.errors = errors


def _line(p: Problem) -> str:
    return f"{p.where}: {p.message}" if p.where else p.message


def admit_job(body: Any, source: str = "request body") -> tuple[Job, list[str]]:
    """`{"Job": {...}}` in Nomad's JSON -> a canonical, validated Job and its warnings."""
    if not isinstance(body, dict) or not isinstance(body.get("Job"), dict):
        raise InvalidJob(['the body must be {"Job": {...}}'])
    try:
        loaded = load_document(body["Job"], source)
    except JobspecError as e:
        raise InvalidJob([_line(p) for p in e.problems if p.severity == "error"]) from None
    return loaded.job, [_line(p) for p in loaded.warnings]


def check_region(job: Job, region: str) -> None:
    """Nomad forwards a job to the region it names ("global", or none, means the agent's own).
    Yurt runs one region and forwards nothing, so a job for another region would run here
    instead: it is refused."""
    if job.region and job.region not in ("global", region):
        raise InvalidJob([f'region: job region "{job.region}" is not this cluster\'s region "{region}": '
                          "Yurt runs one region and does not forward jobs to another; remove region "
                          f'or set it to "{region}"'])


def parse_job_file(text: str, variables: dict[str, Any], canonical: bool) -> Job:
    """`/v1/jobs/parse`: a job file's text -> a Job (defaults filled only when asked)."""
    try:
        return load(text, "JobHCL", variables, canonical=canonical).job
    except JobspecError as e:
        raise InvalidJob([str(p) for p in e.problems], summary="") from None
