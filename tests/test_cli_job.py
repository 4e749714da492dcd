"""`yurt job validate | run -output | init` as a user runs them: output, stderr, exit codes."""

from __future__ import annotations

import json

from .conftest import SEED, run_yurt

BROKEN = '''job "web" {
  group "api" {
    service {
      name = "count-api"
      port = "http"
    }
    task "web" {
      drvier = "raw_exec"
    }
  }
}
'''


def test_validate_reports_every_problem_with_position(tmp_path):
    f = tmp_path / "broken.nomad"
    f.write_text(BROKEN)
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1
    assert f"{f}:8:7: " in res.stderr and 'unknown attribute "drvier"; did you mean "driver"?' in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


def test_validate_lists_all_rule_errors_at_once(tmp_path):
    f = tmp_path / "two.nomad"
    f.write_text(BROKEN.replace("drvier", "driver"))
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(str(f))]
    assert len(lines) >= 1
    assert any(":5:7:" in ln and '"http"' in ln for ln in lines), res.stderr
    assert any("driver" in ln for ln in lines) or "1 error" in res.stderr


def test_run_output_prints_canonical_json_and_submits_nothing():
    res = run_yurt("job", "run", "-output", str(SEED), env={"YURT_ADDR": "http://127.0.0.1:1"})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert list(doc) == ["Job"] and doc["Job"]["ID"] == "countdash"
    assert run_yurt("job", "run", "--output", str(SEED)).stdout == res.stdout
    assert run_yurt("run", "-output", str(SEED)).stdout == res.stdout


def test_warnings_go_to_stderr_and_keep_exit_zero(tmp_path):
    f = tmp_path / "warn.nomad"
    # a hostname in host mode does nothing: a warning, not an error
    f.write_text('job "b" {\n  group "g" {\n    network {\n      hostname = "web"\n    }\n'
                 '    task "t" {\n      driver = "raw_exec"\n      config { command = "true" }\n    }\n  }\n}\n')
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "Job validation successful"
    assert res.stderr.startswith("Job Warnings:")
    assert f"* {f}:4:7: group \"g\" > network > hostname: hostname has no effect in host mode" in res.stderr


def test_variables_on_the_command_line(tmp_path):
    f = tmp_path / "v.nomad"
    f.write_text('variable "n" {\n  type = number\n}\njob "v" {\n  group "g" {\n    count = var.n\n'
                 '    task "t" {\n      driver = "raw_exec"\n      config { command = "true" }\n    }\n  }\n}\n')
    missing = run_yurt("job", "validate", str(f))
    assert missing.returncode == 1 and "pass -var n=VALUE" in missing.stderr
    ok = run_yurt("job", "run", "-output", "-var", "n=4", str(f))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Job"]["TaskGroups"][0]["Count"] == 4
    vf = tmp_path / "vars.hcl"
    vf.write_text("n = 6\n")
    ok = run_yurt("job", "run", "-output", "-var-file", str(vf), str(f))
    assert json.loads(ok.stdout)["Job"]["TaskGroups"][0]["Count"] == 6


def test_init_writes_examples_that_validate(tmp_path):
    res = run_yurt("job", "init", cwd=tmp_path)
    assert res.returncode == 0 and "example.nomad.hcl" in res.stdout
    assert run_yurt("job", "validate", "example.nomad.hcl", cwd=tmp_path).returncode == 0
    again = run_yurt("job", "init", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_init_connect_writes_the_seed_byte_for_byte(tmp_path):
    res = run_yurt("job", "init", "-connect", "countdash.nomad", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "countdash.nomad").read_bytes() == SEED.read_bytes()


def test_unknown_flag_is_named_whole_and_exits_1():
    res = run_yurt("job", "validate", "-bogus", str(SEED))
    assert res.returncode == 1
    assert "unknown flag -bogus" in res.stderr


def test_missing_file_and_directory():
    res = run_yurt("job", "validate", "/nonexistent/job.nomad")
    assert res.returncode == 1 and "no such job file" in res.stderr
    res = run_yurt("job", "validate", "/tmp")
    assert res.returncode == 1 and "is a directory" in res.stderr


def test_job_from_stdin():
    res = run_yurt("job", "validate", "-", input=SEED.read_bytes())
    assert res.returncode == 0, res.stderr
