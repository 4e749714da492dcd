"""Garbage in: one line with a position, exit 1, never a traceback."""

from __future__ import annotations

import os
import re

import pytest

from yurt.jobspec import JobspecError, load

from .conftest import run_yurt

POSITION = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): ")


def problems_of(text, name="bad.nomad"):
    with pytest.raises(JobspecError) as e:
        load(text, name)
    return e.value.problems


def cli(tmp_path, data: bytes, name="bad.nomad"):
    f = tmp_path / name
    f.write_bytes(data)
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr
    first = res.stderr.splitlines()[0]
    assert POSITION.match(first), first
    return res.stderr


@pytest.mark.parametrize("data, words", [
    (b"", "is empty"),
    (b"   \n\n\t  \n", "is empty"),
    (b"\x00\x01\x02garbage\xff\xfe", "binary file"),
    (bytes(range(256)) * 40, "binary file"),
    (b'job "x" {\n  datacenters = ["dc\xff"]\n}\n', "not UTF-8"),
    (b"{{{{", "invalid"),
    (b'job "x" {', "not closed"),
    (b"}", "invalid HCL"),
    (b'job "x" { group "g" { task "t" { driver = } } }', "needs a value"),
    (b'["not", "a", "job"]', "JSON job is an object"),
    (b'{"Job": ', "invalid JSON"),
    (b'{"Hello": "world"}', "not a job"),
])
def test_garbage_gives_one_positioned_line(tmp_path, data, words):
    stderr = cli(tmp_path, data)
    assert words in stderr


def test_a_10_megabyte_file(tmp_path):
    data = b'job "x" {\n' + b"  # padding\n" * (10 * 1024 * 1024 // 12) + b"}\n"
    assert len(data) > 10 * 1024 * 1024
    stderr = cli(tmp_path, data)
    assert "larger than 4 MB" in stderr


def test_deeply_nested_blocks(tmp_path):
    depth = 5000
    data = ('job "x" {\n' + "a {\n" * depth + "}\n" * depth + "}\n").encode()
    stderr = cli(tmp_path, data)
    assert "nested" in stderr


def test_deeply_nested_expressions(tmp_path):
    depth = 20000
    data = ('job "x" {\n  meta = { a = ' + "[" * depth + "]" * depth + " }\n}\n").encode()
    stderr = cli(tmp_path, data)
    assert "nested" in stderr or "must be" in stderr


def test_deeply_nested_json(tmp_path):
    data = ('{"Job": {"ID": "x", "Meta": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}}").encode()
    stderr = cli(tmp_path, data, "deep.json")
    assert "nested" in stderr


def test_unreadable_file(tmp_path):
    f = tmp_path / "secret.nomad"
    f.write_text('job "x" {}')
    os.chmod(f, 0)
    if os.access(f, os.R_OK):  # root reads anything; a FIFO-less check: use a directory entry instead
        f = tmp_path / "dangling.nomad"
        f.symlink_to(tmp_path / "missing")
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_errors_are_sorted_and_all_reported():
    text = 'job "x" {\n  priority = "a"\n  group "g" {\n    cunt = 1\n    task "t" {\n      drvier = "x"\n    }\n  }\n}\n'
    lines = [(p.pos.line, p.pos.col) for p in problems_of(text)]
    assert lines == sorted(lines) and len(lines) == 3


def test_only_one_job_block():
    (p,) = problems_of('job "a" {}\njob "b" {}\n')
    assert p.pos.line == 2 and "only one job block" in p.message


def test_no_job_block():
    (p,) = problems_of('variable "x" { default = 1 }\n')
    assert "no job block" in p.message


def test_unsupported_nomad_block_is_named():
    (p,) = problems_of('job "x" {\n  multiregion {\n    cron = "@daily"\n  }\n}\n')
    assert (p.pos.line, p.pos.col) == (2, 3) and 'the "multiregion" block is not supported by Yurt yet' in p.message
