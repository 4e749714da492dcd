"""The `artifact` block: fetched from a loopback HTTP server, file:// and git sources; archives
unpacked (tar.gz, zip) and checksums verified; unsafe archives refused; transient failures
retried; bad blocks refused at validation with their position; and, on a real -dev agent, a
task that reads a file from its unpacked tarball, and a wrong checksum failing the task with an
event naming both sums."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from yurt.client import artifact_hook
from yurt.client.allocdir import TaskDir
from yurt.client.artifact_hook import ArtifactHook
from yurt.client.task_hooks import TaskHookError
from yurt.jobspec import JobspecError, load
from yurt.structs import Task, TaskArtifact

from .agent_util import AgentProcess, allocs, register, task_events, wait_for


def _tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


TARBALL = _tar_gz({"app/hello.txt": b"hello from the tarball\n", "app/run.sh": b"#!/bin/sh\necho ran\n"})
ZIPFILE = _zip({"z/inside.txt": b"zipped\n"})
EVIL_TAR = _tar_gz({"../escaped.txt": b"nope"})
EVIL_LINK_TAR = _tar_gz({}, links={"out": "../../../../etc"})
EVIL_ZIP = _zip({"../../escaped.txt": b"nope"})
SHA256 = hashlib.sha256(TARBALL).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    flaky: ClassVar[dict[str, int]] = {}        # path -> failures left before it answers
    seen_headers: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.seen_headers.append(dict(self.headers))
        if self.flaky.get(path, 0) > 0:
            self.flaky[path] -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = self.files.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    _Handler.files = {"/app.tar.gz": TARBALL, "/bundle.zip": ZIPFILE, "/plain.txt": b"just text\n",
                      "/evil.tar.gz": EVIL_TAR, "/evil-link.tar.gz": EVIL_LINK_TAR, "/evil.zip": EVIL_ZIP,
                      "/flaky.txt": b"finally\n", "/down.txt": b"never\n"}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(artifact_hook, "BACKOFF", 0.05)


def _run(tmp_path: Path, *artifacts: TaskArtifact, driver: str = "raw_exec"):
    """The hook's prestart over a fresh task directory; returns (task dir, events)."""
    alloc = tmp_path / "alloc-1"
    td = TaskDir(alloc / "t", alloc / "alloc")
    td.shared.mkdir(parents=True, exist_ok=True)
    td.build()
    for a in artifacts:
        a.getter_mode = a.getter_mode or "any"
        a.relative_dest = a.relative_dest or "local/"
    task = Task(name="t", driver=driver, artifacts=list(artifacts))
    events: list = []
    ctx = SimpleNamespace(task=task, task_dir=td, killed=threading.Event(), emit=events.append, node=None,
                          task_env=lambda: {"NOMAD_META_name": "plain", "NOMAD_TASK_DIR": str(td.local)})
    ArtifactHook(task).prestart(ctx)  # type: ignore[arg-type]
    return td, events


def _fails(tmp_path: Path, *artifacts: TaskArtifact, driver: str = "raw_exec") -> str:
    with pytest.raises(TaskHookError) as e:
        _run(tmp_path, *artifacts, driver=driver)
    return str(e.value)


def test_tarball_fetched_verified_and_unpacked(server, tmp_path):
    td, events = _run(tmp_path, TaskArtifact(getter_source=f"{server}/app.tar.gz",
                                             getter_options={"checksum": f"sha256:{SHA256}"}))
    assert (td.local / "app/hello.txt").read_text() == "hello from the tarball\n"
    assert (td.local / "app/run.sh").stat().st_mode & 0o111
    assert [e.type for e in events] == ["Downloading Artifacts"]
    assert not (td.local / "app.tar.gz").exists()


def test_checksum_in_the_url_and_md5(server, tmp_path):
    md5 = hashlib.md5(b"just text\n").hexdigest()
    td, _ = _run(tmp_path, TaskArtifact(getter_source=f"{server}/plain.txt?checksum=md5:{md5}"))
    assert (td.local / "plain.txt").read_text() == "just text\n"


def test_source_and_destination_interpolated(server, tmp_path):
    td, _ = _run(tmp_path, TaskArtifact(getter_source=server + "/${NOMAD_META_name}.txt",
                                        relative_dest="local/${NOMAD_META_name}/"))
    assert (td.local / "plain/plain.txt").read_text() == "just text\n"


def test_wrong_checksum_fails_with_both_sums(server, tmp_path):
    bad = "0" * 64
    msg = _fails(tmp_path, TaskArtifact(getter_source=f"{server}/app.tar.gz",
                                        getter_options={"checksum": f"sha256:{bad}"}))
    assert f"expected sha256:{bad}" in msg and f"got sha256:{SHA256}" in msg, msg
    assert "Traceback" not in msg


def test_zip_unpacked_into_a_destination_and_plain_file_in_mode_file(server, tmp_path):
    td, _ = _run(tmp_path, TaskArtifact(getter_source=f"{server}/bundle.zip", relative_dest="local/z"),
                 TaskArtifact(getter_source=f"{server}/plain.txt", getter_mode="file",
                              relative_dest="local/conf/renamed.txt", getter_headers={"X-Token": "abc"}),
                 TaskArtifact(getter_source=f"{server}/app.tar.gz", getter_options={"archive": "false"},
                              relative_dest="../alloc/shared"))
    assert (td.local / "z/z/inside.txt").read_text() == "zipped\n"
    assert (td.local / "conf/renamed.txt").read_text() == "just text\n"
    assert (td.shared / "shared/app.tar.gz").read_bytes() == TARBALL
    assert any(h.get("X-Token") == "abc" for h in _Handler.seen_headers)


@pytest.mark.parametrize("name,fragment", [
    ("evil.tar.gz", 'archive member "../escaped.txt" escapes the destination'),
    ("evil-link.tar.gz", "links outside the destination"),
    ("evil.zip", 'archive member "../../escaped.txt" escapes the destination'),
])
def test_archive_traversal_refused(server, tmp_path, name, fragment):
    msg = _fails(tmp_path, TaskArtifact(getter_source=f"{server}/{name}"))
    assert fragment in msg, msg
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize("name,planted,fragment", [("bundle.zip", "z", "through a symlink"),
                                                    ("app.tar.gz", "app", "unsafe archive"),
                                                    ("plain.txt", "plain.txt", "through a symlink")])
def test_symlink_already_in_the_destination_is_not_followed(server, tmp_path, name, planted, fragment):
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "plain.txt":
        (outside / "target").write_text("keep")
    alloc = tmp_path / "alloc-1"
    (alloc / "alloc").mkdir(parents=True)
    # planted by another task of the allocation
    (alloc / "alloc" / planted).symlink_to(outside / "target" if planted == "plain.txt" else outside)
    msg = _fails(tmp_path, TaskArtifact(getter_source=f"{server}/{name}", relative_dest="../alloc"))
    assert fragment in msg, msg
    assert [p.name for p in outside.iterdir()] == (["target"] if planted == "plain.txt" else [])
    if planted == "plain.txt":
        assert (outside / "target").read_text() == "keep"


def test_transient_failures_are_retried(server, tmp_path):
    _Handler.flaky["/flaky.txt"] = 2
    td, _ = _run(tmp_path, TaskArtifact(getter_source=f"{server}/flaky.txt"))
    assert (td.local / "flaky.txt").read_text() == "finally\n"
    assert _Handler.flaky["/flaky.txt"] == 0


def test_a_server_that_keeps_failing_gives_up_with_an_event(server, tmp_path):
    _Handler.flaky["/down.txt"] = 100
    with pytest.raises(TaskHookError) as e:
        _run(tmp_path, TaskArtifact(getter_source=f"{server}/down.txt"))
    assert "bad response code: 503" in str(e.value) and f"after {artifact_hook.ATTEMPTS} attempts" in str(e.value)
    assert _Handler.flaky["/down.txt"] == 100 - artifact_hook.ATTEMPTS


def test_not_found_is_not_retried(server, tmp_path):
    msg = _fails(tmp_path, TaskArtifact(getter_source=f"{server}/missing.tar.gz"))
    assert "bad response code: 404" in msg and "attempts" not in msg


def test_file_source_outside_the_alloc_dir_only_for_raw_exec(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "app.tar.gz").write_bytes(TARBALL)
    td, _ = _run(tmp_path / "a", TaskArtifact(getter_source=f"file://{host}/app.tar.gz"))
    assert (td.local / "app/hello.txt").exists()
    msg = _fails(tmp_path / "b", TaskArtifact(getter_source=f"file://{host}/app.tar.gz"), driver="exec")
    assert "outside the allocation directory" in msg


def test_git_source_from_a_local_bare_repo(tmp_path):
    work, bare = tmp_path / "work", tmp_path / "repo.git"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    work.mkdir()
    git("init", "-q", "-b", "main")
    (work / "README").write_text("v1\n")
    git("add", "README")
    git("commit", "-q", "-m", "one")
    git("tag", "v1")
    (work / "README").write_text("v2\n")
    git("commit", "-q", "-am", "two")
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    td, _ = _run(tmp_path / "a", TaskArtifact(getter_source=f"git::file://{bare}", relative_dest="local/repo"),
                 TaskArtifact(getter_source=f"git::file://{bare}", relative_dest="local/old",
                              getter_options={"ref": "v1", "depth": "1"}))
    assert (td.local / "repo/README").read_text() == "v2\n"
    assert (td.local / "old/README").read_text() == "v1\n"
    msg = _fails(tmp_path / "b", TaskArtifact(getter_source=f"git::file://{bare}", getter_options={"ref": "nope"}))
    assert "git checkout failed" in msg


# --- validation ----------------------------------------------------------------------------------

def _job(artifact: str) -> str:
    return f'''job "x" {{
  type = "batch"
  group "g" {{
    task "t" {{
      driver = "raw_exec"
      config {{ command = "true" }}
      artifact {{
{artifact}
      }}
    }}
  }}
}}
'''


@pytest.mark.parametrize("body,where,fragment", [
    ('        source = "https://x/a.tgz"\n        options { checksum = "sha256:abc" }', (9, 9),
     'sha256 checksum "abc" is not 64 hex digits'),
    ('        source = "https://x/a.tgz?checksum=crc:00"', (8, 9), 'checksum type "crc" is not known'),
    ('        source = "https://x/a.tgz"\n        mode = "both"', (9, 9), 'artifact mode "both" is not known'),
    ('        source = "https://x/a.tgz"\n        destination = "../../../etc"', (9, 9),
     "escapes the allocation directory"),
    ('        source = "s3::https://bucket/a.tgz"', (8, 9), 'the "s3::" getter is not supported'),
    ('        source = "example.com/a.tgz"', (8, 9), "has no scheme"),
    ('        destination = "local/"', (7, 7), "artifact has no source"),
])
def test_bad_artifacts_refused_at_validation(body, where, fragment):
    with pytest.raises(JobspecError) as e:
        load(_job(body), "bad.nomad")
    p = e.value.problems[0]
    assert fragment in p.message, p.message
    assert (p.pos.line, p.pos.col) == where, p


def test_artifact_defaults_and_json_names():
    job = load(_job('        source = "https://x/a.tgz"\n        options { checksum = "sha256:' + SHA256 + '" }'),
               "ok.nomad").job
    doc = job.to_document()["Job"]["TaskGroups"][0]["Tasks"][0]["Artifacts"][0]
    assert doc["GetterSource"] == "https://x/a.tgz" and doc["GetterMode"] == "any"
    assert doc["RelativeDest"] == "local/" and doc["GetterOptions"] == {"checksum": f"sha256:{SHA256}"}


# --- a real agent ----------------------------------------------------------------------------------

AGENT_JOB = """
job "%(id)s" {
  type = "batch"
  group "g" {
    restart { attempts = 0 }
    reschedule { attempts = 0 unlimited = false }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "cat ${NOMAD_TASK_DIR}/app/hello.txt; ${NOMAD_TASK_DIR}/app/run.sh"]
      }
      artifact {
        source = "%(url)s/app.tar.gz"
        options { checksum = "sha256:%(sum)s" }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def test_agent_task_reads_its_unpacked_tarball(agent, server):
    with agent.api() as api:
        register(api, AGENT_JOB % {"id": "art-ok", "url": server, "sum": SHA256})
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "art-ok") if a["ClientStatus"] == "complete"] or None,
                            60, what="the artifact job completes")
        log = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "type": "stdout",
                                                                   "plain": "true"}).text
        assert "hello from the tarball" in log and "ran" in log, log
        types = [e["Type"] for e in task_events(api, alloc["ID"], "t")]
        assert types.index("Downloading Artifacts") < types.index("Started"), types


def test_agent_wrong_checksum_fails_the_task_with_an_event(agent, server):
    bad = "1" * 64
    with agent.api() as api:
        register(api, AGENT_JOB % {"id": "art-bad", "url": server, "sum": bad})
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "art-bad") if a["ClientStatus"] == "failed"] or None,
                            60, what="the artifact job fails")
        events = task_events(api, alloc["ID"], "t")
        failed = next(e for e in events if e["Type"] == "Failed Artifact Download")
        assert f"expected sha256:{bad}" in failed["DisplayMessage"] and f"got sha256:{SHA256}" in failed["DownloadError"]
        assert "Started" not in [e["Type"] for e in events]
        assert "Traceback" not in agent.log()
