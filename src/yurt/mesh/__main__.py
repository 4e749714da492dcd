"""`python -m yurt.mesh [flags]`: the sidecar proxy without the rest of the CLI loaded
(the flags of `yurt connect proxy`, which execs this; the connect-proxy driver runs it too)."""

import sys

from .proxy import main

sys.exit(main())
