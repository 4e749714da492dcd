"""Job files (Nomad's HCL2 or JSON) -> a validated, canonical `structs.Job`.

This is the package's whole public API; its modules are private to it (import-linter checks).
"""

from .defaults import canonicalize
from .errors import JobspecError, Position, Problem
from .hcl_syntax import check_syntax as check_hcl_syntax
from .loader import Loaded, load, load_document, load_file, read_variables

__all__ = ["JobspecError", "Loaded", "Position", "Problem", "canonicalize", "check_hcl_syntax", "load",
           "load_document", "load_file", "read_variables"]
