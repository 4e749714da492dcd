"""Job files (Nomad's HCL2 or JSON) -> a validated, canonical `structs.Job`."""

from .errors import JobspecError, Position, Problem
from .loader import Loaded, load, load_file

__all__ = ["JobspecError", "Loaded", "Position", "Problem", "load", "load_file"]
