"""gRPC health checks speak grpc.health.v1 (over HTTP/2, from a socket opened inside the
allocation's network namespace), against a real grpcio server with the standard health service:
SERVING is passing, NOT_SERVING and an unknown service critical, plain TCP or HTTP/1 critical."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yurt.client.checks import CRITICAL, PASSING, CheckRunner, CheckSpec, run_grpc

from .agent_util import free_port, wait_for
from .meshca import self_signed


def _server(port: int, creds: grpc.ServerCredentials | None = None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if creds is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    return server, servicer


def _spec(port: int, **kw) -> CheckSpec:
    return CheckSpec(check_id="g", name="grpc", type="grpc", address="127.0.0.1", port=port, timeout=3, **kw)


def test_serving_is_passing_and_not_serving_is_critical():
    port = free_port()
    server, servicer = _server(port)
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("count", health_pb2.HealthCheckResponse.SERVING)
        r = run_grpc(_spec(port))
        assert (r.status, r.output) == (PASSING, f"gRPC 127.0.0.1:{port}: status = SERVING")
        assert run_grpc(_spec(port, grpc_service="count")).status == PASSING
        servicer.set("count", health_pb2.HealthCheckResponse.NOT_SERVING)
        r = run_grpc(_spec(port, grpc_service="count"))
        assert (r.status, r.output) == (CRITICAL, f"gRPC 127.0.0.1:{port}/count: status = NOT_SERVING")
        r = run_grpc(_spec(port, grpc_service="nope"))   # the health service answers NOT_FOUND
        assert r.status == CRITICAL and "NOT_FOUND" in r.output
    finally:
        server.stop(0)


def test_a_port_that_is_not_grpc_is_critical():
    port = free_port()
    r = run_grpc(_spec(port))
    assert r.status == CRITICAL and "dial tcp" in r.output
    http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: run_grpc(_spec(port)).output.find("dial tcp") < 0, 20, what="the HTTP/1 server")
        r = run_grpc(_spec(port))
        assert r.status == CRITICAL and "dial tcp" not in r.output, r.output
    finally:
        http.kill()
        http.wait()


def test_grpc_use_tls():
    port = free_port()
    cert, key = self_signed()
    server, servicer = _server(port, grpc.ssl_server_credentials([(key, cert)]))
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_grpc(_spec(port, grpc_use_tls=True, tls_skip_verify=True)).status == PASSING
        r = run_grpc(_spec(port, grpc_use_tls=True))          # self-signed: not trusted
        assert r.status == CRITICAL and "CERTIFICATE_VERIFY_FAILED" in r.output
        assert run_grpc(_spec(port)).status == CRITICAL        # plaintext against a TLS port
    finally:
        server.stop(0)


SERVER = r'''
import signal, sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
signal.signal(signal.SIGUSR1, lambda *_: servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
server.start()
print("ready", flush=True)
threading.Event().wait()
'''


def test_a_check_reaches_a_loopback_only_grpc_server_inside_a_namespace_and_sees_it_stop_serving():
    ns = f"yurt-grpc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        port = free_port()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        seen: dict[str, str] = {}
        lock = threading.Lock()

        def report(check_id, status, output):
            with lock:
                seen[check_id] = status
        runner = CheckRunner([CheckSpec(check_id="g", name="grpc", type="grpc", port=port, interval=0.2,
                                        timeout=2)], f"/var/run/netns/{ns}", report=report)
        runner.start()
        try:
            wait_for(lambda: seen.get("g") == PASSING, 20, what="the check passing inside the namespace")
            assert run_grpc(_spec(port)).status == CRITICAL     # from the host, nothing listens there
            proc.send_signal(signal.SIGUSR1)   # the python child of `ip netns exec` (exec'd in place)
            wait_for(lambda: seen.get("g") == CRITICAL, 20, what="NOT_SERVING seen as critical")
        finally:
            runner.stop()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
