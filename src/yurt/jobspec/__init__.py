"""Job files (Nomad's HCL2 or JSON) -> a validated, canonical `structs.Job`.

This is the package's whole public API; its modules are private to it (import-linter checks).
"""

from .defaults import canonicalize
from .errors import JobspecError, Position, Problem
from .loader import Loaded, load, load_document, load_file, read_variables

__all__ = ["JobspecError", "Loaded", "Position", "Problem", "canonicalize", "load", "load_document",
           "load_file", "read_variables"]
