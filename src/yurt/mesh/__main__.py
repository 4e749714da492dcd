"""`python -m yurt.mesh [flags]`: the sidecar proxy without the rest of the CLI loaded
(same flags as `yurt connect proxy`; this is the lean entry point the client agent should use)."""

import sys

from .proxy import main

sys.exit(main())
