"""Connect Native for Python: an application joins the mesh itself, without a sidecar.

    from yurt.connect import Service

    svc = Service("api")                      # leaf + roots from the local agent, kept fresh
    server = svc.listen("0.0.0.0", 9090)      # mTLS; intentions enforced on accept
    conn, addr = server.accept()              # only authorized callers get here
    ...
    sock = svc.connect("db")                  # mTLS to a healthy instance of "db" (by name)
    client = httpx.Client(transport=svc.http_transport())
    client.get("http://web/")                 # the host of the URL is the destination service

`Service(name)` finds its agent and token the way Consul's tools do: `CONSUL_HTTP_ADDR` (then
`YURT_ADDR`, `NOMAD_ADDR`), and `CONSUL_HTTP_TOKEN_FILE`/`YURT_TOKEN_FILE` or
`CONSUL_HTTP_TOKEN`/`YURT_TOKEN`/`NOMAD_TOKEN`. A task of a `connect { native = true }` service
run by Yurt (raw_exec) is given all of these (the agent's unix socket and its workload identity,
secrets/nomad_token); a process outside Yurt sets them itself. The name defaults to
`$YURT_CONNECT_SERVICE` (set for a native task).

Only the standard library and `yurt.mesh` are used, except `http_transport`, which needs httpx.
"""

from __future__ import annotations

from .service import ConnectError, NotAuthorized, Service

__all__ = ["ConnectError", "NotAuthorized", "Service"]
