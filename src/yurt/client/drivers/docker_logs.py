"""The log follower of a docker task: a small detached process that outlives the agent.

``python -m yurt.client.drivers.docker_logs <spec.json>`` follows the container's stdout and stderr
through the engine's API into rotating files ``alloc/logs/<task>.stdout.N`` / ``.stderr.N``
(the same files and rotation as the executor writes for the other drivers), and exits when the
container has stopped and its streams are drained. An agent that restarts finds it by the pid
in the task handle; if it is gone, a new follower starts from that moment (``since``).

Spec keys: endpoint, container_id, task, logs_dir, max_files, max_file_size (bytes), since
(unix seconds, 0 = from the start), pid_file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..logrotate import FileRotator
from ..procs import start_time, write_json_atomic


def _follow(client: Any, container_id: str, stream: str, rotator: FileRotator, since: int) -> None:
    kwargs: dict[str, Any] = {"stdout": stream == "stdout", "stderr": stream == "stderr", "stream": True,
                              "follow": True}
    if since:
        kwargs["since"] = since
    try:
        for chunk in client.api.logs(container_id, **kwargs):
            rotator.write(chunk)
    except Exception as e:  # noqa: BLE001 - the engine went away or the container was removed
        print(f"{stream}: {e}", file=sys.stderr, flush=True)
    finally:
        rotator.close()


def run(spec: dict[str, Any]) -> int:
    import docker
    client = docker.DockerClient(base_url=spec["endpoint"], version="auto", timeout=None)
    pid = os.getpid()
    write_json_atomic(Path(spec["pid_file"]), {"pid": pid, "start": start_time(pid)})
    threads = []
    for stream in ("stdout", "stderr"):
        rotator = FileRotator(spec["logs_dir"], f"{spec['task']}.{stream}", int(spec.get("max_files", 10)),
                              int(spec.get("max_file_size", 10 * 1024 * 1024)))
        t = threading.Thread(target=_follow, args=(client, spec["container_id"], stream, rotator,
                                                   int(spec.get("since") or 0)), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return 0


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the agent's terminal is not for us
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
