"""The one error hierarchy: each domain error carries its HTTP status, and an HTTP answer turns
back into the class the server raised."""

from __future__ import annotations

import pytest

from yurt.errors import (ConfigError, Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable,
                         Unreachable, YurtError, error_for_status)
from yurt.server.admission import InvalidJob
from yurt.server.ca import CAError
from yurt.server.catalog import CatalogError
from yurt.server.intentions import IntentionError, IntentionExists
from yurt.state import StateError


@pytest.mark.parametrize(("error", "status"), [
    (CatalogError("x"), 400), (IntentionError("x"), 400), (CAError("x"), 400), (InvalidJob(["x"]), 400),
    (ConfigError("x"), 400), (PermissionDenied("x"), 403), (NotFound("x"), 404),
    (IntentionExists("x"), 409), (StateError("x"), 409), (Unavailable("x"), 503),
    (Unreachable("http://127.0.0.1:1", "refused"), 503), (YurtError("x"), 500)])
def test_each_error_says_its_status(error, status):
    assert isinstance(error, YurtError) and error.status == status


@pytest.mark.parametrize(("status", "cls"), [
    (400, InvalidInput), (403, PermissionDenied), (404, NotFound), (409, Conflict), (503, Unavailable)])
def test_an_answer_becomes_the_class_the_server_raised(status, cls):
    e = error_for_status(status, "intention not found: web => db")
    assert type(e) is cls and e.status == status and str(e) == "intention not found: web => db"


def test_an_unknown_status_is_kept():
    e = error_for_status(502, "bad gateway")
    assert type(e) is YurtError and e.status == 502 and e.message == "bad gateway"


def test_a_job_file_problem_list_reads_as_nomad_prints_it():
    assert str(InvalidJob(["a: b", "c: d"])) == "job validation failed:\n* a: b\n* c: d"
    assert str(InvalidJob(["x.hcl:1:2: e"], summary="")) == "x.hcl:1:2: e"
