"""A lab of hosts on one machine: each host a network namespace on a lab bridge, running its own
Yurt agent (``yurt lab up``). For tests, demos and trying a cluster without a cluster."""

from .lab import (DEFAULT_LAB, DEFAULT_SUBNET, Host, Lab, LabError, down, exec_args, host_processes, kill, load,
                  start_agent, status, stop_agent, up)

__all__ = ["DEFAULT_LAB", "DEFAULT_SUBNET", "Host", "Lab", "LabError", "down", "exec_args", "host_processes",
           "kill", "load", "start_agent", "status", "stop_agent", "up"]
