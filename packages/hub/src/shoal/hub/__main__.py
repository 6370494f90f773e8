"""``python -m shoal.hub``: run a hub (see :func:`shoal.hub._server.hub.main`)."""

import sys

from ._server.hub import main

sys.exit(main())
