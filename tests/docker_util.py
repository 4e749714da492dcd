"""Helpers for the docker driver's tests: the engine (podman's Docker API socket) and agents using it."""

from __future__ import annotations

import os
import subprocess

import pytest

from .agent_util import AgentProcess

ENDPOINT = os.environ.get("YURT_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or "unix:///run/podman/podman.sock"
IMAGES = ("hashicorpnomad/counter-api:v1", "hashicorpnomad/counter-dashboard:v1", "yurt/python-base:3.11")


def engine():
    """A Docker SDK client for the test engine, or skip (with how to get one) when it does not answer."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.DockerClient(base_url=ENDPOINT, version="auto", timeout=60)
        client.ping()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no container engine at {ENDPOINT} ({e}): run scripts/podman-setup.sh (make test does)")
    for image in IMAGES:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.skip(f"image {image} missing: run make images")
    return client


def agent(extra: list[str] | None = None, data_dir: str | None = None, port: int | None = None) -> AgentProcess:
    """A `yurt agent -dev` whose docker driver talks to the test engine."""
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = ENDPOINT
    try:
        return AgentProcess(extra=extra, data_dir=data_dir, port=port).start()
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old


def containers_of(client, alloc_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"yurt.alloc_id={alloc_id}"})


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def iptables_mentions(alloc_id: str) -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if alloc_id in line]
