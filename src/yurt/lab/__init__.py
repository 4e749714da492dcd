"""A lab of hosts on one machine: each host a network namespace on a lab bridge, running its own
Yurt agent (``yurt lab up``). For tests, demos and trying a cluster without a cluster."""

from .lab import (DEFAULT_LAB, DEFAULT_SUBNET, Host, Lab, LabError, cut, down, etcd_alive, exec_args, exec_env, heal,
                  host_processes, kill, kill_etcd, load, start_agent, start_etcd, start_host, status, stop_agent, up)

__all__ = ["DEFAULT_LAB", "DEFAULT_SUBNET", "Host", "Lab", "LabError", "cut", "down", "etcd_alive", "exec_args",
           "exec_env", "heal", "host_processes", "kill", "kill_etcd", "load", "start_agent", "start_etcd", "start_host",
           "status", "stop_agent", "up"]
