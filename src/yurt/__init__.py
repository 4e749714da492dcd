"""Yurt: a workload orchestrator with a built-in service mesh."""
__version__ = "0.1.0"
