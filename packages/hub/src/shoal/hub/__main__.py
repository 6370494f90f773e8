"""``python -m shoal.hub``: run a hub (see :func:`shoal.hub._hub.main`)."""

import sys

from ._hub import main

sys.exit(main())
