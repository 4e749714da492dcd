"""The one HTTP client for Yurt's API, used by the CLI, the client agent and the proxy.

Errors come back as `APIError(status, message)` carrying the server's text; connection problems
as `Unreachable` with the address, so a CLI can say "is the agent running?".
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import httpx

DEFAULT_ADDRESS = "http://127.0.0.1:4646"


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the Yurt agent at {address}: {reason}")
        self.address = address


def default_address() -> str:
    return os.environ.get("YURT_ADDR") or os.environ.get("NOMAD_ADDR") or DEFAULT_ADDRESS


class YurtClient:
    def __init__(self, address: str | None = None, timeout: float = 30.0) -> None:
        self.address = (address or default_address()).rstrip("/")
        if "://" not in self.address:
            self.address = "http://" + self.address
        self._http = httpx.Client(base_url=self.address, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "YurtClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                timeout: float | None = None) -> httpx.Response:
        try:
            resp = self._http.request(method, path, params=params, json=json,
                                      timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.ConnectError as e:
            raise Unreachable(self.address, "connection refused; is `yurt agent` running?" if "refused" in str(e)
                              else str(e)) from None
        except httpx.TimeoutException:
            raise Unreachable(self.address, "the request timed out") from None
        except httpx.HTTPError as e:
            raise Unreachable(self.address, str(e)) from None
        if resp.status_code >= 400:
            raise APIError(resp.status_code, resp.text.strip())
        return resp

    def get(self, path: str, *, index: int = 0, wait: str | None = None, **params: Any) -> tuple[Any, int]:
        """GET with an optional blocking query; returns (body, X-Nomad-Index)."""
        q = {k: v for k, v in params.items() if v is not None}
        timeout = None
        if index:
            q["index"] = index
            q["wait"] = wait or "5m"
            timeout = _seconds(q["wait"]) + 15
        resp = self.request("GET", path, params=q, timeout=timeout)
        return resp.json(), int(resp.headers.get("X-Nomad-Index", "0") or 0)

    def put(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("PUT", path, json=body, params={k: v for k, v in params.items() if v is not None}).json()

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None}).json()

    # -- jobs -------------------------------------------------------------------------------
    def register_job(self, job_doc: dict) -> dict:
        return self.put("/v1/jobs", job_doc)

    def plan_job(self, job_doc: dict, diff: bool = True) -> dict:
        return self.put(f"/v1/job/{job_doc['Job']['ID']}/plan", {**job_doc, "Diff": diff})

    def jobs(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/jobs", prefix=prefix or None)[0]

    def job(self, job_id: str) -> dict:
        return self.get(f"/v1/job/{job_id}")[0]

    def job_allocations(self, job_id: str, all_: bool = False) -> list[dict]:
        return self.get(f"/v1/job/{job_id}/allocations", all="true" if all_ else None)[0]

    def job_evaluations(self, job_id: str) -> list[dict]:
        return self.get(f"/v1/job/{job_id}/evaluations")[0]

    def job_summary(self, job_id: str) -> dict:
        return self.get(f"/v1/job/{job_id}/summary")[0]

    def job_versions(self, job_id: str) -> list[dict]:
        return self.get(f"/v1/job/{job_id}/versions")[0]["Versions"]

    def stop_job(self, job_id: str, purge: bool = False) -> dict:
        return self.delete(f"/v1/job/{job_id}", purge="true" if purge else None)

    # -- evals, allocs, nodes ---------------------------------------------------------------
    def evaluation(self, eval_id: str, index: int = 0, wait: str | None = None) -> tuple[dict, int]:
        return self.get(f"/v1/evaluation/{eval_id}", index=index, wait=wait)

    def evaluations(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/evaluations", prefix=prefix or None)[0]

    def eval_allocations(self, eval_id: str) -> list[dict]:
        return self.get(f"/v1/evaluation/{eval_id}/allocations")[0]

    def allocations(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/allocations", prefix=prefix or None)[0]

    def allocation(self, alloc_id: str) -> dict:
        return self.get(f"/v1/allocation/{alloc_id}")[0]

    def stop_allocation(self, alloc_id: str) -> dict:
        return self.put(f"/v1/allocation/{alloc_id}/stop")

    def nodes(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/nodes", prefix=prefix or None)[0]

    def node(self, node_id: str) -> dict:
        return self.get(f"/v1/node/{node_id}")[0]

    def node_allocations(self, node_id: str, index: int = 0, wait: str | None = None) -> tuple[list[dict], int]:
        return self.get(f"/v1/node/{node_id}/allocations", index=index, wait=wait)

    def logs(self, alloc_id: str, task: str, *, stderr: bool = False, follow: bool = False,
             origin: str = "start", offset: int = 0) -> Iterator[bytes]:
        params = {"task": task, "type": "stderr" if stderr else "stdout", "plain": "true",
                  "follow": "true" if follow else "false", "origin": origin, "offset": offset}
        try:
            with self._http.stream("GET", f"/v1/client/fs/logs/{alloc_id}", params=params,
                                   timeout=httpx.Timeout(30.0, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise APIError(resp.status_code, resp.text.strip())
                yield from resp.iter_bytes()
        except httpx.ConnectError as e:
            raise Unreachable(self.address, str(e)) from None

    # -- agent ------------------------------------------------------------------------------
    def agent_self(self) -> dict:
        return self.get("/v1/agent/self")[0]

    def agent_health(self) -> dict:
        return self.request("GET", "/v1/agent/health").json()

    # -- the client agent's calls -----------------------------------------------------------
    def register_node(self, node: dict) -> dict:
        return self.put("/v1/internal/node/register", {"Node": node})

    def heartbeat(self, node_id: str) -> dict:
        return self.put(f"/v1/internal/node/{node_id}/heartbeat")

    def update_allocations(self, node_id: str, updates: list[dict]) -> dict:
        return self.put(f"/v1/internal/node/{node_id}/allocations", {"Allocs": updates})


def _seconds(wait: str) -> float:
    from yurt.structs import parse_duration
    try:
        return parse_duration(wait) / 1e9
    except ValueError:
        return 300.0
