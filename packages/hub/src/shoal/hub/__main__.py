"""``python -m shoal.hub``: run a hub (see :func:`shoal.hub._server.main.main`)."""

import sys

from ._server.main import main

sys.exit(main())
