"""Property-based: whatever a job file turns into, the reader returns a job or raises JobspecError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from yurt.jobspec import JobspecError, Loaded, load

from .conftest import FIXTURES, SEED

SOURCES = [SEED.read_text(), (FIXTURES / "everything.nomad").read_text()]
JSON_SOURCE = json.dumps(load(SOURCES[0], "seed.nomad").job.to_document(), indent=1)
TOKENS = ['"', "{", "}", "[", "]", "=", "${", "}", "\n", "#", "-1", "0", "99999999999", "true", "null",
          "group", "task", "port", "static", "to", "count", "mode", '"bridge"', "connect", "var.x", "local.y",
          "<<EOF\n", "EOF\n", "\\", "%{", "\x00", "é", "1e309", "3.5", "[]", "{}"]


def check(text: str, name: str = "fuzz.nomad") -> None:
    try:
        result = load(text, name)
    except JobspecError as e:
        assert e.problems, "a JobspecError always carries at least one problem"
        for p in e.problems:
            assert p.pos.line >= 1 and p.pos.col >= 1 and p.message
        return
    assert isinstance(result, Loaded)
    assert result.job.id


@st.composite
def mutated(draw, source: str) -> str:
    text = source
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "swap"]))
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 40)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS) | st.text(max_size=5)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            k = min(len(text), j + draw(st.integers(0, 40)))
            text = text[:i] + text[j:k] + text[i:j] + text[k:]
    return text


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_mutated_hcl_jobs(data):
    source = data.draw(st.sampled_from(SOURCES))
    check(data.draw(mutated(source)))


@FUZZ
@given(mutated(JSON_SOURCE))
def test_mutated_json_jobs(text):
    check(text, "fuzz.json")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    try:
        load(data, "fuzz.nomad")
    except JobspecError:
        pass
